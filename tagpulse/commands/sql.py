"""`tagpulse sql "QUERY"`: read-only SQL against tagpulse's ClickHouse.

When `tagpulse sink` runs it owns the database, so the query goes to its
endpoint (127.0.0.1:TAGPULSE_SQL_PORT). Otherwise we open the database
ourselves with readonly=1 (a server always; chDB only if nobody holds it).
"""
from __future__ import annotations

import argparse
import sys

HELP = "Run a read-only SQL query against the tagpulse ClickHouse (TSV with a header row by default)"

FORMATS = ("TSVWithNames", "TSV", "CSVWithNames", "CSV", "JSONEachRow", "JSON", "JSONCompact", "PrettyCompact",
           "Pretty", "Markdown", "Vertical")


class QueryError(Exception):
    """A message for the user (no traceback)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="one SQL statement (tables live in database `tagpulse`)")
    parser.add_argument("--format", "-f", default="TSVWithNames", metavar="FORMAT",
                        help=f"ClickHouse output format: {', '.join(FORMATS)}, … (default TSVWithNames)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="query parameter for {NAME:Type} placeholders (repeatable)")


def query_endpoint(port: int, sql: str, fmt: str, parameters: dict | None, timeout: float = 300.0) -> bytes | None:
    """The sink's answer, or None when no sink listens on the port."""
    import urllib.error
    import urllib.request

    import orjson

    body = orjson.dumps({"sql": sql, "format": fmt, "parameters": parameters or {}})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/query", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("error") or str(exc)
        except Exception:
            message = str(exc)
        raise QueryError(message) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionRefusedError, FileNotFoundError)) or "refused" in str(exc.reason):
            return None
        raise QueryError(f"the sink on 127.0.0.1:{port} did not answer: {exc.reason}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise QueryError(f"the sink on 127.0.0.1:{port} did not answer: {exc}") from None


def query_direct(url: str, sql: str, fmt: str, parameters: dict | None) -> bytes:
    from sinks import clickhouse as ch
    from sinks.service import QueryRefused, explain_error, run_readonly_query

    client = _DIRECT_CLIENTS.get(url)
    if client is None and ch.is_embedded(url):
        path = ch.embedded_path(url)
        if path is None or not (path / "metadata").exists():
            raise QueryError(f"no tagpulse database at {path} yet: run `tagpulse sink` (or `tagpulse demo`) first")
        if ch.embedded_lock_held(url):
            raise QueryError(f"the ClickHouse directory {path} is held by another process, but no sink answers on "
                             "its SQL port; wait for `tagpulse sink` to finish starting, or stop the process "
                             "holding it")
    if client is None:
        try:
            client = _DIRECT_CLIENTS[url] = ch.connect(url, readonly=True)
        except ch.ClickHouseError as exc:
            raise QueryError(str(exc)) from None
    try:
        return run_readonly_query(client, sql, fmt, parameters)
    except QueryRefused as exc:
        raise QueryError(str(exc)) from None
    except Exception as exc:
        raise QueryError(explain_error(ch.mask_secrets(str(exc), url))) from None


# One read-only client per URL for this process (a report runs several queries).
_DIRECT_CLIENTS: dict = {}


def run_query(settings, sql: str, fmt: str = "TSVWithNames", parameters: dict | None = None) -> bytes:
    """Read-only query through the running sink, or directly; QueryError for anything the user must see."""
    from sinks.service import QueryRefused, check_query

    try:
        check_query(sql, fmt)
    except QueryRefused as exc:
        raise QueryError(str(exc)) from None
    result = query_endpoint(settings.sink_sql_port, sql, fmt, parameters)
    if result is not None:
        return result
    return query_direct(settings.clickhouse_url, sql, fmt, parameters)


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise QueryError(f"--param {item!r}: expected NAME=VALUE")
        params[name.strip()] = value
    return params


def run(args) -> int:
    from tagpulse import config

    settings = config.load()
    try:
        result = run_query(settings, args.query, args.format, parse_params(args.param))
    except QueryError as exc:
        print(f"tagpulse sql: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(result)
    sys.stdout.buffer.flush()
    return 0
