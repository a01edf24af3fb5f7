"""The real worker on the real broker: windows equal the oracle, also across a kill -9."""
from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest

import orjson

from streamkit import Worker, produce_aborted, produce_posts, read_all, run, worker_env
from streams.partition_tasks import tag_partition
from tagpulse.core.stage1 import epoch_seconds
from tagpulse.core.windows import oracle_windows, row_key, window_rows_of
from test_windows_core import SPECS, synthetic_stream

pytestmark = pytest.mark.integration


def expected_rows(posts):
    return oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)


def final_rows(rows):
    for row in rows:
        row.pop("closed_at")
    return sorted(rows, key=row_key)


def scraped_posts_in(tmp_path, target: str) -> float | None:
    """sum(tagpulse_posts_in_total) as a real Prometheus scraping the worker sees it (None without Prometheus)."""
    import promkit

    if promkit.PROMETHEUS is None:
        return None
    prometheus = promkit.start_prometheus(tmp_path / "prometheus", {"tagpulse-worker": [target]})
    try:
        promkit.wait_for_scrape(prometheus, "tagpulse-worker")
        exported = sum(float(line.split()[-1]) for line in urllib.request.urlopen(
            f"http://{target}/metrics", timeout=10).read().decode().splitlines()
            if line.startswith("tagpulse_posts_in_total{"))

        def read_back():
            result = promkit.query(prometheus, "sum(tagpulse_posts_in_total)")
            value = float(result[0]["value"][1]) if result else None
            return value if value == exported else None
        return promkit.wait_until(read_back, "Prometheus to hold the worker's posts_in counters")
    finally:
        prometheus.stop()


async def window_messages(bootstrap: str, topic: str) -> list[tuple[int, int, set[int], set[int]]]:
    """(partition, offset, window sizes, window ends) of every committed windows message."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        out = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in ends}
            if all(positions[tp] >= end for tp, end in ends.items()):
                break
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                for m in messages:
                    assert m.value.startswith(b'[["'), "the worker writes window rows as arrays"
                    rows = window_rows_of(m.value)
                    out.append((tp.partition, m.offset, {r["window_size"] for r in rows},
                                {r["window_end"] for r in rows}))
        return out
    finally:
        await consumer.stop()


def test_windows_equal_oracle_with_duplicates_and_disorder(namespace_settings, tmp_path):
    settings = namespace_settings
    posts, arrivals = synthetic_stream(n=6000, seed=11)
    expected = expected_rows(posts)
    env = worker_env(settings, settings.topics.namespace)
    # An aborted share (what a stage-1 batch killed mid-transaction leaves behind): the merge
    # stage must not count it, or a busy window gains 1,000 posts and an author.
    first = arrivals[0]
    tag, t = first["hashtags"][0], epoch_seconds(first["created_at"])
    share = [t - t % 60, tag, first["platform"], 1000, 0, 1, 0, {"aborted-author": 1}]
    run(produce_aborted(settings.kafka_bootstrap, settings.topics.partial_windows,
                        tag_partition(tag, settings.partitions),
                        orjson.dumps({"src": 0, "wm": None, "idle": False, "rows": [share]})))
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        run(produce_posts(settings.kafka_bootstrap, settings.topics.raw, arrivals, settings.partitions,
                          singles_every=97))
        rows = run(read_all(settings.kafka_bootstrap, settings.topics.windows, rows_of=window_rows_of,
                            until=lambda r: len(r) >= len(expected)))
        messages = run(window_messages(settings.kafka_bootstrap, settings.topics.windows))
        uniques = run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, quiet_s=2))
        late = run(read_all(settings.kafka_bootstrap, settings.topics.late, quiet_s=1))
        exposition = urllib.request.urlopen(
            f"http://127.0.0.1:{env['TAGPULSE_WORKER_METRICS_PORT']}/metrics", timeout=10).read().decode()
        scraped = scraped_posts_in(tmp_path, f"127.0.0.1:{env['TAGPULSE_WORKER_METRICS_PORT']}")
    finally:
        worker.stop()
    # The worker's own counters saw every delivery; per-tag gauges carry bounded tag labels.
    delivered = sum(float(line.split()[-1]) for line in exposition.splitlines()
                    if line.startswith("tagpulse_posts_in_total{"))
    assert delivered >= len(arrivals)
    tag_labels = {line.split('"')[1] for line in exposition.splitlines()
                  if line.startswith("tagpulse_tag_posts_per_minute{")}
    assert tag_labels and tag_labels <= {"einbuchfuerkai", "buchtipp", "lesen", "kafka", "montag", "_other"}
    # The real Prometheus scraped the running worker and reads back what it exported.
    if scraped is not None:
        assert scraped == delivered
    assert late == []
    assert sorted(p["post_id"] for p in uniques) == sorted(p["post_id"] for p in posts)
    rows = final_rows(rows)
    assert len(rows) == len(expected)
    assert rows == expected
    # Each close step commits one window size, smallest first: no message mixes sizes, and a
    # boundary's 1-minute rows precede (in their partition) the longer windows ending with them.
    assert messages and all(len(sizes) == 1 for _p, _o, sizes, _e in messages)
    first_long: dict[tuple[int, int], int] = {}
    for partition, offset, sizes, ends in messages:
        if sizes != {60}:
            for end in ends:
                first_long.setdefault((partition, end), offset)
    shared = [(partition, offset, end) for partition, offset, sizes, ends in messages if sizes == {60}
              for end in ends if (partition, end) in first_long]
    assert shared, "the stream must have boundaries closing 1-minute and longer windows together"
    assert all(offset < first_long[(partition, end)] for partition, offset, end in shared)


def test_windows_exact_after_kill_minus_9_mid_replay(namespace_settings, tmp_path):
    settings = namespace_settings
    posts, arrivals = synthetic_stream(n=20000, seed=5)
    expected = expected_rows(posts)
    env = worker_env(settings, settings.topics.namespace)
    # Small agent batches: many transactions to land between, and a replay that cannot
    # finish before the test sees the first output however fast the worker is.
    env["TAGPULSE_TAKE_MESSAGES"] = "2"
    # Snapshots and changelog truncations every few batches, so the kill and the restore meet them.
    env["TAGPULSE_SNAPSHOT_MIN_BYTES"] = "30000"
    run(produce_posts(settings.kafka_bootstrap, settings.topics.raw, arrivals, settings.partitions, batch=50))
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        # Kill as soon as the worker has committed part of the replay.
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline and not seen:
            seen = run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, quiet_s=0.5, max_s=3))
        assert seen, "worker produced nothing within 120 s"
        assert len(seen) < len(posts), "replay finished before the kill; make it larger"
        worker.kill()
        worker = Worker(env, tmp_path / "worker.log").start()
        rows = run(read_all(settings.kafka_bootstrap, settings.topics.windows, rows_of=window_rows_of,
                            until=lambda r: len(r) >= len(expected)))
        uniques = run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, quiet_s=2))
    finally:
        worker.stop()
    assert len(uniques) == len(posts)
    rows = final_rows(rows)
    assert len(rows) == len(expected)
    assert rows == expected
    assert "changelog truncated" in (tmp_path / "worker.log").read_text()


def test_windows_exact_when_a_second_worker_joins_mid_replay(namespace_settings, tmp_path):
    """A rebalance moves half the partitions while the first worker has their records buffered."""
    settings = namespace_settings
    posts, arrivals = synthetic_stream(n=20000, seed=8)
    expected = expected_rows(posts)
    run(produce_posts(settings.kafka_bootstrap, settings.topics.raw, arrivals, settings.partitions, batch=50))
    env = worker_env(settings, settings.topics.namespace)
    env["TAGPULSE_TAKE_MESSAGES"] = "2"  # see the kill -9 test
    env["TAGPULSE_SNAPSHOT_MIN_BYTES"] = "30000"  # a new owner may restore while the old one truncates
    first = Worker(env, tmp_path / "worker-1.log").start()
    second = None
    try:
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline and not seen:
            seen = run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, quiet_s=0.5, max_s=3))
        assert seen and len(seen) < len(posts)
        second = Worker(env, tmp_path / "worker-2.log").start()
        rows = run(read_all(settings.kafka_bootstrap, settings.topics.windows, rows_of=window_rows_of,
                            until=lambda r: len(r) >= len(expected)))
        uniques = run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, quiet_s=2))
    finally:
        for worker in (first, second):
            if worker:
                worker.stop()
    assert sorted(p["post_id"] for p in uniques) == sorted(p["post_id"] for p in posts)
    assert final_rows(rows) == expected
    assert "changelog truncated" in (tmp_path / "worker-1.log").read_text() + (tmp_path / "worker-2.log").read_text()


def test_live_panes_shipped_early_and_at_their_close_give_the_oracles_rows(namespace_settings, tmp_path):
    """Live posts (event time = now): stage 1 ships a pane's shares ahead of its close
    (TAGPULSE_EARLY_SHIP) and the rest at the close; stage 2's rows are still the oracle's."""
    from test_windows_core import make_post

    settings = namespace_settings
    specs = ((10, 10),)  # 10-second windows: a pane closes within seconds
    env = worker_env(settings, settings.topics.namespace, TAGPULSE_WINDOWS="10s", TAGPULSE_GRACE="5s",
                     TAGPULSE_EARLY_SHIP="9")
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        run(produce_posts(settings.kafka_bootstrap, settings.topics.raw,
                          [make_post(0, int(time.time()) - 3600, ["warmup"], 0, 1)], settings.partitions))
        run(read_all(settings.kafka_bootstrap, settings.topics.unique_posts, until=lambda r: len(r) >= 1))
        # A pane of 10 s goes early from 1 s after its start (9 s before its end) and closes 5 s after
        # its end: the first posts go early, the second ones with the close.
        while not 1 <= time.time() % 10 < 4:
            time.sleep(0.2)
        t = int(time.time())
        first = [make_post(i, t, ["live", f"t{i % 3}"], i % 7, 100 + i) for i in range(1, 60)]
        run(produce_posts(settings.kafka_bootstrap, settings.topics.raw, first, settings.partitions))
        early = run(read_all(settings.kafka_bootstrap, settings.topics.stage1_state, rows_of=lambda v: [v[:4]],
                             until=lambda r: b"TPD4" in r, max_s=30))
        assert b"TPD4" in early, "stage 1 recorded no pane shipped early"
        second = [make_post(i, t, ["live", f"t{i % 3}"], i % 11, 50 + i) for i in range(60, 90)]
        run(produce_posts(settings.kafka_bootstrap, settings.topics.raw, second + first[:5], settings.partitions))
        posts = first + second
        expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), specs)
        rows = run(read_all(settings.kafka_bootstrap, settings.topics.windows, rows_of=window_rows_of, max_s=60,
                            until=lambda r: sum(row["window_start"] >= t - 20 for row in r) >= len(expected)))
    finally:
        worker.stop()
    live = final_rows([row for row in rows if row["window_start"] >= t - 20])
    assert live == expected
