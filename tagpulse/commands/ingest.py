"""`tagpulse ingest mastodon|jetstream`: live connectors that push canonical posts to Kafka.

The connectors (producers/mastodon_stream.py, producers/jetstream.py) only know a
sink with add/flush/dead_letter; this module gives them the raw topic on Kafka and
the adapters, and turns problems into one clear line instead of a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

HELP = "Stream live posts into Kafka: Mastodon streaming API (SSE) or Bluesky Jetstream (WebSocket)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)

    m = sub.add_parser("mastodon", help="Mastodon streaming API (Server-Sent Events), hashtag or public stream",
                       description="Follow a Mastodon hashtag (or the public) stream. After every reconnect the "
                                   "gap is filled from the REST timeline (Mastodon's stream has no cursor).")
    m.add_argument("--instance", required=True, metavar="URL", help="server base URL, e.g. https://mastodon.social")
    m.add_argument("--tag", help="hashtag to follow, with or without # (required unless --public)")
    m.add_argument("--public", action="store_true", help="follow the public (federated) stream instead of a tag")
    m.add_argument("--local", action="store_true", help="only posts from this server (…/local streams)")
    m.add_argument("--token-file", metavar="FILE",
                   help="file holding an access token (else env TAGPULSE_MASTODON_TOKEN; never logged)")
    m.add_argument("--no-backfill", action="store_true", help="do not fill gaps from the timeline after reconnects")
    _common(m)

    j = sub.add_parser("jetstream", help="Bluesky Jetstream (WebSocket), resumable by cursor",
                       description="Follow Bluesky posts and reposts through Jetstream. The cursor (time_us) is "
                                   "stored in $TAGPULSE_HOME/ingest/jetstream.cursor after every Kafka flush; "
                                   "a restart resumes from it, a few seconds early.")
    j.add_argument("--url", default=None, metavar="WS_URL",
                   help="Jetstream subscribe URL (default wss://jetstream2.us-east.bsky.network/subscribe)")
    j.add_argument("--cursor", type=int, metavar="MICROS",
                   help="start at this time_us (unix microseconds); default: the stored cursor, else live")
    j.add_argument("--collections", default="app.bsky.feed.post,app.bsky.feed.repost",
                   help="comma-separated wantedCollections (default app.bsky.feed.post,app.bsky.feed.repost)")
    j.add_argument("--rewind", type=float, default=3.0, metavar="SECONDS",
                   help="seconds to rewind the cursor on reconnect and restart (default 3)")
    j.add_argument("--cursor-file", type=Path, metavar="FILE",
                   help="where to keep the cursor (default $TAGPULSE_HOME/ingest/jetstream.cursor)")
    _common(j)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-posts", type=int, metavar="N", help="stop after N distinct posts (demos and tests)")
    p.add_argument("--flush-every", type=float, default=1.0, metavar="SECONDS",
                   help="flush to Kafka at least this often (default 1 s)")
    p.add_argument("--verbose", "-v", action="store_true", help="log connections and reconnects")


# --------------------------------------------------------------------------- Kafka sink
class KafkaRawSink:
    """Batches of canonical posts to the raw topic, routed like `tagpulse produce` (architecture.md).

    Every post of a batch goes to murmur2(b"platform:post_id") % P, so a duplicate from
    another producer or a replay meets its original in one partition.
    """

    BATCH_POSTS = 500
    BATCH_BYTES = 900_000

    def __init__(self, settings) -> None:
        self.settings = settings
        self.topic = settings.topics.raw
        self.producer = None
        self.partitions = 1
        self.buffers: dict[int, list[bytes]] = {}
        self.sent_posts = 0
        self.dead = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from tagpulse.kafka_security import client_kwargs

        await ensure_topics(self.settings)
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, enable_idempotence=True,
                                         acks="all", linger_ms=20, max_request_size=2_000_000,
                                         request_timeout_ms=30_000, **client_kwargs())
        await self.producer.start()
        partitions = await self.producer.partitions_for(self.topic)
        self.partitions = max(1, len(partitions or ()))

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    def _partition(self, post: dict) -> int:
        from aiokafka.partitioner import murmur2

        key = f"{post.get('platform')}:{post.get('post_id')}".encode()
        return (murmur2(key) & 0x7FFFFFFF) % self.partitions

    async def add(self, posts: list[dict]) -> None:
        import orjson

        for post in posts:
            self.buffers.setdefault(self._partition(post), []).append(orjson.dumps(post))

    async def flush(self) -> None:
        """Send every buffered post and wait for the broker's acknowledgement."""
        futures, count = [], 0
        for partition, encoded in list(self.buffers.items()):
            start = 0
            while start < len(encoded):
                end, size = start, 2
                while end < len(encoded) and end - start < self.BATCH_POSTS and (size + len(encoded[end]) + 1
                                                                                   <= self.BATCH_BYTES or end == start):
                    size += len(encoded[end]) + 1
                    end += 1
                value = b"[" + b",".join(encoded[start:end]) + b"]"
                futures.append(await self.producer.send(self.topic, value, partition=partition))
                count += end - start
                start = end
        for future in futures:
            await future  # raises if the broker did not take it: the caller keeps its cursor
        self.buffers.clear()
        self.sent_posts += count

    async def dead_letter(self, reason: str, raw, source: str) -> None:
        import orjson

        if isinstance(raw, bytes):
            raw_bytes, raw_text = len(raw), raw[:65536].decode("utf-8", errors="replace")
        else:
            raw_text = str(raw)
            raw_bytes = len(raw_text.encode("utf-8", errors="replace"))
            raw_text = raw_text[:65536]
        record = {"stage": "produce", "reason": reason[:1000], "raw": raw_text, "raw_bytes": raw_bytes,
                  "source": source, "at": time.time()}
        await self.producer.send_and_wait(self.settings.topics.dead_letters, orjson.dumps([record]))
        self.dead += 1


async def ensure_topics(settings) -> None:
    """The pipeline topics with the configured partitions (tagpulse.stack does the work)."""
    from tagpulse.stack import ensure_topics as stack_ensure

    try:
        await asyncio.get_running_loop().run_in_executor(None, stack_ensure, settings)
    except Exception as exc:  # StackError and friends: one line for the user, not a traceback
        raise ConnectionError(str(exc)) from None


# --------------------------------------------------------------------------- adapters
def adapter(fmt: str):
    """(parse(obj) -> list[post], InvalidRecord) for one source format."""
    from producers.adapters import parse_record
    from schemas.post import InvalidRecord

    def parse(obj: dict) -> list[dict]:
        return parse_record(obj, fmt=fmt)

    return parse, InvalidRecord


def apply_user_aliases(settings) -> None:
    """Canonicalise with the user's aliases ($TAGPULSE_HOME/aliases.json), read once at start-up."""
    path = settings.home / "aliases.json"
    if not path.exists():
        return
    from tagpulse.core.hashtags import AliasTable, set_aliases

    try:
        set_aliases(AliasTable.load(path))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the alias table {path}: {exc}") from None


# --------------------------------------------------------------------------- runners
async def run_source(client, sink: KafkaRawSink, stop: asyncio.Event | None = None):
    """Start the sink, run the client until it stops, close the sink. Shared by the CLI and the tests."""
    await sink.start()
    try:
        return await client.run(stop)
    finally:
        await sink.stop()


def build_mastodon(args, settings, sink):
    from producers.mastodon_stream import MastodonOptions, MastodonStream, read_token

    tag = (args.tag or "").lstrip("#").strip() or None
    if not args.public and not tag:
        raise UserError("give --tag TAG (or --public for the public stream)")
    if not args.instance.startswith(("http://", "https://")):
        raise UserError(f"--instance {args.instance!r}: expected a URL such as https://mastodon.social")
    token = read_token(args.token_file)
    apply_user_aliases(settings)
    stream = "public" if args.public or not tag else f"tag-{tag.casefold()}"
    host = args.instance.split("://", 1)[1].rstrip("/").replace("/", "_").replace(":", "_")
    options = MastodonOptions(instance=args.instance, tag=tag, public=args.public, local=args.local, token=token,
                              state_file=settings.home / "ingest" / f"mastodon-{host}-{stream}.json",
                              backfill=not args.no_backfill, flush_every=args.flush_every,
                              max_posts=args.max_posts)
    parse, invalid = adapter("mastodon")
    return MastodonStream(options, sink, parse, invalid)


def build_jetstream(args, settings, sink):
    from producers.jetstream import DEFAULT_URL, JetstreamClient, JetstreamOptions

    url = args.url or DEFAULT_URL
    if not url.startswith(("ws://", "wss://")):
        raise UserError(f"--url {url!r}: expected a ws:// or wss:// Jetstream /subscribe URL")
    collections = tuple(c.strip() for c in args.collections.split(",") if c.strip())
    if not collections:
        raise UserError("--collections names no collection")
    if args.cursor is not None and args.cursor < 0:
        raise UserError("--cursor must be unix microseconds (a positive number)")
    options = JetstreamOptions(url=url, collections=collections, cursor=args.cursor,
                               cursor_file=args.cursor_file or settings.home / "ingest" / "jetstream.cursor",
                               rewind_s=max(0.0, args.rewind), flush_every=args.flush_every,
                               max_posts=args.max_posts)
    apply_user_aliases(settings)
    parse, invalid = adapter("bluesky-jetstream")
    return JetstreamClient(options, sink, parse, invalid)


class UserError(Exception):
    pass


def run(args) -> int:
    from producers.mastodon_stream import FatalStreamError
    from tagpulse import config

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format=f"tagpulse ingest {args.source}: %(message)s")
    # aiokafka logs every failed connection attempt; our own message says it once.
    logging.getLogger("aiokafka").setLevel(logging.INFO if args.verbose else logging.CRITICAL)
    settings = config.load()
    sink = KafkaRawSink(settings)
    try:
        client = (build_mastodon if args.source == "mastodon" else build_jetstream)(args, settings, sink)
    except (UserError, FatalStreamError) as exc:
        print(f"tagpulse ingest {args.source}: {exc}", file=sys.stderr)
        return 2

    async def main() -> object:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        return await run_source(client, sink, stop)

    try:
        stats = asyncio.run(main())
    except FatalStreamError as exc:
        print(f"tagpulse ingest {args.source}: {exc}", file=sys.stderr)
        print(f"tagpulse ingest {args.source}: {client.stats.summary()}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"tagpulse ingest {args.source}: Kafka at {settings.kafka_bootstrap}: {exc}; "
              "is it running? (tagpulse stack up)", file=sys.stderr)
        return 1
    except Exception as exc:
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            print(f"tagpulse ingest {args.source}: Kafka at {settings.kafka_bootstrap}: {exc}; "
                  "is it running? (tagpulse stack up)", file=sys.stderr)
            return 1
        raise
    print(f"tagpulse ingest {args.source}: {stats.summary()}; dead letters {sink.dead}", file=sys.stderr)
    return 0
