"""Local servers that replay recorded payloads over the real streaming protocols.

There is no internet here, so the live connectors (`tagpulse ingest mastodon|jetstream`)
are tested, demonstrated and documented against these servers:

- `MastodonReplay`: Mastodon's streaming API as Server-Sent Events
  (`GET /api/v1/streaming/hashtag?tag=…`, `/api/v1/streaming/public`, the `/local`
  forms, `event: update` / `status.update` / `delete`, `:thump` heartbeats), its
  WebSocket form (`GET /api/v1/streaming?stream=hashtag&tag=…`, payload a JSON
  string), and the REST timelines a client uses to fill gaps
  (`GET /api/v1/timelines/tag/TAG`, `/api/v1/timelines/public` with
  `max_id`/`since_id`/`min_id`/`limit` and a `Link` header), all built from the real
  recorded `Status` objects in ../shared/data/mastodon/*.jsonl.
- `JetstreamReplay`: Bluesky Jetstream's WebSocket (`GET /subscribe` with
  `wantedCollections`, `wantedDids`, `cursor`). No Bluesky data was recorded, so
  `build_jetstream_events` constructs events exactly in Jetstream's documented
  shape (`did`, `time_us`, `kind`: commit / identity / account, `commit{rev,
  operation, collection, rkey, record, cid}`) deterministically from the real
  Mastodon statuses: the same authors (as stable `did:plc:` ids), texts and
  hashtags (as `app.bsky.richtext.facet#tag` facets with UTF-8 byte offsets, plus
  `record.tags`), with reposts, likes, deletes, identity and account events mixed in.

Both servers model a *live* source: a status/event is "published" when the server
reaches it, whether or not a client is connected. With `drop_every=K` a connection is
cut after K events and `gap_on_drop=G` more are published while the client is away;
Mastodon's stream has no cursor, so those G only come back through the timeline
(backfill), while Jetstream replays them when the client reconnects with a `cursor`.
Every connection and request is recorded (`connections`, `requests`) for tests.

Run one by hand:  python -m producers.replay_server mastodon --port 8765
                  python -m producers.replay_server jetstream --port 8766
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from aiohttp import WSMsgType, web

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MASTODON_FILES = (SHARED_DATA / "mastodon" / "ichbinhanna.jsonl", SHARED_DATA / "mastodon" / "statuses.jsonl")


def load_statuses(paths: Iterable[Path] = MASTODON_FILES) -> list[dict]:
    """Recorded Status objects, unique by `uri`, in id order (the order a server publishes them)."""
    seen, out = set(), []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                status = json.loads(line)
                if status.get("uri") in seen:
                    continue
                seen.add(status.get("uri"))
                out.append(status)
    # Ids are per instance; a mixed file still needs one total order, so fall back to created_at.
    return sorted(out, key=lambda s: (int(s["id"]) if str(s.get("id", "")).isdigit() else 0, s.get("created_at", "")))


def _has_tag(status: dict, tag: str) -> bool:
    wanted = tag.casefold()
    return any(str(t.get("name", "")).casefold() == wanted for t in status.get("tags") or [])


class _Server:
    """An aiohttp app on 127.0.0.1 with start/stop usable from tests and `async with`."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.connections: list[dict] = []
        self.requests: list[dict] = []
        self._open: set = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.host = host
        return self.url

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        for closer in list(self._open):
            closer()
        if self.runner:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc):
        await self.stop()


# --------------------------------------------------------------------------- Mastodon
@dataclass
class _Cut:
    sent: int = 0


class MastodonReplay(_Server):
    def __init__(self, statuses: list[dict] | None = None, *, drop_every: int = 0, gap_on_drop: int = 0,
                 max_drops: int | None = None, token: str | None = None, interval_s: float = 0.0,
                 heartbeat_s: float = 0.5, unavailable_first: int = 0, extra_events: bool = True) -> None:
        super().__init__()
        self.statuses = statuses if statuses is not None else load_statuses()
        self.drop_every, self.gap_on_drop, self.max_drops = drop_every, gap_on_drop, max_drops
        self.token, self.interval_s, self.heartbeat_s = token, interval_s, heartbeat_s
        self.unavailable_first = unavailable_first
        self.extra_events = extra_events
        self.published = 0          # statuses[:published] exist on the server ("now")
        self.drops = 0
        r = self.app.router
        r.add_get("/api/v1/streaming/health", self._health)
        r.add_get("/api/v1/streaming/hashtag", self._sse)
        r.add_get("/api/v1/streaming/hashtag/local", self._sse)
        r.add_get("/api/v1/streaming/public", self._sse)
        r.add_get("/api/v1/streaming/public/local", self._sse)
        r.add_get("/api/v1/streaming", self._websocket)
        r.add_get("/api/v1/timelines/tag/{tag}", self._timeline)
        r.add_get("/api/v1/timelines/public", self._timeline)

    # -- helpers
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    def _authorised(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _matches(self, status: dict, tag: str | None) -> bool:
        return tag is None or _has_tag(status, tag)

    def _refuse(self, request: web.Request) -> web.Response | None:
        self.connections.append({"path": request.path, "query": dict(request.query),
                                 "authorized": "Authorization" in request.headers, "start": self.published})
        if len(self.connections) <= self.unavailable_first:
            return web.json_response({"error": "Service Unavailable"}, status=503)
        if not self._authorised(request):
            return web.json_response({"error": "The access token is invalid"}, status=401)
        if "hashtag" in request.path and not request.query.get("tag"):
            return web.json_response({"error": "Missing tag name parameter"}, status=400)
        return None

    def _should_cut(self, cut: _Cut) -> bool:
        if not self.drop_every or cut.sent < self.drop_every:
            return False
        if self.max_drops is not None and self.drops >= self.max_drops:
            return False
        self.drops += 1
        # Posts published while the client is away: the stream will never show them.
        self.published = min(len(self.statuses), self.published + self.gap_on_drop)
        return True

    async def _events(self, tag: str | None, cut: _Cut):
        """(event, data) pairs of one connection, live from `published` on; None means heartbeat."""
        pos = self.published
        while True:
            if self._should_cut(cut):
                return
            pos = max(pos, self.published)
            if pos >= len(self.statuses):
                yield None
                await asyncio.sleep(self.heartbeat_s)
                continue
            status = self.statuses[pos]
            pos += 1
            self.published = max(self.published, pos)
            if not self._matches(status, tag):
                continue
            yield "update", json.dumps(status, ensure_ascii=False)
            cut.sent += 1
            if self.extra_events and pos % 7 == 0:
                edited = dict(status, edited_at=status.get("created_at"))
                yield "status.update", json.dumps(edited, ensure_ascii=False)
            if self.extra_events and pos % 11 == 0:
                yield "delete", str(10**17 + pos)  # an id the client never saw: deletes are skipped anyway
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
            else:
                await asyncio.sleep(0)

    # -- SSE
    async def _sse(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        tag = request.query.get("tag") if "hashtag" in request.path else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-store", "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        closer = request.transport.close if request.transport else (lambda: None)
        self._open.add(closer)
        try:
            await response.write(b":)\n")  # Mastodon's greeting comment
            cut = _Cut()
            async for item in self._events(tag, cut):
                if item is None:
                    await response.write(b":thump\n")
                    continue
                event, data = item
                await response.write(f"event: {event}\ndata: {data}\n\n".encode())
            # Cut: drop the TCP connection mid-stream, as a proxy restart or network loss would.
            if request.transport is not None:
                request.transport.close()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._open.discard(closer)
        return response

    # -- WebSocket form
    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        refused = self._refuse(request)
        if refused is not None:
            return refused
        stream = request.query.get("stream", "public")
        tag = request.query.get("tag") if stream.startswith("hashtag") else None
        await ws.prepare(request)
        self._open.add(lambda: asyncio.ensure_future(ws.close()))
        cut = _Cut()
        try:
            async for item in self._events(tag, cut):
                if ws.closed:
                    break
                if item is None:
                    continue
                event, data = item
                await ws.send_str(json.dumps({"stream": [stream] + ([tag] if tag else []), "event": event,
                                              "payload": data}, ensure_ascii=False))
        finally:
            await ws.close()
        return ws

    # -- REST timelines (for backfill)
    async def _timeline(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "query": dict(request.query)})
        if not self._authorised(request):
            return web.json_response({"error": "The access token is invalid"}, status=401)
        tag = request.match_info.get("tag")
        q = request.query
        try:
            limit = max(1, min(40, int(q.get("limit", "20"))))
            max_id = int(q["max_id"]) if q.get("max_id") else None
            since_id = int(q["since_id"]) if q.get("since_id") else None
            min_id = int(q["min_id"]) if q.get("min_id") else None
        except ValueError:
            return web.json_response({"error": "invalid id or limit"}, status=400)
        rows = [s for s in self.statuses[:self.published] if self._matches(s, tag)]
        if max_id is not None:
            rows = [s for s in rows if int(s["id"]) < max_id]
        if since_id is not None:
            rows = [s for s in rows if int(s["id"]) > since_id]
        if min_id is not None:
            # min_id pages forward: the statuses right after min_id (Mastodon still sorts them newest first).
            rows = [s for s in rows if int(s["id"]) > min_id][:limit]
        page = sorted(rows, key=lambda s: int(s["id"]), reverse=True)[:limit]
        headers = {}
        if page:
            base = f"{self.url}{request.path}"
            headers["Link"] = (f'<{base}?limit={limit}&max_id={page[-1]["id"]}>; rel="next", '
                               f'<{base}?limit={limit}&min_id={page[0]["id"]}>; rel="prev"')
        return web.json_response(page, headers=headers, dumps=lambda o: json.dumps(o, ensure_ascii=False))


# --------------------------------------------------------------------------- Bluesky Jetstream
_B32_SORT = "234567abcdefghijklmnopqrstuvwxyz"


def tid(micros: int, clock_id: int = 0) -> str:
    """An atproto TID (record key / revision): 53 bits of microseconds and 10 of clock id, base32-sortable."""
    value = ((micros & ((1 << 53) - 1)) << 10) | (clock_id & 0x3FF)
    return "".join(_B32_SORT[(value >> (5 * i)) & 31] for i in reversed(range(13)))


def _did(seed: str) -> str:
    return "did:plc:" + base64.b32encode(hashlib.sha256(seed.encode()).digest()).decode().lower()[:24]


def _cid(obj) -> str:
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).digest()
    # CIDv1, dag-cbor, sha2-256, base32 — the "bafyrei…" form atproto records have.
    return "b" + base64.b32encode(bytes([0x01, 0x71, 0x12, 0x20]) + digest).decode().lower().rstrip("=")


def _plain_text(content_html: str) -> str:
    text = re.sub(r"<br\s*/?>", "\n", content_html or "")
    text = re.sub(r"</p>\s*<p>", "\n\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(text).strip()


_TAG_IN_TEXT = re.compile(r"#(\w+)")


def _micros(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1_000_000)


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def post_record(text: str, created_us: int, lang: str | None, extra_tags: list[str]) -> dict:
    """An app.bsky.feed.post record with #tag facets at their UTF-8 byte offsets (Bluesky's 300-char limit kept)."""
    text = text[:300]
    facets = []
    for match in _TAG_IN_TEXT.finditer(text):
        start = len(text[:match.start()].encode("utf-8"))
        end = start + len(match.group(0).encode("utf-8"))
        facets.append({"index": {"byteStart": start, "byteEnd": end},
                       "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": match.group(1)}]})
    record = {"$type": "app.bsky.feed.post", "createdAt": _iso(created_us), "text": text}
    if lang:
        record["langs"] = [lang]
    if facets:
        record["facets"] = facets
    if extra_tags:
        record["tags"] = extra_tags[:8]
    return record


def build_jetstream_events(statuses: list[dict] | None = None) -> list[dict]:
    """Deterministic Jetstream events derived from the recorded Mastodon statuses (see module doc).

    Returns events in `time_us` order (strictly increasing). Per status one post create; after
    every 4th post a repost of it by another account, every 5th a like, every 9th a delete of
    an earlier post, every 13th an identity and every 17th an account event, every 19th a
    profile update.
    """
    statuses = statuses if statuses is not None else load_statuses(MASTODON_FILES[:1])
    ordered = sorted(statuses, key=lambda s: (s.get("created_at", ""), s.get("uri", "")))
    events: list[dict] = []
    clock = 0
    posts: list[tuple[str, str, str]] = []  # (did, rkey, cid)

    def stamp(at_us: int) -> int:
        nonlocal clock
        # Jetstream's time_us is when it saw the event: a little after createdAt, never going backwards.
        clock = max(clock + 1, at_us + 250_000)
        return clock

    def commit(did: str, at_us: int, operation: str, collection: str, rkey: str, record: dict | None) -> dict:
        time_us = stamp(at_us)
        body = {"rev": tid(time_us, 1), "operation": operation, "collection": collection, "rkey": rkey}
        if record is not None:
            body["record"] = record
            body["cid"] = _cid(record)
        return {"did": did, "time_us": time_us, "kind": "commit", "commit": body}

    for n, status in enumerate(ordered, start=1):
        account = status.get("account") or {}
        did = _did(str(account.get("url") or account.get("acct") or n))
        created = _micros(status["created_at"])
        text = _plain_text(status.get("content", ""))
        in_text = {m.group(1).casefold() for m in _TAG_IN_TEXT.finditer(text[:300])}
        extra = [t["name"] for t in status.get("tags") or [] if str(t.get("name", "")).casefold() not in in_text]
        record = post_record(text, created, status.get("language"), extra)
        rkey = tid(created, n % 1024)
        event = commit(did, created, "create", "app.bsky.feed.post", rkey, record)
        events.append(event)
        posts.append((did, rkey, event["commit"]["cid"]))
        subject = {"uri": f"at://{did}/app.bsky.feed.post/{rkey}", "cid": event["commit"]["cid"]}
        if n % 4 == 0:
            sharer = _did(f"reposter-{n}")
            at = created + 60_000_000
            events.append(commit(sharer, at, "create", "app.bsky.feed.repost", tid(at, 7),
                                 {"$type": "app.bsky.feed.repost", "createdAt": _iso(at), "subject": subject}))
        if n % 5 == 0:
            liker = _did(f"liker-{n}")
            at = created + 30_000_000
            events.append(commit(liker, at, "create", "app.bsky.feed.like", tid(at, 9),
                                 {"$type": "app.bsky.feed.like", "createdAt": _iso(at), "subject": subject}))
        if n % 9 == 0 and len(posts) > 3:
            gone_did, gone_rkey, _ = posts[-3]
            events.append(commit(gone_did, created, "delete", "app.bsky.feed.post", gone_rkey, None))
        if n % 13 == 0:
            time_us = stamp(created)
            events.append({"did": did, "time_us": time_us, "kind": "identity",
                           "identity": {"did": did, "handle": f"{account.get('username', 'user')}.bsky.social".lower(),
                                        "seq": 1_000_000 + n, "time": _iso(time_us)}})
        if n % 17 == 0:
            time_us = stamp(created)
            events.append({"did": did, "time_us": time_us, "kind": "account",
                           "account": {"active": True, "did": did, "seq": 2_000_000 + n, "time": _iso(time_us)}})
        if n % 19 == 0:
            events.append(commit(did, created, "update", "app.bsky.actor.profile", "self",
                                 {"$type": "app.bsky.actor.profile", "displayName": account.get("display_name") or ""}))
    return events


def _collection_wanted(collection: str, wanted: list[str]) -> bool:
    if not wanted:
        return True
    for pattern in wanted:
        if pattern.endswith(".*") and collection.startswith(pattern[:-1]):
            return True
        if collection == pattern:
            return True
    return False


class JetstreamReplay(_Server):
    def __init__(self, events: list[dict] | None = None, *, drop_every: int = 0, gap_on_drop: int = 0,
                 max_drops: int | None = None, interval_s: float = 0.0, unavailable_first: int = 0) -> None:
        super().__init__()
        self.events = events if events is not None else build_jetstream_events()
        self.drop_every, self.gap_on_drop, self.max_drops = drop_every, gap_on_drop, max_drops
        self.interval_s = interval_s
        self.unavailable_first = unavailable_first
        self.published = 0
        self.drops = 0
        self.app.router.add_get("/subscribe", self._subscribe)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/subscribe"

    def _start_position(self, cursor: int | None) -> int:
        """Replay from the first event at or after `cursor`; no cursor, or one in the future: live tail."""
        if cursor is None:
            return self.published
        for i in range(self.published):
            if self.events[i]["time_us"] >= cursor:
                return i
        return self.published

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        wanted = [c for value in q.getall("wantedCollections", []) for c in value.split(",") if c]
        dids = set(q.getall("wantedDids", []))
        cursor = None
        if q.get("cursor"):
            try:
                cursor = int(q["cursor"])
            except ValueError:
                return web.json_response({"error": "invalid cursor"}, status=400)
        self.connections.append({"cursor": cursor, "wantedCollections": wanted, "start": self.published})
        if len(self.connections) <= self.unavailable_first:
            return web.Response(status=503, text="service unavailable")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        closer = request.transport.close if request.transport else (lambda: None)
        self._open.add(closer)
        pos, sent = self._start_position(cursor), 0
        try:
            while not ws.closed:
                if self.drop_every and sent >= self.drop_every and (self.max_drops is None
                                                                    or self.drops < self.max_drops):
                    self.drops += 1
                    self.published = min(len(self.events), max(self.published, pos) + self.gap_on_drop)
                    request.transport.close()  # no close frame: a network loss, not a goodbye
                    break
                if pos >= len(self.events):
                    # Caught up with everything recorded: idle like a quiet firehose until the client leaves.
                    msg = await ws.receive(timeout=None)
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                        break
                    continue
                event = self.events[pos]
                pos += 1
                self.published = max(self.published, pos)
                if dids and event["did"] not in dids:
                    continue
                if event["kind"] == "commit" and not _collection_wanted(event["commit"]["collection"], wanted):
                    continue  # identity and account events go to every subscriber
                await ws.send_str(json.dumps(event, ensure_ascii=False))
                sent += 1
                await asyncio.sleep(self.interval_s)
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self._open.discard(closer)
        return ws


# --------------------------------------------------------------------------- CLI
async def _serve(server: _Server, port: int) -> None:
    url = await server.start(port=port)
    if isinstance(server, JetstreamReplay):
        print(f"Jetstream replay: {server.ws_url} ({len(server.events)} events)", flush=True)
    else:
        print(f"Mastodon replay: {url} ({len(server.statuses)} statuses)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producers.replay_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["mastodon", "jetstream"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", action="append", type=Path, help="Mastodon statuses JSONL (repeatable)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between events (default 0.05)")
    parser.add_argument("--drop-every", type=int, default=0, help="cut each connection after N events")
    parser.add_argument("--gap-on-drop", type=int, default=0, help="events published while the client is away")
    args = parser.parse_args(argv)
    statuses = load_statuses(args.file) if args.file else None
    if args.kind == "mastodon":
        server: _Server = MastodonReplay(statuses, interval_s=args.interval, drop_every=args.drop_every,
                                         gap_on_drop=args.gap_on_drop)
    else:
        events = build_jetstream_events(statuses) if statuses else None
        server = JetstreamReplay(events, interval_s=args.interval, drop_every=args.drop_every,
                                 gap_on_drop=args.gap_on_drop)
    try:
        asyncio.run(_serve(server, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
