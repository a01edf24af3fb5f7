"""Raw platform records → canonical posts (pure: no I/O).

    parse_line(raw_bytes)        one line/message → posts         (size check, orjson decode, then parse_record)
    parse_record(obj, fmt=…)     one decoded JSON value → posts   (format auto-detected unless forced)
    parse_record_detailed(obj)   → Parsed(posts, invalid reasons, skip reason) for tools that report per item
    detect_format(obj)           → one of FORMATS (never "auto")

Outcomes, the same for every format:
- posts: a list of canonical post dicts (schemas.post) — usually one; a Twitter v2 page or a
  JSON array (a batch, as on the raw topic) can give many.
- a skip (a Bluesky delete or identity event, a Mastodon `delete` stream event, a Twitter
  stream notice, …): parse_record returns [] — so callers that only want posts need no extra
  branch — unless `raise_skips=True`, when it raises `Skipped(reason)` for callers that count
  skips (tagpulse parse). parse_record_detailed always reports it in `.skipped`.
- anything unusable: `InvalidRecord(reason)`. No other exception type ever escapes, whatever
  the input (a last-resort guard maps internal errors to `malformed:<ErrorType>`).
In a page or batch, invalid items are dropped individually: parse_record raises only when
NOTHING in the record was usable and something was invalid; parse_record_detailed lists them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from producers.adapters import bluesky, canonical, mastodon, twitter_v1, twitter_v2
from producers.adapters.canonical import Skipped
from schemas.post import InvalidRecord

__all__ = ["FORMATS", "MAX_RECORD_BYTES", "InvalidRecord", "Parsed", "Skipped", "decode_json", "detect_format",
           "parse_line", "parse_record", "parse_record_detailed"]

FORMATS: tuple[str, ...] = ("auto", "canonical", "mastodon", "mastodon-sse", "mastodon-ws", "twitter-v1",
                            "twitter-v2", "bluesky-jetstream")

MAX_RECORD_BYTES = 1 << 20   # 1 MiB: real records are a few KB; bigger ones are rejected unread
MAX_BATCH = 100_000


class Parsed(NamedTuple):
    posts: list[dict]
    invalid: list[str]       # reasons, one per unusable item
    skipped: str | None      # the skip reason when the whole record was skipped


# --------------------------------------------------------------------------- detection
def detect_format(obj: Any) -> str:
    """The format of one decoded record; InvalidRecord('unknown_format') when nothing fits."""
    if type(obj) is not dict:
        raise InvalidRecord("not_an_object")
    if canonical.is_canonical(obj):
        return "canonical"
    if "uri" in obj and "account" in obj:
        return "mastodon"
    if "event" in obj and ("payload" in obj or "stream" in obj):
        return "mastodon-ws"
    if "event" in obj and type(obj.get("data")) is str:
        return "mastodon-sse"
    if bluesky.looks_like_jetstream(obj):
        return "bluesky-jetstream"
    if "user" in obj and ("id_str" in obj or "id" in obj) or twitter_v1.is_notice(obj):
        return "twitter-v1"
    if twitter_v2.looks_like_v2(obj):
        return "twitter-v2"
    if "platform" in obj:  # a canonical post with fields missing: let validation name them
        return "canonical"
    raise InvalidRecord("unknown_format")


_SINGLE = {
    "canonical": canonical.parse,
    "mastodon": mastodon.parse_status,
    "mastodon-ws": mastodon.parse_ws_message,
    "mastodon-sse": mastodon.parse_sse_event,
    "twitter-v1": twitter_v1.parse_tweet,
    "bluesky-jetstream": bluesky.parse_event,
}


# --------------------------------------------------------------------------- parsing
def _parse_one(obj: Any, fmt: str) -> tuple[list[dict], list[str]]:
    if fmt == "auto":
        fmt = detect_format(obj)
    if fmt == "twitter-v2":
        return twitter_v2.parse_response_detailed(obj)
    try:
        parse = _SINGLE[fmt]
    except KeyError:
        raise InvalidRecord(f"unknown_format:{str(fmt)[:40]}") from None
    return parse(obj), []


def _guarded(obj: Any, fmt: str) -> tuple[list[dict], list[str]]:
    try:
        return _parse_one(obj, fmt)
    except (InvalidRecord, Skipped):
        raise
    except RecursionError:
        raise InvalidRecord("too_deep") from None
    except Exception as exc:  # an adapter bug must not stop a stream: report it as this record's reason
        raise InvalidRecord(f"malformed:{type(exc).__name__}") from None


def parse_record_detailed(obj: Any, fmt: str = "auto") -> Parsed:
    """Posts, per-item invalid reasons and the skip reason of one decoded record. Never raises."""
    if type(obj) is list:
        if len(obj) > MAX_BATCH:
            return Parsed([], ["batch_too_large"], None)
        posts: list[dict] = []
        invalid: list[str] = []
        skips = 0
        for n, item in enumerate(obj):
            if type(item) is list:
                invalid.append(f"nested_batch (item {n})")
                continue
            try:
                got, bad = _guarded(item, fmt)
            except Skipped:
                skips += 1
                continue
            except InvalidRecord as exc:
                invalid.append(f"{exc.reason} (item {n})")
                continue
            posts.extend(got)
            invalid.extend(f"{reason} (item {n})" for reason in bad)
        skipped = "batch_all_skipped" if obj and skips == len(obj) else None
        return Parsed(posts, invalid, skipped)
    try:
        posts, invalid = _guarded(obj, fmt)
    except Skipped as exc:
        return Parsed([], [], exc.reason)
    except InvalidRecord as exc:
        return Parsed([], [exc.reason], None)
    return Parsed(posts, invalid, None)


def parse_record(obj: Any, fmt: str = "auto", *, raise_skips: bool = False) -> list[dict]:
    """Canonical posts of one decoded record (see the module doc for skips and errors)."""
    if type(obj) is dict:  # the common case, without the batch bookkeeping
        try:
            posts, invalid = _guarded(obj, fmt)
        except Skipped:
            if raise_skips:
                raise
            return []
        if invalid and not posts:
            raise InvalidRecord(invalid[0])
        return posts
    result = parse_record_detailed(obj, fmt)
    if result.skipped is not None:
        if raise_skips:
            raise Skipped(result.skipped)
        return []
    if result.invalid and not result.posts:
        raise InvalidRecord(result.invalid[0])
    return result.posts


def decode_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """Bytes of one record → the JSON value, or InvalidRecord (size, UTF-8, syntax, depth)."""
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord("record_too_large")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "UTF-8" in message or "utf-8" in message or "surrogate" in message:
            raise InvalidRecord("invalid_utf8") from None
        if "depth" in message or "recursion" in message:
            raise InvalidRecord("too_deep") from None
        if not (raw if isinstance(raw, (bytes, str)) else bytes(raw)).strip():
            raise InvalidRecord("empty_record") from None
        raise InvalidRecord("invalid_json") from None
    except (TypeError, ValueError):
        raise InvalidRecord("invalid_json") from None


def parse_line(raw: bytes, fmt: str = "auto", *, raise_skips: bool = False) -> list[dict]:
    """One line or message as bytes → canonical posts (InvalidRecord / Skipped as in parse_record)."""
    return parse_record(decode_json(raw), fmt, raise_skips=raise_skips)
