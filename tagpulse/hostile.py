"""Hostile input for the raw topic: malformed and adversarial messages, each with the outcome it must have.

Pure (no I/O): `hostile_stream(bad=N, valid=M, seed=S, partitions=P)` returns the messages to write,
in order, to the raw topic — valid traffic packed the way our producer packs it (JSON arrays routed
by murmur2(platform:post_id)) with N hostile pieces mixed in, some as messages of their own, some as
items of otherwise valid batches. Each message says what the pipeline must make of it:

- `dead`: the dead letters it must produce, as (location, reason) — location "" for the whole
  message, "#i" for item i of a batch, "#i/data[n]" for tweet n of a Twitter v2 page in item i;
- `posts`: the canonical posts it carries (written out by hand here, not computed by the code under
  test), duplicates of earlier posts included;
- `skips`: well-formed records that are deliberately not posts (a Bluesky delete).

Expected outcomes are decisions (docs/hostile-input.md); `tests/test_hostile.py` checks them
through the pure worker core and through the real pipeline into ClickHouse, and
`tagpulse hostile` runs it at full scale.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import orjson
from aiokafka.partitioner import murmur2

from producers.simulate import iso
from tagpulse.core.stage1 import epoch_seconds

T0 = 1432112400  # 2015-05-20T09:00:00Z, the seed campaign's morning
# A message value the broker takes (its default max.message.bytes is 1,048,588 per record batch).
HUGE_BYTES = 1_040_000
MAX_TEXT_CHARS = 100_000

TAGS = ("einbuchfuerkai", "buchtipp", "lesen", "kafka", "montag", "news", "sport", "musik", "kunst", "film",
        "reisen", "essen", "wetter", "politik", "tech", "spiele", "natur", "fotografie", "mode", "wissen")
# The 100 tags of every post at the hashtag limit: a fixed set, so such posts add few window rows.
LIMIT_TAGS = tuple(f"limit{i:03d}" for i in range(100))

# (as written, canonical key): right-to-left scripts, joiners, emoji, bidi overrides, full width,
# combining marks, a ligature that NFKC expands, and characters that vanish entirely.
UNICODE_TAGS = (
    ("#שלום", "שלום"),
    ("#مرحبا", "مرحبا"),
    ("👨\u200d👩\u200d👧", "👨👩👧"),
    ("🇩🇪", "🇩🇪"),
    ("\u202eevil", "evil"),
    ("#ＫＡＦＫＡ", "kafka"),
    ("Cafe\u0301", "café"),
    ("\ufdfa", "صلى الله عليه وسلم"),
    ("#Zähler", "zaehler"),
    ("🏳️\u200d🌈", "🏳️🌈"),
)
VANISHING_TAGS = ("#", "\u200d", "\u200b\u00ad", "")

# Strings that would hurt if anything built SQL by concatenation; stored verbatim (tags casefolded).
SQL_STRINGS = (
    "'; DROP TABLE tagpulse.posts; --",
    "1' OR '1'='1",
    "\\'; SELECT * FROM system.users; --",
    "{tag:String}",
    "` UNION SELECT 1 --",
    "\"); DETACH TABLE tagpulse.reach_windows; --",
)


@dataclass(frozen=True)
class Piece:
    """One hostile (or adversarial but valid) record and what it must become."""

    cls: str
    item: bytes | None                            # the record's bytes (JSON text unless the class is about bytes)
    dead: tuple[tuple[str, str], ...] = ()        # (location inside the record, reason)
    posts: tuple[dict, ...] = ()
    skips: int = 0
    whole: bool = False                           # only as a message of its own (huge, or not one JSON record)
    message_level: bool = False                   # `dead` locations are relative to the message, not the record


@dataclass(frozen=True)
class Message:
    """One raw-topic message and its expected outcome."""

    cls: str                                      # the piece's class, "batch" or "mixed_batch"
    partition: int
    value: bytes | None                           # None: a tombstone (Kafka allows null values)
    dead: tuple[tuple[str, str], ...] = ()        # (location in the message, reason)
    posts: tuple[dict, ...] = ()
    skips: int = 0
    classes: tuple[str, ...] = ()                 # classes of the hostile pieces inside

    @property
    def key(self) -> bytes | None:
        if self.value is None:
            return b"tombstone"  # Kafka takes a null value only with a key
        single = self.cls not in ("batch", "mixed_batch") and len(self.posts) == 1
        return post_key(self.posts[0]) if single else None


@dataclass
class Stream:
    messages: list[Message]
    pieces: Counter = field(default_factory=Counter)   # hostile pieces tried, per class

    def unique_posts(self) -> list[dict]:
        seen: dict[tuple[str, str], dict] = {}
        for message in self.messages:
            for post in message.posts:
                seen.setdefault((post["platform"], post["post_id"]), post)
        return list(seen.values())

    def dead_reasons(self) -> Counter:
        return Counter(reason for m in self.messages for _, reason in m.dead)

    def skips(self) -> int:
        return sum(m.skips for m in self.messages)

    def message_classes(self) -> Counter:
        return Counter(m.cls for m in self.messages)

    def bytes(self) -> int:
        return sum(len(m.value or b"") for m in self.messages)


def post_key(post: dict) -> bytes:
    return f"{post['platform']}:{post['post_id']}".encode()


def post_partition(post: dict, partitions: int) -> int:
    """The raw partition our producer routes a post to (Kafka's default partitioner on its key)."""
    return (murmur2(post_key(post)) & 0x7FFFFFFF) % partitions


# --------------------------------------------------------------------------- building blocks
class Context:
    """The running state of a generation: clock, ids, the random source."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.t = T0
        self.n = 0

    def tick(self) -> int:
        self.t += self.rng.choice((0, 1, 1, 2))
        return self.t

    def post(self, **overrides) -> dict:
        """A fresh, clean canonical post (ASCII only) at the current time."""
        rng = self.rng
        self.n += 1
        author = rng.randrange(2000)
        share = rng.random() < 0.2
        post = {
            "platform": rng.choice(("twitter", "mastodon", "bluesky", "facebook", "instagram")),
            "post_id": f"p{self.n}", "author_id": f"a{author}", "author_handle": f"h{author}",
            "author_followers": (author * 7919) % 50_000, "created_at": iso(self.tick()), "lang": "de",
            "text": f"post {self.n}", "hashtags": rng.sample(TAGS, rng.randrange(1, 4)), "is_share": share,
            "original_post_id": f"p{rng.randrange(1, self.n + 1)}" if share else None,
            "likes": 0 if share else rng.randrange(50), "shares": 0 if share else rng.randrange(20),
            "replies": 0 if share else rng.randrange(10), "quotes": 0 if share else rng.randrange(5),
        }
        post.update(overrides)
        return post


def _dump(value) -> bytes:
    return orjson.dumps(value)


def _dead(cls: str, item: bytes, reason: str, whole: bool = False, where: str = "") -> Piece:
    return Piece(cls, item, dead=((where, reason),), whole=whole)


def _broken(cls: str, value: bytes, reason: str, where: str = "") -> Piece:
    """A message that fails as a whole (or whose items fail as laid out by `where`)."""
    return Piece(cls, value, dead=((where, reason),), whole=True, message_level=True)


def _valid(cls: str, item: bytes, *posts: dict, whole: bool = False) -> Piece:
    return Piece(cls, item, posts=posts, whole=whole)


# --------------------------------------------------------------------------- the hostile classes
def truncated_json(ctx: Context) -> Piece:
    raw = _dump(ctx.post())
    return _broken("truncated_json", raw[:ctx.rng.randrange(1, len(raw))], "invalid_json")


def truncated_batch(ctx: Context) -> Piece:
    # The message is not JSON at all, so its posts cannot be told apart: one dead letter, no posts.
    raw = _dump([ctx.post() for _ in range(ctx.rng.randrange(2, 20))])
    return _broken("truncated_batch", raw[:ctx.rng.randrange(1, len(raw))], "invalid_json")


def not_json(ctx: Context) -> Piece:
    raw = ctx.rng.choice((b"hello world", b"<html><body>502 Bad Gateway</body></html>", b"{'single': 'quotes'}",
                          b'{"platform": twitter}', b"{\"a\": 1,}", b"[1, 2", b"\x00\x01\x02", b"}{", b"tru",
                          b'"unterminated', b"--\n", b"0x1F"))
    return _broken("not_json", raw, "invalid_json")


def invalid_utf8(ctx: Context) -> Piece:
    raw = _dump(ctx.post())
    bad = ctx.rng.choice((b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xe2\x82"))
    cut = raw.index(b'"text":"') + 8
    return _broken("invalid_utf8", raw[:cut] + bad + raw[cut:], "invalid_utf8")


def invalid_utf8_batch(ctx: Context) -> Piece:
    posts = [_dump(ctx.post()) for _ in range(3)]
    posts[1] = posts[1].replace(b'"text":"', b'"text":"\xfe\xff', 1)
    return _broken("invalid_utf8_batch", b"[" + b",".join(posts) + b"]", "invalid_utf8")


def lone_surrogate(ctx: Context) -> Piece:
    raw = _dump(ctx.post()).replace(b'"text":"', b'"text":"\\ud800', 1)
    return _broken("lone_surrogate", raw, "invalid_utf8")


def empty(ctx: Context) -> Piece:
    return _broken("empty", ctx.rng.choice((b"", b" ", b"\n", b"\t \r\n")), "empty_record")


def tombstone(ctx: Context) -> Piece:
    return _broken("tombstone", None, "empty_record")


def not_an_object(ctx: Context) -> Piece:
    return _dead("not_an_object", ctx.rng.choice((b"42", b'"a string"', b"true", b"null", b"1.5", b"-0")),
                 "not_an_object")


WRONG_TYPES = (("post_id", 12345), ("author_id", ["a1"]), ("platform", 7), ("author_handle", 123),
               ("author_followers", "100"), ("created_at", 1432112400), ("lang", 5), ("text", {"html": "<p>"}),
               ("hashtags", "#kafka"), ("hashtags", ["ok", 3]), ("is_share", "yes"), ("likes", True),
               ("shares", "many"), ("replies", [1]), ("quotes", {"n": 1}), ("author_followers", 1.5))


def wrong_type(ctx: Context) -> Piece:
    name, value = ctx.rng.choice(WRONG_TYPES)
    # Not a share: a share's counts belong to the original and are not read at all.
    post = ctx.post(**{"is_share": False, "original_post_id": None, name: value})
    return _dead("wrong_type", _dump(post), f"wrong_type:{name}")


def nulls_required(ctx: Context) -> Piece:
    if ctx.rng.random() < 0.25:
        post = {k: None for k in ctx.post()}
        return _dead("nulls_required", _dump(post), "missing_field:platform")
    name = ctx.rng.choice(("platform", "post_id", "author_id", "created_at"))
    return _dead("nulls_required", _dump(ctx.post(**{name: None})), f"missing_field:{name}")


def nulls_optional(ctx: Context) -> Piece:
    """Every optional field null: a valid post with the documented defaults."""
    post = ctx.post()
    sent = {k: (post[k] if k in ("platform", "post_id", "author_id", "created_at") else None) for k in post}
    expected = dict(post, author_handle="", author_followers=0, lang=None, text="", hashtags=[], is_share=False,
                    original_post_id=None, likes=0, shares=0, replies=0, quotes=0)
    return _valid("nulls_optional", _dump(sent), expected)


def huge_text(ctx: Context) -> Piece:
    """A ~1 MB text: truncated to 100,000 characters, and the post still counts."""
    post = ctx.post(is_share=False, original_post_id=None)
    base = len(_dump(post))
    post["text"] = "x" * (HUGE_BYTES - base)
    return _valid("huge_text", _dump(post), dict(post, text="x" * MAX_TEXT_CHARS), whole=True)


def huge_unknown_field(ctx: Context) -> Piece:
    """~1 MB in a field nobody knows: dropped, the post counts."""
    post = ctx.post()
    sent = dict(post, attachment="A" * (HUGE_BYTES - len(_dump(post)) - 20))
    return _valid("huge_unknown_field", _dump(sent), post, whole=True)


def huge_id(ctx: Context) -> Piece:
    post = ctx.post()
    name = ctx.rng.choice(("post_id", "author_id"))
    sent = dict(post, **{name: "9" * (HUGE_BYTES - len(_dump(post)))})
    return _dead("huge_id", _dump(sent), f"too_long:{name}", whole=True)


def huge_garbage(ctx: Context) -> Piece:
    if ctx.rng.random() < 0.5:
        return _broken("huge_garbage", b'{"text": "' + b"z" * HUGE_BYTES, "invalid_json")
    # Half a million tiny items in one message: refused whole, not turned into half a million rows.
    return _broken("huge_garbage", b"[" + b",".join([b"0"] * (HUGE_BYTES // 2 - 1)) + b"]", "batch_too_large")


def bad_item_flood(ctx: Context) -> Piece:
    """A batch of small bad items: up to 1,000 a dead letter each, more and the message is refused whole."""
    n = ctx.rng.choice((1000, 1000, 1001, 5000))
    samples = ((b"0", "not_an_object"), (b"{}", "unknown_format"),
               (b'{"platform":"x","post_id":"","hashtags":[]}', "missing_field:post_id"), (b"[]", "nested_batch"))
    items = [samples[i % 4][0] for i in range(n)]
    value = b"[" + b",".join(items) + b"]"
    if n > 1000:
        return _broken("bad_item_flood", value, "too_many_invalid_items")
    dead = tuple((f"#{i}", samples[i % 4][1]) for i in range(n))
    return Piece("bad_item_flood", value, dead=dead, whole=True, message_level=True)


def deep_nesting(ctx: Context) -> Piece:
    rng = ctx.rng
    kind = rng.randrange(4)
    depth = rng.choice((300, 900, 1000))
    if kind == 0:  # arrays beyond the reader's limit (1024 levels)
        d = rng.choice((1100, 5000, 100_000))
        return _broken("deep_nesting", b"[" * d + b"]" * d, "too_deep")
    if kind == 1:  # a message that is an array holding a deep array
        return _broken("deep_nesting", b"[" * depth + b"]" * depth, "nested_batch", where="#0")
    if kind == 2:  # an object deeper than the writer can re-encode (it stops at 255 levels)
        return _dead("deep_nesting", b'{"a":' * depth + b"1" + b"}" * depth, "unknown_format")
    raw = _dump(ctx.post(text="@DEEP@")).replace(b'"@DEEP@"', b"[" * depth + b"]" * depth)
    return _dead("deep_nesting", raw, "wrong_type:text")


def nan_infinity(ctx: Context) -> Piece:
    # JSON has no NaN or Infinity; 1e999 overflows a double. The reader refuses all of them.
    token = ctx.rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400", b"nan"))
    raw = _dump(ctx.post(author_followers=12345)).replace(b'"author_followers":12345', b'"author_followers":' + token)
    return _broken("nan_infinity", raw, "invalid_json")


BAD_TIMESTAMPS = (
    ("1970-01-01T00:00:00Z", "timestamp_out_of_range:created_at"),
    ("1969-12-31T23:59:59Z", "timestamp_out_of_range:created_at"),
    ("2005-12-31T23:59:59Z", "timestamp_out_of_range:created_at"),
    ("9999-12-31T23:59:59Z", "timestamp_out_of_range:created_at"),
    ("2100-01-01T00:00:00Z", "timestamp_out_of_range:created_at"),
    ("9999-12-31T23:59:59+14:00", "timestamp_out_of_range:created_at"),
    ("1970-01-01T00:00:00.000+00:00", "timestamp_out_of_range:created_at"),
    ("2099-06-01T00:00:00Z", "timestamp_in_future:created_at"),
    ("2015-02-30T09:00:00Z", "bad_timestamp:created_at"),
    ("0000-01-01T00:00:00Z", "bad_timestamp:created_at"),
    ("10000-01-01T00:00:00Z", "bad_timestamp:created_at"),
    ("2015-05-20T09:00:00", "timestamp_without_offset:created_at"),
    ("yesterday", "bad_timestamp:created_at"),
    ("", "bad_timestamp:created_at"),
)


def bad_timestamp(ctx: Context) -> Piece:
    value, reason = ctx.rng.choice(BAD_TIMESTAMPS)
    return _dead("bad_timestamp", _dump(ctx.post(created_at=value)), reason)


BAD_NUMBERS = (
    ("author_followers", b"-1", "negative:author_followers"),
    ("author_followers", b"-9223372036854775808", "negative:author_followers"),
    ("author_followers", b"2000000001", "out_of_range:author_followers"),
    ("author_followers", b"9223372036854775807", "out_of_range:author_followers"),
    ("author_followers", b"18446744073709551615", "out_of_range:author_followers"),
    ("author_followers", b"184467440737095516150", "out_of_range:author_followers"),
    ("author_followers", b"1e300", "out_of_range:author_followers"),
    ("likes", b"-5", "negative:likes"),
    ("likes", b"1000000000001", "out_of_range:likes"),
    ("quotes", b"-0.5", "wrong_type:quotes"),
)


def absurd_numbers(ctx: Context) -> Piece:
    name, token, reason = ctx.rng.choice(BAD_NUMBERS)
    post = ctx.post(is_share=False, original_post_id=None, **{name: 4242})
    raw = _dump(post).replace(f'"{name}":4242'.encode(), f'"{name}":'.encode() + token, 1)
    return _dead("absurd_numbers", raw, reason)


def extreme_valid_numbers(ctx: Context) -> Piece:
    post = ctx.post(author_followers=ctx.rng.choice((0, 2_000_000_000)), is_share=False, original_post_id=None,
                    likes=10 ** 12, shares=0, replies=10 ** 12, quotes=1)
    return _valid("extreme_valid_numbers", _dump(post), post)


def hashtag_flood(ctx: Context) -> Piece:
    rng = ctx.rng
    kind = rng.randrange(4)
    if kind == 0:
        return _dead("hashtag_flood", _dump(ctx.post(hashtags=[f"t{i}" for i in range(10_000)])), "too_many_hashtags")
    if kind == 1:
        return _dead("hashtag_flood", _dump(ctx.post(hashtags=["same"] * 10_000)), "too_many_hashtags")
    if kind == 2:
        return _dead("hashtag_flood", _dump(ctx.post(hashtags=[f"u{i}" for i in range(101)])), "too_many_hashtags")
    return _dead("hashtag_flood", _dump(ctx.post(hashtags=["k" * 257])), "hashtag_too_long")


def hashtag_limit(ctx: Context) -> Piece:
    """Exactly 100 distinct tags (plus repeats and spellings of them): the most a post may have."""
    post = ctx.post(hashtags=list(LIMIT_TAGS))
    sent = dict(post, hashtags=list(LIMIT_TAGS) + ["#" + t.upper() for t in LIMIT_TAGS[:50]])
    return _valid("hashtag_limit", _dump(sent), post)


def unicode_tags(ctx: Context) -> Piece:
    rng = ctx.rng
    chosen = rng.sample(UNICODE_TAGS, rng.randrange(1, 4))
    vanishing = rng.sample(VANISHING_TAGS, rng.randrange(0, 2))
    post = ctx.post(hashtags=[key for _, key in chosen], author_handle="مستخدم‏", text="שלום 👋🏽 \u202ehello",
                    author_id=f"did:plc:ü{ctx.n}")
    sent = dict(post, hashtags=[written for written, _ in chosen] + vanishing)
    keys = list(dict.fromkeys(key for _, key in chosen))
    return _valid("unicode_tags", _dump(sent), dict(post, hashtags=keys))


def sql_injection(ctx: Context) -> Piece:
    rng = ctx.rng
    tags = rng.sample(SQL_STRINGS, 2)
    post = ctx.post(post_id=f"{rng.choice(SQL_STRINGS)}#{ctx.n}", author_id=rng.choice(SQL_STRINGS),
                    author_handle=rng.choice(SQL_STRINGS), text=" ".join(SQL_STRINGS), hashtags=[])
    sent = dict(post, hashtags=tags)
    return _valid("sql_injection", _dump(sent), dict(post, hashtags=[t.casefold() for t in tags]))


def control_chars(ctx: Context) -> Piece:
    """NUL, newlines and tabs inside ids, text and tags: stored verbatim."""
    post = ctx.post(post_id=f"nul\x00{ctx.n}\n", author_handle="tab\there", text="line1\nline2\r\n\x00\x1b[31m",
                    hashtags=["a\x00b", "x\ny"])
    return _valid("control_chars", _dump(post), post)


def inconsistent(ctx: Context) -> Piece:
    rng = ctx.rng
    kind = rng.randrange(4)
    if kind == 0:
        return _dead("inconsistent", _dump(ctx.post(is_share=True, original_post_id=None)),
                     "missing_field:original_post_id")
    if kind == 1:
        return _dead("inconsistent", _dump(ctx.post(is_share=False, original_post_id="p1")),
                     "original_post_id_without_share")
    if kind == 2:
        return _dead("inconsistent", _dump(ctx.post(platform=rng.choice(("Twitter!", "x" * 40, "myspace 2")))),
                     "bad_platform")
    return _dead("inconsistent", _dump(ctx.post(post_id="i" * 3000)), "too_long:post_id")


def unknown_format(ctx: Context) -> Piece:
    raw = ctx.rng.choice((b"{}", b'{"foo": 1}', b'{"type": "tweet", "body": "hi #kafka"}',
                          b'{"kind_of": "thing", "payload": 42}', b'{"id": "1", "content": "<p>no account</p>"}'))
    return _dead("unknown_format", raw, "unknown_format")


def bluesky_delete(ctx: Context) -> Piece:
    """A Jetstream delete of a post: skipped (tagpulse counts posts as first seen; it does not retract)."""
    rng = ctx.rng
    operation = rng.choice(("delete", "delete", "delete", "update"))
    event = {"did": f"did:plc:del{rng.randrange(10**6)}", "time_us": (ctx.t + 1) * 1_000_000, "kind": "commit",
             "commit": {"rev": "3l3qo2vutsw2b", "operation": operation, "collection": "app.bsky.feed.post",
                        "rkey": f"3l{rng.randrange(10**9)}"}}
    return Piece("bluesky_delete", _dump(event), skips=1)


def jetstream_post(ctx: Context) -> Piece:
    """A valid Bluesky Jetstream create, mapped by the adapter (docs/formats.md)."""
    rng = ctx.rng
    did = f"did:plc:js{rng.randrange(500)}"
    rkey = f"3k{ctx.n}"
    t = ctx.tick()
    ctx.n += 1
    tags = rng.sample(TAGS, 2)
    event = {"did": did, "time_us": t * 1_000_000 + 5, "kind": "commit",
             "commit": {"rev": "3l3qo4aaaaa2b", "operation": "create", "collection": "app.bsky.feed.post",
                        "rkey": rkey, "cid": "bafyrei",
                        "record": {"$type": "app.bsky.feed.post", "createdAt": iso(t)[:-1] + ".512Z",
                                   "langs": ["de"], "text": "hallo " + " ".join("#" + x for x in tags),
                                   "tags": [x.upper() for x in tags]}}}
    post = {"platform": "bluesky", "post_id": f"at://{did}/app.bsky.feed.post/{rkey}", "author_id": did,
            "author_handle": did, "author_followers": 0, "created_at": iso(t), "lang": "de",
            "text": event["commit"]["record"]["text"], "hashtags": tags, "is_share": False,
            "original_post_id": None, "likes": 0, "shares": 0, "replies": 0, "quotes": 0}
    return _valid("jetstream_post", _dump(event), post)


def twitter_v2_page(ctx: Context) -> Piece:
    """A Twitter v2 page with one broken tweet: the good tweets count, the broken one is a dead letter."""
    rng = ctx.rng
    tweets, posts = [], []
    bad = rng.randrange(3)
    for n in range(3):
        t = ctx.tick()
        ctx.n += 1
        tid = f"19{ctx.n}"
        tags = rng.sample(TAGS, 1)
        tweet = {"id": tid, "text": f"tweet #{tags[0]}", "author_id": "u1", "created_at": iso(t)[:-1] + ".000Z",
                 "lang": "en", "entities": {"hashtags": [{"start": 6, "end": 7 + len(tags[0]), "tag": tags[0]}]},
                 "public_metrics": {"like_count": 3, "retweet_count": 1, "reply_count": 0, "quote_count": 0}}
        if n == bad:
            del tweet["author_id"]
        else:
            posts.append({"platform": "twitter", "post_id": tid, "author_id": "u1", "author_handle": "v2user",
                          "author_followers": 77, "created_at": iso(t), "lang": "en", "text": tweet["text"],
                          "hashtags": tags, "is_share": False, "original_post_id": None, "likes": 3, "shares": 1,
                          "replies": 0, "quotes": 0})
        tweets.append(tweet)
    page = {"data": tweets, "includes": {"users": [{"id": "u1", "username": "v2user",
                                                     "public_metrics": {"followers_count": 77}}]},
            "meta": {"result_count": 3}}
    return Piece("twitter_v2_page", _dump(page), dead=((f"/data[{bad}]", "missing_field:author_id"),),
                 posts=tuple(posts))


# (builder, weight): huge messages are rare so that the full run stays within this machine's disk and time.
CLASSES: tuple[tuple[Callable[[Context], Piece], float], ...] = (
    (truncated_json, 8), (truncated_batch, 3), (not_json, 4), (invalid_utf8, 6), (invalid_utf8_batch, 2),
    (lone_surrogate, 2), (empty, 2), (tombstone, 1), (not_an_object, 4), (wrong_type, 10), (nulls_required, 5),
    (nulls_optional, 4), (huge_text, 0.04), (huge_unknown_field, 0.04), (huge_id, 0.04), (huge_garbage, 0.04),
    (bad_item_flood, 0.02), (deep_nesting, 4), (nan_infinity, 4), (bad_timestamp, 8), (absurd_numbers, 8),
    (extreme_valid_numbers, 2), (hashtag_flood, 1), (hashtag_limit, 0.2), (unicode_tags, 4), (sql_injection, 4),
    (control_chars, 2), (inconsistent, 4), (unknown_format, 4), (bluesky_delete, 4), (jetstream_post, 2),
    (twitter_v2_page, 2),
)


# --------------------------------------------------------------------------- the stream
def hostile_stream(bad: int, valid: int, seed: int = 0, partitions: int = 4, *, batch_max: int = 200,
                   duplicate_rate: float = 0.02, single_rate: float = 0.5,
                   classes: tuple[tuple[Callable[[Context], Piece], float], ...] = CLASSES) -> Stream:
    """`bad` hostile pieces mixed into `valid` clean posts (plus duplicates), as ordered raw-topic messages.

    Per partition, event time never goes backwards (a batch is flushed before a later single
    message to the same partition), so no valid post is late and every one must be counted.
    A batchable piece goes alone with probability `single_rate`, else into the open batch of a
    partition: a batch holding one is a "mixed_batch".
    """
    rng = random.Random(seed)
    ctx = Context(rng)
    builders = [b for b, _ in classes]
    weights = [w for _, w in classes]
    messages: list[Message] = []
    pieces: Counter = Counter()
    open_batches: dict[int, list[tuple[bytes, Piece | None, dict | None]]] = {p: [] for p in range(partitions)}
    limits = {p: rng.randrange(1, batch_max + 1) for p in range(partitions)}
    recent: list[dict] = []

    def flush(p: int) -> None:
        items = open_batches[p]
        if not items:
            return
        dead, posts, skips, classes = [], [], 0, []
        for index, (_, piece, post) in enumerate(items):
            if piece is None:
                posts.append(post)
                continue
            classes.append(piece.cls)
            dead += [(f"#{index}{where}", reason) for where, reason in piece.dead]
            posts += piece.posts
            skips += piece.skips
        value = b"[" + b",".join(raw for raw, _, _ in items) + b"]"
        messages.append(Message("mixed_batch" if classes else "batch", p, value, tuple(dead), tuple(posts), skips,
                                tuple(classes)))
        open_batches[p] = []
        limits[p] = rng.randrange(1, batch_max + 1)

    def add_to_batch(p: int, raw: bytes, piece: Piece | None, post: dict | None) -> None:
        open_batches[p].append((raw, piece, post))
        if len(open_batches[p]) >= limits[p]:
            flush(p)

    def send_alone(piece: Piece) -> None:
        p = post_partition(piece.posts[0], partitions) if piece.posts else rng.randrange(partitions)
        flush(p)  # keep event time in order within the partition
        dead = tuple((where if piece.message_level else "#0" + where, reason) for where, reason in piece.dead)
        messages.append(Message(piece.cls, p, piece.item, dead, piece.posts, piece.skips, (piece.cls,)))

    bad_left, valid_left = bad, valid
    while bad_left or valid_left:
        if rng.random() < bad_left / max(1, bad_left + valid_left):
            bad_left -= 1
            piece = rng.choices(builders, weights)[0](ctx)
            pieces[piece.cls] += 1
            if piece.whole or rng.random() < single_rate:
                send_alone(piece)
            else:
                p = post_partition(piece.posts[0], partitions) if piece.posts else rng.randrange(partitions)
                add_to_batch(p, piece.item, piece, None)
            continue
        valid_left -= 1
        if recent and rng.random() < duplicate_rate:
            post = rng.choice(recent)
        else:
            post = ctx.post()
            recent.append(post)
            if len(recent) > 1000:
                del recent[:500]
        add_to_batch(post_partition(post, partitions), _dump(post), None, post)
    for p in range(partitions):
        flush(p)
    return Stream(messages, pieces)


# --------------------------------------------------------------------------- checking a run
POST_COLUMNS = ("platform", "post_id", "author_id", "author_handle", "author_followers", "created_at", "lang",
                "text_chars", "text_md5", "hashtags", "is_share", "original_post_id", "likes", "shares", "replies",
                "quotes")
WINDOW_COLUMNS = ("tag", "platform", "window_size", "window_start", "window_end", "posts", "originals", "shares",
                  "unique_authors", "potential_reach", "impressions", "engagement")


def post_fingerprint(post: dict) -> tuple:
    """A canonical post as the posts table gives it back (null strings as '', time as epoch, text hashed)."""
    import hashlib

    return (post["platform"], post["post_id"], post["author_id"], post["author_handle"],
            int(post["author_followers"]), epoch_seconds(post["created_at"]), post["lang"] or "", len(post["text"]),
            hashlib.md5(post["text"].encode()).hexdigest().upper(), tuple(post["hashtags"]), bool(post["is_share"]),
            post["original_post_id"] or "", int(post["likes"]), int(post["shares"]), int(post["replies"]),
            int(post["quotes"]))


def row_fingerprint(row: dict) -> tuple:
    """A posts-table row selected as POST_COLUMNS (JSONEachRow quotes 64-bit integers) -> post_fingerprint form."""
    return (row["platform"], row["post_id"], row["author_id"], row["author_handle"], int(row["author_followers"]),
            int(row["created_at"]), row["lang"], int(row["text_chars"]), row["text_md5"], tuple(row["hashtags"]),
            bool(row["is_share"]), row["original_post_id"], int(row["likes"]), int(row["shares"]),
            int(row["replies"]), int(row["quotes"]))


def expected_windows(stream: Stream, specs) -> list[tuple]:
    from tagpulse.core.windows import oracle_windows

    rows = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in stream.unique_posts()), specs)
    return sorted(tuple(row[c] for c in WINDOW_COLUMNS) for row in rows)


def window_fingerprints(rows: list[dict]) -> list[tuple]:
    return sorted(tuple(row[c] if c in ("tag", "platform") else int(row[c]) for c in WINDOW_COLUMNS) for row in rows)


def expected_dead_letters(stream: Stream, offsets: list[tuple[int, int]], topic: str) -> Counter:
    """(source, reason) of every dead letter the worker must write, given each message's (partition, offset)."""
    want: Counter = Counter()
    for message, (partition, offset) in zip(stream.messages, offsets):
        for where, reason in message.dead:
            want[(f"{topic}/{partition}/{offset}{where}", reason)] += 1
    return want


def compare(stream: Stream, offsets: list[tuple[int, int]], topic: str, specs, *, dead_rows: list[tuple[str, str]],
            post_rows: list[dict], window_rows: list[dict], show: int = 5) -> list[str]:
    """Every difference between what a run stored and what the stream demands (empty: exact)."""
    problems: list[str] = []
    want_dead = expected_dead_letters(stream, offsets, topic)
    got_dead = Counter(dead_rows)
    missing, extra = want_dead - got_dead, got_dead - want_dead
    if missing or extra:
        problems.append(f"dead letters: {sum(missing.values())} missing {list(missing)[:show]}, "
                        f"{sum(extra.values())} unexpected {list(extra)[:show]}")
    want_posts = Counter(post_fingerprint(p) for p in stream.unique_posts())
    got_posts = Counter(row_fingerprint(r) for r in post_rows)
    missing, extra = want_posts - got_posts, got_posts - want_posts
    if missing or extra:
        problems.append(f"posts: {len(post_rows)} stored, {len(want_posts)} expected; "
                        f"{sum(missing.values())} missing {[m[:2] for m in list(missing)[:show]]}, "
                        f"{sum(extra.values())} unexpected {[e[:2] for e in list(extra)[:show]]}")
    want_windows = expected_windows(stream, specs)
    got_windows = window_fingerprints(window_rows)
    if want_windows != got_windows:
        w, g = Counter(want_windows), Counter(got_windows)
        problems.append(f"reach_windows: {len(got_windows)} stored, {len(want_windows)} expected; "
                        f"missing {list(w - g)[:show]}, unexpected {list(g - w)[:show]}")
    return problems
