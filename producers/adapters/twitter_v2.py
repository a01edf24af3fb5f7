"""Twitter/X API v2 responses → canonical posts.

One record is a whole response: a single tweet (`{"data": {…}, "includes": {…}}`, also what
the filtered stream sends per tweet) or a page (`{"data": [ … ], "includes": …, "meta": …}`).
A page gives one post per tweet; a tweet that fails validation is reported on its own and
does not take the rest of its page with it.

  post_id          `id`;  author_id  `author_id` (requires tweet.fields=author_id)
  author_handle    `username`, author_followers `public_metrics.followers_count` of the user
                   in `includes.users` (expansions=author_id, user.fields=public_metrics);
                   absent → "" and 0
  created_at       `created_at` (requires tweet.fields=created_at; missing → invalid)
  text             `note_tweet.text` (long posts) else `text`
  hashtags         `note_tweet.entities.hashtags` else `entities.hashtags`, by `start`
  likes/shares/replies/quotes  public_metrics like/retweet/reply/quote_count
  retweet (`referenced_tweets` has type "retweeted"): is_share true, original_post_id its id,
                   hashtags of the original from `includes.tweets` (expansions=referenced_tweets.id)
                   — when the original is not included, the retweet's own entities (which may
                   miss tags cut off by the "RT @x: …" truncation) — and counts 0.
  A quote or a reply is an original post with its own hashtags.

A response without `data` (no results, or only `errors`) gives no posts; an errors-only
response is skipped as `twitter_v2_errors`.
"""
from __future__ import annotations

from typing import Any

from producers.adapters.canonical import Skipped, clip_text, finish, id_field, list_field, obj_field, str_field
from schemas.post import MAX_HASHTAGS, InvalidRecord, check_timestamp

PLATFORM = "twitter"
MAX_PAGE = 10_000  # the API pages at 100 (500 for full-archive search); more is not a real page


def looks_like_v2(obj: dict) -> bool:
    data = obj.get("data")
    if type(data) is dict:
        return "id" in data and "text" in data or "includes" in obj or "matching_rules" in obj
    if type(data) is list:
        return True
    return "data" not in obj and (type(obj.get("errors")) is list or
                                  (type(obj.get("meta")) is dict and "result_count" in obj["meta"]))


def _index(items: list, what: str) -> dict[str, dict]:
    out = {}
    for item in items[:MAX_PAGE]:
        if type(item) is dict and type(item.get("id")) is str:
            out[item["id"]] = item
    return out


def _hashtags(tweet: dict) -> list[str]:
    note = tweet.get("note_tweet")
    entities = None
    if type(note) is dict and type(note.get("entities")) is dict:
        entities = note["entities"]
    if entities is None:
        entities = obj_field(tweet, "entities", "entities", required=False)
    items = list_field(entities, "hashtags", "entities.hashtags")
    if len(items) > 10 * MAX_HASHTAGS:
        raise InvalidRecord("too_many_hashtags")
    found = []
    for n, item in enumerate(items):
        if type(item) is not dict or type(item.get("tag")) is not str:
            raise InvalidRecord("wrong_type:entities.hashtags")
        start = item.get("start") if type(item.get("start")) is int else n
        found.append((start, n, item["tag"]))
    found.sort()
    return [tag for _, _, tag in found]


def _text(tweet: dict) -> str:
    note = tweet.get("note_tweet")
    if type(note) is dict and type(note.get("text")) is str:
        return note["text"]
    return str_field(tweet, "text", "text", default="")


def parse_tweet(tweet: Any, users: dict[str, dict], tweets: dict[str, dict]) -> dict:
    if type(tweet) is not dict:
        raise InvalidRecord("wrong_type:data")
    post_id = id_field(tweet, "id", "id")
    author_id = id_field(tweet, "author_id", "author_id")
    user = users.get(author_id) or {}
    user_metrics = user.get("public_metrics") if type(user.get("public_metrics")) is dict else {}
    handle = user.get("username") if type(user.get("username")) is str else ""
    created_at = tweet.get("created_at")
    if created_at is None:
        raise InvalidRecord("missing_field:created_at")
    common = dict(platform=PLATFORM, post_id=post_id, author_id=author_id, author_handle=handle,
                  author_followers=user_metrics.get("followers_count"), created_at=check_timestamp(created_at),
                  lang=str_field(tweet, "lang", "lang"), text=clip_text(_text(tweet)))
    retweeted = None
    for ref in list_field(tweet, "referenced_tweets", "referenced_tweets")[:16]:
        if type(ref) is dict and ref.get("type") == "retweeted":
            retweeted = id_field(ref, "id", "referenced_tweets.id")
            break
    if retweeted is not None:
        original = tweets.get(retweeted)
        hashtags = _hashtags(original) if original is not None else _hashtags(tweet)
        return finish(**common, hashtags=hashtags, is_share=True, original_post_id=retweeted)
    metrics = obj_field(tweet, "public_metrics", "public_metrics", required=False) or {}
    return finish(**common, hashtags=_hashtags(tweet), is_share=False, original_post_id=None,
                  likes=metrics.get("like_count"), shares=metrics.get("retweet_count"),
                  replies=metrics.get("reply_count"), quotes=metrics.get("quote_count"))


def parse_response_detailed(obj: Any) -> tuple[list[dict], list[str]]:
    """(posts, reasons of the tweets that were invalid). Raises InvalidRecord/Skipped for the whole record."""
    if type(obj) is not dict:
        raise InvalidRecord("not_an_object")
    data = obj.get("data")
    if data is None:
        if type(obj.get("errors")) is list and obj["errors"]:
            raise Skipped("twitter_v2_errors")
        return [], []
    includes = obj_field(obj, "includes", "includes", required=False) or {}
    users = _index(list_field(includes, "users", "includes.users"), "includes.users")
    tweets = _index(list_field(includes, "tweets", "includes.tweets"), "includes.tweets")
    if type(data) is dict:
        return [parse_tweet(data, users, tweets)], []
    if type(data) is not list:
        raise InvalidRecord("wrong_type:data")
    if len(data) > MAX_PAGE:
        raise InvalidRecord("page_too_large")
    posts, problems = [], []
    for n, tweet in enumerate(data):
        try:
            posts.append(parse_tweet(tweet, users, tweets))
        except InvalidRecord as exc:
            problems.append(f"{exc.reason} (data[{n}])")
    return posts, problems


def parse_response(obj: Any) -> list[dict]:
    posts, problems = parse_response_detailed(obj)
    if problems and not posts:
        raise InvalidRecord(problems[0])
    return posts
