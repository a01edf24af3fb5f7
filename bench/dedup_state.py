"""Dedup state at scale: memory of N keys, and a changelog holding them for the restart test.

    python -m bench.dedup_state memory --keys 10000000
        Fresh process: adds N keys through the stream's own path (DedupIndex.add after a
        bulk probe, compaction between batches, a changelog delta per batch) and prints
        JSON: RSS before/after, index bytes, changelog bytes.

    python -m bench.dedup_state changelog --keys N --namespace NS
        Writes stage-1 changelog records holding N keys (spread over the partitions) with
        the real DedupWindowState.delta() encoding and the real transactional
        PartitionTask.commit, so a worker started on NS restores them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import numpy as np
import orjson

from tagpulse.pipeline import peak_rss_mb

BATCH = 100_000  # keys per stream batch (≈ one worker transaction at full speed)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _keys(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(1 << 63), (1 << 63) - 1, size=n, dtype=np.int64)


def memory(n: int) -> dict:
    from tagpulse.core.stage1 import DedupWindowState

    state = DedupWindowState(0, ((60, 60),), 10, 7 * 86400, decode=lambda item: [item])
    base = rss_mb()
    keys = _keys(n, 1)
    t0 = 1_748_736_000
    changelog_bytes = 0
    start = time.perf_counter()
    dedup = state.dedup
    for i in range(0, n, BATCH):
        chunk = keys[i:i + BATCH].tolist()
        known = dedup.probe(chunk)
        t = t0 + i // 1000
        for key, in_arrays in zip(chunk, known):
            if dedup.add(key, t, in_arrays):
                state._new_keys.append(key)
                state._new_times.append(t)
        dedup.compact()
        changelog_bytes += len(state.delta())
    seconds = time.perf_counter() - start
    del keys
    dedup.compact(force=True)
    probe = _keys(100_000, 1)[:50_000].tolist() + _keys(50_000, 2).tolist()
    p0 = time.perf_counter()
    hits = sum(dedup.probe(probe))
    probe_s = time.perf_counter() - p0
    return {"keys": len(dedup), "index_mb": round(dedup.nbytes() / 1e6, 1),
            "rss_mb_before": round(base, 1), "rss_mb_after": round(rss_mb(), 1),
            "state_rss_mb": round(rss_mb() - base, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "changelog_mb": round(changelog_bytes / 1e6, 1), "add_seconds": round(seconds, 2),
            "adds_per_s": round(n / seconds), "probe_100k_ms": round(probe_s * 1000, 1), "probe_hits": hits}


async def write_changelog(n: int, bootstrap: str, app_id: str, topic: str, source_topic: str,
                          partitions: int) -> dict:
    from streams.partition_tasks import PartitionTask
    from tagpulse.core.stage1 import DedupWindowState

    keys = _keys(n, 3)
    per = -(-n // partitions)
    written = 0
    start = time.perf_counter()
    for p in range(partitions):
        state = DedupWindowState(p, ((60, 60), (3600, 300), (86400, 3600)), 10, 7 * 86400)
        task = await PartitionTask.open(bootstrap=bootstrap, app_id=app_id, stage="dedup-window",
                                        source_topic=source_topic, partition=p, changelog_topic=topic, state=state)
        try:
            part = keys[p * per:(p + 1) * per]
            t0 = int(time.time()) - 3600
            for i in range(0, len(part), BATCH):
                state._new_keys = part[i:i + BATCH].tolist()
                state._new_times = [t0 + i // 1000] * len(state._new_keys)
                delta = state.delta()
                written += len(delta)
                await task.commit([], delta, None)
        finally:
            await task.close()
    return {"keys": n, "changelog_mb": round(written / 1e6, 1), "write_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["memory", "changelog"])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--bootstrap")
    parser.add_argument("--app-id")
    parser.add_argument("--topic")
    parser.add_argument("--source-topic")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    if args.mode == "memory":
        out = memory(args.keys)
    else:
        out = asyncio.run(write_changelog(args.keys, args.bootstrap, args.app_id, args.topic, args.source_topic,
                                          args.partitions))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
