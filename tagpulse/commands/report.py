"""`tagpulse report TAG`: reach of one hashtag, per platform and over time (logic in sinks/report.py)."""
from __future__ import annotations

import argparse
import sys

HELP = "Report a hashtag's posts, shares, authors, potential reach and impressions per platform and over time"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tag", help="the hashtag, any spelling: '#einBuchfürKai', einbuchfuerkai, …")
    parser.add_argument("--since", help="start (UTC): 2015-05-20, 2015-05-20T09:15Z, or 24h for 24 hours ago")
    parser.add_argument("--until", help="end (UTC, exclusive), same forms as --since")
    parser.add_argument("--window", default="1h", help="bucket and peak-window size: 1m, 1h, 24h … (default 1h)")
    parser.add_argument("--top", type=int, default=10, help="how many top contributors to list (default 10)")
    parser.add_argument("--json", action="store_true", help="print the report model as JSON instead of text")
    parser.add_argument("--html", metavar="FILE",
                        help="write a self-contained HTML page with charts to FILE ('-' for standard output)")


def run(args) -> int:
    import time

    import orjson

    from sinks.report import (OPTIONAL_QUERIES, QUERIES, build_report, canonical, parse_time, query_parameters,
                              render_text)
    from tagpulse import config
    from tagpulse.commands.sql import QueryError, run_query

    settings = config.load()
    try:
        now = time.time()
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else None
        window = config.parse_duration(args.window)
    except (ValueError, SystemExit) as exc:
        print(f"tagpulse report: {exc}", file=sys.stderr)
        return 2
    if window <= 0 or args.top < 0:
        print("tagpulse report: --window must be positive and --top not negative", file=sys.stderr)
        return 2
    tag = canonical(args.tag)
    if not tag:
        print(f"tagpulse report: {args.tag!r} is not a hashtag", file=sys.stderr)
        return 2
    params = query_parameters(tag, since, until, window, args.top)
    if args.html and args.html != "-":
        # Fail before the queries, not after them.
        import os

        folder = os.path.dirname(os.path.abspath(args.html))
        if os.path.isdir(args.html) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            print(f"tagpulse report: cannot write {args.html}: not a writable file path", file=sys.stderr)
            return 2
    rows = {}
    try:
        for name, sql in QUERIES.items():
            try:
                body = run_query(settings, sql, "JSONEachRow", params)
            except QueryError as exc:
                # A database from before the spikes/completeness tables: report without those sections.
                if name in OPTIONAL_QUERIES and _missing_table(str(exc)):
                    rows[name] = []
                    continue
                raise
            rows[name] = [orjson.loads(line) for line in body.splitlines() if line.strip()]
    except QueryError as exc:
        print(f"tagpulse report: {exc}", file=sys.stderr)
        return 1
    report = build_report(tag, args.tag, since, until, window, rows)
    if args.html:
        from sinks.html_report import render_html

        page = render_html(report)
        if args.html == "-":
            sys.stdout.write(page)
            return 0
        try:
            with open(args.html, "w", encoding="utf-8") as handle:
                handle.write(page)
        except OSError as exc:
            print(f"tagpulse report: cannot write {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"tagpulse report: wrote {args.html} ({len(page.encode()):,} bytes; open it in any browser, "
              "no network needed)", file=sys.stderr)
        return 0
    if args.json:
        import dataclasses

        sys.stdout.write(orjson.dumps(dataclasses.asdict(report), option=orjson.OPT_INDENT_2 |
                                      orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 0


def _missing_table(message: str) -> bool:
    return "UNKNOWN_TABLE" in message or "Unknown table" in message or "does not exist" in message
