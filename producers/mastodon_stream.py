"""Mastodon streaming connector: SSE in, canonical posts out (to any sink).

Protocol (Mastodon streaming API, Server-Sent Events):
  GET /api/v1/streaming/hashtag?tag=TAG   (or …/hashtag/local, /api/v1/streaming/public[/local])
  Authorization: Bearer TOKEN             (optional on most servers for public streams)
  event: update          data: <Status JSON>      → canonical post(s)
  event: status.update   data: <edited Status>    → skipped, counted: the pipeline keeps the first version
  event: delete          data: <status id>        → skipped, counted: the pipeline is append-only
  :thump                 (comment)                → heartbeat

Mastodon's stream has no cursor: whatever is posted while we are disconnected never
comes down the stream. So after every (re)connect, once the new stream is open (its
events wait in the socket meanwhile), we page the REST timeline forward from the
newest status id we have seen — `GET /api/v1/timelines/tag/TAG?min_id=ID&limit=40`
(or `/timelines/public`) until an empty page — and push those too. Overlap between
backfill and stream is harmless: the pipeline deduplicates on platform:post_id.
The newest seen id is persisted after each successful flush, so a restart backfills too.

Pure pieces (LineSplitter, SseParser, Backoff) are tested without I/O; `MastodonStream`
is the thin async shell over aiohttp.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

log = logging.getLogger("tagpulse.ingest.mastodon")

MAX_LINE_BYTES = 10 * 1024 * 1024   # one status is a few KB; a longer line is garbage or an attack
BACKFILL_PAGE = 40                   # Mastodon's maximum page size
BACKFILL_MAX_PAGES = 250             # ≈10,000 statuses per gap: bounded work after a long outage


# --------------------------------------------------------------------------- pure parts
class LineSplitter:
    """Bytes chunks → text lines (LF, CRLF or CR endings), with a bound on line length.

    An over-long line is replaced by None (the caller counts it invalid) and skipped to its end.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max = max_line_bytes
        self.buffer = bytearray()
        self.skipping = False

    def feed(self, chunk: bytes) -> list[str | None]:
        out: list[str | None] = []
        self.buffer += chunk
        while True:
            lf, cr = self.buffer.find(b"\n"), self.buffer.find(b"\r")
            cut = min(i for i in (lf, cr, len(self.buffer)) if i >= 0)
            if cut == len(self.buffer):
                if len(self.buffer) > self.max:
                    if not self.skipping:
                        out.append(None)
                    self.skipping = True
                    self.buffer.clear()
                return out
            if cut == cr and cut + 1 == len(self.buffer):
                return out  # a CR at the end may be the first half of CRLF: wait for more
            ending = 2 if cut == cr and self.buffer[cut + 1:cut + 2] == b"\n" else 1
            line = bytes(self.buffer[:cut])
            del self.buffer[:cut + ending]
            if self.skipping:
                self.skipping = False
                continue
            if len(line) > self.max:
                out.append(None)
                continue
            out.append(line.decode("utf-8", errors="replace"))


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None = None


class SseParser:
    """The event-stream rules of the WHATWG spec that Mastodon uses: fields event/data/id, comments, blank-line dispatch."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SseEvent | str | None:
        """An SseEvent when a blank line completes one, the text of a comment line, else None."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            done = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return done
        if line.startswith(":"):
            return line[1:].strip()
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


class Backoff:
    """Exponential backoff with jitter: base·2^n capped, then a random point in its upper half.

    Jitter keeps many clients from reconnecting in lock-step after a server restart;
    the upper half keeps the delay growing so a dead server is not hammered.
    """

    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def status_id_key(status_id: Any) -> int | None:
    """Mastodon ids are decimal strings (snowflakes); compare them as numbers."""
    text = str(status_id or "")
    return int(text) if text.isdigit() else None


def stream_path(tag: str | None, public: bool, local: bool) -> tuple[str, dict]:
    suffix = "/local" if local else ""
    if public or not tag:
        return f"/api/v1/streaming/public{suffix}", {}
    return f"/api/v1/streaming/hashtag{suffix}", {"tag": tag}


def timeline_path(tag: str | None, public: bool, local: bool) -> tuple[str, dict]:
    extra = {"local": "true"} if local else {}
    if public or not tag:
        return "/api/v1/timelines/public", extra
    from urllib.parse import quote

    return f"/api/v1/timelines/tag/{quote(tag, safe='')}", extra


# --------------------------------------------------------------------------- shell
class Sink(Protocol):
    async def add(self, posts: list[dict]) -> None: ...
    async def flush(self) -> None: ...
    async def dead_letter(self, reason: str, raw: bytes | str, source: str) -> None: ...


class FatalStreamError(Exception):
    """Retrying cannot help (bad token, unknown endpoint): a message for the user."""


@dataclass
class Stats:
    connections: int = 0
    reconnects: int = 0
    events: int = 0
    updates: int = 0
    backfilled: int = 0
    posts: int = 0
    invalid: int = 0
    heartbeats: int = 0
    skipped: dict = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"connections {self.connections} (reconnects {self.reconnects}), events {self.events}, "
                f"updates {self.updates}, backfilled {self.backfilled}, posts pushed {self.posts}, "
                f"invalid {self.invalid}, skipped: {skipped}")


def read_token(token_file: str | None) -> str | None:
    """The access token from --token-file or TAGPULSE_MASTODON_TOKEN; never logged."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FatalStreamError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        if not token:
            raise FatalStreamError(f"the token file {token_file} is empty")
        return token
    return os.environ.get("TAGPULSE_MASTODON_TOKEN") or None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class MastodonOptions:
    instance: str
    tag: str | None = None
    public: bool = False
    local: bool = False
    token: str | None = None
    state_file: Path | None = None     # newest seen status id, for backfill after a restart
    backfill: bool = True
    flush_every: float = 1.0
    batch: int = 500
    max_posts: int | None = None       # stop after this many distinct posts (demos, tests)
    read_timeout: float = 120.0        # no byte (not even a heartbeat) for this long: reconnect
    backoff_cap: float = 60.0
    backoff_base: float = 1.0


class MastodonStream:
    def __init__(self, options: MastodonOptions, sink: Sink, parse: Callable[[dict], list[dict]],
                 invalid_error: type[Exception] = ValueError) -> None:
        self.o = options
        self.sink = sink
        self.parse = parse
        self.invalid_error = invalid_error
        self.stats = Stats()
        self.backoff = Backoff(options.backoff_base, options.backoff_cap)
        self.last_id: int | None = self._load_state()
        self._unflushed_id: int | None = self.last_id
        self._keys: set[str] = set()
        self._lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._pending = 0
        self.done = asyncio.Event()

    # -- state
    def _load_state(self) -> int | None:
        path = self.o.state_file
        if not path or not path.exists():
            return None
        try:
            return status_id_key(json.loads(path.read_text()).get("last_id"))
        except (OSError, ValueError, AttributeError):
            log.warning("ignoring unreadable state file %s", path)
            return None

    async def flush(self) -> None:
        async with self._lock:
            await self.sink.flush()
            self._last_flush = time.monotonic()
            self._pending = 0
            if self.o.state_file and self._unflushed_id is not None:
                _write_atomic(self.o.state_file, json.dumps({"last_id": str(self._unflushed_id),
                                                             "instance": self.o.instance, "tag": self.o.tag}))

    # -- records
    async def handle_status(self, status: Any, source: str) -> None:
        if not isinstance(status, dict):
            self.stats.invalid += 1
            await self.sink.dead_letter("status is not a JSON object", json.dumps(status)[:65536], source)
            return
        try:
            posts = self.parse(status)
        except self.invalid_error as exc:
            self.stats.invalid += 1
            await self.sink.dead_letter(str(exc), json.dumps(status, ensure_ascii=False), source)
            return
        sid = status_id_key(status.get("id"))
        async with self._lock:
            if sid is not None:
                self.last_id = max(self.last_id or 0, sid)
                self._unflushed_id = self.last_id
            await self.sink.add(posts)
        self.stats.posts += len(posts)
        for post in posts:
            if self.o.max_posts is not None and len(self._keys) < self.o.max_posts:
                self._keys.add(f"{post.get('platform')}:{post.get('post_id')}")
        if self.o.max_posts is not None and len(self._keys) >= self.o.max_posts:
            self.done.set()
        self._pending += len(posts)
        if self._pending >= self.o.batch or time.monotonic() - self._last_flush >= self.o.flush_every:
            await self.flush()

    async def handle_event(self, event: SseEvent, source: str) -> None:
        self.stats.events += 1
        if event.event == "update":
            self.stats.updates += 1
            try:
                status = json.loads(event.data)
            except ValueError as exc:
                self.stats.invalid += 1
                await self.sink.dead_letter(f"update event data is not JSON: {exc}", event.data[:65536], source)
                return
            await self.handle_status(status, source)
        elif event.event == "status.update":
            self.stats.skip("edits")
        elif event.event == "delete":
            self.stats.skip("deletes")
        else:
            self.stats.skip(f"event {event.event}"[:40])

    # -- network
    def _url(self, path: str) -> str:
        return self.o.instance.rstrip("/") + path

    def _check_status(self, status: int, what: str, body: str) -> None:
        if status in (401, 403):
            raise FatalStreamError(f"{self.o.instance} refused the {what} (HTTP {status}): "
                                   "check the access token (TAGPULSE_MASTODON_TOKEN or --token-file)")
        if status in (400, 404, 410, 422):
            detail = body.strip()[:200]
            raise FatalStreamError(f"{self.o.instance} answered HTTP {status} for the {what}"
                                   f"{': ' + detail if detail else ''}; is this a Mastodon server, and the tag right?")
        if status != 200:
            raise ConnectionError(f"HTTP {status} for the {what}")

    async def backfill(self, session) -> None:
        """Page the timeline forward from the newest status we have, until an empty page."""
        if self.last_id is None or not self.o.backfill:
            return
        path, extra = timeline_path(self.o.tag, self.o.public, self.o.local)
        cursor = self.last_id
        for _ in range(BACKFILL_MAX_PAGES):
            params = dict(extra, min_id=str(cursor), limit=str(BACKFILL_PAGE))
            async with session.get(self._url(path), params=params) as response:
                body = await response.text()
                self._check_status(response.status, "timeline (backfill)", body)
            try:
                page = json.loads(body)
            except ValueError:
                raise ConnectionError("timeline page is not JSON") from None
            if not isinstance(page, list) or not page:
                return
            ordered = sorted((s for s in page if isinstance(s, dict) and status_id_key(s.get("id")) is not None),
                             key=lambda s: status_id_key(s["id"]))
            if not ordered:
                return
            for status in ordered:
                self.stats.backfilled += 1
                await self.handle_status(status, f"{self.o.instance}{path}")
            newest = status_id_key(ordered[-1]["id"])
            if newest is None or newest <= cursor:
                return
            cursor = newest
        log.warning("backfill stopped after %d pages; older gap left unfilled", BACKFILL_MAX_PAGES)

    async def _one_connection(self, session) -> None:
        import aiohttp

        path, params = stream_path(self.o.tag, self.o.public, self.o.local)
        url = self._url(path)
        async with session.get(url, params=params, headers={"Accept": "text/event-stream"}) as response:
            if response.status != 200:
                self._check_status(response.status, "stream", await response.text())
            self.stats.connections += 1
            log.info("connected to %s%s", path, f" (tag {self.o.tag})" if params else "")
            # The stream is open: anything posted from now on waits in the socket while we fill the gap.
            await self.backfill(session)
            await self.flush()
            splitter, parser = LineSplitter(), SseParser()
            received = 0
            while True:
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), self.o.read_timeout)
                except asyncio.TimeoutError:
                    raise ConnectionError(f"no data for {self.o.read_timeout:.0f} s") from None
                if not chunk:
                    raise ConnectionError("the server closed the stream")
                for line in splitter.feed(chunk):
                    if line is None:
                        self.stats.invalid += 1
                        await self.sink.dead_letter("SSE line longer than the limit", b"", url)
                        continue
                    item = parser.feed(line)
                    if item is None:
                        continue
                    if isinstance(item, str):
                        self.stats.heartbeats += 1
                    else:
                        await self.handle_event(item, url)
                        received += 1
                        if received == 1:
                            self.backoff.reset()  # a working connection: the next outage starts from 1 s again
                    if self.done.is_set():
                        return
                if time.monotonic() - self._last_flush >= self.o.flush_every:
                    await self.flush()

    async def _loop(self) -> None:
        import aiohttp

        headers = {"User-Agent": "tagpulse-ingest"}
        if self.o.token:
            headers["Authorization"] = f"Bearer {self.o.token}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while not self.done.is_set():
                try:
                    await self._one_connection(session)
                    if self.done.is_set():
                        return
                except FatalStreamError:
                    raise
                except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
                    # Messages from aiohttp hold the URL but never the Authorization header.
                    log.warning("stream interrupted: %s", str(exc) or type(exc).__name__)
                try:
                    await self.flush()
                except Exception as exc:  # Kafka trouble is retried on the next flush
                    log.warning("flush failed: %s", exc)
                self.stats.reconnects += 1
                delay = self.backoff.next_delay()
                log.info("reconnecting in %.1f s", delay)
                try:
                    await asyncio.wait_for(self.done.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    async def run(self, stop: asyncio.Event | None = None) -> Stats:
        """Stream until `stop` is set, max_posts is reached or a fatal error; always flushes at the end."""
        stop = stop or asyncio.Event()
        main = asyncio.create_task(self._loop())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not main.done():
                self.done.set()
                main.cancel()
                try:
                    await main
                except (asyncio.CancelledError, Exception):
                    pass
            await self.flush()
        if main.done() and not main.cancelled() and main.exception() is not None:
            raise main.exception()
        return self.stats
