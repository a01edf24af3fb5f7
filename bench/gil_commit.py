"""A worker's Kafka transaction while a close step runs in a thread, by GIL switch interval.

    python -m bench.gil_commit [--rounds R] [--per-round N] [--out DIR]   (TAGPULSE_KAFKA: the broker)

At a boundary a worker's 1 h and day close steps run in threads (asyncio.to_thread) while the event
loop commits the previous step's transaction and the worker's other partition's. Each reply of the
broker wakes the loop, which must then take the GIL back from the step's thread: CPython makes it
wait a whole switch interval (5 ms by default) every time, and a transaction is a dozen such wake-ups
(AddPartitionsToTxn, Produce, AddOffsetsToTxn, TxnOffsetCommit, EndTxn, each with its futures).
This times the worker's transaction shape (window-row messages, a changelog record, the source
offset) on the real broker: alone, and with a CPU-bound thread at several switch intervals, in
alternating rounds. It also counts how much of the thread's work got done (its rate under each
interval against the default's): a shorter interval must not slow the steps themselves.
Writes bench/results/<timestamp>-gil-commit.json.

The worker keeps CPython's default: a 1 ms interval halved this transaction's time beside a busy
thread, but in the latency runs of 2026-12-03 (BENCHMARKS.md) boundaries were not earlier with it;
there the commits waited for the two cores, shared by both workers, the broker and the sink.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.partition_tasks import MAX_MESSAGE_BYTES, TXN_RETRY_BACKOFF_MS

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SWITCH_S = 0.005  # CPython's default (sys.getswitchinterval())
# One 1-minute close of a partition at 25k posts/s: ≈ 6.3k window rows in two messages, and its
# changelog delta.
ROW_MESSAGES = (600_000, 500_000)
DELTA_BYTES = 300_000


class BusyStep(threading.Thread):
    """Pure-Python work shaped like a close step (dict merges of small maps), counting its rounds."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        base = {f"author{i}": i for i in range(64)}
        while not self.stop.is_set():
            merged: dict[str, int] = {}
            for _ in range(50):
                for key, value in base.items():
                    merged[key] = merged.get(key, 0) + value
            self.rounds += 1


async def transactions(producer: AIOKafkaProducer, topic: str, n: int, offset: int) -> list[float]:
    payloads = [os.urandom(size // 2).hex().encode() for size in ROW_MESSAGES]
    delta = os.urandom(DELTA_BYTES // 2).hex().encode()
    seconds = []
    for i in range(n):
        began = time.perf_counter()
        await producer.begin_transaction()
        futures = [await producer.send(topic, value, partition=0) for value in payloads]
        futures.append(await producer.send(topic, delta, partition=0))
        await producer.send_offsets_to_transaction({TopicPartition(topic, 0): offset + i}, "bench-gil-commit")
        await asyncio.gather(*futures)
        await producer.commit_transaction()
        seconds.append(time.perf_counter() - began)
        await asyncio.sleep(0.05)  # a worker's commits are apart, not back to back
    return seconds


async def main_async(ns) -> dict:
    bootstrap = os.environ.get("TAGPULSE_KAFKA", "127.0.0.1:9092")
    topic = f"bench-gil-commit-{int(time.time())}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn", acks="all",
                                enable_idempotence=True, linger_ms=5,
                                max_request_size=MAX_MESSAGE_BYTES + 100_000, retry_backoff_ms=TXN_RETRY_BACKOFF_MS)
    await producer.start()
    conditions = [("alone", None)] + [(f"busy thread, switch {s * 1000:g} ms", s) for s in ns.switch]
    samples: dict[str, list[float]] = {name: [] for name, _ in conditions}
    work: dict[str, list[float]] = {name: [] for name, s in conditions if s is not None}
    offset = 0
    try:
        await transactions(producer, topic, 5, offset)  # warm the connections and the coordinator
        offset += 5
        for _ in range(ns.rounds):
            for name, switch in conditions:
                busy = None
                if switch is not None:
                    sys.setswitchinterval(switch)
                    busy = BusyStep()
                    busy.start()
                began = time.perf_counter()
                samples[name] += await transactions(producer, topic, ns.per_round, offset)
                offset += ns.per_round
                if busy is not None:
                    busy.stop.set()
                    busy.join()
                    work[name].append(busy.rounds / (time.perf_counter() - began))
                sys.setswitchinterval(DEFAULT_SWITCH_S)
    finally:
        await producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()

    def quantile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    default = f"busy thread, switch {DEFAULT_SWITCH_S * 1000:g} ms"
    rows = {}
    for name, values in samples.items():
        row = {"transactions": len(values), "median_s": round(statistics.median(values), 4),
               "p90_s": round(quantile(values, 0.9), 4), "max_s": round(max(values), 4)}
        if name in work and default in work:
            row["thread_work_vs_default_switch"] = round(sum(work[name]) / sum(work[default]), 3)
        rows[name] = row
    alone = rows["alone"]["median_s"]
    for row in rows.values():
        row["median_vs_alone"] = round(row["median_s"] / alone, 2)
    return {"what": "one worker-shaped Kafka transaction (2 row messages, a changelog record, the source offset), "
                    "alone and with a CPU-bound thread, by sys.setswitchinterval; alternating rounds",
            "rounds": ns.rounds, "per_round": ns.per_round, "row_messages_bytes": list(ROW_MESSAGES),
            "delta_bytes": DELTA_BYTES, "conditions": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--switch", type=float, nargs="+", default=[0.005, 0.001, 0.0005],
                        help="switch intervals to compare, seconds (the first should be the default 0.005)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    ns = parser.parse_args(argv)
    result = asyncio.run(main_async(ns))
    for name, row in result["conditions"].items():
        print(f"{name:32s} {row}")
    ns.out.mkdir(parents=True, exist_ok=True)
    path = ns.out / f"{time.strftime('%Y%m%dT%H%M%S')}-gil-commit.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
