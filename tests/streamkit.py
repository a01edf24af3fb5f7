"""Helpers for tests that run the real worker against the real broker."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_partition(post: dict, partitions: int) -> int:
    return (murmur2(f"{post['platform']}:{post['post_id']}".encode()) & 0x7FFFFFFF) % partitions


async def produce_posts(bootstrap: str, topic: str, arrivals: list[dict], partitions: int,
                        batch: int = 200, singles_every: int = 0) -> None:
    """Send posts the way our producer does (batches routed by post key); every
    `singles_every`-th post goes alone, keyed, through Kafka's default partitioner
    — the path of a foreign producer."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                max_request_size=2_000_000)
    await producer.start()
    try:
        buffers: dict[int, list[dict]] = {}
        for i, post in enumerate(arrivals):
            if singles_every and i % singles_every == 0:
                # Flush first: arrival order must stay the replay's order (disorder within grace).
                for p, buf in buffers.items():
                    if buf:
                        await producer.send(topic, orjson.dumps(buf), partition=p)
                buffers = {}
                await producer.send(topic, orjson.dumps(post), key=f"{post['platform']}:{post['post_id']}".encode())
                continue
            p = post_partition(post, partitions)
            buf = buffers.setdefault(p, [])
            buf.append(post)
            if len(buf) >= batch:
                await producer.send(topic, orjson.dumps(buf), partition=p)
                buffers[p] = []
        for p, buf in buffers.items():
            if buf:
                await producer.send(topic, orjson.dumps(buf), partition=p)
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, *, quiet_s: float = 6.0, max_s: float = 240.0,
                   until=None, rows_of=orjson.loads) -> list:
    """Read committed JSON-array messages until nothing new arrives for quiet_s (or until(rows) is true).

    rows_of turns one message into its rows (tagpulse.core.windows.window_rows_of for the windows topic)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="earliest", group_id=None, enable_auto_commit=False)
    await consumer.start()
    rows: list = []
    start = last_new = time.monotonic()
    try:
        while time.monotonic() - start < max_s:
            batch = await consumer.getmany(timeout_ms=500)
            got = False
            for messages in batch.values():
                for m in messages:
                    rows.extend(rows_of(m.value))
                    got = True
            now = time.monotonic()
            if got:
                last_new = now
            if until is not None and until(rows) and now - last_new > 1.0:
                break
            if until is None and now - last_new > quiet_s:
                break
    finally:
        await consumer.stop()
    return rows


class Worker:
    """One `faust -A streams.app worker` process with the test's environment."""

    def __init__(self, env: dict, log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "streams.app", "worker", "--without-web", "-l", "info"],
                                     cwd=REPO, env=self.env, stdout=log, stderr=log, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_env(settings, namespace: str, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "TAGPULSE_NAMESPACE": namespace,
        "TAGPULSE_KAFKA": settings.kafka_bootstrap,
        "TAGPULSE_IDLE_TIMEOUT": "2",
        "TAGPULSE_WORKER_METRICS_PORT": str(free_port()),
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(coro):
    return asyncio.run(coro)


async def produce_aborted(bootstrap: str, topic: str, partition: int, value: bytes) -> None:
    """Write `value` in a transaction that is aborted: readers must never see it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"aborted-{time.time_ns()}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await (await producer.send(topic, value, partition=partition))
        await producer.abort_transaction()
    finally:
        await producer.stop()
