"""`tagpulse sink`: Kafka -> ClickHouse, exactly once, plus the read-only SQL endpoint.

The sink is the one process that owns the ClickHouse database (chDB locks its
directory), so it also answers analysts' queries over HTTP on
127.0.0.1:sink_sql_port with ClickHouse's `readonly=1`.

Exactly once without FINAL (docs/clickhouse.md):
- every row carries the Kafka (partition, offset) of its message; a batch is ONE
  insert per table, which ClickHouse writes as one part: all or nothing;
- on start, and after any failed insert, the sink reads max(_offset) per
  partition from each table and only writes messages above it. So a batch that
  landed before a crash or an ambiguous error (timeout) is never written twice,
  and one that did not land is written again: nothing lost, nothing doubled;
- Kafka committed offsets are informational (lag monitoring): ClickHouse is the
  source of truth for where to resume;
- the consumer reads with isolation_level=read_committed, so rows of aborted
  worker transactions never reach ClickHouse.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path


from sinks import clickhouse as ch
from tagpulse import metrics as m
from tagpulse.kafka_security import client_kwargs

log = logging.getLogger("tagpulse.sink")

# ----------------------------------------------------------------------------- metrics (defined in tagpulse.metrics)
BATCH_ROWS = m.SINK_BATCH_ROWS
BATCH_SECONDS = m.SINK_BATCH_SECONDS
ERRORS = m.SINK_ERRORS
ROWS = m.SINK_ROWS
RETRYING = m.SINK_RETRYING
LAST_INSERT = m.SINK_LAST_INSERT

# ----------------------------------------------------------------------------- batching
FLUSH_ROWS = 50_000          # flush when any table has this many rows buffered ...
FLUSH_INTERVAL_S = 1.0       # ... or when the oldest buffered message is this old
FLUSH_MAX_BYTES = 64 << 20   # ... or a table's buffer reaches this size (bounds memory and the insert block)
# Final window rows and spikes are what dashboards and alerts wait for: once the sink has read
# everything committed, they are inserted without waiting out FLUSH_INTERVAL_S (with the posts
# buffered alongside, which go first), at most once per PROMPT_GAP_S. A sink that is behind (a
# replay) keeps batching by interval and size.
PROMPT_TABLES = ("reach_windows", "spikes")
PROMPT_GAP_S = 0.25
PROMPT_POLL_S = 0.05
BACKOFF_START_S = 0.5
BACKOFF_CAP_S = 30.0
TOPIC_REFRESH_S = 30.0


@dataclass
class TableBuffer:
    """Messages waiting for one table's next insert, in offset order per partition."""

    messages: list[tuple[int, int, bytes]] = field(default_factory=list)
    rows: int = 0
    size: int = 0

    def add(self, partition: int, offset: int, value: bytes, rows: int) -> None:
        self.messages.append((partition, offset, value))
        self.rows += rows
        self.size += len(value)

    def take(self) -> tuple[list[tuple[int, int, bytes]], int]:
        messages, rows = self.messages, self.rows
        self.messages, self.rows, self.size = [], 0, 0
        return messages, rows


class Batcher:
    """When to flush (pure: the clock is passed in)."""

    def __init__(self, tables, flush_rows: int = FLUSH_ROWS, interval_s: float = FLUSH_INTERVAL_S,
                 max_bytes: int = FLUSH_MAX_BYTES, prompt_tables=PROMPT_TABLES, prompt_gap_s: float = PROMPT_GAP_S):
        self.buffers = {table: TableBuffer() for table in tables}
        self.flush_rows = flush_rows
        self.interval_s = interval_s
        self.max_bytes = max_bytes
        self.prompt_tables = [t for t in prompt_tables if t in self.buffers]
        self.prompt_gap_s = prompt_gap_s
        self.first_at: float | None = None
        self.last_flush_at = float("-inf")

    def add(self, table: str, partition: int, offset: int, value: bytes, rows: int, now: float) -> None:
        if self.first_at is None:
            self.first_at = now
        self.buffers[table].add(partition, offset, value, rows)

    def empty(self) -> bool:
        return self.first_at is None

    def due(self, now: float) -> bool:
        if self.first_at is None:
            return False
        if now - self.first_at >= self.interval_s:
            return True
        return any(b.rows >= self.flush_rows or b.size >= self.max_bytes for b in self.buffers.values())

    def prompt_waiting(self) -> bool:
        """Rows of a prompt table are buffered."""
        return any(self.buffers[t].messages for t in self.prompt_tables)

    def prompt_due(self, now: float) -> bool:
        """Prompt rows are buffered and the last flush is at least prompt_gap_s old (the caller
        adds the other condition: nothing committed is left to read)."""
        return self.prompt_waiting() and now - self.last_flush_at >= self.prompt_gap_s

    def time_left(self, now: float) -> float:
        if self.first_at is None:
            return self.interval_s
        left = max(0.0, self.first_at + self.interval_s - now)
        if self.prompt_waiting():
            # Wake for the prompt check, but never spin: a sink that is behind reads on meanwhile.
            left = min(left, max(PROMPT_POLL_S, self.last_flush_at + self.prompt_gap_s - now))
        return left

    def take_all(self, now: float) -> dict[str, tuple[list, int]]:
        self.first_at = None
        self.last_flush_at = now
        return {table: buf.take() for table, buf in self.buffers.items() if buf.messages}


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_CAP_S):
    delay = start
    while True:
        yield delay
        delay = min(delay * 2, cap)


# ----------------------------------------------------------------------------- the service
class SinkService:
    def __init__(self, settings, tables: tuple[str, ...] = tuple(ch.TABLES)):
        self.settings = settings
        self.url = settings.clickhouse_url
        self.tables = tables
        self.topic_table = {getattr(settings.topics, ch.TABLES[t].topic_attr): t for t in tables}
        self.stored: dict[str, dict[int, int]] = {}
        self.batcher = Batcher(tables)
        self.stopping = asyncio.Event()
        self.writer = None
        self.reader = None
        self.consumer = None
        self.spool_dir: Path | None = None
        self._db_lock = asyncio.Lock()  # one insert at a time on the writer client

    # ------------------------------------------------------------------ setup
    async def open_database(self) -> None:
        self.writer = await asyncio.to_thread(ch.connect, self.url)
        applied = await asyncio.to_thread(ch.apply_migrations, self.writer)
        if applied:
            log.info("applied schema migrations: %s", ", ".join(applied))
        self.reader = await asyncio.to_thread(ch.connect, self.url, True)
        for table in self.tables:
            self.stored[table] = await asyncio.to_thread(ch.stored_offsets, self.writer, table)
        self.spool_dir = self.settings.run_dir / "sink-spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        log.info("ClickHouse %s ready; resuming from stored offsets %s", ch.mask_url(self.url), self.stored)

    async def open_consumer(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.app_id}-sink",
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
            **client_kwargs(),
        )
        await self.consumer.start()
        await self.assign_partitions()

    async def assign_partitions(self) -> bool:
        """Assign every partition of our topics, each positioned just after its stored offset."""
        from aiokafka import TopicPartition

        consumer = self.consumer
        # consumer.topics() fetches metadata but does not keep it; the cluster object it reads has the partitions.
        cluster = await consumer._client.fetch_all_metadata()
        wanted = set()
        for topic in self.topic_table:
            for p in cluster.partitions_for_topic(topic) or ():
                wanted.add(TopicPartition(topic, p))
        if wanted == consumer.assignment():
            return False
        missing = [t for t in self.topic_table if not cluster.partitions_for_topic(t)]
        if missing:
            log.info("waiting for topics %s", ", ".join(sorted(missing)))
        consumer.assign(sorted(wanted))
        for tp in wanted:
            await self.seek(tp)
        return True

    async def seek(self, tp) -> None:
        table = self.topic_table[tp.topic]
        last = self.stored[table].get(tp.partition)
        if last is None:
            await self.consumer.seek_to_beginning(tp)
        else:
            self.consumer.seek(tp, last + 1)

    # ------------------------------------------------------------------ main loop
    async def run(self, setup: bool = True) -> None:
        """Consume and write until stopping is set; setup=False when the caller opened DB and consumer."""
        if setup:
            await self.open_database()
            await self.open_consumer()
        next_refresh = time.monotonic() + TOPIC_REFRESH_S
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_refresh or not self.consumer.assignment():
                    await self.assign_partitions()
                    next_refresh = now + (TOPIC_REFRESH_S if self.consumer.assignment() else 1.0)
                    if not self.consumer.assignment():
                        await self._sleep(1.0)
                        continue
                timeout_ms = int(self.batcher.time_left(now) * 1000) if not self.batcher.empty() else 500
                records = await self.consumer.getmany(timeout_ms=max(timeout_ms, 1), max_records=10_000)
                now = time.monotonic()
                for tp, messages in records.items():
                    table = self.topic_table[tp.topic]
                    spec = ch.TABLES[table]
                    last = self.stored[table].get(tp.partition, -1)
                    for message in messages:
                        # Never trust the fetch position alone: anything at or below what
                        # ClickHouse already holds is skipped, whatever moved the position.
                        if message.offset <= last or message.value is None:
                            continue
                        self.batcher.add(table, tp.partition, message.offset, message.value,
                                         ch.count_rows(spec, message.value), now)
                        if self.batcher.due(now):
                            await self.flush()  # keeps each insert near FLUSH_ROWS even for a huge fetch
                            last = self.stored[table].get(tp.partition, -1)
                now = time.monotonic()
                if self.batcher.due(now) or (self.batcher.prompt_due(now) and await self._caught_up()):
                    await self.flush()
            await self.flush()
        finally:
            await self.close()

    async def _caught_up(self) -> bool:
        """Every committed record of every assigned partition has been read."""
        for tp in self.consumer.assignment():
            stable = self.consumer.last_stable_offset(tp)
            if stable is None or stable < 0 or await self.consumer.position(tp) < stable:
                return False
        return True

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ writing
    async def flush(self) -> None:
        batches = self.batcher.take_all(time.monotonic())
        # Posts before windows: a final window row is visible no earlier than the posts behind it.
        for table in self.tables:
            if table in batches:
                messages, rows = batches[table]
                await self.write(table, messages, rows)

    async def write(self, table: str, messages: list[tuple[int, int, bytes]], rows: int) -> None:
        """Insert until it lands; never drop rows, never write a message twice."""
        delays = backoff_delays()
        paused = False
        try:
            while True:
                started = time.monotonic()
                try:
                    async with self._db_lock:
                        await asyncio.to_thread(ch.insert_messages, self.writer, self.url, table, messages,
                                                self.spool_dir)
                except Exception as exc:
                    ERRORS.labels(table).inc()
                    RETRYING.set(1)
                    if not paused:
                        # Backpressure: stop fetching while ClickHouse is unhappy.
                        self.consumer.pause(*self.consumer.assignment())
                        paused = True
                    delay = next(delays)
                    log.warning("insert into %s failed (%s); retrying in %.1fs",
                                table, ch.mask_secrets(str(exc).splitlines()[0][:300] if str(exc) else repr(exc),
                                                       self.url), delay)
                    await asyncio.sleep(delay)
                    # The failed insert may have landed (timeout, lost response): drop what is stored.
                    messages, rows = await self._drop_stored(table, messages, rows, delays)
                    if not messages:
                        break
                    continue
                BATCH_SECONDS.labels(table).observe(time.monotonic() - started)
                BATCH_ROWS.labels(table).observe(rows)
                ROWS.labels(table).inc(rows)
                LAST_INSERT.labels(table).set_to_current_time()
                break
        finally:
            if paused:
                RETRYING.set(0)
                self.consumer.resume(*self.consumer.assignment())
        self._note_stored(table, messages)
        await self._commit(table)

    async def _drop_stored(self, table, messages, rows, delays):
        while True:
            try:
                async with self._db_lock:
                    stored = await asyncio.to_thread(ch.stored_offsets, self.writer, table)
                break
            except Exception as exc:
                delay = next(delays)
                log.warning("cannot read stored offsets of %s (%s); retrying in %.1fs", table,
                            ch.mask_secrets(str(exc).splitlines()[0][:300] if str(exc) else repr(exc), self.url), delay)
                await asyncio.sleep(delay)
        kept = ch.drop_present(messages, stored)
        if len(kept) != len(messages):
            log.warning("%d of %d messages for %s were already stored by the failed insert; not writing them again",
                        len(messages) - len(kept), len(messages), table)
            spec = ch.TABLES[table]
            rows = sum(ch.count_rows(spec, value) for _, _, value in kept)
            self._note_stored(table, [(p, o, b"") for p, o in stored.items()])
        return kept, rows

    def _note_stored(self, table: str, messages) -> None:
        stored = self.stored[table]
        for partition, offset, _ in messages:
            if offset > stored.get(partition, -1):
                stored[partition] = offset

    async def _commit(self, table: str) -> None:
        """Kafka offsets for lag monitoring only; ClickHouse decides where we resume."""
        from aiokafka import TopicPartition

        topic = getattr(self.settings.topics, ch.TABLES[table].topic_attr)
        offsets = {TopicPartition(topic, p): o + 1 for p, o in self.stored[table].items()}
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:
            log.debug("offset commit for %s failed (informational only): %r", table, exc)

    async def close(self) -> None:
        if self.consumer is not None:
            try:
                await self.consumer.stop()
            except Exception as exc:
                log.debug("consumer stop failed: %r", exc)


# ----------------------------------------------------------------------------- read-only SQL endpoint
class QueryRefused(Exception):
    pass


def check_query(sql: str, fmt: str) -> str:
    """The single statement to run, or QueryRefused with a message for the analyst."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused("empty query")
    if not isinstance(fmt, str) or not fmt.isalnum():
        raise QueryRefused(f"unknown output format {fmt!r}")
    statements = ch.split_statements(sql)
    if len(statements) != 1:
        raise QueryRefused("send exactly one statement per query")
    return statements[0]


def explain_error(message: str) -> str:
    if "READONLY" in message or "readonly mode" in message:
        return "refused: tagpulse sql is read-only (writes, DDL and file/url table functions are not allowed)"
    first = message.strip().splitlines()[0] if message.strip() else message
    return first[:2000]


def run_readonly_query(client, sql: str, fmt: str, parameters: dict | None = None) -> bytes:
    """Runs in a worker thread; the client was opened with readonly=1."""
    statement = check_query(sql, fmt)
    return client.raw_query(statement, parameters=parameters or None, fmt=fmt)


async def start_sql_server(service: SinkService, host: str, port: int):
    from aiohttp import web

    lock = asyncio.Lock()  # one analyst query at a time: chDB shares the two cores with the pipeline

    async def query(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": "POST a JSON object {\"sql\": …, \"format\": …}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "POST a JSON object {\"sql\": …, \"format\": …}"}, status=400)
        sql = body.get("sql")
        fmt = body.get("format") or "TSVWithNames"
        parameters = body.get("parameters") or None
        if parameters is not None and not isinstance(parameters, dict):
            return web.json_response({"error": "parameters must be an object"}, status=400)
        try:
            async with lock:
                result = await asyncio.to_thread(run_readonly_query, service.reader, sql, fmt, parameters)
        except QueryRefused as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:
            message = ch.mask_secrets(str(exc), service.url)
            status = 403 if "READONLY" in message or "readonly mode" in message else 400
            return web.json_response({"error": explain_error(message)}, status=status)
        return web.Response(body=result, content_type="application/octet-stream")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid(), "clickhouse": ch.mask_url(service.url)})

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/query", query)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def pid_file(settings) -> Path:
    return settings.run_dir / "sink.pid"


async def serve(settings, sql_host: str = "127.0.0.1", metrics: bool = True) -> None:
    """Run the sink until SIGINT/SIGTERM: metrics, SQL endpoint, Kafka -> ClickHouse."""

    service = SinkService(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, service.stopping.set)
        except (NotImplementedError, RuntimeError):
            pass
    if metrics:
        m.start_metrics_server(settings.sink_metrics_port, settings.metrics_addr)
    await service.open_database()
    runner = await start_sql_server(service, sql_host, settings.sink_sql_port)
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    log.info("sink running: SQL on http://%s:%d/query, metrics on :%d", sql_host, settings.sink_sql_port,
             settings.sink_metrics_port)
    try:
        await service.open_consumer()
        await service.run(setup=False)
    finally:
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except OSError:
            pass
        await runner.cleanup()
        await service.close()
