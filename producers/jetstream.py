"""Bluesky Jetstream connector: WebSocket in, canonical posts out (to any sink).

Protocol (Jetstream, https://github.com/bluesky-social/jetstream):
  GET wss://jetstream2.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&cursor=MICROS
  one JSON text message per event: {"did", "time_us", "kind": "commit"|"identity"|"account", …}
  commit events carry {"rev", "operation": "create"|"update"|"delete", "collection", "rkey", "record", "cid"}.

We turn `create` commits of app.bsky.feed.post and app.bsky.feed.repost into canonical
posts (through producers.adapters); deletes, updates, identity and account events and
other collections are skipped and counted.

Resuming: `time_us` is Jetstream's cursor. After each successful flush to Kafka we write
the `time_us` of the last event processed to $TAGPULSE_HOME/ingest/jetstream.cursor.
On a reconnect, and on a restart, we ask for `cursor = last − rewind` (3 s by default):
Jetstream's documentation advises rewinding a few seconds for gapless playback, since
events near the cursor can arrive slightly out of time order. Replayed events are
duplicates, which the pipeline drops (dedup on platform:post_id). `--cursor` overrides
the stored one; no cursor at all means live tail.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from producers.mastodon_stream import Backoff, FatalStreamError, Sink, _write_atomic

log = logging.getLogger("tagpulse.ingest.jetstream")

DEFAULT_URL = "wss://jetstream2.us-east.bsky.network/subscribe"
DEFAULT_COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.repost")
POST_COLLECTIONS = frozenset(DEFAULT_COLLECTIONS)
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
RECENT_POSTS = 200_000   # post URI → hashtags remembered for reposts (≈30 MB at most)


# --------------------------------------------------------------------------- pure parts
def classify(event: Any) -> str:
    """'post' for an event we turn into a post, else the reason it is skipped."""
    if not isinstance(event, dict):
        return "invalid"
    kind = event.get("kind")
    if kind in ("identity", "account"):
        return kind
    if kind != "commit":
        return f"kind {str(kind)[:20]}"
    commit = event.get("commit")
    if not isinstance(commit, dict):
        return "invalid"
    operation = commit.get("operation")
    if operation == "delete":
        return "deletes"
    if operation == "update":
        return "updates"
    if operation != "create":
        return "invalid"
    if commit.get("collection") not in POST_COLLECTIONS:
        return "other collections"
    return "post"


def event_time(event: Any) -> int | None:
    if isinstance(event, dict):
        value = event.get("time_us")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def resume_cursor(last_time_us: int | None, rewind_s: float) -> int | None:
    """The cursor to ask for after a disconnect: a few seconds before the last event processed."""
    if last_time_us is None:
        return None
    return max(0, last_time_us - int(rewind_s * 1_000_000))


class RecentTags:
    """Hashtags of recently seen posts, so a repost (which names only its subject) gets the
    original's full hashtag list. Bounded LRU; an original we never saw leaves the repost as is."""

    def __init__(self, limit: int = RECENT_POSTS) -> None:
        from collections import OrderedDict

        self.limit = limit
        self.tags: "OrderedDict[str, list[str]]" = OrderedDict()

    def remember(self, post: dict) -> None:
        if post.get("is_share") or not post.get("hashtags"):
            return
        self.tags[post["post_id"]] = post["hashtags"]
        self.tags.move_to_end(post["post_id"])
        if len(self.tags) > self.limit:
            self.tags.popitem(last=False)

    def fill(self, post: dict) -> dict:
        if post.get("is_share") and not post.get("hashtags"):
            known = self.tags.get(post.get("original_post_id") or "")
            if known:
                return dict(post, hashtags=list(known))
        return post


def read_cursor(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------- shell
@dataclass
class JetstreamStats:
    connections: int = 0
    reconnects: int = 0
    events: int = 0
    posts: int = 0
    invalid: int = 0
    skipped: dict = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"connections {self.connections} (reconnects {self.reconnects}), events {self.events}, "
                f"posts pushed {self.posts}, invalid {self.invalid}, skipped: {skipped}")


@dataclass
class JetstreamOptions:
    url: str = DEFAULT_URL
    collections: tuple[str, ...] = DEFAULT_COLLECTIONS
    cursor: int | None = None           # explicit start; else the stored one; else live tail
    cursor_file: Path | None = None
    rewind_s: float = 3.0
    flush_every: float = 1.0
    batch: int = 500
    max_posts: int | None = None
    read_timeout: float = 120.0
    backoff_cap: float = 60.0
    backoff_base: float = 1.0


class JetstreamClient:
    def __init__(self, options: JetstreamOptions, sink: Sink, parse: Callable[[dict], list[dict]],
                 invalid_error: type[Exception] = ValueError) -> None:
        self.o = options
        self.sink = sink
        self.parse = parse
        self.invalid_error = invalid_error
        self.stats = JetstreamStats()
        self.backoff = Backoff(options.backoff_base, options.backoff_cap)
        stored = read_cursor(options.cursor_file) if options.cursor_file else None
        # An explicit --cursor is where to start; a stored one is where we stopped, so rewind it.
        self.start_cursor = options.cursor if options.cursor is not None else resume_cursor(stored, options.rewind_s)
        self.last_time_us: int | None = None     # last event processed (in the sink's buffer at least)
        self._lock = asyncio.Lock()
        self._last_flush = time.monotonic()
        self._pending = 0
        self._keys: set[str] = set()
        self.recent = RecentTags()
        self.done = asyncio.Event()

    def next_cursor(self) -> int | None:
        if self.last_time_us is None:
            return self.start_cursor
        return resume_cursor(self.last_time_us, self.o.rewind_s)

    async def flush(self) -> None:
        async with self._lock:
            await self.sink.flush()
            self._last_flush = time.monotonic()
            self._pending = 0
            if self.o.cursor_file and self.last_time_us is not None:
                _write_atomic(self.o.cursor_file, f"{self.last_time_us}\n")

    async def handle_message(self, text: str | bytes, source: str) -> None:
        self.stats.events += 1
        try:
            event = json.loads(text)
        except ValueError as exc:
            self.stats.invalid += 1
            await self.sink.dead_letter(f"Jetstream message is not JSON: {exc}", text[:65536], source)
            return
        reason = classify(event)
        posts: list[dict] = []
        if reason == "post":
            try:
                posts = [self.recent.fill(p) for p in self.parse(event)]
                for post in posts:
                    self.recent.remember(post)
            except self.invalid_error as exc:
                self.stats.invalid += 1
                await self.sink.dead_letter(str(exc), text if isinstance(text, str) else text.decode("utf-8", "replace"),
                                            source)
        elif reason == "invalid":
            self.stats.invalid += 1
            await self.sink.dead_letter("not a Jetstream event", text[:65536], source)
        else:
            self.stats.skip(reason)
        async with self._lock:
            if posts:
                await self.sink.add(posts)
            when = event_time(event)
            if when is not None:
                self.last_time_us = max(self.last_time_us or 0, when)
        self.stats.posts += len(posts)
        self._pending += len(posts)
        if self.o.max_posts is not None:
            for post in posts:
                if len(self._keys) < self.o.max_posts:
                    self._keys.add(f"{post.get('platform')}:{post.get('post_id')}")
            if len(self._keys) >= self.o.max_posts:
                self.done.set()
        if self._pending >= self.o.batch or time.monotonic() - self._last_flush >= self.o.flush_every:
            await self.flush()

    async def _one_connection(self, session) -> None:
        import aiohttp

        params: list[tuple[str, str]] = [("wantedCollections", c) for c in self.o.collections]
        cursor = self.next_cursor()
        if cursor is not None:
            params.append(("cursor", str(cursor)))
        try:
            ws = await session.ws_connect(self.o.url, params=params, heartbeat=30.0, max_msg_size=MAX_MESSAGE_BYTES,
                                          autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (400, 401, 403, 404):
                raise FatalStreamError(f"{self.o.url} refused the subscription (HTTP {exc.status}); "
                                       "is this a Jetstream /subscribe URL?") from None
            raise
        async with ws:
            self.stats.connections += 1
            log.info("connected to %s (cursor %s)", self.o.url, cursor if cursor is not None else "live")
            received = 0
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), self.o.read_timeout)
                except asyncio.TimeoutError:
                    raise ConnectionError(f"no event for {self.o.read_timeout:.0f} s") from None
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    # BINARY: zstd-compressed frames come only with compress=true, which we never ask for.
                    await self.handle_message(msg.data, self.o.url)
                    received += 1
                    if received == 1:
                        self.backoff.reset()
                    if self.done.is_set():
                        return
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"WebSocket error: {ws.exception()}")
                else:  # CLOSE, CLOSING, CLOSED
                    raise ConnectionError("the server closed the WebSocket")

    async def _loop(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15)
        async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": "tagpulse-ingest"}) as session:
            while not self.done.is_set():
                try:
                    await self._one_connection(session)
                    if self.done.is_set():
                        return
                except FatalStreamError:
                    raise
                except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
                    log.warning("stream interrupted: %s", str(exc) or type(exc).__name__)
                try:
                    await self.flush()
                except Exception as exc:
                    log.warning("flush failed: %s", exc)
                self.stats.reconnects += 1
                delay = self.backoff.next_delay()
                log.info("reconnecting in %.1f s from cursor %s", delay, self.next_cursor())
                try:
                    await asyncio.wait_for(self.done.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    async def run(self, stop: asyncio.Event | None = None) -> JetstreamStats:
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
