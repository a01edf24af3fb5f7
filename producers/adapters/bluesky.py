"""Bluesky Jetstream events → canonical posts.

Jetstream (github.com/bluesky-social/jetstream) sends one JSON object per event:
`{"did", "time_us", "kind": "commit"|"identity"|"account", "commit": {"rev", "operation",
"collection", "rkey", "record", "cid"}}`.

`app.bsky.feed.post` create → an original post:
  post_id          `at://{did}/app.bsky.feed.post/{rkey}` (the record's AT URI)
  author_id        `did`;  author_handle  the enrichment handle, else the did (commits carry no handle)
  author_followers 0, unless the event carries an enrichment value (below)
  created_at       `record.createdAt` (client-set; out-of-bounds → invalid); missing → `time_us`
  lang             first of `record.langs`;  text  `record.text`
  hashtags         `#tag` facet features (`app.bsky.richtext.facet#tag`) in byte order, then
                   `record.tags` (tags the author attached without putting them in the text)
  counts           0 (Jetstream carries none)
`app.bsky.feed.repost` create → a share: post_id the repost's AT URI, original_post_id
  `record.subject.uri`; hashtags only from enrichment (a repost record does not carry the
  original's tags), else [].

Enrichment (optional, for a proxy that looks profiles up): a top-level object
`"enrichment": {"author_followers": int, "author_handle": str, "subject_hashtags": [str]}`.

Skipped (counted, not errors): deletes (`bluesky_delete`), updates (`bluesky_update`),
`identity` / `account` events (`bluesky_identity`, `bluesky_account`) and every other
collection (`bluesky_other_collection`: likes, follows, profiles, …).
"""
from __future__ import annotations

from typing import Any

from producers.adapters.canonical import Skipped, clip_text, finish, list_field, obj_field, str_field
from schemas.post import MAX_HASHTAGS, InvalidRecord, epoch_to_timestamp, check_timestamp

PLATFORM = "bluesky"
POST = "app.bsky.feed.post"
REPOST = "app.bsky.feed.repost"
TAG_FEATURE = "app.bsky.richtext.facet#tag"


def looks_like_jetstream(obj: dict) -> bool:
    return "did" in obj and "kind" in obj


def _did(event: dict) -> str:
    did = event.get("did")
    if type(did) is not str or not did:
        raise InvalidRecord("missing_field:did" if did in (None, "") else "wrong_type:did")
    if not did.startswith("did:") or len(did) > 2048:
        raise InvalidRecord("bad_did")
    return did


def _rkey(commit: dict) -> str:
    rkey = commit.get("rkey")
    if type(rkey) is not str or not rkey:
        raise InvalidRecord("missing_field:commit.rkey" if rkey in (None, "") else "wrong_type:commit.rkey")
    if "/" in rkey or len(rkey) > 512:
        raise InvalidRecord("bad_rkey")
    return rkey


def post_hashtags(record: dict) -> list[str]:
    facets = list_field(record, "facets", "record.facets")
    extra = list_field(record, "tags", "record.tags")
    if len(facets) + len(extra) > 10 * MAX_HASHTAGS:
        raise InvalidRecord("too_many_hashtags")
    found: list[tuple[int, int, str]] = []
    for n, facet in enumerate(facets):
        if type(facet) is not dict:
            raise InvalidRecord("wrong_type:record.facets")
        index = facet.get("index")
        start = index.get("byteStart") if type(index) is dict else None
        start = start if type(start) is int else n
        for feature in list_field(facet, "features", "record.facets.features"):
            if type(feature) is dict and feature.get("$type") == TAG_FEATURE:
                tag = feature.get("tag")
                if type(tag) is not str:
                    raise InvalidRecord("wrong_type:record.facets.tag")
                found.append((start, n, tag))
    found.sort()
    tags = [tag for _, _, tag in found]
    for tag in extra:
        if type(tag) is not str:
            raise InvalidRecord("wrong_type:record.tags")
        tags.append(tag)
    return tags


def _created_at(record: dict, event: dict) -> str:
    value = record.get("createdAt")
    if value is not None:
        return check_timestamp(value, "createdAt")
    time_us = event.get("time_us")
    if type(time_us) is int and not isinstance(time_us, bool):
        return epoch_to_timestamp(time_us / 1_000_000, "time_us")
    raise InvalidRecord("missing_field:createdAt")


def parse_event(event: Any) -> list[dict]:
    if type(event) is not dict:
        raise InvalidRecord("not_an_object")
    kind = event.get("kind")
    if kind != "commit":
        if kind in ("identity", "account"):
            raise Skipped(f"bluesky_{kind}")
        if type(kind) is not str:
            raise InvalidRecord("missing_field:kind" if kind is None else "wrong_type:kind")
        raise Skipped("bluesky_other_kind")
    did = _did(event)
    commit = obj_field(event, "commit", "commit")
    operation = commit.get("operation")
    if operation != "create":
        if operation in ("delete", "update"):
            raise Skipped(f"bluesky_{operation}")
        raise InvalidRecord("missing_field:commit.operation" if operation is None else "bad_operation")
    collection = commit.get("collection")
    if collection not in (POST, REPOST):
        if type(collection) is not str:
            raise InvalidRecord("missing_field:commit.collection" if collection is None
                                else "wrong_type:commit.collection")
        raise Skipped("bluesky_other_collection")
    rkey = _rkey(commit)
    record = obj_field(commit, "record", "commit.record")
    enrichment = obj_field(event, "enrichment", "enrichment", required=False) or {}
    handle = enrichment.get("author_handle")
    common = dict(platform=PLATFORM, post_id=f"at://{did}/{collection}/{rkey}", author_id=did,
                  author_handle=handle if type(handle) is str and handle else did,
                  author_followers=enrichment.get("author_followers"), created_at=_created_at(record, event))
    if collection == POST:
        langs = list_field(record, "langs", "record.langs")
        lang = langs[0] if langs and type(langs[0]) is str else None
        text = str_field(record, "text", "record.text", default="")
        return [finish(**common, lang=lang, text=clip_text(text), hashtags=post_hashtags(record), is_share=False,
                       original_post_id=None)]
    subject = obj_field(record, "subject", "record.subject")
    original = subject.get("uri")
    if type(original) is not str or not original.startswith("at://"):
        raise InvalidRecord("missing_field:record.subject.uri" if original is None else "bad_subject_uri")
    hashtags = enrichment.get("subject_hashtags")
    return [finish(**common, lang=None, text="", hashtags=hashtags if hashtags is not None else [], is_share=True,
                   original_post_id=original)]
