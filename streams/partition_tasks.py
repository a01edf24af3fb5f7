"""Transactional per-partition processing: the imperative shell around stage 1 and 2.

Each input partition a worker owns gets a PartitionTask: its state (restored
from the stage's changelog topic) and a transactional producer whose
transactional.id names the partition. Initialising that producer fences any
previous owner of the partition (a zombie after a rebalance or a crash) and
aborts its open transaction, and only then do we read the changelog, so we
restore exactly the committed state.

Every batch then commits, in ONE Kafka transaction: the outputs, the changelog
delta and the source offset. Faust never commits these topics (they are
declared with acks=False), so the committed offset always equals the offset
stored in the changelog, and a crash at any moment rolls back to a consistent
(state, outputs, offset) triple.

Once the deltas written since the last snapshot outweigh it (and
SNAPSHOT_MIN_BYTES), a batch's changelog record is a snapshot of the whole state
instead (the worker's at a quiet moment between window closes), and after its
transaction committed the changelog partition is truncated to it
(DeleteRecords): a restore reads at most the snapshot plus two states' worth of
deltas (one usually: see SnapshotSchedule), however long the worker has run.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from functools import lru_cache
from typing import Awaitable, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (ConcurrentTransactions, CoordinatorLoadInProgressError, CoordinatorNotAvailableError,
                             KafkaConnectionError, KafkaError, NotCoordinatorError, ProducerFenced, RequestTimedOutError)
from aiokafka.partitioner import murmur2

from tagpulse.kafka_security import client_kwargs
from tagpulse.metrics import TRANSACTION_SECONDS

log = logging.getLogger("tagpulse.streams")

# The broker's default max.message.bytes is 1 MiB; keep every message clearly below it.
MAX_MESSAGE_BYTES = 900_000
# Transient broker trouble (restart, leader move) is retried for this long before the worker gives up.
COMMIT_RETRY_SECONDS = 300.0
# A partition writes a snapshot once the deltas since its last one reach the snapshot's size and
# at least this much: writing costs at most twice the deltas, and a restore reads the snapshot plus
# about as much again (at most twice as much when no quiet moment came; plus this floor, which keeps
# small states from snapshotting often).
SNAPSHOT_MIN_BYTES = 64 << 20


# Errors that say "try again later" even where aiokafka does not flag them retriable.
RETRIABLE_TXN_ERRORS = (ConcurrentTransactions, CoordinatorLoadInProgressError, CoordinatorNotAvailableError,
                        KafkaConnectionError, NotCoordinatorError, RequestTimedOutError)


# Kafka 3.6+ brokers verify that a transactional produce belongs to an ongoing transaction
# (KIP-890); when that check meets the previous transaction still completing, a client on
# aiokafka's produce version gets NOT_ENOUGH_REPLICAS (KAFKA-15459) and retries after
# retry_backoff_ms. With the default 100 ms, ≈1 transaction a second of a live worker paid
# 100 ms or more (the warnings in the worker log); 20 ms is the Java client's backoff for the
# same race on AddPartitionsToTxn (KAFKA-5477). Idempotence keeps retries duplicate-free.
TXN_RETRY_BACKOFF_MS = 20


def tune_gc() -> None:
    """The worker's garbage collector settings (benches that measure the worker's work use them too).

    The state is millions of small dicts (panes, author maps) without reference cycles; with the
    default thresholds the cyclic collector rescans them all the time, which cost ≈40 % of stage
    throughput (bench.profile_core) and half of a restore (bench.restore). Freeze what start-up
    allocated and collect the older generations rarely."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


class PartitionLost(Exception):
    """Another worker owns the partition now (we were fenced); drop it."""


@lru_cache(maxsize=1 << 16)
def tag_partition(tag: str, partitions: int) -> int:
    """Kafka's default partitioner applied to the tag: the merge stage's partition for it.

    Cached: aiokafka's murmur2 is pure Python, and the same tags come back every batch."""
    return (murmur2(tag.encode("utf-8")) & 0x7FFFFFFF) % partitions


def pack_json_arrays(rows: list, max_bytes: int = MAX_MESSAGE_BYTES, encode=orjson.dumps) -> list[bytes]:
    """Encode rows as JSON arrays of at most max_bytes each (a single larger row stands alone).

    Chunks are encoded whole (one call per ~1,000 rows instead of one per row: ≈15×
    faster for the merge stage's window rows); a chunk over the limit is halved until
    it fits, and the chunk length follows the observed row size. `encode` is orjson's,
    or msgspec's for rows that may be msgspec structs (stage 1's unique posts).
    """
    messages: list[bytes] = []
    i, n, count = 0, 1000, len(rows)
    while i < count:
        chunk = rows[i:i + n]
        encoded = encode(chunk)
        if len(encoded) > max_bytes and len(chunk) > 1:
            n = max(1, len(chunk) // 2)
            continue
        messages.append(encoded)
        i += len(chunk)
        # Aim at ~80 % of the limit so the next chunk rarely needs halving.
        n = max(1, int(len(chunk) * max_bytes * 0.8 / max(len(encoded), 1)))
    return messages


Output = tuple[str, int, bytes]  # topic, partition, value


def away_from_closes(now: float, width: int, grace: float) -> bool:
    """Whether the wall clock is in the quiet part of a pane, from 20 % to 70 % of it after pane end + grace
    (12–42 s for 1-minute panes).

    Live windows close at pane end + grace, then each size's step and transaction follow for a second
    or two; a snapshot of tens of MB costs the worker as much again (encoding on the event loop, then a
    transaction of tens of fragments), so one written at a boundary delayed every partition's rows.
    The deltas that make a snapshot due are largest at boundaries, so that is where it used to fall."""
    phase = (now - grace) % width
    return 0.2 * width <= phase <= 0.7 * width


class SnapshotSchedule:
    """When a partition writes a snapshot: once the changelog written after its latest snapshot
    reaches that snapshot's size and min_bytes. The restore counts what it reads, every commit what
    it writes, so a new owner goes on where the previous one left off (a restore alone is not a
    reason to write a snapshot).

    With `quiet` (a predicate of the wall clock, e.g. away_from_closes), a due snapshot waits for a
    commit at a quiet moment, unless the deltas reached twice the threshold (a partition that only
    commits at boundaries): a restore then reads at most the snapshot plus twice as much again."""

    def __init__(self, min_bytes: int = SNAPSHOT_MIN_BYTES, quiet: Callable[[float], bool] | None = None) -> None:
        self.min_bytes = min_bytes
        self.quiet = quiet
        self.snapshot_bytes = 0  # size of the latest snapshot (0: none yet)
        self.since_snapshot = 0  # changelog bytes after it

    def due(self, now: float | None = None) -> bool:
        threshold = max(self.min_bytes, self.snapshot_bytes)
        if self.since_snapshot < threshold:
            return False
        if self.quiet is None or self.since_snapshot >= 2 * threshold:
            return True
        return self.quiet(time.time() if now is None else now)

    def count(self, record: bytes, snapshot: bool) -> None:
        if snapshot:
            self.snapshot_bytes, self.since_snapshot = len(record), 0
        else:
            self.since_snapshot += len(record)


class PartitionTask:
    def __init__(self, stage: str, source_topic: str, partition: int, changelog_topic: str,
                 state, producer: AIOKafkaProducer, group_id: str, bootstrap: str | None = None,
                 schedule: SnapshotSchedule | None = None, restored_bytes: int = 0):
        self.stage = stage
        self.bootstrap = bootstrap
        self.schedule = schedule or SnapshotSchedule()
        self.restored_bytes = restored_bytes
        self.truncated_to: int | None = None  # the changelog's start after our last truncation
        self._truncation: asyncio.Task | None = None
        self.source_topic = source_topic
        self.partition = partition
        self.changelog_topic = changelog_topic
        self.state = state
        self.producer = producer
        self.group_id = group_id
        self.lock = asyncio.Lock()
        self.last_activity = time.monotonic()
        self.transactions = 0

    @classmethod
    async def open(cls, *, bootstrap: str, app_id: str, stage: str, source_topic: str, partition: int,
                   changelog_topic: str, state, producer_config: dict | None = None,
                   snapshot_min_bytes: int = SNAPSHOT_MIN_BYTES,
                   snapshot_quiet: Callable[[float], bool] | None = None) -> "PartitionTask":
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"{app_id}-{stage}-{partition}",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=MAX_MESSAGE_BYTES + 100_000,
            retry_backoff_ms=TXN_RETRY_BACKOFF_MS,
            **client_kwargs(),
            **(producer_config or {}),
        )
        opened = time.perf_counter()
        await producer.start()  # init_transactions: fences the previous owner
        reading = time.perf_counter()
        schedule = SnapshotSchedule(snapshot_min_bytes, snapshot_quiet)
        restored_bytes = 0
        applying = 0.0  # of the restore's time, how much went to the state (the rest: fetching, waiting)

        def apply(record: bytes) -> None:
            nonlocal restored_bytes, applying
            began = time.perf_counter()
            restored_bytes += len(record)
            schedule.count(record, state.apply_delta(record))
            applying += time.perf_counter() - began

        try:
            applied = await restore_changelog(bootstrap, changelog_topic, partition, apply)
        except BaseException:
            await producer.stop()
            raise
        done = time.perf_counter()
        log.info("%s partition %d restored from %d changelog records, %.1f MB (offset %d) in %.2f s "
                 "(producer start %.2f s, reading %.2f s of which applying %.2f s)",
                 stage, partition, applied, restored_bytes / 1e6, state.offset, done - opened,
                 reading - opened, done - reading, applying)
        return cls(stage, source_topic, partition, changelog_topic, state, producer, app_id, bootstrap=bootstrap,
                   schedule=schedule, restored_bytes=restored_bytes)

    async def commit_state(self, outputs: Iterable[Output], next_offset: int | None) -> None:
        """commit() with the state's changelog record: its delta, or a snapshot when one is due
        (see SnapshotSchedule), after which the changelog is truncated to the snapshot."""
        await self.begin_commit(outputs, next_offset)

    def begin_commit(self, outputs: Iterable[Output], next_offset: int | None) -> Awaitable[None]:
        """commit_state() in two halves: the changelog record is taken now, the transaction runs when
        the returned awaitable is awaited. The state may change in between (the next close step, in a
        thread): those changes belong to the next record. Commits of one task stay one at a time."""
        snapshot = self.schedule.due()
        began = time.perf_counter()
        record = self.state.snapshot() if snapshot else self.state.delta()
        return self._commit_record(list(outputs), record, next_offset, snapshot, began, time.perf_counter())

    async def _commit_record(self, outputs: list[Output], record: bytes, next_offset: int | None,
                             snapshot: bool, began: float, encoded: float) -> None:
        first_offset = await self.commit(outputs, record, next_offset)
        committed = time.perf_counter()
        TRANSACTION_SECONDS.labels(stage=self.stage, record="snapshot" if snapshot else "delta").observe(
            committed - began)
        self.schedule.count(record, snapshot)
        if not snapshot:
            return
        log.info("%s partition %d: snapshot of %.1f MB at changelog offset %d (encoded in %.2f s, committed in %.2f s)",
                 self.stage, self.partition, len(record) / 1e6, first_offset, encoded - began, committed - encoded)
        if self._truncation is None or self._truncation.done():
            # In the background: the next batch need not wait for the broker's answer. A truncation
            # still running when the next snapshot comes is simply not repeated (the next one will be).
            self._truncation = asyncio.ensure_future(self._truncate(first_offset))

    async def _truncate(self, offset: int) -> None:
        """Delete the changelog records before `offset`, a committed snapshot's first record.

        Safe at any moment: the snapshot holds everything before it, and a restore that is reading
        the deleted records (another worker taking the partition over) is moved to the new start,
        the snapshot, which resets its state (restore_changelog). A failure only leaves more to read.
        """
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

        tp = TopicPartition(self.changelog_topic, self.partition)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **client_kwargs())
        try:
            await admin.start()
            await admin.delete_records({tp: RecordsToDelete(before_offset=offset)}, timeout_ms=30_000)
            self.truncated_to = offset
            log.info("%s partition %d: changelog truncated to offset %d", self.stage, self.partition, offset)
        except Exception as exc:  # noqa: BLE001 — a failed truncation costs restore time, never data
            log.warning("%s partition %d: changelog truncation to offset %d failed (%r); the next snapshot "
                        "tries again", self.stage, self.partition, offset, exc)
        finally:
            await admin.close()

    async def commit(self, outputs: Iterable[Output], delta: bytes, next_offset: int | None) -> int:
        """Write outputs + changelog delta (+ the source offset) atomically, retrying transient errors.

        Returns the changelog offset of the delta's first record."""
        outputs = list(outputs)
        deadline = time.monotonic() + COMMIT_RETRY_SECONDS
        backoff = 0.2
        while True:
            try:
                first_offset = await self._transaction(outputs, delta, next_offset)
                self.transactions += 1
                return first_offset
            except ProducerFenced as exc:
                raise PartitionLost(f"{self.stage} partition {self.partition}: fenced by a newer owner") from exc
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) and not isinstance(exc, RETRIABLE_TXN_ERRORS) \
                        or time.monotonic() > deadline:
                    raise
                log.warning("%s partition %d: transaction failed (%r); retrying in %.1fs",
                            self.stage, self.partition, exc, backoff)
                await self._abort_quietly()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _transaction(self, outputs: list[Output], delta: bytes, next_offset: int | None) -> int:
        producer = self.producer
        await producer.begin_transaction()
        futures = []
        for topic, partition, value in outputs:
            futures.append(await producer.send(topic, value, partition=partition))
        first_changelog = len(futures)
        for fragment in fragment_delta(delta):
            futures.append(await producer.send(self.changelog_topic, fragment, partition=self.partition))
        if next_offset is not None:
            await producer.send_offsets_to_transaction(
                {TopicPartition(self.source_topic, self.partition): next_offset}, self.group_id)
        written = await asyncio.gather(*futures)
        await producer.commit_transaction()
        return written[first_changelog].offset

    async def _abort_quietly(self) -> None:
        try:
            await self.producer.abort_transaction()
        except Exception as exc:  # the producer may be in a state where abort is not allowed
            log.debug("abort failed: %r", exc)

    async def close(self) -> None:
        if self._truncation is not None and not self._truncation.done():
            self._truncation.cancel()
        try:
            await self.producer.stop()
        except Exception as exc:
            log.debug("producer stop failed: %r", exc)


FRAGMENT_MARK = b"\x00frag"


class Fragments:
    """Reassembles changelog records from their fragments, in offset order (pure).

    A record's fragments are written in one transaction to one partition by its only writer, so
    their offsets are consecutive. A gap inside a record means the changelog was truncated while a
    restore read it: the part read is dropped, and what follows is the snapshot at the new start.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._next = -1

    def feed(self, offset: int, value: bytes) -> bytes | None:
        """The whole record that ends with this one, or None while it is still incomplete."""
        if self._pending and offset != self._next:
            self._pending.clear()
        if value.startswith(FRAGMENT_MARK):
            self._pending.append(value[len(FRAGMENT_MARK):])
            self._next = offset + 1
            return None
        if self._pending:
            value = b"".join(self._pending) + value
            self._pending.clear()
        return value


def fragment_delta(delta: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """Split a large changelog delta into records; the last record is the tail of the delta.

    Fragments are written in one transaction to one partition by its only
    writer, so they are consecutive and complete (or absent) when read back.
    """
    if len(delta) <= max_bytes:
        return [delta]
    pieces = [delta[i:i + max_bytes] for i in range(0, len(delta), max_bytes)]
    return [FRAGMENT_MARK + piece for piece in pieces[:-1]] + [pieces[-1]]


async def restore_changelog(bootstrap: str, topic: str, partition: int, apply: Callable[[bytes], None]) -> int:
    """Apply every committed changelog record of one partition, oldest first.

    The changelog may be truncated while we read it (its previous owner's last snapshot): the
    consumer then moves to the new start, which is a snapshot, and applying it resets the state.
    Fragments cut short by that move are dropped (a record's fragments have consecutive offsets).
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # out of range = truncated under us: go on from the snapshot
        group_id=None,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **client_kwargs(),
    )
    await consumer.start()
    applied = 0
    records = Fragments()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
            for record in batch.get(tp, []):
                value = records.feed(record.offset, record.value)
                if value is None:
                    continue
                apply(value)
                applied += 1
    finally:
        await consumer.stop()
    return applied
