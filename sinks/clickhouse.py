"""ClickHouse access for tagpulse: one code path for embedded chDB and a server.

`connect(url)` takes either `chdb:///path/to/dir` (embedded, in-process) or
`http(s)://user:password@host:port/db` (a server) and returns a clickhouse_connect
client. Everything above this module is the same for both.

Pure helpers (URL masking, statement splitting, batch encoding) come first and
need no I/O; the thin shell over clickhouse_connect follows. clickhouse_connect
is imported inside functions so that `tagpulse --help` stays fast.

How a batch is written (the exactly-once half that lives in ClickHouse):
each Kafka message value is a JSON array of rows. We never decode it in Python:
a batch of messages is encoded as RowBinary rows (partition, offset, body) and
ONE `INSERT … SELECT … ARRAY JOIN JSONExtract(body, …)` expands them inside
ClickHouse. All rows of a message share its (_partition, _offset); the insert
is one block, hence one part, hence atomic (see INSERT_SETTINGS).
"""
from __future__ import annotations

import fcntl
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse, urlunparse

DATABASE = "tagpulse"
SQL_DIR = Path(__file__).with_name("sql")

# Make one INSERT one block (hence one part, hence atomic): never split the
# stream into parallel pipelines and squash everything we send into one block.
# A flush is bounded (FLUSH_MAX_BYTES in service.py), so memory stays bounded.
INSERT_SETTINGS = {
    "max_threads": 1,
    "max_insert_threads": 1,
    "min_insert_block_size_rows": 1_000_000_000_000,
    "min_insert_block_size_bytes": 1_000_000_000_000,
    "max_insert_block_size": 1_000_000_000_000,
    "input_format_parallel_parsing": 0,
}
# In the statement, not per call: clickhouse-connect's chDB backend applies per-call settings by
# reading system.settings, SETting each one and restoring it afterwards — 14 engine calls around
# every insert, ≈10 % of the sink's CPU in the benchmark. A SETTINGS clause is one call, the same
# for a ClickHouse server.
_INSERT_SETTINGS_CLAUSE = ", ".join(f"{name} = {value}" for name, value in INSERT_SETTINGS.items())

# Settings for every query an analyst sends: ClickHouse itself refuses writes,
# DDL, table functions that touch files or URLs, and changing these settings.
READONLY_SETTINGS = {"max_execution_time": 120, "readonly": 1}  # readonly last: it freezes settings

OUTPUT_FORMATS = ("TSVWithNames", "TSV", "CSVWithNames", "CSV", "JSONEachRow", "JSON", "JSONCompact",
                  "PrettyCompact", "Pretty", "PrettyCompactMonoBlock", "Markdown", "Vertical", "TSVRaw",
                  "TabSeparatedWithNames", "TabSeparated", "Values", "Parquet", "Native")


# --------------------------------------------------------------------------- pure helpers
def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe for logs and messages."""
    try:
        parsed = urlparse(url)
    except ValueError:
        return "<unparseable url>"
    if parsed.password is None:
        return url
    user = parsed.username or ""
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    return urlunparse(parsed._replace(netloc=f"{user}:***@{host}"))


def mask_secrets(text: str, url: str) -> str:
    """Remove the URL's password from any text (error messages may echo the URL)."""
    try:
        password = urlparse(url).password
    except ValueError:
        password = None
    if password:
        # urlparse leaves the password percent-encoded; errors may echo either form.
        for form in sorted({password, unquote(password), quote(unquote(password), safe="")}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def embedded_path(url: str) -> Path | None:
    """The chDB data directory of a chdb:// URL (chdb:///abs/path or chdb://relative)."""
    if not is_embedded(url):
        return None
    parsed = urlparse(url)
    location = parsed.path if not parsed.netloc else parsed.netloc + parsed.path
    if location in ("", "memory", ":memory:"):
        return None
    return Path(unquote(location))


_MIGRATION_NAME = re.compile(r"^(\d{3,})_[A-Za-z0-9_]+\.sql$")


def migration_files(directory: Path = SQL_DIR) -> list[tuple[int, str, Path]]:
    """(version, name, path) of every NNN_name.sql file, by version; duplicate versions are an error."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNN_description.sql")
        found.append((int(match.group(1)), path.stem, path))
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}")
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """Split SQL text on `;` outside quotes and comments; drops empty statements and comments."""
    statements, current = [], []
    i, n = 0, len(sql)
    quote_char = None
    while i < n:
        ch = sql[i]
        if quote_char:
            current.append(ch)
            if ch == "\\" and i + 1 < n:
                current.append(sql[i + 1])
                i += 2
                continue
            if ch == quote_char:
                quote_char = None
        elif ch in ("'", '"', "`"):
            quote_char = ch
            current.append(ch)
        elif sql.startswith("--", i) or ch == "#" and sql.startswith("#!", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        elif ch == ";":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    statements.append("".join(current))
    return [s.strip() for s in statements if s.strip()]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_PARTITION_OFFSET = struct.Struct("<HQ")


def encode_messages(messages: list[tuple[int, int, bytes]]) -> bytes:
    """RowBinary rows (_partition UInt16, _offset UInt64, body String) for a batch of messages."""
    parts = []
    for partition, offset, body in messages:
        parts.append(_PARTITION_OFFSET.pack(partition, offset))
        parts.append(_varint(len(body)))
        parts.append(body)
    return b"".join(parts)


def drop_present(messages: list[tuple[int, int, bytes]], stored: dict[int, int]) -> list[tuple[int, int, bytes]]:
    """Messages whose offset is above the largest offset stored for their partition."""
    return [m for m in messages if m[1] > stored.get(m[0], -1)]


@dataclass(frozen=True)
class TableSpec:
    """How one topic's JSON rows become one table's columns."""

    table: str
    topic_attr: str           # attribute of config.Topics
    count_key: bytes          # a key every row has once: counts rows without decoding (orjson writes no spaces)
    json_type: str            # the Tuple type JSONExtract reads each row as
    columns: tuple[str, ...]  # target columns, in order
    select: tuple[str, ...]   # matching expressions over the tuple `r`

    def insert_sql(self, source: str) -> str:
        return (
            f"INSERT INTO {DATABASE}.{self.table} ({', '.join(self.columns)}, _partition, _offset)\n"
            f"SETTINGS {_INSERT_SETTINGS_CLAUSE}\n"
            f"SELECT {', '.join(self.select)}, _partition, _offset\n"
            f"FROM {source}\n"
            f"ARRAY JOIN JSONExtract(body, 'Array({self.json_type})') AS r"
        )


TABLES: dict[str, TableSpec] = {
    "posts": TableSpec(
        table="posts",
        topic_attr="unique_posts",
        count_key=b'"post_id":',
        json_type=("Tuple(platform String, post_id String, author_id String, author_handle String, "
                   "author_followers UInt64, created_at String, lang Nullable(String), text Nullable(String), "
                   "hashtags Array(String), is_share Bool, original_post_id Nullable(String), likes UInt64, "
                   "shares UInt64, replies UInt64, quotes UInt64)"),
        columns=("platform", "post_id", "author_id", "author_handle", "author_followers", "created_at", "lang",
                 "text", "hashtags", "is_share", "original_post_id", "likes", "shares", "replies", "quotes",
                 "ingested_at"),
        select=("r.platform", "r.post_id", "r.author_id", "r.author_handle", "r.author_followers",
                "parseDateTimeBestEffort(r.created_at, 'UTC')", "ifNull(r.lang, '')", "ifNull(r.text, '')",
                "r.hashtags", "r.is_share", "ifNull(r.original_post_id, '')", "r.likes", "r.shares", "r.replies",
                "r.quotes", "now64(3, 'UTC')"),
    ),
    # Rows come as arrays (tagpulse.core.windows.WINDOW_ROW_FIELDS, the tuple's order) or, written
    # by older workers, as objects: JSONExtract reads a named Tuple from either, so one insert
    # takes a batch holding both.
    "reach_windows": TableSpec(
        table="reach_windows",
        topic_attr="windows",
        count_key=b'"closed_at":',
        json_type=("Tuple(tag String, platform String, window_size UInt32, window_start Int64, window_end Int64, "
                   "posts UInt64, originals UInt64, shares UInt64, unique_authors UInt64, potential_reach UInt64, "
                   "impressions UInt64, engagement UInt64, closed_at Float64)"),
        columns=("tag", "platform", "window_size", "window_start", "window_end", "posts", "originals", "shares",
                 "unique_authors", "potential_reach", "impressions", "engagement", "closed_at"),
        select=("r.tag", "r.platform", "r.window_size", "toDateTime(r.window_start, 'UTC')",
                "toDateTime(r.window_end, 'UTC')", "r.posts", "r.originals", "r.shares", "r.unique_authors",
                "r.potential_reach", "r.impressions", "r.engagement", "toDateTime64(r.closed_at, 3, 'UTC')"),
    ),
    "late_events": TableSpec(
        table="late_events",
        topic_attr="late",
        count_key=b'"events":',
        json_type="Tuple(tag String, platform String, window_size UInt32, window_start Int64, events UInt64)",
        columns=("tag", "platform", "window_size", "window_start", "events"),
        select=("r.tag", "r.platform", "r.window_size", "toDateTime(r.window_start, 'UTC')", "r.events"),
    ),
    "dead_letters": TableSpec(
        table="dead_letters",
        topic_attr="dead_letters",
        count_key=b'"reason":',
        json_type=("Tuple(stage String, reason String, raw String, raw_bytes UInt64, source String, "
                   "at Nullable(Float64))"),
        columns=("stage", "reason", "raw", "raw_bytes", "source", "at"),
        # Dead letters from the worker carry no `at`: the sink's clock is the next best thing.
        select=("r.stage", "r.reason", "r.raw", "r.raw_bytes", "r.source",
                "ifNull(toDateTime64(r.at, 3, 'UTC'), now64(3, 'UTC'))"),
    ),
    "spikes": TableSpec(
        table="spikes",
        topic_attr="spikes",
        count_key=b'"method":',
        json_type=("Tuple(tag String, platform String, window_size UInt32, window_start Int64, detected_at Int64, "
                   "observed UInt64, expected Float64, score Float64, method String, reason String)"),
        columns=("tag", "platform", "window_size", "window_start", "detected_at", "observed", "expected", "score",
                 "method", "reason"),
        select=("r.tag", "r.platform", "r.window_size", "toDateTime(r.window_start, 'UTC')",
                "toDateTime(r.detected_at, 'UTC')", "r.observed", "r.expected", "r.score", "r.method", "r.reason"),
    ),
    # Per-source data quality, 1-minute windows; a key may repeat across messages: sum() it.
    "completeness": TableSpec(
        table="completeness",
        topic_attr="completeness",
        count_key=b'"invalid":',
        json_type=("Tuple(platform String, window_start Int64, received UInt64, duplicates UInt64, late UInt64, "
                   "invalid UInt64)"),
        columns=("platform", "window_start", "received", "duplicates", "late", "invalid"),
        select=("r.platform", "toDateTime(r.window_start, 'UTC')", "r.received", "r.duplicates", "r.late",
                "r.invalid"),
    ),
}

INPUT_STRUCTURE = "_partition UInt16, _offset UInt64, body String"


def count_rows(spec: TableSpec, value: bytes) -> int:
    """Rows in one message without decoding it (exact for orjson output; at least 1 for the batch limits)."""
    rows = value.count(spec.count_key)
    if not rows and value.startswith(b"[["):
        # Rows as arrays of scalars led by two strings (the windows topic: tag, platform, …;
        # tagpulse.core.windows.WINDOW_ROW_FIELDS). Between two rows stands `],["`. Inside a string
        # the `"` would have to be its closing quote (JSON escapes the others): a tag ending in `],[`,
        # which is followed by `","` and the platform. A row's tag is never empty, so `],[","` is
        # never a boundary, and the difference counts the boundaries exactly.
        return value.count(b'],["') - value.count(b'],[","') + 1
    return rows


# --------------------------------------------------------------------------- shell
class ClickHouseError(Exception):
    """A failure talking to ClickHouse, with the password already masked."""


def connect(url: str, readonly: bool = False, settings: dict | None = None):
    """A clickhouse_connect client for a chdb:// or http(s):// URL (secrets stay in the URL/env)."""
    import clickhouse_connect

    all_settings = dict(READONLY_SETTINGS if readonly else {})
    all_settings.update(settings or {})
    try:
        if is_embedded(url):
            path = embedded_path(url)
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(dsn=url, settings=all_settings)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ClickHouseError(f"unsupported ClickHouse URL {mask_url(url)!r}: use chdb:///path or http(s)://…")
        return clickhouse_connect.get_client(dsn=url, settings=all_settings, connect_timeout=10,
                                             send_receive_timeout=300)
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError(f"cannot open ClickHouse at {mask_url(url)}: {mask_secrets(str(exc), url)}") from None


def embedded_lock_held(url: str) -> bool:
    """True when another process holds the chDB directory of `url` (its status-file lock)."""
    path = embedded_path(url)
    if path is None:
        return False
    status = path / "status"
    if not status.exists():
        return False
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def apply_migrations(client, directory: Path = SQL_DIR) -> list[str]:
    """Apply every migration file not yet recorded in tagpulse.schema_migrations; returns their names."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {DATABASE}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version")
    applied = {row[0] for row in client.query(f"SELECT version FROM {DATABASE}.schema_migrations").result_rows}
    done = []
    for version, name, path in migration_files(directory):
        if version in applied:
            continue
        for statement in split_statements(path.read_text(encoding="utf-8")):
            client.command(statement)
        client.command(
            f"INSERT INTO {DATABASE}.schema_migrations (version, name, applied_at) "
            "VALUES ({version:UInt32}, {name:String}, now64(3, 'UTC'))",
            parameters={"version": version, "name": name})
        done.append(name)
    return done


def stored_offsets(client, table: str) -> dict[int, int]:
    """Largest Kafka offset stored per partition in one table: where the sink resumes."""
    spec = TABLES[table]
    rows = client.query(
        f"SELECT _partition, max(_offset) FROM {DATABASE}.{spec.table} GROUP BY _partition").result_rows
    return {int(p): int(o) for p, o in rows}


def insert_messages(client, url: str, table: str, messages: list[tuple[int, int, bytes]],
                    spool_dir: Path | None = None) -> None:
    """ONE insert of every row of these messages into `table` (atomic: one block, one part)."""
    if not messages:
        return
    spec = TABLES[table]
    data = encode_messages(messages)
    if is_embedded(url):
        # chDB has no request body: it reads the batch from a spool file via file().
        # The readonly SQL endpoint cannot call file(), so the spool stays private.
        fd, name = tempfile.mkstemp(prefix=f"{table}-", suffix=".rowbinary", dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            quoted = name.replace("\\", "\\\\").replace("'", "\\'")
            source = f"file('{quoted}', 'RowBinary', '{INPUT_STRUCTURE}')"
            client.command(spec.insert_sql(source))
        finally:
            try:
                os.unlink(name)
            except OSError:
                pass
    else:
        source = f"input('{INPUT_STRUCTURE}')"
        client.command(spec.insert_sql(source) + "\nFORMAT RowBinary", data=data)
