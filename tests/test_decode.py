"""The worker's decoding of raw-topic messages under hostile input (pure; docs/hostile-input.md).

Each test pins one thing hostile input used to break: a crash on deep nesting or a tombstone,
reasons that were error messages, a batch or page losing its good records, dead letters without
a size bound, one future-dated post holding a partition's watermark hostage.
"""
from __future__ import annotations

import orjson
import pytest

from tagpulse.core import decode
from tagpulse.core.decode import (MAX_DEAD_LETTER_RAW, MAX_MESSAGE_DEAD_LETTERS, MAX_MESSAGE_ITEMS, dead_letter_raw,
                                  decode_value)
from tagpulse.core.stage1 import DedupWindowState

SPECS = ((60, 60), (3600, 300), (86400, 3600))


def good_post(i: int = 1, **overrides) -> dict:
    post = {"platform": "twitter", "post_id": f"g{i}", "author_id": "a1", "author_handle": "h", "author_followers": 10,
            "created_at": "2015-05-20T09:00:00Z", "lang": "de", "text": "x", "hashtags": ["kai"], "is_share": False,
            "original_post_id": None, "likes": 1, "shares": 0, "replies": 0, "quotes": 0}
    post.update(overrides)
    return post


@pytest.mark.parametrize("value, reason, where", [
    (b'{"a":' * 300 + b"1" + b"}" * 300, "unknown_format", "m#0"),            # orjson writes only 255 levels
    (b"[" * 300 + b"]" * 300, "nested_batch", "m#0"),
    (orjson.dumps(good_post(text="@")).replace(b'"@"', b"[" * 900 + b"]" * 900), "wrong_type:text", "m#0"),
    (b"[" * 5000 + b"]" * 5000, "too_deep", "m"),
])
def test_deep_nesting_becomes_a_dead_letter_instead_of_crashing_the_worker(value, reason, where):
    posts, dead, _ = decode_value(value, "m")
    assert posts == [] and [(d["source"], d["reason"]) for d in dead] == [(where, reason)]
    assert len(dead[0]["raw"]) <= MAX_DEAD_LETTER_RAW
    orjson.dumps(dead)  # the row itself can be written


@pytest.mark.parametrize("value, reason", [
    (b"{truncated", "invalid_json"), (b'{"text": "\xff"}', "invalid_utf8"), (b'"\\ud800"', "invalid_utf8"),
    (b"", "empty_record"), (b" \n", "empty_record"), (None, "empty_record"), (b'{"followers": NaN}', "invalid_json"),
    (b"[" + b",".join([b"0"] * (MAX_MESSAGE_ITEMS + 1)) + b"]", "batch_too_large"),
])
def test_whole_message_failures_have_short_stable_reasons(value, reason):
    posts, dead, _ = decode_value(value, "topic/0/7")
    assert posts == [] and [(d["source"], d["reason"]) for d in dead] == [("topic/0/7", reason)]


def test_a_bad_item_costs_only_itself_and_too_many_refuse_the_message():
    batch = [good_post(1), {"platform": "twitter"}, 42, good_post(2), [good_post(3)]]
    posts, dead, _ = decode_value(orjson.dumps(batch), "m")
    assert [p["post_id"] for p in posts] == ["g1", "g2"]
    assert [(d["source"], d["reason"]) for d in dead] == [
        ("m#1", "missing_field:post_id"), ("m#2", "not_an_object"), ("m#4", "nested_batch")]
    limit = [good_post(1)] + [0] * MAX_MESSAGE_DEAD_LETTERS
    posts, dead, _ = decode_value(orjson.dumps(limit), "m")
    assert len(posts) == 1 and len(dead) == MAX_MESSAGE_DEAD_LETTERS
    posts, dead, _ = decode_value(orjson.dumps(limit + [0]), "m")
    assert posts == [] and [(d["source"], d["reason"]) for d in dead] == [("m", "too_many_invalid_items")]


def test_a_twitter_v2_page_keeps_its_good_tweets_and_dead_letters_the_bad_one():
    def tweet(i, **extra):
        return {"id": f"19{i}", "text": f"tweet {i}", "author_id": "u1", "created_at": "2015-05-20T09:00:00.000Z",
                **extra}
    page = {"data": [tweet(1), {k: v for k, v in tweet(2).items() if k != "author_id"}, tweet(3)],
            "includes": {"users": [{"id": "u1", "username": "v2", "public_metrics": {"followers_count": 7}}]}}
    posts, dead, skipped = decode_value(orjson.dumps([good_post(1), page]), "m")
    assert [p["post_id"] for p in posts] == ["g1", "191", "193"] and skipped == 0
    assert [(d["source"], d["reason"]) for d in dead] == [("m#1/data[1]", "missing_field:author_id")]
    assert orjson.loads(dead[0]["raw"])["text"] == "tweet 2"  # the bad tweet alone, not the page


def test_dead_letter_raw_is_bounded_in_bytes_and_cut_between_characters():
    text, size = dead_letter_raw({"text": "ü" * 1_000_000})
    assert len(text.encode()) <= MAX_DEAD_LETTER_RAW and size > 2_000_000
    assert text.startswith('{"text":"üü') and "\ufffd" not in text
    text, size = dead_letter_raw(b"\xf0\x9f\x98\x80" * 100_000)
    assert len(text.encode()) <= MAX_DEAD_LETTER_RAW and size == 400_000
    deep: list = []
    for _ in range(50_000):
        deep = [deep]
    text, _ = dead_letter_raw(deep)
    assert text.startswith("[[[") and "…" in text


def test_a_post_from_the_future_would_hold_the_watermark_hostage_so_it_is_refused(monkeypatch):
    monkeypatch.setattr(decode, "_clock", lambda: 1432112400.0)  # 2015-05-20T09:00:00Z
    # Both halves of the once-per-second cache, so teardown restores a consistent pair: restoring
    # only the second left the 2015 bound cached for the rest of that second, for later tests.
    monkeypatch.setattr(decode, "_future_second", -1)
    monkeypatch.setattr(decode, "_future_bound", "")
    state = DedupWindowState(0, SPECS, 10, 7 * 86400)
    soon = good_post(1, created_at="2015-05-20T09:09:59Z")
    future = good_post(2, created_at="2015-05-20T09:10:01Z")
    result = state.process([(0, orjson.dumps([soon, future, good_post(3)]))], "raw")
    assert [d["reason"] for d in result.dead_letters] == ["timestamp_in_future:created_at"]
    assert [p["post_id"] for p in result.unique_post_dicts()] == ["g1", "g3"]
    assert state.max_event == 1432112400 + 599


def test_fast_message_decoding_equals_the_item_by_item_path():
    """Messages of clean canonical posts are decoded by msgspec in one call (decode._decode_wire_message);
    every message must give the same posts, dead letters and skips as the item-by-item path."""
    from functools import partial

    from postkit import DECODE_EDITS, FINISH_EDITS, canonical_lines

    from tagpulse import hostile

    latest = decode._latest_allowed()
    item_by_item = partial(decode.decode_record, latest_allowed=latest)
    stream = hostile.hostile_stream(bad=300, valid=3000, seed=3)
    messages = [m.value for m in stream.messages]
    for seed, edits in enumerate(([], FINISH_EDITS, DECODE_EDITS)):
        lines = canonical_lines(seed, edits)
        messages += [b"[" + b",".join(lines[i:i + 40]) + b"]" for i in range(0, len(lines), 40)]
        messages += [line for line in lines[:30]]   # single-post messages from other producers
    fast = 0
    for value in messages:
        assert decode.decode_value(value, "raw/0/7") == decode.decode_value(value, "raw/0/7", item_by_item)
        fast += decode._decode_wire_message(value, latest) is not None
    assert fast >= 100   # the fast path was really taken
    assert fast < len(messages) - 100   # and really refused odd messages


def test_stage1_keeps_bulk_decoded_posts_as_structs_that_encode_as_the_canonical_post():
    """Stage 1 builds no dict for a post of a clean message; the worker encodes its unique posts
    with msgspec, which must give the JSON of the canonical post dict."""
    import msgspec

    from schemas.post import WirePost
    from streams.app import _encode_posts
    from streams.partition_tasks import pack_json_arrays

    clean = [good_post(i, text="tschüss \u2028 \"quoted\" </script>") for i in range(3)]
    state = DedupWindowState(0, ((60, 60),), 10, 7 * 86400)
    result = state.process([(0, orjson.dumps(clean)), (1, orjson.dumps(good_post(9, lang=None)))], "raw")
    assert [type(p) for p in result.unique_posts] == [WirePost] * 3 + [dict]
    dicts = result.unique_post_dicts()
    assert dicts == decode.decode_value(orjson.dumps(clean), "m")[0] + [result.unique_posts[3]]
    encoded = pack_json_arrays(result.unique_posts, encode=_encode_posts)
    assert [post for chunk in encoded for post in orjson.loads(chunk)] == dicts
    assert msgspec.json.decode(encoded[0]) == orjson.loads(orjson.dumps(dicts))
