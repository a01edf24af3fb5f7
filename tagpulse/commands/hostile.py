"""`tagpulse hostile`: hostile input through the real pipeline, checked against ClickHouse.

Writes `tagpulse.hostile.hostile_stream` straight to the raw topic with aiokafka (not through
`tagpulse produce`): malformed and adversarial messages mixed into valid batches. Then runs one
worker and the sink on it, waits until every window is final and checks, in ClickHouse:
every bad record is a dead letter with its reason at its (partition, offset, item), `posts`
holds exactly the unique valid posts, `reach_windows` equals the oracle over them, nothing is
late; the worker was never restarted; and reports the worker's peak RSS.

Runs its own Kafka (tagpulse.stack, in a temporary home on free ports, stopped at the end) unless
TAGPULSE_KAFKA is set, and always a fresh namespace and a fresh embedded ClickHouse directory,
so the check sees nothing but this run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HELP = "hostile input (≥100k malformed and adversarial messages) through the real pipeline, checked exactly"

RESTART_MARK = "exiting so the worker restarts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=100_000, metavar="N",
                        help="hostile pieces to send (default 100000); each is a message or an item of a batch")
    parser.add_argument("--valid", type=int, default=None, metavar="N",
                        help="valid posts mixed in (default: as many as --messages)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds (default 1800)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, ClickHouse data)")


def say(message: str) -> None:
    print(f"[hostile] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- shell
async def produce(settings, messages) -> list[tuple[int, int]]:
    """Send every message to its partition in order; (partition, offset) of each."""
    from aiokafka import AIOKafkaProducer

    from tagpulse.kafka_security import client_kwargs

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_request_size=1_048_576, max_batch_size=1 << 20,
                                request_timeout_ms=60_000, **client_kwargs())
    await producer.start()
    offsets: list[tuple[int, int]] = []
    try:
        pending = []
        for message in messages:
            pending.append(await producer.send(settings.topics.raw, message.value, key=message.key,
                                               partition=message.partition))
            if len(pending) >= 5000:
                offsets += [(md.partition, md.offset) for md in await asyncio.gather(*pending)]
                pending = []
        offsets += [(md.partition, md.offset) for md in await asyncio.gather(*pending)]
    finally:
        await producer.stop()
    return offsets


def worker_counter(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def query_rows(settings, sql: str) -> list[dict]:
    import orjson

    from tagpulse.commands.sql import run_query

    body = run_query(settings, sql, "JSONEachRow")
    return [orjson.loads(line) for line in body.splitlines() if line]


POSTS_SQL = """
SELECT platform, post_id, author_id, author_handle, author_followers, toUnixTimestamp(created_at) AS created_at,
       lang, lengthUTF8(text) AS text_chars, hex(MD5(text)) AS text_md5, hashtags, is_share, original_post_id,
       likes, shares, replies, quotes
FROM tagpulse.posts
"""
WINDOWS_SQL = """
SELECT tag, platform, window_size, toUnixTimestamp(window_start) AS window_start,
       toUnixTimestamp(window_end) AS window_end, posts, originals, shares, unique_authors, potential_reach,
       impressions, engagement
FROM tagpulse.reach_windows
"""


def run_hostile(settings, *, bad: int, valid: int, seed: int, run_dir: Path, timeout: float = 1800,
                say=say, classes=None) -> dict:
    """The whole run on a broker whose pipeline topics exist; returns the figures and `problems` (empty: exact)."""
    from tagpulse import hostile, pipeline
    from tagpulse.core.decode import MAX_DEAD_LETTER_RAW

    started = time.monotonic()
    stream = hostile.hostile_stream(bad=bad, valid=valid, seed=seed, partitions=settings.partitions,
                                    classes=classes or hostile.CLASSES)
    say(f"generated {len(stream.messages):,} messages ({stream.bytes() / 1e6:.1f} MB): {bad:,} hostile pieces, "
        f"{valid:,} valid posts + duplicates")
    t = time.monotonic()
    offsets = asyncio.run(produce(settings, stream.messages))
    produce_s = time.monotonic() - t
    say(f"wrote them to {settings.topics.raw} in {produce_s:.1f}s; starting the sink and one worker")

    pipe = pipeline.Pipeline(settings, run_dir, env=dict(os.environ))
    problems: list[str] = []
    t = time.monotonic()
    try:
        pipe.start_sink()
        worker = pipe.start_worker(loglevel="warn")
        worker_pid = worker.pid

        last = [0.0]

        def progress(backlog, lagging):
            if time.monotonic() - last[0] >= 10:
                last[0] = time.monotonic()
                say(f"  backlog {backlog} raw messages, {lagging} downstream")

        asyncio.run(pipeline.wait_until_final(settings, timeout=timeout, pipeline=pipe, on_progress=progress))
        process_s = time.monotonic() - t
        peak_rss = round(pipeline.peak_rss_mb(worker_pid) * 1024 * 1024) or None
        alive = worker.alive() and worker.pid == worker_pid
        metrics_port = settings.worker_metrics_port
        skipped = worker_counter(metrics_port, "tagpulse_skipped_total")
        say(f"all windows final after {process_s:.1f}s; reading ClickHouse")
        dead_rows = [(r["source"], r["reason"]) for r in query_rows(
            settings, "SELECT source, reason FROM tagpulse.dead_letters WHERE stage = 'worker'")]
        (dead_stats,) = query_rows(settings, "SELECT count() AS n, max(length(raw)) AS max_raw, "
                                             "sum(length(raw)) AS raw_total FROM tagpulse.dead_letters")
        post_rows = query_rows(settings, POSTS_SQL)
        window_rows = query_rows(settings, WINDOWS_SQL)
        (late,) = query_rows(settings, "SELECT count() AS n FROM tagpulse.late_events")
    finally:
        pipe.stop()
    log_text = (run_dir / "worker-0.log").read_text(errors="replace") if (run_dir / "worker-0.log").exists() else ""

    problems += hostile.compare(stream, offsets, settings.topics.raw, settings.windows, dead_rows=dead_rows,
                                post_rows=post_rows, window_rows=window_rows)
    if not alive:
        problems.append("the worker died or was replaced during the run")
    if RESTART_MARK in log_text or "Traceback" in log_text:
        problems.append("the worker log shows a crash")
    if int(late["n"]):
        problems.append(f"{late['n']} late-event rows: valid posts were counted as late")
    if int(skipped) != stream.skips():
        problems.append(f"skipped {int(skipped)} records, expected {stream.skips()}")
    if int(dead_stats["max_raw"] or 0) > MAX_DEAD_LETTER_RAW:
        problems.append(f"a dead letter keeps {dead_stats['max_raw']} bytes of raw (bound {MAX_DEAD_LETTER_RAW})")

    reasons = stream.dead_reasons()
    figures = {
        "hostile_pieces": bad,
        "valid_posts_sent": valid,
        "messages": len(stream.messages),
        "bytes": stream.bytes(),
        "pieces_per_class": dict(sorted(stream.pieces.items())),
        "messages_per_class": dict(sorted(stream.message_classes().items())),
        "dead_letters_expected": sum(reasons.values()),
        "dead_letters_stored": len(dead_rows),
        "dead_letters_per_reason": dict(sorted(reasons.items())),
        "dead_letter_raw_max_bytes": int(dead_stats["max_raw"] or 0),
        "dead_letter_raw_total_bytes": int(dead_stats["raw_total"] or 0),
        "skipped_expected": stream.skips(),
        "skipped_counted": int(skipped),
        "unique_posts_expected": len(stream.unique_posts()),
        "posts_stored": len(post_rows),
        "windows_expected": len(hostile.expected_windows(stream, settings.windows)),
        "windows_stored": len(window_rows),
        "late_rows": int(late["n"]),
        "worker_restarted": not alive,
        "worker_peak_rss_bytes": peak_rss,
        "produce_seconds": round(produce_s, 1),
        "process_seconds": round(process_s, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "problems": problems,
    }
    return figures


def print_figures(figures: dict) -> None:
    rss = figures["worker_peak_rss_bytes"]
    print(f"hostile pieces tried: {figures['hostile_pieces']:,} in {figures['messages']:,} raw-topic messages "
          f"({figures['bytes'] / 1e6:.1f} MB), mixed with {figures['valid_posts_sent']:,} valid posts")
    print("pieces per class:")
    for name, n in sorted(figures["pieces_per_class"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {n:>8,}")
    print(f"dead letters: {figures['dead_letters_stored']:,} stored, {figures['dead_letters_expected']:,} expected "
          f"(raw kept: max {figures['dead_letter_raw_max_bytes']:,} bytes, "
          f"total {figures['dead_letter_raw_total_bytes'] / 1e6:.1f} MB)")
    for reason, n in sorted(figures["dead_letters_per_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  {reason:40s} {n:>8,}")
    print(f"skipped (Bluesky deletes/updates): {figures['skipped_counted']:,} counted, "
          f"{figures['skipped_expected']:,} expected")
    print(f"posts: {figures['posts_stored']:,} stored, {figures['unique_posts_expected']:,} unique valid expected")
    print(f"reach_windows: {figures['windows_stored']:,} stored, {figures['windows_expected']:,} from the oracle; "
          f"late rows {figures['late_rows']}")
    peak = f"{rss / 2**20:.0f} MiB" if rss else "unknown"
    print(f"worker restarted: {'yes' if figures['worker_restarted'] else 'no'}; worker peak RSS {peak}")
    print(f"time: produce {figures['produce_seconds']}s, pipeline {figures['process_seconds']}s, "
          f"total {figures['total_seconds']}s")
    if figures["problems"]:
        print("PROBLEMS:")
        for problem in figures["problems"]:
            print(f"  - {problem}")
    else:
        print("exact: every bad record is a dead letter with its reason, every valid post counted once")


def run(args) -> int:
    import shutil
    import tempfile
    import uuid

    import orjson

    from tagpulse import config, stack

    if args.messages < 1 or (args.valid is not None and args.valid < 0):
        print("tagpulse hostile: --messages must be ≥ 1 and --valid ≥ 0", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="tagpulse-hostile-"))
    external = bool(os.environ.get("TAGPULSE_KAFKA", "").strip())
    os.environ.update({
        "TAGPULSE_NAMESPACE": f"hostile{uuid.uuid4().hex[:8]}",
        "TAGPULSE_CLICKHOUSE": f"chdb://{run_dir / 'clickhouse'}",
        "TAGPULSE_IDLE_TIMEOUT": os.environ.get("TAGPULSE_IDLE_TIMEOUT", "2"),
        "TAGPULSE_SQL_PORT": str(stack.free_port()),
        "TAGPULSE_SINK_METRICS_PORT": str(stack.free_port()),
        "TAGPULSE_WORKER_METRICS_PORT": str(stack.free_port()),
    })
    if not external:
        os.environ.update({"TAGPULSE_HOME": str(run_dir / "home"), **stack.private_kafka_env()})
    settings = config.load()
    code = 1
    try:
        if external:
            stack.wait_for_kafka(settings, timeout=30)
            say(f"using Kafka at {settings.kafka_bootstrap}, namespace {settings.topics.namespace}")
        else:
            say(f"starting a Kafka broker of our own in {run_dir / 'home'}")
            stack.ensure_kafka(settings)
        stack.ensure_topics(settings)
        valid = args.messages if args.valid is None else args.valid
        figures = run_hostile(settings, bad=args.messages, valid=valid, seed=args.seed, run_dir=run_dir / "logs",
                              timeout=args.timeout)
        print_figures(figures)
        if args.json:
            Path(args.json).write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        code = 0 if not figures["problems"] else 1
    except (stack.StackError, TimeoutError, RuntimeError) as exc:
        print(f"tagpulse hostile: {exc}", file=sys.stderr)
    finally:
        if not external:
            stack.stop(settings)
        if args.keep or code != 0:
            say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return code
