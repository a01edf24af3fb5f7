"""`tagpulse parse`: raw platform records → canonical JSONL on stdout.

Streams: one line (or SSE event) in memory at a time, whatever the file size. A line longer
than the record limit (1 MiB) is reported as `record_too_large` and skipped to its end in
bounded chunks, so a 10 MB line costs 1 MiB of memory, not 10.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

HELP = "parse raw platform records (any supported format) into canonical post JSONL"

_SSE_FIELDS = (b"event:", b"data:", b"id:", b"retry:", b":")
_CHUNK = 1 << 20
MAX_DOCUMENT_BYTES = 64 << 20  # a whole-file JSON document (e.g. a Twitter v2 page) is read at once, up to this


def add_arguments(parser) -> None:
    from producers.adapters import FORMATS

    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="JSON Lines files (one record per line; '-' reads stdin); Mastodon SSE text is "
                             "recognised too")
    parser.add_argument("--format", default="auto", choices=FORMATS,
                        help="input format (default: auto-detect per record)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any record was invalid")


@dataclass
class Totals:
    records: int = 0
    posts: int = 0
    invalid: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return (f"parsed {self.records} records: {self.posts} posts, {self.invalid} invalid, "
                f"{self.skipped} skipped")


# --------------------------------------------------------------------------- reading
def read_lines(handle: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line bytes) — or None for a line longer than `limit`, which is drained unread."""
    number = 0
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            # Oversize: drain the rest of this line in bounded chunks.
            while True:
                rest = handle.readline(_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


def sse_events(lines: Iterator[tuple[int, bytes | None]], limit: int) -> Iterator[tuple[int, object]]:
    """Server-sent event text → (line of the event's first field, {"event", "data"} | None if too large)."""
    event, data, start, size, oversize = "", [], 0, 0, False
    for number, line in lines:
        if line is None:
            oversize = True
            start = start or number
            continue
        text = line.rstrip(b"\r\n")
        if not text:
            if oversize:
                yield start, None
            elif data:
                yield start, {"event": event or "message", "data": "\n".join(data)}
            event, data, start, size, oversize = "", [], 0, 0, False
            continue
        if text.startswith(b":"):
            continue  # comment / heartbeat (":thump")
        start = start or number
        name, _, value = text.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            event = value.decode("utf-8", "replace")
        elif name == b"data":
            size += len(value)
            if size > limit:
                oversize = True
                data = []
            elif not oversize:
                data.append(value.decode("utf-8", "surrogateescape"))
    if oversize:
        yield start, None
    elif data:
        yield start, {"event": event or "message", "data": "\n".join(data)}


def _is_sse(first: bytes) -> bool:
    return first.lstrip().startswith(_SSE_FIELDS)


# --------------------------------------------------------------------------- running
def run(args) -> int:
    import orjson

    from producers.adapters import MAX_RECORD_BYTES, decode_json, parse_record_detailed
    from schemas.post import InvalidRecord

    out = sys.stdout.buffer
    err = sys.stderr
    totals = Totals()
    unreadable = 0
    fmt = args.format

    def report(name: str, number: int, reason: str) -> None:
        totals.invalid += 1
        err.write(f"invalid {name}:{number}: {reason}\n")

    def handle_value(name: str, number: int, value) -> None:
        totals.records += 1
        result = parse_record_detailed(value, fmt)
        for reason in result.invalid:
            report(name, number, reason)
        if result.skipped is not None:
            totals.skipped += 1
            totals.skip_reasons[result.skipped] += 1
        if result.posts:
            out.write(b"".join(orjson.dumps(post) + b"\n" for post in result.posts))
            totals.posts += len(result.posts)

    for path in args.files:
        name = "<stdin>" if path == "-" else path
        try:
            handle = sys.stdin.buffer if path == "-" else open(path, "rb")
        except OSError as exc:
            err.write(f"tagpulse parse: cannot read {path}: {exc.strerror or exc}\n")
            unreadable += 1
            continue
        try:
            lines = read_lines(handle, MAX_RECORD_BYTES)
            first = _first_content_line(lines)
            if first is None:
                continue
            number, line = first
            if fmt in ("auto", "mastodon-sse") and line is not None and _is_sse(line):
                for number, value in sse_events(_chain(first, lines), MAX_RECORD_BYTES):
                    if value is None:
                        totals.records += 1
                        report(name, number, "record_too_large")
                    else:
                        handle_value(name, number, value)
                continue
            if line is not None and line.strip() in (b"{", b"["):
                # A pretty-printed JSON document (an API response saved to a file): one record.
                # A JSONL line can never be a lone brace, so this cannot misread JSON Lines.
                document = line + handle.read(MAX_DOCUMENT_BYTES + 1 - len(line))
                totals.records += 1
                if len(document) > MAX_DOCUMENT_BYTES:
                    report(name, number, "document_too_large")
                    continue
                try:
                    value = decode_json_document(document)
                except InvalidRecord as exc:
                    report(name, number, exc.reason)
                    continue
                totals.records -= 1
                handle_value(name, number, value)
                continue
            for number, line in _chain(first, lines):
                if line is None:
                    totals.records += 1
                    report(name, number, "record_too_large")
                    continue
                if not line.strip():
                    continue
                try:
                    value = decode_json(line)
                except InvalidRecord as exc:
                    totals.records += 1
                    report(name, number, exc.reason)
                    continue
                handle_value(name, number, value)
        except OSError as exc:
            err.write(f"tagpulse parse: error reading {name}: {exc.strerror or exc}\n")
            unreadable += 1
        finally:
            if handle is not sys.stdin.buffer:
                handle.close()
    out.flush()
    err.write(totals.summary() + "\n")
    if totals.skip_reasons:
        err.write("skipped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(totals.skip_reasons.items()))
                  + "\n")
    if unreadable:
        return 2
    return 1 if args.strict and totals.invalid else 0


def decode_json_document(document: bytes):
    """A whole pretty-printed JSON file; the per-record size limit does not apply to it."""
    import orjson

    from schemas.post import InvalidRecord

    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "UTF-8" in message or "surrogate" in message:
            raise InvalidRecord("invalid_utf8") from None
        raise InvalidRecord("too_deep" if "depth" in message else "invalid_json") from None


def _first_content_line(lines):
    for number, line in lines:
        if line is None or line.strip():
            return number, line
    return None


def _chain(first, rest):
    yield first
    yield from rest
