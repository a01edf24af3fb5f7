"""State written by an older tagpulse is refused with a clear message, never half-continued.

The first landing kept window partials in stage 2's changelog and panes for whole
windows in stage 1's; continuing from them would count windows twice. A worker that
meets such a changelog exits with 78 and says what to do; `tagpulse worker` does not
restart it; `tagpulse stack reset --yes` wipes the local stack's data.
"""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from tagpulse.core.stage1 import DedupWindowState
from tagpulse.core.stage2 import MergeState
from tagpulse.core.windows import IncompatibleState

SPECS = ((60, 60), (3600, 300), (86400, 3600))
T0 = 1432080000  # 2015-05-20T00:00:00Z
OLD_STAGE1 = b"TPD1" + (2).to_bytes(4, "little") + b"{}"
OLD_STAGE2 = orjson.dumps({"o": 5, "u": {"0": [100, False]}, "f": None,
                           "a": [[60, 0, "tag", "twitter", 1, 0, 5, 0, {"a": 5}]], "x": []})


def test_stage1_refuses_a_changelog_of_the_older_format():
    state = DedupWindowState(0, SPECS, 10, 86400)
    with pytest.raises(IncompatibleState, match="stack reset"):
        state.apply_delta(OLD_STAGE1)


def test_stage2_refuses_an_unversioned_changelog_and_restores_its_own():
    with pytest.raises(IncompatibleState, match="version 1"):
        MergeState(0, 1, SPECS).apply_delta(OLD_STAGE2)
    live = MergeState(0, 1, SPECS)
    live.process([(0, orjson.dumps({"src": 0, "wm": 50, "idle": False,
                                    "rows": [[0, "tag", "twitter", 1, 0, 5, 0, {"a": 5}]]}))])
    restored = MergeState(0, 1, SPECS)
    restored.apply_delta(live.delta())
    assert restored.panes.keys() == live.panes.keys() and restored.offset == 0


def test_stage2_continues_a_version_2_changelog_with_its_one_closed_to_time_for_every_size():
    merge = MergeState(0, 1, SPECS)
    merge.apply_delta(orjson.dumps({"v": 2, "o": 4, "u": {"0": [T0 + 70, False]}, "f": T0 + 60,
                                    "a": [[T0 + 60, "a", "twitter", 1, 0, 3, 0, {"x": 3}]], "w": [], "x": []}))
    assert merge.closed == {60: T0 + 60, 3600: T0 + 60, 86400: T0 + 60} and merge.offset == 4
    out = merge.process([(5, orjson.dumps({"src": 0, "wm": T0 + 130, "idle": False, "rows": []}))])
    assert [(r["window_size"], r["window_start"]) for r in out.row_dicts()] == [(60, T0 + 60)]


def test_stage1_changelog_holds_the_posts_of_a_batch_not_the_panes_they_touched():
    from test_windows_core import make_post, passthrough

    live = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    busy = [make_post(i, T0 + i % 50, ["busy"], i, 100 + i) for i in range(1000)]
    live.process([(0, orjson.dumps(busy))])
    first = live.delta()
    live.process([(1, orjson.dumps(make_post(1000, T0 + 51, ["busy"], 1000, 7)))])
    second = live.delta()
    # One post more in a pane of 1000 authors: the delta carries that post, not the pane.
    assert len(second) < 300 < len(first) // 10
    restored = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    for d in (first, second):
        restored.apply_delta(d)
    assert restored.panes == live.panes and restored.offset == 1 and len(restored.dedup) == 1001


def test_a_stage1_restore_gives_the_open_panes_back_as_they_were_and_in_their_order():
    """A restore folds a delta's posts only when the panes are first used (most panes ship in a later
    record first), yet the panes come back as they were: in the order their first posts came (the
    order early shipping and snapshots follow), a pane shipped early emptied and refilled."""
    from tagpulse.core.stage1 import Stage1Result
    from test_windows_core import make_post, passthrough

    live = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    # A post of the next minute before one of this minute (within grace) ...
    live.process([(0, orjson.dumps([make_post(0, T0 + 65, ["b"], 1, 10), make_post(1, T0 + 59, ["a"], 2, 20)]))])
    records = [live.delta()]
    # ... then this minute's pane shipped early and one more post in it.
    live.ship_early([T0], Stage1Result())
    live.process([(1, orjson.dumps(make_post(2, T0 + 58, ["a"], 3, 30)))])
    records.append(live.delta())
    restored = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    for record in records:
        restored.apply_delta(record)
    assert list(restored.panes) == list(live.panes) == [T0 + 60, T0]
    assert restored.panes[T0][("a", "twitter")].posts == 1
    assert restored.snapshot() == live.snapshot()


def test_stage1_continues_a_changelog_of_pane_snapshots():
    """TPD2 records (each touched pane whole) followed by TPD3 ones (the folded posts)."""
    import struct

    from test_windows_core import make_post, passthrough

    live = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    live.process([(0, orjson.dumps([make_post(i, T0 + i, ["a", "b"], i % 3, 10 * i) for i in range(6)]))])
    live.delta()
    head = orjson.dumps({"o": 0, "me": live.max_event, "wm": live.watermark, "idle": False, "x": [], "e": None,
                         "p": [[ps, tag, platform, reach.to_list()] for ps, pane in live.panes.items()
                               for (tag, platform), reach in pane.items()]})
    snapshot = struct.pack("<4sI", b"TPD2", len(head)) + head
    live.process([(1, orjson.dumps([make_post(9, T0 + 20, ["a"], 1, 99)]))])
    restored = DedupWindowState(0, SPECS, 10, 86400, decode=passthrough)
    restored.apply_delta(snapshot)
    restored.apply_delta(live.delta())
    assert restored.panes == live.panes and restored.offset == 1


@pytest.mark.integration
def test_the_worker_stops_with_78_and_says_why_instead_of_restarting(namespace_settings, tmp_path):
    from streamkit import REPO, produce_posts, run, worker_env
    from test_windows_core import make_post

    from aiokafka import AIOKafkaProducer

    settings = namespace_settings

    async def old_changelog():
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            for partition in range(settings.partitions):
                await producer.send_and_wait(settings.topics.stage1_state, OLD_STAGE1, partition=partition)
        finally:
            await producer.stop()

    run(old_changelog())
    run(produce_posts(settings.kafka_bootstrap, settings.topics.raw,
                      [make_post(i, 1432080000 + i, ["a"], i, 10) for i in range(20)], settings.partitions))
    env = worker_env(settings, settings.topics.namespace)
    env.pop("TAGPULSE_WORKER_NO_RESTART", None)
    done = subprocess.run([sys.executable, "-m", "tagpulse.cli", "worker", "--logfile", str(tmp_path / "w.log")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 78
    assert "not restarting" in done.stderr
    log = (tmp_path / "w.log").read_text(errors="replace")
    assert "older tagpulse" in log and "tagpulse stack reset --yes" in log


def test_stack_reset_needs_yes_and_deletes_the_home_data_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for path in (home / "data" / "kafka" / "x", home / "clickhouse" / "store" / "y", home / "faust-data" / "z"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (home / "aliases.json").write_text("{}")
    monkeypatch.setenv("TAGPULSE_HOME", str(home))
    monkeypatch.delenv("TAGPULSE_CLICKHOUSE", raising=False)
    env = dict(os.environ)
    refused = subprocess.run([sys.executable, "-m", "tagpulse.cli", "stack", "reset"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and (home / "data" / "kafka" / "x").exists()
    done = subprocess.run([sys.executable, "-m", "tagpulse.cli", "stack", "reset", "--yes"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (home / "data").exists() and not (home / "clickhouse").exists() and not (home / "faust-data").exists()
    assert (home / "aliases.json").exists()
