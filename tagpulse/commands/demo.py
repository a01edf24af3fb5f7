"""`tagpulse demo`: the whole pipeline on the seed campaign, end to end.

Starts the local stack if needed, runs a stream worker and the ClickHouse sink,
replays `tagpulse simulate einbuchfuerkai` into Kafka, waits until every window
is final, prints the report and leaves the data for `tagpulse sql`.

Safe to run twice: a namespace that holds the replay already (a marker in the
data directory, and records in the raw topic) is not replayed again — the
pipeline finishes whatever is pending and the same report is printed. Replaying
2015 posts into a pipeline whose watermark has reached today would count them
as late, beyond the dedup horizon, instead of recognising them.
"""
from __future__ import annotations

import sys
import time

HELP = "run the pipeline on the #einBuchfuerKai seed campaign and print its report"

DEMO_TAG = "einbuchfuerkai"
DEMO_ALIASES = {"einbildfuerkai": "einbuchfuerkai"}


def add_arguments(parser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="stream worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds (default 600)")
    parser.add_argument("--html", metavar="FILE", help="also write the HTML report to FILE")
    parser.add_argument("--no-monitoring", action="store_true",
                        help="do not start Prometheus and Alertmanager (Kafka only)")


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run(args) -> int:
    import asyncio

    from tagpulse import config, pipeline, stack

    settings = config.load()
    say(f"home {settings.home}, Kafka {settings.kafka_bootstrap}, ClickHouse {settings.clickhouse_url}")
    try:
        for line in stack.up(settings, prometheus=not args.no_monitoring, say=say):
            say(line)
    except stack.StackError as exc:
        print(f"tagpulse demo: {exc}", file=sys.stderr)
        return 1
    install_aliases(settings)

    from sinks import clickhouse as ch
    if ch.is_embedded(settings.clickhouse_url) and ch.embedded_lock_held(settings.clickhouse_url):
        print("tagpulse demo: the ClickHouse directory is held by another process (a running `tagpulse sink`?); "
              "stop it first (tagpulse stack down stops what the stack started)", file=sys.stderr)
        return 1

    run_dir = settings.log_dir / "demo"
    pipe = pipeline.Pipeline(settings, run_dir)
    started = time.monotonic()
    try:
        pipe.start_sink()
        for _ in range(args.workers):
            pipe.start_worker(loglevel="warn")
        say(f"started sink and {args.workers} worker(s); logs in {run_dir}")
        marker = replay_marker(settings)
        if marker.exists() and asyncio.run(pipeline.raw_records(settings)) > 0:
            say(f"the seed campaign was replayed into namespace {settings.topics.namespace!r} before; "
                "showing its report (`tagpulse stack reset --yes` starts over)")
        else:
            sent = asyncio.run(replay(settings, args.seed))
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f'{{"seed": {args.seed}}}\n')
            say(f"replayed {sent} simulated posts (with duplicates and out-of-order arrival); "
                "waiting for final windows")

        def progress(backlog, lagging):
            if backlog or lagging:
                say(f"  backlog {backlog} raw messages, {lagging} downstream")

        waited = asyncio.run(pipeline.wait_until_final(settings, timeout=args.timeout, pipeline=pipe,
                                                       on_progress=throttled(progress, 5.0)))
        say(f"all windows final after {time.monotonic() - started:.1f}s ({waited:.1f}s waiting)")
    except (TimeoutError, RuntimeError) as exc:
        print(f"tagpulse demo: {exc}", file=sys.stderr)
        pipe.stop()
        return 1
    finally:
        pipe.stop()

    code = print_report(settings, args)
    if code == 0:
        print_seed_check(settings)
    return code


SEED_CHECK_SQL = """
SELECT
    countIf(platform = 'facebook' AND is_share) AS facebook_shares,
    sumIf(author_followers, platform = 'twitter' AND created_at <= toDateTime('2015-05-22 12:50:00', 'UTC'))
        AS twitter_impressions_by_1250,
    countIf(platform = 'instagram') AS instagram_posts
FROM tagpulse.posts
WHERE has(hashtags, {tag:String})
"""


def print_seed_check(settings) -> None:
    """The campaign's published figures next to what the pipeline counted."""
    from tagpulse.commands.sql import run_query

    body = run_query(settings, SEED_CHECK_SQL, "TSV", {"tag": DEMO_TAG}).decode().split()
    shares, impressions, instagram = (int(v) for v in body)
    print()
    print("Seed campaign check (published figure -> counted by tagpulse, from tagpulse.posts):")
    print(f"  facebook shares of the one post        ~12,800  -> {shares:,}")
    print(f"  twitter impressions by 2015-05-22 12:50 ~14.8 M -> {impressions / 1e6:.2f} M")
    print(f"  instagram posts                        ~40      -> {instagram:,}")
    print("Query it yourself: tagpulse sql \"SELECT platform, count() FROM tagpulse.posts GROUP BY platform\"")


def install_aliases(settings) -> None:
    """The seed campaign's misspelling #einBildfuerKai is the same campaign: alias it for new data."""
    from tagpulse.core import hashtags

    path = settings.home / "aliases.json"
    table = hashtags.AliasTable.load(path) if path.exists() else hashtags.AliasTable()
    changed = False
    for variant, canonical in DEMO_ALIASES.items():
        if table.resolve(variant) != canonical:
            table.add(variant, canonical)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path)
    hashtags.set_aliases(table)


def replay_marker(settings):
    """Written once the replay is in Kafka; lives with the data, so `tagpulse stack reset` removes it too."""
    return settings.data_dir / f"demo-replayed-{settings.topics.namespace}.json"


async def replay(settings, seed: int) -> int:
    from producers.kafka_producer import produce_posts
    from producers.simulate import simulate_einbuchfuerkai

    posts = list(simulate_einbuchfuerkai(seed=seed))
    counts = await produce_posts(settings, posts)
    await send_real_world_noise(settings)
    return getattr(counts, "posts", len(posts))


# What a real feed also carries, so the demo shows where it goes: records no adapter can
# read (-> tagpulse.dead_letters) and stragglers that arrive after their windows closed
# (-> tagpulse.late_events; still stored once in tagpulse.posts).
BROKEN_RECORDS = [
    b'{"id": "1", "content": "truncated',
    b'{"platform": "twitter", "post_id": "x1", "author_id": "a", "author_followers": -5,'
    b' "created_at": "2015-05-21T20:00:00Z", "hashtags": ["einBuchfuerKai"]}',
    b'{"kind": "something-else", "payload": 42}',
]


def straggler_posts() -> list[dict]:
    return [{"platform": "twitter", "post_id": f"demo-straggler-{i}", "author_id": f"demo-late-{i}",
             "author_handle": f"late_reader_{i}", "author_followers": 120 + i,
             "created_at": f"2015-05-20T0{i}:15:00Z", "lang": "de", "text": "#einBuchfuerKai #lesen",
             "hashtags": ["einBuchfuerKai", "lesen"], "is_share": False, "original_post_id": None,
             "likes": 1, "shares": 0, "replies": 0, "quotes": 0} for i in range(1, 4)]


async def send_real_world_noise(settings) -> None:
    from producers.kafka_producer import produce_posts, send_raw_async

    await send_raw_async(settings, BROKEN_RECORDS)
    # Sent after the replay, so every partition's watermark is days past these posts.
    await produce_posts(settings, straggler_posts())


def print_report(settings, args) -> int:
    from tagpulse.cli import main as cli_main

    argv = ["report", DEMO_TAG]
    if args.html:
        argv += ["--html", args.html]
    return cli_main(argv)


def throttled(fn, every: float):
    last = [0.0]

    def call(*a):
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            fn(*a)
    return call
