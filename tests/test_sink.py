"""The ClickHouse sink against the real broker and a real chDB directory.

The sink runs as a subprocess (`tagpulse sink`), as in production: chDB locks
its directory to one process, and we SIGKILL it mid-stream. Everything we
check goes through `tagpulse sql` (its read-only endpoint, or chDB directly
when no sink runs).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from sinks import clickhouse as ch
from tagpulse.core.windows import window_row_arrays, window_row_tuple

REPO = Path(__file__).resolve().parents[1]
TOPICS = ("posts.unique", "windows", "late", "deadletters")

pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def kafka_bootstrap(request) -> str:
    # The stack helper's session fixture when it exists, else TAGPULSE_TEST_KAFKA.
    try:
        return request.getfixturevalue("stack_settings").kafka_bootstrap
    except pytest.FixtureLookupError:
        pass
    bootstrap = os.environ.get("TAGPULSE_TEST_KAFKA")
    if not bootstrap:
        pytest.skip("needs a Kafka broker: set TAGPULSE_TEST_KAFKA=host:port")
    return bootstrap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """A `tagpulse sink` subprocess with its own home, namespace and ports."""

    def __init__(self, bootstrap: str, home: Path, namespace: str):
        self.env = dict(os.environ, TAGPULSE_HOME=str(home), TAGPULSE_KAFKA=bootstrap, TAGPULSE_NAMESPACE=namespace,
                        TAGPULSE_SQL_PORT=str(free_port()), TAGPULSE_SINK_METRICS_PORT=str(free_port()))
        self.env.pop("TAGPULSE_CLICKHOUSE", None)
        self.home = home
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.home / "sink.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "tagpulse.cli", "sink"], cwd=REPO, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", int(self.env["TAGPULSE_SQL_PORT"])), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("sink did not open its SQL port\n" + self.log())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.home / "sink.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def sql(self, query: str, fmt: str = "TSV") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tagpulse.cli", "sql", query, "--format", fmt], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=120)

    def scalar_rows(self, query: str) -> list[list[str]]:
        result = self.sql(query)
        assert result.returncode == 0, result.stderr + self.log()
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def wait_for(self, query: str, expected: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            rows = self.scalar_rows(query)
            got = rows[0][0] if rows else None
            if got == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{query!r}: expected {expected}, got {got}\n{self.log()}")


async def create_topics(bootstrap: str, namespace: str, partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"{namespace}.{t}", partitions, 1) for t in TOPICS])
    finally:
        await admin.close()


def post(i: int, **extra) -> dict:
    base = {"platform": ("twitter", "facebook", "instagram")[i % 3], "post_id": str(i), "author_id": f"a{i % 97}",
            "author_handle": f"user{i % 97}", "author_followers": (i % 97) * 10, "created_at": "2015-05-20T09:15:00Z",
            "lang": "de", "text": f"post {i} \t 'quoted' \"double\" \\ #einBuchfürKai ✨", "hashtags": ["einbuchfuerkai"],
            "is_share": i % 2 == 0, "original_post_id": None if i % 2 else str(i + 1), "likes": 1, "shares": 0,
            "replies": 0, "quotes": 0}
    base.update(extra)
    return base


WINDOW = {"tag": "einbuchfuerkai", "platform": "twitter", "window_size": 60, "window_start": 1432113300,
          "window_end": 1432113360, "posts": 3, "originals": 2, "shares": 1, "unique_authors": 2,
          "potential_reach": 30, "impressions": 40, "engagement": 5, "closed_at": 1432113371.5}
LATE = {"tag": "einbuchfuerkai", "platform": "twitter", "window_size": 60, "window_start": 1432113240, "events": 2}
DEAD = {"stage": "worker", "reason": "invalid_json: unexpected end", "raw": "{\"trunc", "raw_bytes": 7,
        "source": "tagpulse.posts.raw/0/17"}


async def produce_transactions(bootstrap: str, namespace: str, committed: list[tuple[str, int, list]],
                               aborted: list[tuple[str, int, list]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{namespace}-test",
                                enable_idempotence=True, acks="all", max_request_size=2_000_000)
    await producer.start()
    try:
        async with producer.transaction():
            for topic, partition, rows in committed:
                await producer.send(f"{namespace}.{topic}", orjson.dumps(rows), partition=partition)
        await producer.begin_transaction()
        for topic, partition, rows in aborted:
            await producer.send(f"{namespace}.{topic}", orjson.dumps(rows), partition=partition)
        await producer.flush()
        await producer.abort_transaction()
        # A committed transaction after the aborted one: the sink must read past the abort.
        async with producer.transaction():
            await producer.send(f"{namespace}.posts.unique", orjson.dumps([post(9999)]), partition=0)
    finally:
        await producer.stop()


# ----------------------------------------------------------------------------- tests
def test_only_committed_rows_reach_clickhouse(kafka_bootstrap, tmp_path):
    namespace = f"sinktest-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_bootstrap, namespace))
    committed = [("posts.unique", 0, [post(1), post(2)]), ("posts.unique", 1, [post(3)]),
                 # Rows as objects (older workers) and as arrays in one batch: one insert takes both.
                 ("windows", 2, [WINDOW]),
                 ("windows", 2, window_row_arrays([window_row_tuple(dict(WINDOW, platform="facebook", posts=1))],
                                                  WINDOW["closed_at"])),
                 ("late", 1, [LATE]), ("deadletters", 0, [DEAD, dict(DEAD, stage="produce", at=1432113400.25)])]
    aborted = [("posts.unique", 0, [post(100), post(101)]), ("windows", 2, [dict(WINDOW, tag="aborted")]),
               ("late", 1, [dict(LATE, tag="aborted")]), ("deadletters", 0, [dict(DEAD, reason="aborted")])]
    asyncio.run(produce_transactions(kafka_bootstrap, namespace, committed, aborted))

    sink = Sink(kafka_bootstrap, tmp_path, namespace)
    sink.start()
    try:
        sink.wait_for("SELECT count() FROM tagpulse.posts", "4")
        sink.wait_for("SELECT count() FROM tagpulse.dead_letters", "2")
        sink.wait_for("SELECT count() FROM tagpulse.reach_windows", "2")
        sink.wait_for("SELECT count() FROM tagpulse.late_events", "1")
        assert sink.scalar_rows("SELECT post_id FROM tagpulse.posts ORDER BY toUInt64(post_id)") == \
            [["1"], ["2"], ["3"], ["9999"]]
        # The text survives every escaping layer (JSON in Kafka, RowBinary, JSONExtract).
        got = sink.sql("SELECT text FROM tagpulse.posts WHERE post_id = '1'", fmt="JSONEachRow")
        assert orjson.loads(got.stdout)["text"] == post(1)["text"]
        assert sink.scalar_rows(
            "SELECT tag, platform, window_size, toUnixTimestamp(window_start), toUnixTimestamp(window_end), posts, "
            "potential_reach, impressions, toUnixTimestamp64Milli(closed_at) FROM tagpulse.reach_windows "
            "ORDER BY platform") == [
            ["einbuchfuerkai", "facebook", "60", "1432113300", "1432113360", "1", "30", "40", "1432113371500"],
            ["einbuchfuerkai", "twitter", "60", "1432113300", "1432113360", "3", "30", "40", "1432113371500"]]
        assert sink.scalar_rows("SELECT tag, events, toUnixTimestamp(window_start) FROM tagpulse.late_events") == \
            [["einbuchfuerkai", "2", "1432113240"]]
        assert sink.scalar_rows("SELECT stage, reason FROM tagpulse.dead_letters ORDER BY stage") == \
            [["produce", DEAD["reason"]], ["worker", DEAD["reason"]]]
        assert sink.scalar_rows("SELECT toUnixTimestamp64Milli(at) FROM tagpulse.dead_letters "
                                "WHERE stage = 'produce'") == [["1432113400250"]]
        # Nothing of the aborted transaction, anywhere.
        for table, column in (("posts", "post_id"), ("reach_windows", "tag"), ("late_events", "tag"),
                              ("dead_letters", "reason")):
            rows = sink.scalar_rows(f"SELECT count() FROM tagpulse.{table} WHERE {column} IN ('100', '101', 'aborted')")
            assert rows == [["0"]], table
        # Schema version recorded once.
        assert sink.scalar_rows("SELECT version, name FROM tagpulse.schema_migrations ORDER BY version") == \
            [[str(version), name] for version, name, _ in ch.migration_files()]
        # Metrics are served and count what was written.
        import urllib.request
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{sink.env['TAGPULSE_SINK_METRICS_PORT']}/metrics",
                                         timeout=10).read().decode()
        assert 'tagpulse_sink_rows_total{table="posts"} 4.0' in metrics
        assert 'tagpulse_sink_rows_total{table="reach_windows"} 2.0' in metrics
    finally:
        sink.stop()
    assert sink.proc.returncode == 0, sink.log()


def test_readonly_sql_refuses_writes(kafka_bootstrap, tmp_path):
    namespace = f"sinkro-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_bootstrap, namespace, partitions=1))
    asyncio.run(produce_transactions(kafka_bootstrap, namespace, [("posts.unique", 0, [post(1)])], []))
    sink = Sink(kafka_bootstrap, tmp_path, namespace)
    sink.start()
    writes = ["INSERT INTO tagpulse.posts (post_id) VALUES ('x')", "DROP TABLE tagpulse.posts",
              "CREATE TABLE tagpulse.evil (a UInt8) ENGINE = Memory", "SELECT * FROM file('/etc/passwd', 'LineAsString')",
              "SELECT 1 SETTINGS readonly = 0"]
    try:
        sink.wait_for("SELECT count() FROM tagpulse.posts", "2")  # post 1 and the trailing post 9999
        for query in writes:  # through the sink's endpoint
            result = sink.sql(query)
            assert result.returncode == 1 and "read-only" in result.stderr, (query, result.stderr)
        result = sink.sql("SELECT 1; DROP TABLE tagpulse.posts")
        assert result.returncode == 1 and "one statement" in result.stderr
    finally:
        sink.stop()
    # No sink: `tagpulse sql` opens chDB itself, still read-only.
    for query in writes[:2]:
        result = sink.sql(query)
        assert result.returncode == 1 and "read-only" in result.stderr, (query, result.stderr)
    assert sink.scalar_rows("SELECT count() FROM tagpulse.posts") == [["2"]]


async def produce_stream(bootstrap: str, namespace: str, messages: int, per_message: int, partitions: int,
                         per_transaction: int = 20) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{namespace}-stream",
                                enable_idempotence=True, acks="all", max_request_size=2_000_000, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, messages, per_transaction):
            async with producer.transaction():
                for m in range(start, min(start + per_transaction, messages)):
                    rows = [post(m * per_message + j) for j in range(per_message)]
                    await producer.send(f"{namespace}.posts.unique", orjson.dumps(rows), partition=m % partitions)
                    await producer.send(f"{namespace}.windows", orjson.dumps([dict(WINDOW, window_start=m * 60,
                                                                                   window_end=m * 60 + 60)]),
                                        partition=m % partitions)
    finally:
        await producer.stop()


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(kafka_bootstrap, tmp_path):
    namespace = f"sinkkill-{uuid.uuid4().hex[:8]}"
    partitions, messages, per_message = 3, 300, 200
    total = messages * per_message
    asyncio.run(create_topics(kafka_bootstrap, namespace, partitions))
    sink = Sink(kafka_bootstrap, tmp_path, namespace)
    sink.start()
    producer = subprocess.Popen([sys.executable, "-c", (
        "import asyncio, sys; sys.path.insert(0, 'tests'); import test_sink as t; "
        f"asyncio.run(t.produce_stream({kafka_bootstrap!r}, {namespace!r}, {messages}, {per_message}, {partitions}))")],
        cwd=REPO)
    kills = 0
    try:
        # Kill the sink whenever it has written part of the stream, twice.
        for _ in range(2):
            deadline = time.monotonic() + 120
            before = int(sink.scalar_rows("SELECT count() FROM tagpulse.posts")[0][0])
            while time.monotonic() < deadline:
                now = int(sink.scalar_rows("SELECT count() FROM tagpulse.posts")[0][0])
                if now > before or now >= total:
                    break
                time.sleep(0.2)
            if now >= total:
                break
            sink.kill()
            kills += 1
            sink.start()
        assert producer.wait(300) == 0
        sink.wait_for("SELECT count() FROM tagpulse.posts", str(total), timeout=180)
        sink.wait_for("SELECT count() FROM tagpulse.reach_windows", str(messages), timeout=60)
        time.sleep(2)  # anything still in flight would land now and show up as a duplicate
        assert sink.scalar_rows("SELECT count(), uniqExact(post_id), uniqExact(_partition, _offset) "
                                "FROM tagpulse.posts") == [[str(total), str(total), str(messages)]]
        assert sink.scalar_rows("SELECT count(), uniqExact(window_start) FROM tagpulse.reach_windows") == \
            [[str(messages), str(messages)]]
        # Every message's rows landed together: each (partition, offset) holds a whole message.
        assert sink.scalar_rows("SELECT DISTINCT count() FROM tagpulse.posts GROUP BY _partition, _offset") == \
            [[str(per_message)]]
    finally:
        if producer.poll() is None:
            producer.kill()
        sink.stop()
    assert kills >= 1, "the sink finished before it could be killed; make the stream longer"
