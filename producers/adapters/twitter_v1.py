"""Twitter/X API v1.1 status objects (REST, and statuses/filter streaming) → canonical posts.

  post_id          `id_str` (or `id`);  author_id  `user.id_str`;  author_handle  `user.screen_name`
  author_followers `user.followers_count`
  created_at       `created_at` ("Wed Oct 10 20:19:24 +0000 2018")
  text             `extended_tweet.full_text`, else `full_text` (tweet_mode=extended), else `text`
  hashtags         `extended_tweet.entities.hashtags` when present (the compat-mode `entities`
                   only hold entities inside the first 140 characters), else `entities.hashtags`,
                   ordered by their `indices`
  likes/shares/replies/quotes  favorite_count / retweet_count / reply_count / quote_count
  retweet (`retweeted_status` set): is_share true, original_post_id = retweeted_status.id_str,
                   hashtags from the ORIGINAL (its extended entities) — the "RT @x: …" text
                   is truncated and would lose tags — and counts 0 (on a retweet they are the original's).
  A quote tweet is an original post with its own hashtags.

Streaming notices (`{"delete": …}`, `{"limit": …}`, `scrub_geo`, `status_withheld`,
`user_withheld`, `disconnect`, `warning`) are skipped as `twitter_notice`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from producers.adapters.canonical import Skipped, clip_text, finish, id_field, list_field, obj_field, str_field
from schemas.post import MAX_HASHTAGS, InvalidRecord, format_timestamp

PLATFORM = "twitter"

NOTICE_KEYS = frozenset({"delete", "limit", "scrub_geo", "status_withheld", "user_withheld", "disconnect",
                         "warning", "friends", "event"})


def is_notice(obj: dict) -> bool:
    return len(obj) <= 2 and any(key in NOTICE_KEYS for key in obj) and "id_str" not in obj and "user" not in obj


def parse_time(value: Any) -> str:
    if type(value) is not str:
        raise InvalidRecord("missing_field:created_at" if value is None else "wrong_type:created_at")
    if len(value) > 40:
        raise InvalidRecord("bad_timestamp:created_at")
    try:
        moment = datetime.strptime(value, "%a %b %d %H:%M:%S %z %Y")
    except ValueError:
        # Some archives re-serialise v1.1 tweets with ISO timestamps.
        from schemas.post import check_timestamp

        return check_timestamp(value)
    return format_timestamp(moment)


def tweet_hashtags(tweet: dict) -> list[str]:
    """Hashtag texts of a v1.1 tweet, full (extended) entities first, in text order."""
    extended = obj_field(tweet, "extended_tweet", "extended_tweet", required=False)
    entities = None
    if extended is not None:
        entities = obj_field(extended, "entities", "extended_tweet.entities", required=False)
    if entities is None:
        entities = obj_field(tweet, "entities", "entities", required=False)
    items = list_field(entities, "hashtags", "entities.hashtags")
    if len(items) > 10 * MAX_HASHTAGS:
        raise InvalidRecord("too_many_hashtags")
    found: list[tuple[int, int, str]] = []
    for n, item in enumerate(items):
        if type(item) is not dict or type(item.get("text")) is not str:
            raise InvalidRecord("wrong_type:entities.hashtags")
        indices = item.get("indices")
        start = indices[0] if type(indices) is list and indices and type(indices[0]) is int else n
        found.append((start, n, item["text"]))
    found.sort()
    return [text for _, _, text in found]


def tweet_text(tweet: dict) -> str:
    extended = tweet.get("extended_tweet")
    if type(extended) is dict and type(extended.get("full_text")) is str:
        return extended["full_text"]
    full = tweet.get("full_text")
    if type(full) is str:
        return full
    return str_field(tweet, "text", "text", default="")


def parse_tweet(tweet: Any) -> list[dict]:
    if type(tweet) is not dict:
        raise InvalidRecord("not_an_object")
    if is_notice(tweet):
        raise Skipped("twitter_notice")
    post_id = id_field(tweet, "id_str", "id_str") if tweet.get("id_str") else id_field(tweet, "id", "id_str")
    user = obj_field(tweet, "user", "user")
    author_id = id_field(user, "id_str", "user.id_str") if user.get("id_str") else id_field(user, "id", "user.id_str")
    lang = str_field(tweet, "lang", "lang")
    common = dict(
        platform=PLATFORM, post_id=post_id, author_id=author_id,
        author_handle=str_field(user, "screen_name", "user.screen_name", default=""),
        author_followers=user.get("followers_count"), created_at=parse_time(tweet.get("created_at")),
        lang=lang, text=clip_text(tweet_text(tweet)),
    )
    original = tweet.get("retweeted_status")
    if original is not None:
        if type(original) is not dict:
            raise InvalidRecord("wrong_type:retweeted_status")
        original_id = (id_field(original, "id_str", "retweeted_status.id_str") if original.get("id_str")
                       else id_field(original, "id", "retweeted_status.id_str"))
        return [finish(**common, hashtags=tweet_hashtags(original), is_share=True, original_post_id=original_id)]
    return [finish(**common, hashtags=tweet_hashtags(tweet), is_share=False, original_post_id=None,
                   likes=tweet.get("favorite_count"), shares=tweet.get("retweet_count"),
                   replies=tweet.get("reply_count"), quotes=tweet.get("quote_count"))]
