"""Where a partition's restore goes: reading its changelog against applying it to the state.

    python -m bench.restore --namespace NS [--stage dedup-window|merge|both] [--rounds N]

Reads the changelog topics a pipeline namespace left on the broker (e.g. a latency run of
`bench.run --keep`, whose state holds an hour of history and minutes of live posts) and, for
every partition of each stage, alternately in this one process:
- baseline: the same consumer reading the changelog and reassembling its records, nothing applied;
- restore: `restore_changelog` into a fresh state, as a worker's PartitionTask.open does, timing
  the part spent in apply_delta; then the state's first use (stage 1: the dedup index sorted
  once, the posts of the panes still open folded; stage 2: the long windows' heads merged ahead,
  `warm`), which a worker pays before its first close.
The worker's garbage collector settings apply (streams.partition_tasks.tune_gc).
Prints JSON: per stage and partition seconds and MB, and the ratio restore ÷ baseline. Only
reads: no producer is started, so nothing of a running pipeline is fenced.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import orjson

from streams.partition_tasks import restore_changelog, tune_gc as tune_worker_gc
from tagpulse.pipeline import peak_rss_mb

STAGES = ("dedup-window", "merge")


def _settings(namespace: str, bootstrap: str):
    os.environ.update({"TAGPULSE_NAMESPACE": namespace, "TAGPULSE_KAFKA": bootstrap})
    from tagpulse import config
    return config.load()


def make_state(stage: str, partition: int, settings):
    """The state a worker opens for the partition (streams/app.py's stage1 / stage2)."""
    if stage == "dedup-window":
        from tagpulse.core.stage1 import DedupWindowState
        return DedupWindowState(partition, settings.windows, settings.grace_s, settings.dedup_ttl_s)
    from tagpulse.core.merge_spikes import MergeWithSpikes
    return MergeWithSpikes(partition, upstream_partitions=settings.partitions, specs=settings.windows)


def first_use(stage: str, state) -> None:
    if stage == "dedup-window":
        len(state.dedup)  # sorts what the restore appended
        len(state.panes)  # folds what the restore left to fold in open panes
    else:
        while state.warm_due():
            state.warm()


def state_size(stage: str, state) -> dict:
    if stage == "dedup-window":
        return {"offset": state.offset, "dedup_keys": len(state.dedup), "open_panes": len(state.panes)}
    return {"offset": state.offset, "panes": len(state.panes), "window_shares": len(state.window_shares)}


async def read_only(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """restore_changelog's reading without the state: (records, bytes)."""
    sizes: list[int] = []
    records = await restore_changelog(bootstrap, topic, partition, lambda value: sizes.append(len(value)))
    return records, sum(sizes)


async def restore(bootstrap: str, topic: str, stage: str, partition: int, settings) -> dict:
    state = make_state(stage, partition, settings)
    applying = 0.0
    size = 0

    def apply(record: bytes) -> None:
        nonlocal applying, size
        began = time.perf_counter()
        size += len(record)
        state.apply_delta(record)
        applying += time.perf_counter() - began

    began = time.perf_counter()
    cpu = time.process_time()
    records = await restore_changelog(bootstrap, topic, partition, apply)
    read = time.perf_counter()
    first_use(stage, state)
    done = time.perf_counter()
    return {"records": records, "mb": round(size / 1e6, 1), "restore_s": round(read - began, 2),
            "applying_s": round(applying, 2), "first_use_s": round(done - read, 2),
            "cpu_s": round(time.process_time() - cpu, 2), **state_size(stage, state)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", required=True, help="the pipeline namespace whose changelogs to read")
    parser.add_argument("--kafka", default=os.environ.get("TAGPULSE_KAFKA", "127.0.0.1:9092"))
    parser.add_argument("--stage", choices=(*STAGES, "both"), default="both")
    parser.add_argument("--rounds", type=int, default=1, help="baseline/restore pairs per partition")
    args = parser.parse_args(argv)
    settings = _settings(args.namespace, args.kafka)
    tune_worker_gc()  # a restore runs in the worker, after its start-up
    topics = {"dedup-window": settings.topics.stage1_state, "merge": settings.topics.stage2_state}
    out: dict = {"namespace": args.namespace, "stages": {}}
    for stage in (STAGES if args.stage == "both" else (args.stage,)):
        rows = []
        for partition in range(settings.partitions):
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                count, size = asyncio.run(read_only(args.kafka, topics[stage], partition))
                baseline_s = time.perf_counter() - t0
                row = asyncio.run(restore(args.kafka, topics[stage], stage, partition, settings))
                row.update(partition=partition, baseline_records=count, baseline_mb=round(size / 1e6, 1),
                           baseline_s=round(baseline_s, 2),
                           ratio=round((row["restore_s"] + row["first_use_s"]) / baseline_s, 2) if baseline_s else None)
                rows.append(row)
                print(orjson.dumps({"stage": stage, **row}).decode(), file=sys.stderr)
        total = {k: round(sum(r[k] for r in rows), 2)
                 for k in ("mb", "baseline_s", "restore_s", "applying_s", "first_use_s", "cpu_s")}
        out["stages"][stage] = {"partitions": rows, "total": total}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
