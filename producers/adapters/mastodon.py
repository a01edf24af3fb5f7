"""Mastodon `Status` (REST entity) and its streaming forms → canonical posts.

Status → post:
  post_id          status `uri` (unique across the fediverse; numeric `id`s are per server)
  author_id        account `url` (falls back to the account `uri`)
  author_handle    account `acct`, with the server of the account URL appended for local accounts
  author_followers account `followers_count`
  created_at       `created_at`;  lang  `language` (a boost without one takes the original's)
  text             `content` HTML as plain text (links keep their text, <br>/<p> become newlines)
  hashtags         `tags[]` (of the boosted status for a boost), each spelled as the author
                   wrote it in the content's hashtag link (see below), then canonicalised
  likes/shares/replies/quotes  favourites_count / reblogs_count / replies_count / quotes_count
  boost (`reblog` set): is_share true, original_post_id = reblog.uri, counts 0.

Why the link text: servers fold `tags[].name` to ASCII ('KünstlicheIntelligenz' arrives as
'kunstlicheintelligenz'), which would make it a different key from the same tag on every
other platform ('kuenstlicheintelligenz'). The author's spelling survives in `content`, in
the hashtag link (`<a class="mention hashtag" …>#<span>KünstlicheIntelligenz</span></a>`,
or a bare `<a …>#WissZeitVG</a>` from bridges). So `tags[]` decides WHICH tags a status has,
and the first link whose ASCII folding equals a tag's folding gives its spelling.
Order: tags with a link in order of appearance in the text, then the rest in `tags[]` order.

Streaming: WebSocket messages `{"stream": [...], "event": "update", "payload": "<Status JSON>"}`
and SSE events (`event: update` / `data: <Status JSON>`, given to us as {"event", "data"}).
Only `update` carries a new status; `delete`, `status.update` (edits) and the rest are skipped.
"""
from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from producers.adapters.canonical import Skipped, clip_text, finish, id_field, list_field, obj_field, str_field
from schemas.post import MAX_HASHTAGS, InvalidRecord, check_timestamp
from tagpulse.core.hashtags import ascii_fold, canonical_tag

PLATFORM = "mastodon"

# [^<>] rather than [^>]: on hostile input ('<<<<…' without '>') the patterns stay linear.
_TAG = re.compile(r"<[^<>]*>")
_A_OPEN = re.compile(r"<a(?=[\s>/])", re.I)
_A_CLOSE = re.compile(r"</a\s*>", re.I)
_BREAK = re.compile(r"<br\s*/?>", re.I)
_PARAGRAPH = re.compile(r"</p\s*>\s*<p\b[^<>]*>", re.I)
_MAX_CONTENT_CHARS = 1_000_000  # regexes over more than this are not worth it: such a record is hostile


# --------------------------------------------------------------------------- HTML
def plain_text(content: str) -> str:
    """Mastodon's content HTML → the text a reader sees (close enough for search and spellings)."""
    if "<" not in content and "&" not in content:
        return content
    text = _PARAGRAPH.sub("\n\n", content)
    text = _BREAK.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text).strip()


def hashtag_links(content: str) -> list[str]:
    """The author's spellings of the hashtags linked in `content`, in order ('#' removed)."""
    if "#" not in content:
        return []
    # A scan with three cheap searches instead of one '<a…>(.*?)</a>' regex: linear on hostile HTML.
    out = []
    pos = 0
    while True:
        opening = _A_OPEN.search(content, pos)
        if opening is None:
            break
        open_end = content.find(">", opening.end())
        if open_end < 0:
            break
        closing = _A_CLOSE.search(content, open_end)
        if closing is None:
            break
        text = html.unescape(_TAG.sub("", content[open_end + 1:closing.start()])).strip()
        if text[:1] in ("#", "＃") and len(text) > 1:
            out.append(text[1:])
        pos = closing.end()
    return out


def status_hashtags(status: dict) -> list[str]:
    """Canonical keys of a status's tags[], spelled from its content links where they match."""
    tags = list_field(status, "tags", "tags")
    if not tags:
        return []
    if len(tags) > 10 * MAX_HASHTAGS:  # bound the tag × link matching below
        raise InvalidRecord("too_many_hashtags")
    names = []
    for tag in tags:
        if type(tag) is not dict or type(tag.get("name")) is not str:
            raise InvalidRecord("wrong_type:tags")
        names.append(tag["name"])
    content = status.get("content")
    links = hashtag_links(content) if type(content) is str and len(content) <= _MAX_CONTENT_CHARS else []
    folded_links = [ascii_fold(link) for link in links[:10 * MAX_HASHTAGS]]
    placed: list[tuple[float, int, str]] = []
    for n, name in enumerate(names):
        folded = ascii_fold(name)
        spelling, where = name, float("inf")
        for position, link_fold in enumerate(folded_links):
            if link_fold == folded:
                spelling, where = links[position], position
                break
        placed.append((where, n, spelling))
    placed.sort()
    out: list[str] = []
    for _, _, spelling in placed:
        key = canonical_tag(spelling)
        if key is not None and key not in out:
            out.append(key)
    return out


# --------------------------------------------------------------------------- status
def _handle(account: dict, author_url: str) -> str:
    acct = str_field(account, "acct", "account.acct", default="") or str_field(account, "username", "account.username",
                                                                                default="")
    if acct and "@" not in acct:
        host = urlsplit(author_url).hostname if "://" in author_url else None
        if host:
            acct = f"{acct}@{host}"
    return acct


def parse_status(status: Any) -> list[dict]:
    if type(status) is not dict:
        raise InvalidRecord("not_an_object")
    post_id = id_field(status, "uri", "uri")
    account = obj_field(status, "account", "account")
    author_id = account.get("url") if type(account.get("url")) is str and account.get("url") else None
    if author_id is None:
        author_id = id_field(account, "uri", "account.url")
    created_at = check_timestamp(status.get("created_at"), "created_at") if status.get("created_at") is not None \
        else _missing("created_at")
    content = str_field(status, "content", "content", default="")
    if len(content) > _MAX_CONTENT_CHARS:
        content = content[:_MAX_CONTENT_CHARS]
    lang = str_field(status, "language", "language")
    reblog = status.get("reblog")
    common = dict(
        platform=PLATFORM, post_id=post_id, author_id=author_id, author_handle=_handle(account, author_id),
        author_followers=account.get("followers_count"), created_at=created_at,
        text=clip_text(plain_text(content)),
    )
    if reblog is not None:
        if type(reblog) is not dict:
            raise InvalidRecord("wrong_type:reblog")
        original_id = id_field(reblog, "uri", "reblog.uri")
        if lang is None:
            lang = str_field(reblog, "language", "reblog.language")
        return [finish(**common, lang=lang, hashtags=status_hashtags(reblog), is_share=True,
                       original_post_id=original_id)]
    return [finish(**common, lang=lang, hashtags=status_hashtags(status), is_share=False, original_post_id=None,
                   likes=status.get("favourites_count"), shares=status.get("reblogs_count"),
                   replies=status.get("replies_count"), quotes=status.get("quotes_count"))]


def _missing(field: str):
    raise InvalidRecord(f"missing_field:{field}")


# --------------------------------------------------------------------------- streaming
def _event_name(event: Any) -> str:
    if type(event) is not str:
        raise InvalidRecord("wrong_type:event")
    return event


def _skip_event(event: str) -> Skipped:
    if event == "delete":
        return Skipped("mastodon_delete")
    if event == "status.update":
        return Skipped("mastodon_edit")
    safe = re.sub(r"[^a-z0-9_.]", "_", event.lower())[:30] or "empty"
    return Skipped(f"mastodon_event_{safe}")


def _decode_payload(payload: Any, what: str) -> Any:
    if type(payload) is dict:  # some clients decode the inner JSON already
        return payload
    if type(payload) is not str:
        raise InvalidRecord(f"missing_field:{what}" if payload is None else f"wrong_type:{what}")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("too_deep" if "depth" in str(exc) or "recursion" in str(exc) else f"invalid_json:{what}") \
            from None


def parse_ws_message(message: Any) -> list[dict]:
    """A streaming WebSocket message: the status is a JSON *string* in `payload`."""
    if type(message) is not dict:
        raise InvalidRecord("not_an_object")
    event = _event_name(message.get("event"))
    if event != "update":
        raise _skip_event(event)
    return parse_status(_decode_payload(message.get("payload"), "payload"))


def parse_sse_event(message: Any) -> list[dict]:
    """One server-sent event as {"event": name, "data": text}."""
    if type(message) is not dict:
        raise InvalidRecord("not_an_object")
    event = _event_name(message.get("event", "message"))
    if event != "update":
        raise _skip_event(event)
    return parse_status(_decode_payload(message.get("data"), "data"))
