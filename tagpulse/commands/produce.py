"""`tagpulse produce`: JSONL records of any supported format → the raw posts topic.

Streams each input in 1 MiB reads (memory stays bounded whatever the file size; a line over
the 1 MiB record limit costs its first 64 KiB, not its size), parses records in chunks, sends
batches of canonical posts routed by `platform:post_id` (producers/kafka_producer.py) and puts
every invalid record, with its reason, on the dead-letter topic.
"""
from __future__ import annotations

import os
import stat
import sys
import time

HELP = "send posts from JSONL files (any supported format) to Kafka in batches; invalid records to dead letters"

_SSE_PREFIXES = (b"event:", b"data:", b"id:", b"retry:", b":")


def add_arguments(parser) -> None:
    from producers.adapters import FORMATS

    parser.add_argument("files", nargs="+", metavar="FILE", help="JSON Lines files, one record per line ('-' = stdin)")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="input format (default: auto-detect per record)")
    parser.add_argument("--batch-size", type=int, default=500, metavar="N",
                        help="posts per Kafka message (default 500; messages also stay under 900 KB)")
    parser.add_argument("--linger", type=float, default=0.05, metavar="SECONDS",
                        help="send a partial batch once its oldest post waited this long (default 0.05)")
    parser.add_argument("--compression", default="auto", choices=("auto", "none", "lz4", "zstd", "gzip", "snappy"),
                        help="Kafka compression (default auto: lz4 when aiokafka's codecs are installed, else none)")
    parser.add_argument("--jobs", default="auto", metavar="N",
                        help="parser processes (default auto: 2 for inputs over 32 MB on a machine with 2+ cores, "
                             "else 0 = parse in this process)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")


def run(args) -> int:
    import asyncio
    import gc
    import logging

    from aiokafka.errors import KafkaError

    from producers.kafka_producer import KafkaUnavailable
    from tagpulse import config

    if args.batch_size < 1 or args.linger < 0:
        print("tagpulse produce: --batch-size must be ≥ 1 and --linger ≥ 0", file=sys.stderr)
        return 2
    settings = config.load()
    if not _apply_user_aliases(settings):
        return 1
    # Every post allocates a dict and a list that refcounting frees at once; the cyclic collector
    # scanning them anyway cost ≈10 % of the throughput (profiled), so it runs less often here.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    # aiokafka logs every reconnect attempt; we report failures ourselves, once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        counts, unreadable, seconds = asyncio.run(_produce(settings, args))
    except KafkaUnavailable as exc:
        detail = str(exc)
        detail = "" if detail.startswith("no connection") else f" ({detail})"
        print(f"tagpulse produce: cannot reach Kafka at {settings.kafka_bootstrap}{detail}; run: tagpulse stack up",
              file=sys.stderr)
        return 1
    except ValueError as exc:   # an unavailable --compression, a bad --jobs
        print(f"tagpulse produce: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"tagpulse produce: Kafka at {settings.kafka_bootstrap} failed: {exc}; is it running? "
              "(tagpulse stack status)", file=sys.stderr)
        return 1
    rate = f" ({counts.posts / seconds:,.0f} posts/s)" if seconds > 0 and counts.posts else ""
    print(f"tagpulse produce: {counts.summary()}{rate}", file=sys.stderr)
    return 2 if unreadable else 0


async def _produce(settings, args):
    from producers.kafka_producer import RawProducer, parser_pool, produce_stream

    inputs = []
    unreadable = 0
    for path in args.files:
        if path == "-":
            inputs.append(("<stdin>", sys.stdin.fileno(), None, False))
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            print(f"tagpulse produce: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            unreadable += 1
            continue
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            print(f"tagpulse produce: {path} is a directory", file=sys.stderr)
            unreadable += 1
            continue
        regular = stat.S_ISREG(info.st_mode)
        if regular and _looks_like_sse(fd):
            os.close(fd)
            print(f"tagpulse produce: {path} is server-sent-events text, not JSON Lines; convert it first: "
                  f"tagpulse parse {path} | tagpulse produce -", file=sys.stderr)
            unreadable += 1
            continue
        inputs.append((path, fd, info.st_size if regular else None, True))

    open_fds = {fd for _, fd, _, owned in inputs if owned}
    jobs = _jobs(args.jobs, sum(size for _, _, size, _ in inputs if size))
    pool = parser_pool(jobs)  # spawned now, before the Kafka client's threads exist
    bar = _progress_bar(args, sum(size for _, _, size, _ in inputs if size) or None)
    started = time.monotonic()
    try:
        async with RawProducer(settings, batch_size=args.batch_size, linger_s=args.linger,
                               compression=args.compression) as producer:
            for name, fd, _size, owned in inputs:
                try:
                    await produce_stream(producer, fd, name, args.format,
                                         on_bytes=bar.update if bar is not None else None, pool=pool, jobs=jobs)
                except OSError as exc:
                    print(f"tagpulse produce: error reading {name}: {exc.strerror or exc}", file=sys.stderr)
                    unreadable += 1
                finally:
                    if owned:
                        open_fds.discard(fd)
                        os.close(fd)
        return producer.counts, unreadable, time.monotonic() - started
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
        for fd in open_fds:  # inputs not reached (Kafka failed first)
            os.close(fd)


PARALLEL_MIN_BYTES = 32 << 20


def _jobs(requested: str, total_bytes: int) -> int:
    """Parser processes: parsing and validation are ≈85 % of the producer's CPU time (profiled), so
    big files are parsed by two processes while this one reads and sends; small inputs are not
    worth the ≈0.2 s start-up."""
    if requested != "auto":
        try:
            return max(0, int(requested))
        except ValueError:
            raise ValueError(f"--jobs {requested!r}: expected a whole number or 'auto'") from None
    return 2 if total_bytes >= PARALLEL_MIN_BYTES and (os.cpu_count() or 1) >= 2 else 0


def _looks_like_sse(fd: int) -> bool:
    head = os.pread(fd, 256, 0).lstrip()
    return head.startswith(_SSE_PREFIXES)


def _progress_bar(args, total: int | None):
    if total is None or not (args.progress or sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="produce",
                dynamic_ncols=True, mininterval=0.5)


def _apply_user_aliases(settings) -> bool:
    """Canonicalise with the user's aliases ($TAGPULSE_HOME/aliases.json), like the stream does."""
    path = settings.home / "aliases.json"
    if not path.exists():
        return True
    from tagpulse.core.hashtags import AliasTable, set_aliases

    try:
        set_aliases(AliasTable.load(path))
    except (OSError, ValueError) as exc:
        print(f"tagpulse produce: cannot read the alias table {path}: {exc}", file=sys.stderr)
        return False
    return True
