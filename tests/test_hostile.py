"""Hostile input: the generator's promises, the worker core's answers, and the real pipeline into ClickHouse.

The pure part runs every hostile class through the worker's stage-1 core (decode, dead letters,
dedup) without I/O and checks each message's outcome. The integration test writes ~12k hostile
pieces mixed into ~12k valid posts straight to the raw topic, runs one worker and the sink, and
checks ClickHouse: dead letters by (partition, offset, item) and reason, posts exact, windows equal
to the oracle, the worker never restarted. `tagpulse hostile` is the same run at full scale.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest

from tagpulse import hostile
from tagpulse.core.decode import MAX_DEAD_LETTER_RAW
from tagpulse.core.stage1 import DedupWindowState

SPECS = ((60, 60), (3600, 300), (86400, 3600))


def run_core(stream: hostile.Stream, partitions: int = 4):
    """Every message through a stage-1 state per partition, as the worker does; (offsets, dead, posts, skipped)."""
    states = {p: DedupWindowState(p, SPECS, 10, 7 * 86400) for p in range(partitions)}
    next_offset: Counter = Counter()
    offsets, dead, posts, skipped = [], [], [], 0
    for message in stream.messages:
        offset = next_offset[message.partition]
        next_offset[message.partition] += 1
        offsets.append((message.partition, offset))
        result = states[message.partition].process([(offset, message.value)], "raw")
        dead += [(d["source"], d["reason"]) for d in result.dead_letters]
        posts += result.unique_post_dicts()
        skipped += result.skipped
    return offsets, dead, posts, skipped


# ----------------------------------------------------------------------------- the generator
def test_the_generator_is_deterministic_and_tries_every_class():
    a = hostile.hostile_stream(bad=4000, valid=1000, seed=3)
    b = hostile.hostile_stream(bad=4000, valid=1000, seed=3)
    assert [m.value for m in a.messages] == [m.value for m in b.messages]
    assert sum(a.pieces.values()) == 4000
    rare = {"huge_text", "huge_unknown_field", "huge_id", "huge_garbage", "bad_item_flood", "hashtag_limit"}
    assert {f.__name__ for f, _ in hostile.CLASSES} - rare <= set(a.pieces)
    classes = a.message_classes()
    assert classes["mixed_batch"] > 0 and classes["batch"] > 0
    # Event time never goes backwards within a partition: no valid post can be late.
    seen, last = set(), {}
    for message in a.messages:
        for post in message.posts:
            key = (post["platform"], post["post_id"])
            if key in seen:
                continue  # a duplicate repeats an earlier time on purpose; it moves no watermark
            seen.add(key)
            assert post["created_at"] >= last.get(message.partition, ""), message.cls
            last[message.partition] = post["created_at"]


def test_every_hostile_message_gets_exactly_its_expected_outcome_in_the_worker_core():
    stream = hostile.hostile_stream(bad=6000, valid=3000, seed=20150520)
    offsets, dead, posts, skipped = run_core(stream)
    assert Counter(dead) == hostile.expected_dead_letters(stream, offsets, "raw")
    assert Counter(hostile.post_fingerprint(p) for p in posts) == \
        Counter(hostile.post_fingerprint(p) for p in stream.unique_posts())
    assert skipped == stream.skips() > 0


def test_rare_classes_in_the_worker_core():
    rare = tuple((builder, 1.0) for builder in (hostile.huge_text, hostile.huge_unknown_field, hostile.huge_id,
                                                hostile.huge_garbage, hostile.bad_item_flood, hostile.hashtag_limit))
    stream = hostile.hostile_stream(bad=24, valid=50, seed=1, classes=rare)
    offsets, dead, posts, _ = run_core(stream)
    assert Counter(dead) == hostile.expected_dead_letters(stream, offsets, "raw")
    assert sorted(p["post_id"] for p in posts) == sorted(p["post_id"] for p in stream.unique_posts())
    assert max(len(m.value) for m in stream.messages) < 1_048_576 - 1000  # the broker takes every one


def test_unicode_and_sql_strings_are_kept_as_their_canonical_keys():
    from tagpulse.core.hashtags import canonical_tag

    for written, key in hostile.UNICODE_TAGS:
        assert canonical_tag(written) == key, written
    for written in hostile.VANISHING_TAGS:
        assert canonical_tag(written) is None
    for text in hostile.SQL_STRINGS:
        assert canonical_tag(text) == text.casefold()


def test_the_command_has_help(capsys):
    from tagpulse.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["hostile", "--help"])
    assert exit_info.value.code == 0
    assert "--messages" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the real pipeline
@pytest.mark.integration
def test_hostile_input_through_the_real_pipeline(namespace_settings, tmp_path, monkeypatch):
    from tagpulse import config
    from tagpulse.commands.hostile import print_figures, run_hostile

    monkeypatch.setenv("TAGPULSE_IDLE_TIMEOUT", "2")
    settings = config.load()
    assert settings.topics.raw == namespace_settings.topics.raw
    figures = run_hostile(settings, bad=12_000, valid=12_000, seed=int(os.environ.get("TAGPULSE_HOSTILE_SEED", "5")),
                          run_dir=tmp_path / "logs", timeout=600)
    print_figures(figures)
    assert figures["problems"] == []
    assert not figures["worker_restarted"]
    assert figures["dead_letters_stored"] == figures["dead_letters_expected"] > 5_000
    assert figures["posts_stored"] == figures["unique_posts_expected"] > 12_000
    assert figures["windows_stored"] == figures["windows_expected"]
    assert figures["skipped_counted"] == figures["skipped_expected"] > 0
    assert figures["dead_letter_raw_max_bytes"] <= MAX_DEAD_LETTER_RAW
    # Not a benchmark: a guard against growth with the input (a few ~1 MB messages are in the mix).
    assert figures["worker_peak_rss_bytes"] is None or figures["worker_peak_rss_bytes"] < 1 << 30

