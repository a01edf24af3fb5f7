"""The benchmark at smoke size on the real broker: it runs end to end and its numbers add up.

No timing assertions: this checks that `python -m bench.run --small` works and that
the pipeline it measured stored every unique post, nothing late, and as many
window rows as the plain-Python oracle computes for the same posts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]


def test_bench_small_runs_and_counts_add_up(stack_settings, tmp_path):
    env = dict(os.environ)
    env["TAGPULSE_KAFKA"] = stack_settings.kafka_bootstrap
    env["TAGPULSE_BENCH_WORK"] = str(tmp_path / "work")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.run", "--small", "--skip", "latency,e2e1",
                           "--anchor-budget", "10", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, timeout=280)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    [path] = list(tmp_path.glob("*-small.json"))
    result = json.loads(path.read_text())

    data = result["data"]
    assert result["raw_consume"]["messages"] == data["messages"]
    e2e = result["e2e_2_workers"]
    assert e2e["unique_posts_in_clickhouse"] == data["unique_posts"]
    assert e2e["late_events"] == 0
    assert e2e["window_rows_in_clickhouse"] == expected_window_rows()
    # The anchors are optional dependencies: each either measured something or says why not.
    for kind in ("faust", "quix"):
        anchor = result.get(f"anchor_{kind}", {})
        assert anchor.get("posts", 0) > 0 or "error" in anchor
    assert set(result["goals"]) and "ratios" in result


@pytest.mark.timeout(480)
def test_bench_latency_part_replays_its_history_on_time(stack_settings, tmp_path):
    """The latency part at smoke size: its history must reach the windows as panes, not as late
    posts (the harness stops if the replay left late events), and the live part closes 1-minute
    windows that the restarted worker goes on from."""
    env = dict(os.environ)
    env["TAGPULSE_KAFKA"] = stack_settings.kafka_bootstrap
    env["TAGPULSE_BENCH_WORK"] = str(tmp_path / "work")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.run", "--small", "--latency-rate", "2000",
                           "--latency-history", "180", "--skip", "raw,e2e1,e2e2,anchors,producer",
                           "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, timeout=460)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    [path] = list(tmp_path.glob("*-small.json"))
    latency = json.loads(path.read_text())["latency"]
    assert latency["history"]["posts"] == 180 * 250 and latency["history"]["late_events"] == 0
    assert latency["windows"] >= 1 and latency["rows"] > 0
    assert latency["restart_after_live"]["kill9_to_processing_s"] > 0


def expected_window_rows() -> int:
    """Rows the oracle computes for the same generated posts (the generator is deterministic)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # bench/ is not an installed package
    from bench.generate import synthetic_arrivals
    from tagpulse.core.stage1 import epoch_seconds
    from tagpulse.core.windows import oracle_windows

    arrivals, _ = synthetic_arrivals(20_000)
    unique = {(p["platform"], p["post_id"]): p for p in arrivals}
    specs = ((60, 60), (3600, 300), (86400, 3600))
    return len(oracle_windows(((epoch_seconds(p["created_at"]), p) for p in unique.values()), specs))


@pytest.mark.timeout(120)
def test_profile_core_runs_the_whole_pure_path_and_its_rows_add_up():
    """`python -m bench.profile_core` (both stages, the detector and the outputs, no Kafka) at smoke size."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.profile_core", "--posts", "20000"],
                          cwd=REPO, env=env, capture_output=True, timeout=110)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    assert result["rows"] == expected_window_rows()
    assert result["spike_keys"] > 0 and result["stage2_s"] > 0 and result["outputs_s"] > 0


def test_live_close_runs_warmed_and_cold_with_the_same_rows(tmp_path):
    """`python -m bench.live_close` at smoke size: 13 minutes of event time, two 5-minute boundaries
    that close 1 h windows, a backlog of late posts held as window shares; it exits non-zero if
    warming changed any row."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.live_close", "--posts", "40000", "--rate", "50",
                           "--backlog", "3000", "--backlog-at", "300", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, timeout=110)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    [written] = tmp_path.glob("*-live-close.json")
    result = json.loads(written.read_text())
    assert result["cold"]["3600"]["steps"] == result["warm"]["3600"]["steps"] == 2
    assert result["warm"]["calls"]["count"] > 0 and result["cold"]["60"]["rows_median"] > 0
    assert result["warm"]["window_shares_max"] == result["cold"]["window_shares_max"] > 0


def test_the_latency_goal_takes_the_slowest_window_size():
    """Every final row counts for the latency goal, not only the 1-minute ones (pure: no broker)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.run import latency_by_size, worst_p99

    grace = 10
    rows = [(60, 120, 120 + grace + 0.5)] * 99 + [(60, 180, 180 + grace + 0.9)] \
        + [(3600, 3600, 3600 + grace + 2.5), (86400, 86400, 86400 + grace + 9.0)]
    by_size = latency_by_size(rows, last_end=3600, grace=grace)
    assert set(by_size) == {"60", "3600"}  # the day window ended after the last counted end
    assert by_size["60"]["rows"] == 100 and by_size["60"]["windows"] == 2
    assert by_size["60"]["p50_s_after_end_plus_grace"] == 0.5
    assert by_size["60"]["max_s_after_end_plus_grace"] == 0.9
    assert by_size["3600"]["p99_s_after_end_plus_grace"] == 2.5
    assert worst_p99({"p99_s_after_end_plus_grace": 0.9, "by_window_size": by_size}) == 2.5
    assert worst_p99({"p99_s_after_end_plus_grace": 0.9}) == 0.9  # a result from before per-size figures
    assert worst_p99({}) is None


def test_gil_commit_times_every_condition_on_the_broker(stack_settings, tmp_path):
    """`python -m bench.gil_commit` at smoke size: real transactions alone and beside a busy thread."""
    env = dict(os.environ)
    env["TAGPULSE_KAFKA"] = stack_settings.kafka_bootstrap
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.gil_commit", "--rounds", "1", "--per-round", "3",
                           "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, timeout=110)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    [written] = tmp_path.glob("*-gil-commit.json")
    conditions = json.loads(written.read_text())["conditions"]
    assert set(conditions) == {"alone", "busy thread, switch 5 ms", "busy thread, switch 1 ms",
                               "busy thread, switch 0.5 ms"}
    assert all(c["transactions"] == 3 and c["median_s"] > 0 for c in conditions.values())
    assert conditions["busy thread, switch 5 ms"]["thread_work_vs_default_switch"] == 1.0


def test_tag_export_times_an_export_per_tag_count():
    """`python -m bench.tag_export` at smoke size (pure: no broker)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.tag_export", "--tags", "500", "2000", "--repeat", "2"],
                          cwd=REPO, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    exports = json.loads(done.stdout)["exports"]
    assert set(exports) == {"500", "2000"} and all(e["median_s"] > 0 for e in exports.values())


def test_restore_reads_and_applies_the_changelogs_the_demo_left(demo_run, demo_namespace, stack_settings,
                                                               monkeypatch, caplog):
    """`python -m bench.restore` on the changelogs of the demo's real pipeline: every partition of both
    stages restored from the records the plain read counts, to the offsets the worker committed; and a
    worker's restore log line is the one `bench.run` parses for its restart figures."""
    env = dict(os.environ)
    env["TAGPULSE_KAFKA"] = stack_settings.kafka_bootstrap
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "bench.restore", "--namespace", demo_namespace],
                          cwd=REPO, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
    stages = json.loads(done.stdout)["stages"]
    partitions = stack_settings.partitions
    for stage in ("dedup-window", "merge"):
        rows = stages[stage]["partitions"]
        assert [r["partition"] for r in rows] == list(range(partitions))
        assert all(r["records"] == r["baseline_records"] and r["mb"] == r["baseline_mb"] for r in rows)
        assert sum(r["records"] for r in rows) > 0

    import asyncio
    import logging

    from bench import kafka_io
    from bench.restore import make_state
    from bench.run import _RESTORED
    from streams.partition_tasks import PartitionTask
    from tagpulse import config

    monkeypatch.setenv("TAGPULSE_NAMESPACE", demo_namespace)
    settings = config.load()
    # Each restored state is where the worker left its partition: the next source offset it
    # would read is the one its last transaction committed for the consumer group.
    for stage, topic in (("dedup-window", settings.topics.raw), ("merge", settings.topics.partial_windows)):
        committed = asyncio.run(kafka_io.committed(settings.kafka_bootstrap, settings.app_id, topic))
        restored = {r["partition"]: r["offset"] + 1 for r in stages[stage]["partitions"] if r["offset"] >= 0}
        assert restored and restored == committed, (stage, restored, committed)

    async def reopen():
        task = await PartitionTask.open(bootstrap=settings.kafka_bootstrap, app_id=settings.app_id,
                                        stage="merge", source_topic=settings.topics.partial_windows, partition=0,
                                        changelog_topic=settings.topics.stage2_state,
                                        state=make_state("merge", 0, settings))
        await task.close()

    with caplog.at_level(logging.INFO, logger="tagpulse.streams"):
        asyncio.run(reopen())
    [line] = [r.getMessage() for r in caplog.records if "restored from" in r.getMessage()]
    [(stage, records, _mb, _seconds, _applying)] = _RESTORED.findall(line.encode())
    assert stage == b"merge" and int(records) == stages["merge"]["partitions"][0]["records"]
