"""Run the pipeline's processes (workers, sink) and tell when every window is final.

Used by `tagpulse demo`, the integration and fault tests and the benchmark, so
they all start processes and judge completion the same way.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tagpulse.kafka_security import client_kwargs
from tagpulse.stack import pids_with_argument

REPO = Path(__file__).resolve().parents[1]


def sink_group(settings) -> str:
    return f"{settings.app_id}-sink"


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 of the process group: no cleanup, no goodbye."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Pipeline:
    """Workers and a sink for one settings/namespace; logs under log_dir."""

    settings: object
    log_dir: Path
    env: dict = field(default_factory=lambda: dict(os.environ))
    workers: list[Process] = field(default_factory=list)
    sink: Process | None = None

    def _env(self, **extra) -> dict:
        env = dict(self.env)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start_worker(self, index: int | None = None, loglevel: str = "info") -> Process:
        index = len(self.workers) if index is None else index
        proc = Process(f"worker-{index}",
                       [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "--without-web", "-l", loglevel],
                       self._env(TAGPULSE_WORKER_METRICS_PORT=self.settings.worker_metrics_port + index),
                       self.log_dir / f"worker-{index}.log").start()
        if index < len(self.workers):
            self.workers[index] = proc
        else:
            self.workers.append(proc)
        return proc

    def start_sink(self) -> Process:
        self.sink = Process("sink", [sys.executable, "-m", "tagpulse.cli", "sink"], self._env(),
                            self.log_dir / "sink.log").start()
        return self.sink

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop()
        if self.sink:
            self.sink.stop()

    def check_alive(self) -> None:
        for proc in [*self.workers, *([self.sink] if self.sink else [])]:
            if proc.proc is not None and not proc.alive():
                tail = proc.log_path.read_text(errors="replace")[-3000:] if proc.log_path.exists() else ""
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}; log tail:\n{tail}")


async def _progress(settings) -> tuple:
    """(raw backlog, snapshot of all offsets) for the stream and sink groups."""
    topics = settings.topics
    security = client_kwargs()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **security)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, **security)
    await admin.start()
    await consumer.start()
    try:
        names = [topics.raw, topics.partial_windows, topics.unique_posts, topics.windows, topics.late,
                 topics.dead_letters, topics.spikes, topics.completeness]
        tps = []
        for name in names:
            parts = consumer.partitions_for_topic(name)
            if parts is None:
                await consumer._client.force_metadata_update()  # a topic created a moment ago
                parts = consumer.partitions_for_topic(name) or set()
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps) if tps else {}
        stream = await admin.list_consumer_group_offsets(settings.app_id)
        sink = await admin.list_consumer_group_offsets(sink_group(settings))
    finally:
        await consumer.stop()
        await admin.close()

    def committed(group, tp):
        meta = group.get(tp)
        return meta.offset if meta is not None and meta.offset >= 0 else 0

    raw_backlog = sum(ends[tp] - committed(stream, tp) for tp in tps if tp.topic == topics.raw)
    # Transactional topics end with a commit marker, which no consumer ever commits past.
    lagging = 0
    for tp in tps:
        if tp.topic == topics.partial_windows:
            lagging += max(0, ends[tp] - 1 - committed(stream, tp))
        elif tp.topic != topics.raw:
            lagging += max(0, ends[tp] - 1 - committed(sink, tp))
    snapshot = tuple(sorted((tp.topic, tp.partition, ends[tp]) for tp in tps))
    return raw_backlog, lagging, snapshot


async def raw_records(settings) -> int:
    """Records ever written to the raw topic (the sum of its end offsets)."""
    _, _, snapshot = await _progress(settings)
    return sum(end for topic, _, end in snapshot if topic == settings.topics.raw)


async def wait_until_final(settings, timeout: float = 600.0, pipeline: Pipeline | None = None,
                           on_progress=None) -> float:
    """Block until every posted record is processed, idle watermarks have closed
    every window and the sink has stored everything; returns the seconds waited."""
    quiet_needed = settings.idle_timeout_s + 4.0
    start = time.monotonic()
    last_snapshot, quiet_since = None, None
    while True:
        if pipeline is not None:
            pipeline.check_alive()
        try:
            raw_backlog, lagging, snapshot = await _progress(settings)
        except KafkaError as exc:
            # A fresh broker creates __consumer_offsets on first use: the group coordinator
            # is briefly unavailable. Not final yet; ask again.
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"pipeline status unavailable after {timeout:.0f}s: {exc}") from exc
            await asyncio.sleep(1.0)
            continue
        now = time.monotonic()
        if on_progress:
            on_progress(raw_backlog, lagging)
        if raw_backlog == 0 and lagging == 0:
            if snapshot != last_snapshot:
                last_snapshot, quiet_since = snapshot, now
            elif now - quiet_since >= quiet_needed:
                return now - start
        else:
            last_snapshot, quiet_since = None, None
        if now - start > timeout:
            raise TimeoutError(f"pipeline not final after {timeout:.0f}s "
                               f"(raw backlog {raw_backlog}, downstream lag {lagging})")
        await asyncio.sleep(0.5)


def cpu_seconds(pid: int | str | None = "self") -> float:
    """User + system CPU time a live process has used so far, in seconds; 0 when it is gone."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """Process ids of the Kafka brokers running on this machine (for CPU accounting in benchmarks)."""
    return pids_with_argument("kafka.Kafka")


def peak_rss_mb(pid: int | str | None = "self") -> float:
    """VmHWM (the highest resident set size) of a live process in MiB; 0 when it is gone."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0
