"""Raw-topic messages -> canonical posts and dead-letter rows, for the worker.

Our own producers send canonical posts, so that path is tried first and costs
one validation; anything else goes through the format adapters. Every failure
becomes a RecordError with a short reason code (docs/formats.md), whatever the
input looked like: hostile input must never stop the stream (docs/hostile-input.md).

Pure except for one clock read: a post dated after the worker's clock plus
MAX_FUTURE_S is refused, because its event time would drag the partition's
watermark ahead of every real post (the clock is `_clock`, replaceable in tests).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from functools import partial

import msgspec
import orjson

from producers.adapters import MAX_RECORD_BYTES, decode_json, parse_record_detailed
from schemas.post import (InvalidRecord, WirePost, decode_wire_array, finish_wire_post, format_timestamp,
                          validate_post)

from tagpulse.core.stage1 import RecordError

# Our producer packs at most 500 posts per message (producers/kafka_producer.py). A bigger
# array is refused whole: 1 MiB of `0,` would otherwise become half a million dead letters.
MAX_MESSAGE_ITEMS = 10_000
# What a dead letter keeps of the raw record: enough to see what went wrong, bounded so
# that a message full of bad items yields dead letters no bigger than itself (plus overhead).
MAX_DEAD_LETTER_RAW = 64 * 1024
# One message may carry at most this many dead letters of its own items; past it the message is
# refused whole. A dead letter costs more than the item it describes (a `0` item becomes a
# ~130-byte row), so without the cap garbage would cost far more memory than valid input.
MAX_MESSAGE_DEAD_LETTERS = 1_000
# A post dated further than this after the worker's clock is refused: the watermark follows the
# largest event time, so one such post would make every real post of its partition late.
MAX_FUTURE_S = 600

_clock = time.time
_as_dict = msgspec.structs.asdict


class PartlyInvalid(RecordError):
    """A record that yields posts and also has unusable parts (a Twitter v2 page with a bad tweet)."""

    def __init__(self, posts: list[dict], problems: list[tuple[object, str, str]]):
        super().__init__(problems[0][1])
        self.posts = posts
        self.problems = problems  # (bad part, reason, location inside the record)


def decode_message(value: bytes) -> list:
    """One Kafka message value -> its items (a JSON array is a batch), or RecordError for the whole message."""
    if value is None:  # a tombstone: Kafka allows a null value on any topic
        raise RecordError("empty_record")
    try:
        decoded = decode_json(value)
    except InvalidRecord as exc:
        raise RecordError(exc.reason) from None
    if type(decoded) is not list:
        return [decoded]
    if len(decoded) > MAX_MESSAGE_ITEMS:
        raise RecordError("batch_too_large")
    return decoded


def decode_value(value: bytes, where: str, decode=None) -> tuple[list[dict], list[dict], int]:
    """(posts, dead-letter rows, skipped records) of one raw-topic message at `where` (topic/partition/offset).

    The posts are canonical post dicts; decode_posts is the same with WirePost structs where the
    bulk decoder read the message.
    """
    posts, dead, skipped = decode_posts(value, where, decode)
    if posts and type(posts[0]) is not dict:
        posts = list(map(_as_dict, posts))
    return posts, dead, skipped


def decode_posts(value: bytes, where: str, decode=None) -> tuple[list, list[dict], int]:
    """(posts, dead-letter rows, skipped records) of one raw-topic message at `where` (topic/partition/offset).

    A message of clean canonical posts (our producer's) gives WirePost structs, any other message
    canonical post dicts, with the same fields and values.

    A bad item costs only itself: its dead letter's source is `where#index` (`#index/data[n]`
    for a tweet of a page), and the other items of the batch still count. Only what cannot be
    split (not JSON, too big, too many items or too many bad ones) is one dead letter for the
    whole message, with source `where`.
    """
    decode = decode or decode_record
    if decode is decode_record:
        # One clock read per message, not per post.
        latest = _latest_allowed()
        posts = _decode_wire_message(value, latest)
        if posts is not None:
            return posts, [], 0
        decode = partial(decode_record, latest_allowed=latest)
    try:
        items = decode_message(value)
    except RecordError as exc:
        return [], [dead_letter(value, exc.reason, where)], 0
    valid: list[dict] = []
    dead: list[dict] = []
    skipped = 0
    for index, item in enumerate(items):
        try:
            posts = decode(item)
        except PartlyInvalid as exc:
            dead += [dead_letter(part, reason, f"{where}#{index}{inside}") for part, reason, inside in exc.problems]
            posts = exc.posts
        except RecordError as exc:
            dead.append(dead_letter(item, exc.reason, f"{where}#{index}"))
            if len(dead) > MAX_MESSAGE_DEAD_LETTERS:
                return [], [dead_letter(value, "too_many_invalid_items", where)], 0
            continue
        if not posts:
            skipped += 1
        valid.extend(posts)
    if len(dead) > MAX_MESSAGE_DEAD_LETTERS:
        return [], [dead_letter(value, "too_many_invalid_items", where)], 0
    return valid, dead, skipped


def _decode_wire_message(value, latest_allowed: str) -> list[WirePost] | None:
    """The posts of a message that is an array of complete, clean canonical posts (what our
    producer sends), decoded by msgspec in one call; None for anything else, which then takes the
    item-by-item path. ≈2.3 instead of ≈5 µs a post; the same posts (schemas/post.py, WirePost)."""
    if type(value) is not bytes or len(value) > MAX_RECORD_BYTES:
        return None
    posts = decode_wire_array(value)
    if posts is None or len(posts) > MAX_MESSAGE_ITEMS:
        return None
    for post in posts:
        # canonical timestamps compare as strings
        if not finish_wire_post(post) or post.created_at > latest_allowed:
            return None
    return posts


_future_second = -1
_future_bound = ""


def _latest_allowed() -> str:
    """Canonical timestamp of clock + MAX_FUTURE_S, recomputed once per second."""
    global _future_second, _future_bound
    now = int(_clock())
    if now != _future_second:
        try:
            _future_bound = format_timestamp(datetime.fromtimestamp(now + MAX_FUTURE_S, timezone.utc))
        except InvalidRecord:  # a clock beyond the schema's upper bound: the schema bound alone applies
            _future_bound = "9999"
        _future_second = now
    return _future_bound


def decode_record(item, latest_allowed: str | None = None) -> list[dict]:
    """One item of a message -> canonical posts ([] for a skip); RecordError (maybe PartlyInvalid) otherwise.

    latest_allowed: the canonical timestamp after which a post is refused (default: clock + MAX_FUTURE_S).
    """
    try:
        if type(item) is dict and "post_id" in item and "hashtags" in item and "platform" in item:
            post = validate_post(item)
            if post["created_at"] > (latest_allowed or _latest_allowed()):  # canonical timestamps compare as strings
                raise RecordError("timestamp_in_future:created_at")
            return [post]
        if type(item) is list:
            # The message is the batch; an array inside it is not a record of any format.
            raise RecordError("nested_batch")
        posts, invalid, _skipped = parse_record_detailed(item)
    except InvalidRecord as exc:
        raise RecordError(getattr(exc, "reason", None) or str(exc)) from None
    except RecordError:
        raise
    except RecursionError:
        raise RecordError("too_deep") from None
    except Exception as exc:  # hostile input must never stop the stream
        raise RecordError(f"malformed:{type(exc).__name__}") from None
    if invalid and not posts:
        raise RecordError(_code(invalid[0]))
    if posts:
        bound = latest_allowed or _latest_allowed()
        future = [p for p in posts if p["created_at"] > bound]
        if future:
            posts = [p for p in posts if p["created_at"] <= bound]
            invalid = invalid + ["timestamp_in_future:created_at"] * len(future)
            if not posts:
                raise RecordError("timestamp_in_future:created_at")
    if invalid:
        raise PartlyInvalid(posts, [_problem(item, reason) for reason in invalid])
    return posts


def _code(reason: str) -> str:
    """'missing_field:id (data[3])' -> 'missing_field:id': the location goes to the source column."""
    return reason.split(" (", 1)[0]


def _problem(item, reason: str) -> tuple[object, str, str]:
    """(the bad part, its reason code, its location suffix) of a partly invalid record."""
    code = _code(reason)
    if " (data[" in reason and type(item) is dict and type(item.get("data")) is list:
        try:
            n = int(reason.rsplit("[", 1)[1].rstrip("])"))
            return item["data"][n], code, f"/data[{n}]"
        except (ValueError, IndexError):
            pass
    return item, code, ""


# --------------------------------------------------------------------------- dead letters
def dead_letter(raw, reason: str, where: str) -> dict:
    """The dead-letter row of a record (bytes, or a decoded JSON value) that could not become posts."""
    text, size = dead_letter_raw(raw)
    return {"stage": "worker", "reason": reason, "raw": text, "raw_bytes": size, "source": where}


def dead_letter_raw(raw) -> tuple[str, int]:
    """(text kept, size in bytes of the whole) for a dead letter: at most MAX_DEAD_LETTER_RAW bytes of UTF-8.

    Bytes are decoded with replacement characters; decoded JSON is re-encoded, and a value nested
    deeper than orjson can write (it stops at 255 levels, the reader at 1024) is written by hand
    with its depth elided, so no input can make the dead letter itself fail.
    """
    if raw is None:
        return "", 0
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw)
        return _clip(raw[:MAX_DEAD_LETTER_RAW + 4].decode("utf-8", "replace")), len(raw)
    if isinstance(raw, str):
        encoded = raw.encode("utf-8", "replace")
        return _clip(encoded[:MAX_DEAD_LETTER_RAW + 4].decode("utf-8", "replace")), len(encoded)
    try:
        encoded = orjson.dumps(raw, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        encoded = _shallow_json(raw, MAX_DEAD_LETTER_RAW + 4).encode("utf-8", "replace")
    return _clip(encoded[:MAX_DEAD_LETTER_RAW + 4].decode("utf-8", "ignore")), len(encoded)


def _clip(text: str) -> str:
    """At most MAX_DEAD_LETTER_RAW bytes of UTF-8, cut at a character boundary."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= MAX_DEAD_LETTER_RAW:
        return text
    return encoded[:MAX_DEAD_LETTER_RAW].decode("utf-8", "ignore")


_SHALLOW_DEPTH = 64


def _shallow_json(value, limit: int) -> str:
    """JSON-like text of a value of any depth, levels beyond _SHALLOW_DEPTH written as "…"; stops near limit."""
    out: list[str] = []
    size = 0
    # An explicit stack: the value may be nested deeper than Python's recursion limit.
    stack: list = [(value, 0)]
    while stack and size < limit:
        item, depth = stack.pop()
        if isinstance(item, str) and depth < 0:  # punctuation queued by a container
            out.append(item)
            size += len(item)
            continue
        if type(item) in (dict, list) and depth >= _SHALLOW_DEPTH:
            piece = '"…"'
        elif type(item) is dict:
            stack.append(("}", -1))
            entries = list(item.items())
            for i in range(len(entries) - 1, -1, -1):
                key, val = entries[i]
                stack.append((val, depth + 1))
                stack.append((("," if i else "") + orjson.dumps(str(key)).decode() + ":", -1))
            piece = "{"
        elif type(item) is list:
            stack.append(("]", -1))
            for i in range(len(item) - 1, -1, -1):
                stack.append((item[i], depth + 1))
                if i:
                    stack.append((",", -1))
            piece = "["
        else:
            try:
                piece = orjson.dumps(item).decode()
            except (TypeError, orjson.JSONEncodeError):
                piece = orjson.dumps(repr(item)).decode()
        out.append(piece)
        size += len(piece)
    return "".join(out)
