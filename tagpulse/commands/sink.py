"""`tagpulse sink`: the one process that owns ClickHouse (see sinks/service.py)."""
from __future__ import annotations

import argparse
import sys

HELP = "Write posts, windows, late events and dead letters to ClickHouse exactly once; serve read-only SQL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default INFO)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")


def run(args) -> int:
    import asyncio
    import logging

    from sinks import clickhouse as ch
    from sinks.service import serve
    from tagpulse import config

    settings = config.load()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = settings.clickhouse_url
    if ch.is_embedded(url) and ch.embedded_lock_held(url):
        print(f"tagpulse sink: the ClickHouse directory {ch.embedded_path(url)} is in use by another process "
              "(is a sink already running?)", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(settings, metrics=not args.no_metrics))
    except ch.ClickHouseError as exc:
        print(f"tagpulse sink: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tagpulse sink: {ch.mask_secrets(str(exc), url)} (is the SQL port {settings.sink_sql_port} or "
              f"metrics port {settings.sink_metrics_port} in use?)", file=sys.stderr)
        return 1
    return 0
