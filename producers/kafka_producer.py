"""Canonical posts → the raw topic, in batches (docs/architecture.md, "Topics and wire formats").

Wire format: each Kafka message on `settings.topics.raw` is a JSON ARRAY of canonical posts, all
routed to the partition Kafka's default partitioner would give their key `platform:post_id`
(murmur2(key) & 0x7fffffff) % P — so a duplicate meets its original in one partition whichever
producer sent it, batched or single. A message holds at most `batch_size` posts (default 500)
and at most MAX_MESSAGE_BYTES (the broker's default max.message.bytes is ~1 MB); a partition's
buffer is sent when it is full or when its oldest post has waited `linger_s`.

Invalid records go to `settings.topics.dead_letters` as JSON arrays of
{"stage": "produce", "reason", "raw" (first 64 KiB, invalid UTF-8 replaced), "raw_bytes",
"source" (file:line), "at"}; nothing ever raises for bad input.

Why batches: the stream stage pays per Kafka message (issue 5: ≈270 µs of Faust overhead per
message), so 500 posts per message amortise it; and the producer itself would spend more time
in aiokafka's per-record path than in parsing if it sent posts one by one.

Layout: a pure core (`murmur2_batch`, `partitions_for`, `Batcher`, `parse_lines`,
`BlockSplitter`, `encode_block`, `dead_letter`) unit-tested without Kafka, and a thin async shell
(`RawProducer`, `produce_posts`, `produce_files`, `send_raw`).
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import msgspec
import numpy as np
import orjson

DEFAULT_BATCH_POSTS = 500
MAX_MESSAGE_BYTES = 900_000          # JSON bytes of one message; the broker's default limit is 1,048,588
DEFAULT_LINGER_S = 0.05
DEAD_LETTER_RAW_CHARS = 65_536       # architecture.md: the first 64 KiB of the record
READ_CHUNK = 1 << 20                 # file/stdin reads
CHUNK_LINES = 2_000                  # lines parsed per step between sends

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


# --------------------------------------------------------------------------- routing (pure)
def murmur2_batch(keys: Sequence[bytes]) -> np.ndarray:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) of many keys, as uint32.

    Vectorised over keys of equal length: aiokafka's pure-Python murmur2 costs ≈4 µs a key,
    which alone would cap the producer near 250k posts/s on one core.
    """
    n = len(keys)
    out = np.empty(n, dtype=np.uint32)
    if n == 0:
        return out
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    with np.errstate(over="ignore"):
        for length in np.unique(lengths).tolist():
            idx = np.flatnonzero(lengths == length)
            rows = np.frombuffer(b"".join([keys[i] for i in idx.tolist()]), dtype=np.uint8).reshape(len(idx), length)
            h = np.full(len(idx), (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
            blocks = length // 4
            if blocks:
                words = np.ascontiguousarray(rows[:, :blocks * 4]).view("<u4")
                for j in range(blocks):
                    k = words[:, j] * _M
                    k ^= k >> np.uint32(24)
                    k *= _M
                    h *= _M
                    h ^= k
            tail, base = length % 4, blocks * 4
            if tail >= 3:
                h ^= rows[:, base + 2].astype(np.uint32) << np.uint32(16)
            if tail >= 2:
                h ^= rows[:, base + 1].astype(np.uint32) << np.uint32(8)
            if tail >= 1:
                h ^= rows[:, base].astype(np.uint32)
                h *= _M
            h ^= h >> np.uint32(13)
            h *= _M
            h ^= h >> np.uint32(15)
            out[idx] = h
    return out


def partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """The partition Kafka's default partitioner gives each key: (murmur2 & 0x7fffffff) % P."""
    if partitions <= 1:
        return [0] * len(keys)
    return ((murmur2_batch(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()


def post_key(post: dict) -> bytes:
    return f"{post['platform']}:{post['post_id']}".encode()


# --------------------------------------------------------------------------- batching (pure)
# Posts travel from the parser to the batcher as SEGMENTS: one bytes blob per partition holding
# each post's JSON followed by a comma, plus the cumulative end offset of every post. Keeping
# thousands of small bytes objects alive made orjson's allocations cost ≈4.8 µs a post (measured:
# 0.3 µs when each output is copied into one growing buffer and freed at once), and a blob
# pickles in one copy when a parser process made it.
Segment = tuple[bytes, np.ndarray]      # (b'{post},{post},', int64 cumulative ends incl. commas)


def _orjson_write(obj: Any, buf: bytearray) -> None:
    buf += orjson.dumps(obj)


def encode_segments(posts: Sequence[Any], partitions: Sequence[int],
                    write: Callable[[Any, bytearray], Any] = _orjson_write) -> dict[int, Segment]:
    """Objects and their partitions → one segment per partition (order kept within a partition).

    `write(obj, buffer)` appends obj's JSON to the buffer.
    """
    buffers: dict[int, bytearray] = {}
    ends: dict[int, list[int]] = {}
    for partition, post in zip(partitions, posts):
        buf = buffers.get(partition)
        if buf is None:
            buf = buffers[partition] = bytearray()
            ends[partition] = []
        write(post, buf)
        buf.append(44)  # b","
        ends[partition].append(len(buf))
    return {p: (bytes(buf), np.asarray(ends[p], dtype=np.int64)) for p, buf in buffers.items()}


def _append_encoded(item: bytes, buf: bytearray) -> None:
    buf += item


class Batcher:
    """Per-partition buffers of JSON items → ready messages (JSON arrays).

    A message holds at most `max_items` items and at most `max_bytes` bytes (a single item bigger
    than that still goes, alone); `stale(now, linger)` and `drain()` emit partial buffers. Work
    is per segment and per message, not per item.
    """

    __slots__ = ("max_items", "max_bytes", "_pieces", "_count", "_size", "_since", "ready")

    def __init__(self, max_items: int = DEFAULT_BATCH_POSTS, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_items = max(1, int(max_items))
        self.max_bytes = max_bytes
        self._pieces: dict[Any, list[bytes]] = {}   # runs of 'item,' bytes
        self._count: dict[Any, int] = {}
        self._size: dict[Any, int] = {}             # Σ (item + comma) bytes; the message is size + 1
        self._since: dict[Any, float] = {}
        self.ready: list[tuple[Any, bytes, int]] = []   # (partition, value, items)

    def add(self, partition: Any, item: bytes, now: float = 0.0) -> None:
        self.add_segment(partition, item + b",", np.array([len(item) + 1], dtype=np.int64), now)

    def add_routed(self, partitions: Sequence[int], items: Sequence[bytes], now: float = 0.0) -> None:
        """Encoded items with their partitions (order kept within a partition)."""
        for partition, segment in encode_segments(items, partitions, _append_encoded).items():
            self.add_segment(partition, *segment, now=now)

    def add_segment(self, partition: Any, blob: bytes, ends: np.ndarray, now: float = 0.0) -> None:
        total = len(ends)
        start = 0
        while start < total:
            count = self._count.get(partition, 0)
            size = self._size.get(partition, 0)
            base = int(ends[start - 1]) if start else 0
            # posts start..stop-1 fit if size + (ends[stop-1] - base) + 1 ≤ max_bytes
            stop = int(np.searchsorted(ends, base + self.max_bytes - 1 - size, side="right"))
            stop = min(stop, start + self.max_items - count)
            if stop <= start:
                if count:
                    self._emit(partition)
                    continue
                stop = start + 1          # one item over max_bytes: alone
            if not count:
                self._pieces[partition] = []
                self._since[partition] = now
            self._pieces[partition].append(blob[base:int(ends[stop - 1])])
            self._count[partition] = count + stop - start
            self._size[partition] = size + int(ends[stop - 1]) - base
            start = stop
            if self._count[partition] >= self.max_items or self._size[partition] + 1 >= self.max_bytes:
                self._emit(partition)

    def _emit(self, partition: Any) -> None:
        pieces = self._pieces.pop(partition, None)
        count = self._count.pop(partition, 0)
        self._size.pop(partition, None)
        self._since.pop(partition, None)
        if count:
            joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.ready.append((partition, b"[" + joined[:-1] + b"]", count))

    def stale(self, now: float, linger: float) -> None:
        for partition, since in list(self._since.items()):
            if now - since >= linger:
                self._emit(partition)

    def drain(self) -> None:
        for partition in list(self._count):
            self._emit(partition)

    def take(self) -> list[tuple[Any, bytes, int]]:
        ready, self.ready = self.ready, []
        return ready

    @property
    def buffered(self) -> int:
        return sum(self._count.values())


# --------------------------------------------------------------------------- dead letters (pure)
def dead_letter(reason: str, raw: bytes | str, source: str, at: float | None = None,
                raw_bytes: int | None = None) -> dict:
    """One dead-letter record (architecture.md); `raw_bytes` overrides len(raw) for a cut record."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        size = len(raw) if raw_bytes is None else raw_bytes
        text = raw[:DEAD_LETTER_RAW_CHARS * 4].decode("utf-8", errors="replace")[:DEAD_LETTER_RAW_CHARS]
    else:
        text = str(raw)
        size = len(text.encode("utf-8", errors="replace")) if raw_bytes is None else raw_bytes
        text = text[:DEAD_LETTER_RAW_CHARS]
    return {"stage": "produce", "reason": str(reason)[:1000], "raw": text, "raw_bytes": int(size),
            "source": source, "at": time.time() if at is None else at}


# --------------------------------------------------------------------------- lines (pure)
@dataclass(frozen=True)
class Oversize:
    """A line longer than the record limit: only its head is kept, whatever its size."""

    head: bytes
    size: int


class BlockSplitter:
    """Byte chunks → blocks of complete lines, memory bounded by `limit` per unfinished line.

    feed() returns, in input order, blocks (bytes: complete lines joined by b"\\n", without the
    final newline; a block of k lines holds k-1 newlines) and Oversize markers for lines longer
    than `limit`, of which only the first 64 KiB are kept. Splitting a block into lines is left
    to the parser (possibly in another process), so the reader costs O(1) Python work per chunk.
    """

    __slots__ = ("limit", "_partial", "_over_head", "_over_size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partial = b""
        self._over_head: bytes | None = None   # head of the oversize line being drained
        self._over_size = 0

    def feed(self, data: bytes) -> list:
        out: list = []
        if not data:
            return out
        if self._over_head is not None:
            nl = data.find(b"\n")
            if nl < 0:
                self._over_size += len(data)
                return out
            out.append(Oversize(self._over_head, self._over_size + nl))
            self._over_head, self._over_size = None, 0
            data = data[nl + 1:]
        if self._partial:
            data = self._partial + data
            self._partial = b""
        nl = data.rfind(b"\n")
        if nl >= 0:
            out.append(data[:nl])
            data = data[nl + 1:]
        if len(data) > self.limit:
            # an unfinished line already over the limit: keep its head, count the rest
            self._over_head, self._over_size = data[:DEAD_LETTER_RAW_CHARS], len(data)
        else:
            self._partial = data
        return out

    def finish(self) -> list:
        out: list = []
        if self._over_head is not None:
            out.append(Oversize(self._over_head, self._over_size))
        elif self._partial:
            out.append(self._partial)
        self._partial, self._over_head, self._over_size = b"", None, 0
        return out


def block_lines(block) -> int:
    return 1 if type(block) is Oversize else block.count(b"\n") + 1


@dataclass
class Parsed:
    posts: list[dict] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)    # dead-letter records
    skipped: int = 0
    records: int = 0


def parse_lines(lines: Iterable, fmt: str, source: str, first_line: int, at: float | None = None,
                out: Parsed | None = None) -> Parsed:
    """Lines of a JSONL file → canonical posts, dead-letter records and skips. Never raises.

    Canonical records take a fast path (orjson.loads → validate_post); anything else goes
    through producers.adapters (auto-detected unless `fmt` forces a format).
    """
    from producers.adapters import MAX_RECORD_BYTES, parse_record_detailed
    from schemas.post import InvalidRecord, validate_post

    result = out if out is not None else Parsed()
    posts, invalid = result.posts, result.invalid
    append = posts.append
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    canonical_ok = fmt in ("auto", "canonical")
    now = time.time() if at is None else at
    seen = blank = 0
    for number, line in enumerate(lines, first_line):
        seen += 1
        if type(line) is not bytes:  # Oversize
            invalid.append(dead_letter("record_too_large", line.head, f"{source}:{number}", now, line.size))
            continue
        if len(line) > MAX_RECORD_BYTES:
            invalid.append(dead_letter("record_too_large", line, f"{source}:{number}", now))
            continue
        try:
            obj = loads(line)
        except decode_error:
            if not line.strip():
                blank += 1  # blank lines separate nothing and are not records
                continue
            invalid.append(dead_letter(_decode_reason(line), line, f"{source}:{number}", now))
            continue
        if canonical_ok and type(obj) is dict and "post_id" in obj and "platform" in obj and "author_id" in obj:
            try:
                append(validate_post(obj))
            except InvalidRecord as exc:
                invalid.append(dead_letter(exc.reason, line, f"{source}:{number}", now))
            except Exception as exc:  # validate_post promises InvalidRecord only; never stop the stream
                invalid.append(dead_letter(f"malformed:{type(exc).__name__}", line, f"{source}:{number}", now))
            continue
        got = parse_record_detailed(obj, fmt)
        posts.extend(got.posts)
        for reason in got.invalid:
            invalid.append(dead_letter(reason, line, f"{source}:{number}", now))
        if got.skipped is not None:
            result.skipped += 1
    result.records += seen - blank
    return result


def _decode_reason(line: bytes) -> str:
    from producers.adapters import decode_json
    from schemas.post import InvalidRecord

    try:
        decode_json(line)
    except InvalidRecord as exc:
        return exc.reason
    return "invalid_json"


def validate_posts(posts: Iterable[dict], source: str, out: Parsed) -> Parsed:
    """Dicts claiming to be canonical posts → clean posts + dead letters (for produce_posts)."""
    from schemas.post import InvalidRecord, validate_post

    now = time.time()
    for n, post in enumerate(posts):
        out.records += 1
        try:
            out.posts.append(validate_post(post))
        except InvalidRecord as exc:
            out.invalid.append(dead_letter(exc.reason, _safe_dumps(post), f"{source}:{n + 1}", now))
        except Exception as exc:
            out.invalid.append(dead_letter(f"malformed:{type(exc).__name__}", _safe_dumps(post), f"{source}:{n + 1}",
                                           now))
    return out


def _safe_dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=str)
    except Exception:
        return repr(obj).encode("utf-8", errors="replace")


@dataclass
class Encoded:
    """A parsed block, ready for the batcher: a few blobs, cheap to pickle from a parser process."""

    segments: dict[int, Segment]
    posts: int
    invalid: list[dict]
    skipped: int
    records: int


def encode_posts(posts: list[dict], partitions: int) -> dict[int, Segment]:
    """Canonical posts → segments per partition, routed by Kafka's default partitioner on platform:post_id."""
    keys = [f"{p['platform']}:{p['post_id']}".encode() for p in posts]
    return encode_segments(posts, partitions_for(keys, partitions))


def encode_block(block, fmt: str, source: str, first_line: int, partitions: int, at: float) -> Encoded:
    """One block of lines (or an Oversize line) → routed, encoded posts and dead letters. Pure;
    runs in a parser process when the producer has some."""
    if type(block) is not Oversize and fmt in ("auto", "canonical"):
        encoded = _encode_wire_block(block, source, first_line, partitions, at)
        if encoded is not None:
            return encoded
    lines = [block] if type(block) is Oversize else block.split(b"\n")
    parsed = parse_lines(lines, fmt, source, first_line, at)
    return Encoded(encode_posts(parsed.posts, partitions), len(parsed.posts), parsed.invalid, parsed.skipped,
                   parsed.records)


_wire_encoder = msgspec.json.Encoder()


def _encode_wire_block(block: bytes, source: str, first_line: int, partitions: int, at: float) -> Encoded | None:
    """encode_block for a block whose every line is one complete canonical post (what our own
    tools and most pipelines write): decoded in one msgspec call, ≈2× cheaper than parse_lines.
    None when any line is not (another format, a blank line, bad JSON): the caller takes
    parse_lines for the whole block. A line that decodes but fails finish_wire_post goes
    through parse_lines alone, so posts, dead letters and their line numbers are the same."""
    from producers.adapters import MAX_RECORD_BYTES
    from schemas.post import decode_wire_array, finish_wire_post

    if len(block) > MAX_RECORD_BYTES and max(map(len, block.split(b"\n"))) > MAX_RECORD_BYTES:
        return None
    # Read as one array (newlines become commas), a blank line or two values on one line is a
    # syntax error or a count mismatch, so a decoded array maps item i to line i.
    records = block.count(b"\n") + 1
    posts = decode_wire_array(b"[" + block.replace(b"\n", b",") + b"]")
    if posts is None or len(posts) != records:
        return None
    lines = None
    out: list = []
    invalid: list[dict] = []
    skipped = 0
    for number, post in enumerate(posts, first_line):
        if finish_wire_post(post):
            out.append(post)
            continue
        lines = lines or block.split(b"\n")
        parsed = parse_lines([lines[number - first_line]], "canonical", source, number, at)
        out += parsed.posts
        invalid += parsed.invalid
        skipped += parsed.skipped
    keys = [post_key(p) if type(p) is dict else f"{p.platform}:{p.post_id}".encode() for p in out]
    return Encoded(encode_segments(out, partitions_for(keys, partitions), _wire_write), len(out), invalid, skipped,
                   records)


def _wire_write(post: Any, buf: bytearray) -> None:
    """msgspec writes straight into the partition's buffer: no bytes object per post."""
    _wire_encoder.encode_into(post, buf, -1)


def _init_parser_process(aliases: dict[str, str]) -> None:
    """Parser processes canonicalise with the parent's alias table; they make no cycles, so no GC."""
    import gc

    from tagpulse.core.hashtags import set_aliases

    gc.disable()
    set_aliases(aliases)


def parser_pool(jobs: int):
    """A pool of `jobs` parser processes (spawned: safe next to aiokafka's threads) or None for jobs < 1."""
    if jobs < 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tagpulse.core.hashtags import get_aliases

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_parser_process, initargs=(get_aliases().to_dict(),))


# --------------------------------------------------------------------------- the Kafka shell
@dataclass
class ProduceCounts:
    records: int = 0          # input records (lines / dicts) read
    posts: int = 0            # posts sent to the raw topic
    messages: int = 0         # Kafka messages (batches) on the raw topic
    invalid: int = 0          # records sent to dead letters
    skipped: int = 0          # well-formed records that are not posts (deletes, notices, …)
    dead_letter_messages: int = 0
    bytes: int = 0            # value bytes sent to the raw topic

    def summary(self) -> str:
        return (f"sent {self.posts} posts in {self.messages} messages, {self.invalid} invalid → dead letters, "
                f"{self.skipped} skipped")


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached (the CLI turns this into one line)."""


def compression_type(requested: str = "auto") -> str | None:
    """lz4 when aiokafka's codecs are installed (the `cramjam` extra), else no compression."""
    if requested in (None, "", "none"):
        return None
    from aiokafka import codec

    available = {"lz4": codec.has_lz4(), "zstd": codec.has_zstd(), "gzip": codec.has_gzip(),
                 "snappy": codec.has_snappy()}
    if requested == "auto":
        return "lz4" if available["lz4"] else None
    if not available.get(requested):
        raise ValueError(f"compression {requested!r} is not available (pip install 'aiokafka[lz4,zstd]')")
    return requested


async def ensure_topics(settings) -> None:
    """The pipeline topics exist (created with settings.partitions when missing, by tagpulse.stack)."""
    from tagpulse.stack import StackError
    from tagpulse.stack import ensure_topics as stack_ensure

    try:
        await asyncio.get_running_loop().run_in_executor(None, stack_ensure, settings)
    except StackError as exc:
        raise KafkaUnavailable(str(exc)) from None


def reachable(bootstrap: str, timeout: float = 3.0) -> bool:
    """True if a TCP connection to one of the bootstrap servers succeeds (a fast, quiet first check:
    aiokafka would log a line per retry before giving up)."""
    import socket

    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _security() -> dict:
    try:
        from tagpulse.kafka_security import client_kwargs
    except ImportError:
        return {}
    return client_kwargs()


class RawProducer:
    """Batches canonical posts onto the raw topic and bad records onto the dead-letter topic.

    Use: `async with RawProducer(settings) as producer: producer.add_posts(...); await producer.pump()`.
    `add_*` only buffer (CPU work, no awaits); `pump()` hands ready messages to aiokafka, whose
    accumulator applies back-pressure (one pending batch per partition), so memory stays bounded.
    """

    def __init__(self, settings, *, batch_size: int = DEFAULT_BATCH_POSTS, max_bytes: int = MAX_MESSAGE_BYTES,
                 linger_s: float = DEFAULT_LINGER_S, compression: str = "auto", create_topics: bool = True) -> None:
        self.settings = settings
        self.topic = settings.topics.raw
        self.dead_topic = settings.topics.dead_letters
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.compression = compression_type(compression)
        self.create_topics = create_topics
        self.posts = Batcher(batch_size, max_bytes)
        self.dead = Batcher(100, max_bytes)
        self.counts = ProduceCounts()
        self.partitions = 1
        self._producer = None
        self._pending: list[asyncio.Future] = []

    async def __aenter__(self) -> "RawProducer":
        await self.start()
        return self

    async def __aexit__(self, kind, exc, tb) -> None:
        try:
            if exc is None:
                await self.flush()
        finally:
            await self.stop()

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaConnectionError, KafkaError

        if not await asyncio.get_running_loop().run_in_executor(None, reachable, self.settings.kafka_bootstrap):
            raise KafkaUnavailable(f"no connection to {self.settings.kafka_bootstrap}")
        try:
            if self.create_topics:
                await ensure_topics(self.settings)
            self._producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                compression_type=self.compression, linger_ms=5, max_batch_size=1_000_000,
                max_request_size=1_048_576, request_timeout_ms=30_000, **_security())
            await self._producer.start()
            partitions = await self._producer.partitions_for(self.topic)
        except (KafkaConnectionError, OSError) as exc:
            await self.stop()
            raise KafkaUnavailable(str(exc)) from None
        except KafkaError:
            await self.stop()
            raise
        self.partitions = max(1, len(partitions or ()))

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    # -- buffering (synchronous)
    def add_posts(self, posts: list[dict], now: float | None = None) -> None:
        """Clean canonical posts (validated) → per-partition buffers."""
        if posts:
            self._add_segments(encode_posts(posts, self.partitions), now)
            self.counts.posts += len(posts)

    def add_encoded(self, encoded: Encoded, now: float | None = None) -> None:
        self._add_segments(encoded.segments, now)
        self.counts.posts += encoded.posts
        self.add_dead_letters(encoded.invalid)
        self.counts.skipped += encoded.skipped
        self.counts.records += encoded.records

    def _add_segments(self, segments: dict[int, Segment], now: float | None) -> None:
        now = time.monotonic() if now is None else now
        for partition, (blob, ends) in segments.items():
            self.posts.add_segment(partition, blob, ends, now)

    def add_dead_letters(self, records: list[dict]) -> None:
        dumps = orjson.dumps
        now = time.monotonic()
        for record in records:
            self.dead.add(None, dumps(record), now)
        self.counts.invalid += len(records)

    def add_parsed(self, parsed: Parsed) -> None:
        self.add_posts(parsed.posts)
        self.add_dead_letters(parsed.invalid)
        self.counts.skipped += parsed.skipped
        self.counts.records += parsed.records

    # -- sending
    async def pump(self, linger: bool = True) -> None:
        """Send full buffers (and, with linger, buffers whose oldest post waited linger_s)."""
        if linger:
            self.posts.stale(time.monotonic(), self.linger_s)
            self.dead.stale(time.monotonic(), self.linger_s)
        await self._send_ready()

    async def _send_ready(self) -> None:
        send = self._producer.send
        for partition, value, _items in self.posts.take():
            self._pending.append(await send(self.topic, value, partition=partition))
            self.counts.messages += 1
            self.counts.bytes += len(value)
        for _, value, _items in self.dead.take():
            self._pending.append(await send(self.dead_topic, value))
            self.counts.dead_letter_messages += 1
        if len(self._pending) > 256:
            # the futures of acknowledged messages are dropped; a failure surfaces here or in flush()
            still = []
            for future in self._pending:
                if future.done():
                    future.result()
                else:
                    still.append(future)
            self._pending = still

    async def flush(self) -> None:
        """Send everything buffered and wait until the broker acknowledged all of it."""
        self.posts.drain()
        self.dead.drain()
        await self._send_ready()
        pending, self._pending = self._pending, []
        for future in pending:
            await future


async def produce_posts(settings, posts: Iterable[dict], *, batch_size: int = DEFAULT_BATCH_POSTS,
                        source: str = "posts", chunk: int = CHUNK_LINES, **options) -> ProduceCounts:
    """Validate and send canonical post dicts (in their order, batched and routed). Returns counts."""
    async with RawProducer(settings, batch_size=batch_size, **options) as producer:
        buffer: list[dict] = []
        for post in posts:
            buffer.append(post)
            if len(buffer) >= chunk:
                producer.add_parsed(validate_posts(buffer, source, Parsed()))
                buffer = []
                await producer.pump()
        producer.add_parsed(validate_posts(buffer, source, Parsed()))
    return producer.counts


# --------------------------------------------------------------------------- files and stdin
class _Reader(threading.Thread):
    """Reads a file descriptor in 1 MiB chunks on a thread, so a slow pipe never blocks the
    event loop (linger keeps working); a bounded queue keeps memory bounded."""

    _EOF = object()

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        super().__init__(daemon=True)
        self.fd, self.loop, self.queue = fd, loop, queue
        self.stop_flag = False

    def run(self) -> None:
        try:
            while not self.stop_flag:
                data = os.read(self.fd, READ_CHUNK)
                self._put(data)
                if not data:
                    return
        except OSError as exc:
            self._put(exc)

    def _put(self, item) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop).result()
        except Exception:
            self.stop_flag = True   # the loop is gone (interrupted): just end


async def produce_stream(producer: RawProducer, fd: int, source: str, fmt: str = "auto",
                         on_bytes: Callable[[int], None] | None = None, pool=None, jobs: int = 0) -> None:
    """Read JSONL from a file descriptor and feed the producer, block by block, in input order.

    With a parser `pool` (parser_pool), blocks are parsed and encoded in other processes, up to
    2 × jobs blocks ahead; this process only reads, batches and sends.
    """
    from collections import deque

    from producers.adapters import MAX_RECORD_BYTES

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=4)
    reader = _Reader(fd, loop, queue)
    reader.start()
    splitter = BlockSplitter(MAX_RECORD_BYTES)
    line_number = 1
    inflight: deque = deque()
    ahead = 2 * max(1, jobs) if pool is not None else 0

    async def settle(keep: int) -> None:
        while len(inflight) > keep:
            producer.add_encoded(await inflight.popleft())
            await producer.pump()

    try:
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), timeout=producer.linger_s)
            except asyncio.TimeoutError:
                await producer.pump()   # input is slow: send what waited long enough
                continue
            if isinstance(data, OSError):
                raise data
            now = time.time()
            for block in (splitter.feed(data) if data else splitter.finish()):
                args = (block, fmt, source, line_number, producer.partitions, now)
                line_number += block_lines(block)
                if pool is None:
                    producer.add_encoded(encode_block(*args))
                    await producer.pump()
                else:
                    inflight.append(loop.run_in_executor(pool, encode_block, *args))
                    await settle(ahead)
            if on_bytes is not None and data:
                on_bytes(len(data))
            if not data:
                await settle(0)
                return
    finally:
        reader.stop_flag = True
        for future in inflight:
            future.cancel()
        while not queue.empty():   # unblock the reader if it waits on a full queue
            queue.get_nowait()


# --------------------------------------------------------------------------- raw helper for tests
async def send_raw_async(settings, values: list[bytes], partition: int | None = None,
                         key: bytes | None = None, topic: str | None = None) -> list:
    """Put arbitrary bytes on the raw topic (one message each); returns the RecordMetadata."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                max_request_size=16 * 1024 * 1024, **_security())
    await producer.start()
    try:
        futures = [await producer.send(topic or settings.topics.raw, value, key=key, partition=partition)
                   for value in values]
        return [await future for future in futures]
    finally:
        await producer.stop()


def send_raw(settings, values: list[bytes], partition: int | None = None, key: bytes | None = None,
             topic: str | None = None) -> list:
    """Synchronous send_raw_async (for tests and scripts outside an event loop)."""
    return asyncio.run(send_raw_async(settings, values, partition=partition, key=key, topic=topic))
