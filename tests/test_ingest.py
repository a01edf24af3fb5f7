"""Live connectors: pure protocol pieces, then ingestion from the local replay servers into the REAL Kafka."""
from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from producers import replay_server as rs
from producers.jetstream import classify, resume_cursor
from producers.mastodon_stream import Backoff, LineSplitter, SseEvent, SseParser

REPO = Path(__file__).resolve().parents[1]
HANNA = rs.SHARED_DATA / "mastodon" / "ichbinhanna.jsonl"


# --------------------------------------------------------------------------- pure
def test_line_splitter_handles_split_crlf_and_bounds_long_lines():
    s = LineSplitter(max_line_bytes=16)
    assert s.feed(b"event: up") == []
    assert s.feed(b"date\r") == []          # the CR may be half of CRLF
    assert s.feed(b"\ndata: x\n\n") == ["event: update", "data: x", ""]
    assert s.feed(b"y" * 40) == [None]       # over the limit: reported once, skipped to its end
    assert s.feed(b"yyy\nok\n") == ["ok"]
    assert s.feed("dätä\n".encode()) == ["dätä"]


def test_sse_parser_follows_the_event_stream_rules():
    p = SseParser()
    items = [p.feed(line) for line in [":)", "event: update", "data: {\"a\":", "data: 1}", "", ":thump",
                                       "data: 42", "", "", "event: delete", "data:7", ""]]
    events = [i for i in items if isinstance(i, SseEvent)]
    comments = [i for i in items if isinstance(i, str)]
    assert [(e.event, e.data) for e in events] == [("update", '{"a":\n1}'), ("message", "42"), ("delete", "7")]
    assert comments == [")", "thump"]


def test_backoff_grows_with_jitter_to_the_cap_and_resets():
    b = Backoff(base=1.0, cap=60.0, rng=random.Random(3))
    delays = [b.next_delay() for _ in range(10)]
    for n, d in enumerate(delays):
        ceiling = min(60.0, 2.0 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 60.0 and delays[-1] >= 30.0
    b.reset()
    assert b.next_delay() <= 1.0


def test_jetstream_classification_and_cursor_rewind():
    post = {"did": "did:plc:x", "time_us": 5, "kind": "commit",
            "commit": {"operation": "create", "collection": "app.bsky.feed.post", "rkey": "a", "record": {}}}
    assert classify(post) == "post"
    assert classify({**post, "commit": {**post["commit"], "collection": "app.bsky.feed.repost"}}) == "post"
    assert classify({**post, "commit": {**post["commit"], "collection": "app.bsky.feed.like"}}) == "other collections"
    assert classify({**post, "commit": {**post["commit"], "operation": "delete"}}) == "deletes"
    assert classify({"kind": "identity"}) == "identity"
    assert classify({"kind": "account"}) == "account"
    assert classify([1]) == "invalid" and classify({"kind": "commit"}) == "invalid"
    assert resume_cursor(None, 3) is None
    assert resume_cursor(10_000_000, 3) == 7_000_000
    assert resume_cursor(1_000, 3) == 0


def test_reposts_get_the_hashtags_of_an_original_seen_before():
    from producers.jetstream import RecentTags

    recent = RecentTags(limit=2)
    original = {"post_id": "at://a/app.bsky.feed.post/1", "hashtags": ["ichbinhanna"], "is_share": False}
    share = {"post_id": "at://b/app.bsky.feed.repost/9", "hashtags": [], "is_share": True,
             "original_post_id": "at://a/app.bsky.feed.post/1"}
    assert recent.fill(share)["hashtags"] == []
    recent.remember(original)
    assert recent.fill(share)["hashtags"] == ["ichbinhanna"] and share["hashtags"] == []
    for n in range(2, 4):  # bounded: the oldest original is forgotten
        recent.remember({**original, "post_id": f"at://a/app.bsky.feed.post/{n}"})
    assert recent.fill(share)["hashtags"] == []


def test_constructed_jetstream_events_follow_the_documented_schema():
    events = rs.build_jetstream_events()
    assert events == rs.build_jetstream_events()  # deterministic
    times = [e["time_us"] for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    kinds = {e["kind"] for e in events}
    assert kinds == {"commit", "identity", "account"}
    posts = [e for e in events if e["kind"] == "commit" and e["commit"]["collection"] == "app.bsky.feed.post"
             and e["commit"]["operation"] == "create"]
    assert len(posts) == sum(1 for line in open(HANNA) if line.strip())
    tagged = 0
    for e in posts:
        assert e["did"].startswith("did:plc:") and len(e["did"]) == 32
        c = e["commit"]
        assert set(c) == {"rev", "operation", "collection", "rkey", "record", "cid"}
        assert len(c["rkey"]) == 13 and c["cid"].startswith("bafyrei")
        record = c["record"]
        assert record["$type"] == "app.bsky.feed.post" and record["createdAt"].endswith("Z")
        raw = record["text"].encode("utf-8")
        for facet in record.get("facets", []):
            span = raw[facet["index"]["byteStart"]:facet["index"]["byteEnd"]].decode("utf-8")
            feature = facet["features"][0]
            assert feature["$type"] == "app.bsky.richtext.facet#tag" and span == "#" + feature["tag"]
            tagged += 1
    assert tagged > 100
    reposts = [e for e in events if e["kind"] == "commit" and e["commit"]["collection"] == "app.bsky.feed.repost"]
    assert reposts and all(r["commit"]["record"]["subject"]["uri"].startswith("at://") for r in reposts)


# --------------------------------------------------------------------------- real Kafka
@pytest.fixture
def kafka_settings(request, tmp_path, monkeypatch):
    """Settings for a real broker in a fresh namespace and home (the stack fixture when present)."""
    try:
        base = request.getfixturevalue("stack_settings")
        bootstrap = base.kafka_bootstrap
    except pytest.FixtureLookupError:
        bootstrap = os.environ.get("TAGPULSE_TEST_KAFKA")
        if not bootstrap:
            pytest.skip("needs a Kafka broker: set TAGPULSE_TEST_KAFKA=host:port")
    from tagpulse import config

    namespace = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TAGPULSE_KAFKA", bootstrap)
    monkeypatch.setenv("TAGPULSE_NAMESPACE", namespace)
    monkeypatch.setenv("TAGPULSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAGPULSE_PARTITIONS", "3")
    return config.load()


async def read_raw_posts(settings) -> list[dict]:
    """Every post on the raw topic (batches unpacked), from the beginning to the current end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topics.raw, p) for p in consumer.partitions_for_topic(settings.topics.raw)
                 or await _partitions(consumer, settings.topics.raw)]
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        posts = []
        async def behind() -> bool:
            for tp in parts:
                if await consumer.position(tp) < end[tp]:
                    return True
            return False

        while await behind():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    value = json.loads(record.value)
                    posts.extend(value if isinstance(value, list) else [value])
        return posts
    finally:
        await consumer.stop()


async def _partitions(consumer, topic):
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


def keys(posts) -> list[str]:
    return [f"{p['platform']}:{p['post_id']}" for p in posts]


def hanna_statuses() -> list[dict]:
    return rs.load_statuses([HANNA])


def expected_mastodon_keys(statuses) -> set[str]:
    from producers.adapters import parse_record

    return set(keys(p for s in statuses for p in parse_record(s, fmt="mastodon")))


def expected_jetstream_keys(events) -> set[str]:
    from producers.adapters import parse_record

    out = set()
    for e in events:
        if classify(e) == "post":
            out.update(keys(parse_record(e, fmt="bluesky-jetstream")))
    return out


def mastodon_client(settings, url, tag, token=None, max_posts=None):
    from producers.mastodon_stream import MastodonOptions, MastodonStream
    from tagpulse.commands import ingest

    sink = ingest.KafkaRawSink(settings)
    parse, invalid = ingest.adapter("mastodon")
    options = MastodonOptions(instance=url, tag=tag, token=token, max_posts=max_posts, backoff_base=0.05,
                              state_file=settings.home / "ingest" / "mastodon-test.json", flush_every=0.2)
    return sink, MastodonStream(options, sink, parse, invalid)


def jetstream_client(settings, url, max_posts=None):
    from producers.jetstream import JetstreamClient, JetstreamOptions
    from tagpulse.commands import ingest

    sink = ingest.KafkaRawSink(settings)
    parse, invalid = ingest.adapter("bluesky-jetstream")
    options = JetstreamOptions(url=url, cursor_file=settings.home / "ingest" / "jetstream.cursor", rewind_s=3.0,
                               max_posts=max_posts, backoff_base=0.05, flush_every=0.2)
    return sink, JetstreamClient(options, sink, parse, invalid)


@pytest.mark.integration
def test_mastodon_hashtag_stream_with_drops_lands_every_status_once(kafka_settings):
    from tagpulse.commands import ingest

    statuses = hanna_statuses()
    expected = expected_mastodon_keys(statuses)
    assert len(expected) == len(statuses) == 160

    async def scenario():
        # First attempt refused (503), then every connection cut after 40 updates while 45 more are
        # posted: more than one timeline page (40), so the backfill must page forward.
        server = rs.MastodonReplay(statuses, drop_every=40, gap_on_drop=45, unavailable_first=1,
                                   token="s3cret-token", heartbeat_s=0.1)
        url = await server.start()
        try:
            sink, client = mastodon_client(kafka_settings, url, "IchbinHanna", token="s3cret-token",
                                           max_posts=len(expected))
            try:
                await asyncio.wait_for(ingest.run_source(client, sink), 90)
            except asyncio.TimeoutError:
                pass  # a guard against hanging: the key comparison below says what is missing
            return server, client.stats, await read_raw_posts(kafka_settings)
        finally:
            await server.stop()

    server, stats, posts = asyncio.run(scenario())
    got = keys(posts)
    missing = expected - set(got)
    assert not missing, f"{len(missing)} statuses never reached Kafka, e.g. {sorted(missing)[:3]}"
    assert set(got) == expected  # nothing foreign either
    assert server.drops >= 2 and stats.backfilled >= 45 and stats.reconnects >= 2
    assert all(c["authorized"] for c in server.connections)
    assert any("min_id" in r["query"] for r in server.requests)
    assert stats.skipped.get("edits", 0) > 0 and stats.skipped.get("deletes", 0) > 0
    assert all(p["platform"] == "mastodon" for p in posts)


@pytest.mark.integration
def test_jetstream_with_drops_resumes_from_cursor_and_loses_nothing(kafka_settings):
    from tagpulse.commands import ingest

    events = rs.build_jetstream_events()
    expected = expected_jetstream_keys(events)

    async def scenario():
        server = rs.JetstreamReplay(events, drop_every=70, gap_on_drop=40, unavailable_first=1)
        await server.start()
        try:
            sink, client = jetstream_client(kafka_settings, server.ws_url, max_posts=len(expected))
            try:
                await asyncio.wait_for(ingest.run_source(client, sink), 90)
            except asyncio.TimeoutError:
                pass  # a guard against hanging: the key comparison below says what is missing
            return server, client.stats, await read_raw_posts(kafka_settings)
        finally:
            await server.stop()

    server, stats, posts = asyncio.run(scenario())
    got = set(keys(posts))
    assert got == expected, f"missing {len(expected - got)}, foreign {len(got - expected)}"
    # Reposts carry only their subject; the connector gives them the original's hashtags.
    shares = [p for p in posts if p["is_share"]]
    assert shares and all("ichbinhanna" in p["hashtags"] for p in shares)
    assert server.drops >= 2
    cursors = [c["cursor"] for c in server.connections]
    assert cursors[0] is None and all(c is not None for c in cursors[2:])  # live first, then resumed
    assert stats.skipped.get("deletes", 0) > 0 and stats.skipped.get("identity", 0) > 0
    # The stored cursor is the last event processed before the final flush: the newest post.
    stored = int((kafka_settings.home / "ingest" / "jetstream.cursor").read_text())
    newest_post = max(e["time_us"] for e in events if classify(e) == "post")
    assert newest_post <= stored <= events[-1]["time_us"]


@pytest.mark.integration
def test_jetstream_restart_resumes_from_the_stored_cursor(kafka_settings):
    from tagpulse.commands import ingest

    events = rs.build_jetstream_events()
    expected = expected_jetstream_keys(events)
    # The last event a post/repost subscription can see (identity and account go to everyone).
    last_visible = max(e["time_us"] for e in events if e["kind"] != "commit" or classify(e) == "post")
    cursor_file = kafka_settings.home / "ingest" / "jetstream.cursor"

    async def scenario():
        server = rs.JetstreamReplay(events)
        await server.start()
        try:
            sink, first = jetstream_client(kafka_settings, server.ws_url, max_posts=60)
            await asyncio.wait_for(ingest.run_source(first, sink), 120)
            stored = int(cursor_file.read_text())
            sink, second = jetstream_client(kafka_settings, server.ws_url)
            stop = asyncio.Event()

            async def until_caught_up():
                while second.last_time_us != last_visible:
                    await asyncio.sleep(0.05)
                stop.set()

            watcher = asyncio.create_task(until_caught_up())
            await asyncio.wait_for(ingest.run_source(second, sink, stop), 120)
            watcher.cancel()
            return server, stored, await read_raw_posts(kafka_settings)
        finally:
            await server.stop()

    server, stored, posts = asyncio.run(scenario())
    assert server.connections[0]["cursor"] is None
    assert server.connections[1]["cursor"] == stored - 3_000_000  # restart: stored cursor, rewound 3 s
    got = keys(posts)
    assert set(got) == expected
    # Resumed, not replayed from the start: only the rewind window is delivered twice.
    assert len(got) - len(set(got)) < 20
    assert int(cursor_file.read_text()) == last_visible


class ThreadedServer:
    """A replay server on its own event loop in a thread, for tests that run the CLI as a subprocess."""

    def __init__(self, server):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_cli(args, settings, extra_env=None, timeout=180):
    env = dict(os.environ, PYTHONPATH=str(REPO), TAGPULSE_KAFKA=settings.kafka_bootstrap,
               TAGPULSE_NAMESPACE=settings.topics.namespace, TAGPULSE_HOME=str(settings.home),
               TAGPULSE_PARTITIONS=str(settings.partitions))
    env.pop("TAGPULSE_MASTODON_TOKEN", None)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "tagpulse.cli", "ingest", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
def test_cli_mastodon_with_token_file_never_prints_the_token(kafka_settings, tmp_path):
    statuses = hanna_statuses()
    token_file = tmp_path / "token"
    token_file.write_text("tok-9f8e7d6c\n")
    with ThreadedServer(rs.MastodonReplay(statuses, token="tok-9f8e7d6c", drop_every=60, gap_on_drop=10,
                                          heartbeat_s=0.1)) as server:
        ok = run_cli(["mastodon", "--instance", server.url, "--tag", "#IchbinHanna", "--token-file", str(token_file),
                      "--max-posts", "160", "-v"], kafka_settings)
        bad = run_cli(["mastodon", "--instance", server.url, "--tag", "IchbinHanna"], kafka_settings,
                      extra_env={"TAGPULSE_MASTODON_TOKEN": "wrong-token-123"})
    assert ok.returncode == 0, ok.stderr
    assert "posts pushed" in ok.stderr and "tok-9f8e7d6c" not in ok.stderr + ok.stdout
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr and "Traceback" not in bad.stderr
    assert "wrong-token-123" not in bad.stderr
    posts = asyncio.run(read_raw_posts(kafka_settings))
    assert set(keys(posts)) == expected_mastodon_keys(statuses)
    state = json.loads(next((kafka_settings.home / "ingest").glob("mastodon-*.json")).read_text())
    assert state["last_id"] == max((s["id"] for s in statuses), key=int)


@pytest.mark.integration
def test_cli_jetstream_stores_cursor_and_user_errors_are_one_line(kafka_settings):
    events = rs.build_jetstream_events()
    with ThreadedServer(rs.JetstreamReplay(events)) as server:
        ok = run_cli(["jetstream", "--url", server.ws_url, "--max-posts", "50"], kafka_settings)
    assert ok.returncode == 0, ok.stderr
    cursor = int((kafka_settings.home / "ingest" / "jetstream.cursor").read_text())
    assert events[0]["time_us"] <= cursor <= events[-1]["time_us"]
    bad = run_cli(["jetstream", "--url", "http://example.invalid/subscribe"], kafka_settings)
    assert bad.returncode == 2 and "ws://" in bad.stderr and "Traceback" not in bad.stderr
    no_tag = run_cli(["mastodon", "--instance", "http://127.0.0.1:9"], kafka_settings)
    assert no_tag.returncode == 2 and "--tag" in no_tag.stderr
