"""The canonical post: one shape for every platform (schemas/post.schema.json is the same contract).

At the hot path a post is a plain dict (orjson serialises dicts fastest); `Post` is its
type for readers and checkers. `validate_post` turns anything claiming to be a canonical
post into a clean canonical dict or raises `InvalidRecord(reason)`, whatever the input:
hostile records must never raise another exception type.

Decisions (docs/formats.md explains them for users):
- Required: platform, post_id, author_id, created_at. Every other field has a default
  (author_handle "", author_followers 0, lang null, text "", hashtags [], is_share false,
  original_post_id null, counts 0). Unknown fields are dropped.
- created_at: RFC 3339 with an offset in, `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds) out,
  within [2006-01-01, 2100-01-01): a fixed upper bound rather than "now + 1 day" keeps
  replays of old data deterministic.
- hashtags: re-canonicalised (tagpulse.core.hashtags, memoised), empties dropped, unique,
  order of first appearance; more than 100 → `too_many_hashtags`; a key longer than 256
  characters → `hashtag_too_long`.
- text longer than 100,000 characters is truncated, not rejected: the post still counts
  (its hashtags come from structured entities, not the text).
- A share has is_share true and original_post_id set, and its counts are forced to 0
  (counts on a share belong to the original). A non-share carries original_post_id null.
- Counts and followers are whole numbers; integral floats (1.0e3) are accepted, NaN/Infinity
  are `nan_or_infinity`, booleans are wrong types.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, TypedDict

import msgspec

from tagpulse.core.hashtags import _canonical_cached  # memoised canonical_tag without the type guard

FIELDS: tuple[str, ...] = (
    "platform", "post_id", "author_id", "author_handle", "author_followers", "created_at", "lang", "text",
    "hashtags", "is_share", "original_post_id", "likes", "shares", "replies", "quotes",
)

KNOWN_PLATFORMS = frozenset({"mastodon", "twitter", "bluesky", "facebook", "instagram"})

MAX_ID_CHARS = 2048
MAX_HANDLE_CHARS = 512
MAX_LANG_CHARS = 64
MAX_TEXT_CHARS = 100_000
MAX_HASHTAGS = 100
MAX_HASHTAG_CHARS = 256
MAX_FOLLOWERS = 2_000_000_000
MAX_COUNT = 10 ** 12
MIN_CREATED_AT = "2006-01-01T00:00:00Z"
MAX_CREATED_AT = "2100-01-01T00:00:00Z"  # exclusive

_PLATFORM_RE = re.compile(r"[a-z0-9_-]{1,32}")
_fromiso = datetime.fromisoformat
_UTC = timezone.utc


class Post(TypedDict):
    platform: str
    post_id: str
    author_id: str
    author_handle: str
    author_followers: int
    created_at: str
    lang: str | None
    text: str
    hashtags: list[str]
    is_share: bool
    original_post_id: str | None
    likes: int
    shares: int
    replies: int
    quotes: int


class InvalidRecord(ValueError):
    """A record we cannot turn into posts. `reason` is a short code, optionally `code:field`.

    str(exc) is the reason too, so callers that only know `str(exc)` report the same thing.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- field checks
def check_timestamp(value: Any, field: str = "created_at") -> str:
    """RFC 3339 string with offset → canonical 'YYYY-MM-DDTHH:MM:SSZ' in bounds, else InvalidRecord."""
    if type(value) is not str:
        raise InvalidRecord(f"wrong_type:{field}")
    if len(value) == 20 and value[19] == "Z" and value[10] == "T":
        # Already canonical (the common case): validate the calendar, compare as strings.
        try:
            _fromiso(value)
        except ValueError:
            raise InvalidRecord(f"bad_timestamp:{field}") from None
        if not MIN_CREATED_AT <= value < MAX_CREATED_AT:
            raise InvalidRecord(f"timestamp_out_of_range:{field}")
        return value
    if len(value) > 64 or len(value) < 19 or value[10] not in "Tt ":
        raise InvalidRecord(f"bad_timestamp:{field}")
    text = value
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        moment = _fromiso(text)
    except ValueError:
        raise InvalidRecord(f"bad_timestamp:{field}") from None
    if moment.tzinfo is None:
        raise InvalidRecord(f"timestamp_without_offset:{field}")
    try:
        moment = moment.astimezone(_UTC)
    except OverflowError:
        raise InvalidRecord(f"timestamp_out_of_range:{field}") from None
    return format_timestamp(moment, field)


def format_timestamp(moment: datetime, field: str = "created_at") -> str:
    """An aware datetime → canonical string within bounds (fractions of a second dropped)."""
    text = moment.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # strftime pads years < 1000 inconsistently across platforms; bounds make them invalid anyway.
    if len(text) != 20 or not MIN_CREATED_AT <= text < MAX_CREATED_AT:
        raise InvalidRecord(f"timestamp_out_of_range:{field}")
    return text


def epoch_to_timestamp(seconds: float, field: str = "created_at") -> str:
    if not math.isfinite(seconds):
        raise InvalidRecord(f"nan_or_infinity:{field}")
    try:
        moment = datetime.fromtimestamp(seconds, _UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidRecord(f"timestamp_out_of_range:{field}") from None
    return format_timestamp(moment, field)


def _whole_number(value: Any, field: str, upper: int) -> int:
    """A non-negative int ≤ upper; integral floats accepted (JSON writers differ), bools are not numbers."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise InvalidRecord(f"nan_or_infinity:{field}")
        if not value.is_integer():
            raise InvalidRecord(f"wrong_type:{field}")
        value = int(value)
    elif kind is not int:
        raise InvalidRecord(f"wrong_type:{field}")
    if value < 0:
        raise InvalidRecord(f"negative:{field}")
    if value > upper:
        raise InvalidRecord(f"out_of_range:{field}")
    return value


def count(value: Any, field: str) -> int:
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    if value is None:
        return 0
    return _whole_number(value, field, MAX_COUNT)


def followers(value: Any) -> int:
    if type(value) is int and 0 <= value <= MAX_FOLLOWERS:
        return value
    if value is None:
        return 0
    return _whole_number(value, "author_followers", MAX_FOLLOWERS)


def _id(value: Any, field: str) -> str:
    if type(value) is not str:
        if value is None:
            raise InvalidRecord(f"missing_field:{field}")
        raise InvalidRecord(f"wrong_type:{field}")
    if not value:
        raise InvalidRecord(f"missing_field:{field}")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRecord(f"too_long:{field}")
    return value


def _slow_platform(value: Any) -> str:
    if type(value) is not str:
        raise InvalidRecord("missing_field:platform" if value is None else "wrong_type:platform")
    if not _PLATFORM_RE.fullmatch(value):
        raise InvalidRecord("bad_platform")
    return value


def hashtag_keys(raw: Any) -> list[str]:
    """Raw or canonical tags → canonical keys (unique, first appearance), within the bounds."""
    if type(raw) is not list:
        if raw is None:
            return []
        if type(raw) is not tuple:
            raise InvalidRecord("wrong_type:hashtags")
    if len(raw) > 10 * MAX_HASHTAGS:  # don't canonicalise a million tags just to reject them
        raise InvalidRecord("too_many_hashtags")
    out: list[str] = []
    for tag in raw:
        if type(tag) is not str:
            raise InvalidRecord("wrong_type:hashtags")
        key = _canonical_cached(tag)
        if key is not None and key not in out:
            if len(key) > MAX_HASHTAG_CHARS:
                raise InvalidRecord("hashtag_too_long")
            out.append(key)
    if len(out) > MAX_HASHTAGS:
        raise InvalidRecord("too_many_hashtags")
    return out


# --------------------------------------------------------------------------- the post
def validate_post(obj: Any) -> dict:
    """A clean canonical post dict (fields in FIELDS order) or InvalidRecord(reason).

    Fast path for what the worker sees 100k times a second: a complete, already-clean post
    (direct indexing, one combined check). Anything else takes the general path, which fills
    defaults and names the reason.
    """
    try:
        platform = obj["platform"]
        post_id = obj["post_id"]
        author_id = obj["author_id"]
        handle = obj["author_handle"]
        fans = obj["author_followers"]
        created_at = obj["created_at"]
        lang = obj["lang"]
        text = obj["text"]
        raw_tags = obj["hashtags"]
        is_share = obj["is_share"]
        original = obj["original_post_id"]
        likes = obj["likes"]
        shares = obj["shares"]
        replies = obj["replies"]
        quotes = obj["quotes"]
    except (KeyError, TypeError, IndexError):
        return _validate_general(obj)
    if not (type(obj) is dict and type(platform) is str and platform in KNOWN_PLATFORMS
            and type(post_id) is str and 0 < len(post_id) <= MAX_ID_CHARS
            and type(author_id) is str and 0 < len(author_id) <= MAX_ID_CHARS
            and type(handle) is str and len(handle) <= MAX_HANDLE_CHARS
            and type(fans) is int and 0 <= fans <= MAX_FOLLOWERS
            and type(created_at) is str and _is_canonical_time(created_at)
            and (lang is None or type(lang) is str and len(lang) <= MAX_LANG_CHARS)
            and type(text) is str and len(text) <= MAX_TEXT_CHARS
            and type(raw_tags) is list and len(raw_tags) <= MAX_HASHTAGS
            and (is_share is False and original is None
                 and type(likes) is int and 0 <= likes <= MAX_COUNT and type(shares) is int and 0 <= shares <= MAX_COUNT
                 and type(replies) is int and 0 <= replies <= MAX_COUNT
                 and type(quotes) is int and 0 <= quotes <= MAX_COUNT
                 or is_share is True and type(original) is str and 0 < len(original) <= MAX_ID_CHARS)):
        return _validate_general(obj)
    hashtags = hashtag_keys(raw_tags)
    if is_share:
        likes = shares = replies = quotes = 0  # a share's counts belong to the original
    return {
        "platform": platform, "post_id": post_id, "author_id": author_id, "author_handle": handle,
        "author_followers": fans, "created_at": created_at, "lang": lang, "text": text, "hashtags": hashtags,
        "is_share": is_share, "original_post_id": original, "likes": likes, "shares": shares,
        "replies": replies, "quotes": quotes,
    }


def _validate_general(obj: Any) -> dict:
    if type(obj) is not dict:
        raise InvalidRecord("not_an_object")
    get = obj.get

    platform = get("platform")
    if type(platform) is not str or platform not in KNOWN_PLATFORMS:
        platform = _slow_platform(platform)
    post_id = get("post_id")
    if type(post_id) is not str or not post_id or len(post_id) > MAX_ID_CHARS:
        post_id = _id(post_id, "post_id")
    author_id = get("author_id")
    if type(author_id) is not str or not author_id or len(author_id) > MAX_ID_CHARS:
        author_id = _id(author_id, "author_id")

    handle = get("author_handle", "")
    if type(handle) is not str:
        if handle is not None:
            raise InvalidRecord("wrong_type:author_handle")
        handle = ""
    elif len(handle) > MAX_HANDLE_CHARS:
        raise InvalidRecord("too_long:author_handle")

    fans = get("author_followers", 0)
    if type(fans) is not int or not 0 <= fans <= MAX_FOLLOWERS:
        fans = followers(fans)

    created_at = get("created_at")
    if type(created_at) is not str or not _is_canonical_time(created_at):
        created_at = check_timestamp(created_at) if created_at is not None else _missing("created_at")

    lang = get("lang")
    if lang is not None and (type(lang) is not str or len(lang) > MAX_LANG_CHARS):
        if type(lang) is not str:
            raise InvalidRecord("wrong_type:lang")
        raise InvalidRecord("too_long:lang")

    text = get("text", "")
    if type(text) is not str:
        if text is not None:
            raise InvalidRecord("wrong_type:text")
        text = ""
    elif len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]

    hashtags = hashtag_keys(get("hashtags"))

    is_share = get("is_share", False)
    if is_share is not False and is_share is not True:
        if is_share is not None:
            raise InvalidRecord("wrong_type:is_share")
        is_share = False
    original = get("original_post_id")
    if is_share:
        original = _id(original, "original_post_id")
        likes = shares = replies = quotes = 0  # a share's counts belong to the original
    else:
        if original is not None:
            raise InvalidRecord("original_post_id_without_share")
        likes = get("likes", 0)
        if type(likes) is not int or not 0 <= likes <= MAX_COUNT:
            likes = count(likes, "likes")
        shares = get("shares", 0)
        if type(shares) is not int or not 0 <= shares <= MAX_COUNT:
            shares = count(shares, "shares")
        replies = get("replies", 0)
        if type(replies) is not int or not 0 <= replies <= MAX_COUNT:
            replies = count(replies, "replies")
        quotes = get("quotes", 0)
        if type(quotes) is not int or not 0 <= quotes <= MAX_COUNT:
            quotes = count(quotes, "quotes")

    return {
        "platform": platform, "post_id": post_id, "author_id": author_id, "author_handle": handle,
        "author_followers": fans, "created_at": created_at, "lang": lang, "text": text, "hashtags": hashtags,
        "is_share": is_share, "original_post_id": original, "likes": likes, "shares": shares,
        "replies": replies, "quotes": quotes,
    }


def _is_canonical_time(value: str) -> bool:
    """`YYYY-MM-DDTHH:MM:SSZ`, a real calendar time, within the bounds: kept as it is."""
    return (len(value) == 20 and value[10] == "T" and value[19] == "Z" and MIN_CREATED_AT <= value < MAX_CREATED_AT
            and _valid_canonical_time(value))


@lru_cache(maxsize=1 << 14)
def _valid_canonical_time(value: str) -> bool:
    """Calendar check of a canonical-shaped timestamp; memoised because a stream repeats seconds."""
    try:
        _fromiso(value)
    except ValueError:
        return False
    return True


def _missing(field: str):
    raise InvalidRecord(f"missing_field:{field}")


def make_post(**fields: Any) -> dict:
    """Build and validate a post from keyword fields (adapters and tests)."""
    return validate_post(fields)


# --------------------------------------------------------------------------- bulk decoding
# validate_post costs ≈3 µs a post on top of ≈2.5 µs of orjson.loads, and both run once per post
# in the producer and again in the worker. msgspec decodes a whole JSON array straight into
# typed objects and checks JSON types and most bounds in C while it parses, so only what it
# cannot express (calendar, share rules, tag canonicalisation) is left to Python.
# It is a fast path, never a second definition: a record it does not accept in full is handed
# to validate_post, which gives the same post or names the reason.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


class WirePost(msgspec.Struct, gc=False):
    """A complete canonical post as the bulk decoder reads it; fields in FIELDS order, so its JSON
    encoding is the canonical post's."""

    platform: Literal[tuple(sorted(KNOWN_PLATFORMS))]  # type: ignore[valid-type]
    post_id: _Id
    author_id: _Id
    author_handle: Annotated[str, msgspec.Meta(max_length=MAX_HANDLE_CHARS)]
    author_followers: Annotated[int, msgspec.Meta(ge=0, le=MAX_FOLLOWERS)]
    created_at: Annotated[str, msgspec.Meta(min_length=20, max_length=20)]
    lang: Optional[Annotated[str, msgspec.Meta(max_length=MAX_LANG_CHARS)]]
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
    hashtags: Annotated[list[str], msgspec.Meta(max_length=MAX_HASHTAGS)]
    is_share: bool
    original_post_id: Optional[_Id]
    likes: _Count
    shares: _Count
    replies: _Count
    quotes: _Count


assert WirePost.__struct_fields__ == FIELDS
_wire_array = msgspec.json.Decoder(list[WirePost])


def decode_wire_array(data: bytes) -> list[WirePost] | None:
    """A JSON array whose every item is a complete canonical-shaped post → WirePosts; else None.

    None means "take the general path" (a missing field, a wrong type, a bound, bad JSON):
    the general path names the reason, this one never has to.
    """
    try:
        return _wire_array.decode(data)
    except Exception:  # noqa: BLE001 — any refusal just selects the general path
        return None


def finish_wire_post(post: WirePost) -> bool:
    """Apply in place what validate_post's fast path does beyond types and bounds; False if the
    post needs validate_post (an odd timestamp, an inconsistent share, a tag that is too long).

    On True the post equals validate_post of the same JSON object, field for field.
    """
    if not _is_canonical_time(post.created_at):
        return False
    if post.is_share:
        if post.original_post_id is None:
            return False
        post.likes = post.shares = post.replies = post.quotes = 0  # a share's counts belong to the original
    elif post.original_post_id is not None:
        return False
    try:
        hashtags = hashtag_keys(post.hashtags)
    except InvalidRecord:  # a key over MAX_HASHTAG_CHARS: validate_post names it
        return False
    if hashtags != post.hashtags:
        post.hashtags = hashtags
    return True
