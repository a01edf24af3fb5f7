"""Canonical JSON in, and the pieces every adapter shares.

A canonical record is already a post; it only needs validating. The helpers below
(`Skipped`, `field`, `finish`) keep the platform adapters short and make sure every
problem surfaces as InvalidRecord with a reason, never as a KeyError or TypeError.
"""
from __future__ import annotations

from typing import Any

from schemas.post import MAX_TEXT_CHARS, InvalidRecord, validate_post


class Skipped(Exception):
    """A well-formed record that is deliberately not a post (a delete, an identity event, …).

    `reason` is a short code such as 'bluesky_delete'; callers count skips per reason.
    Not a subclass of InvalidRecord: a skip is not an error and never goes to dead letters.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_canonical(obj: Any) -> bool:
    return type(obj) is dict and "platform" in obj and "post_id" in obj and "author_id" in obj


def parse(obj: Any) -> list[dict]:
    return [encodable(validate_post(obj))]


_TEXT_FIELDS = ("post_id", "author_id", "author_handle", "lang", "text", "original_post_id")


def encodable(post: dict) -> dict:
    """Reject lone surrogates (legal as JSON escapes, decoded by the stdlib json module, but not
    UTF-8): they would make every later orjson.dumps of the post fail. ASCII strings cost nothing."""
    for name in _TEXT_FIELDS:
        value = post[name]
        if value is not None and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRecord(f"invalid_utf8:{name}") from None
    for tag in post["hashtags"]:
        if not tag.isascii():
            try:
                tag.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRecord("invalid_utf8:hashtags") from None
    return post


# --------------------------------------------------------------------------- helpers for adapters
def obj_field(container: dict, key: str, what: str, required: bool = True) -> dict | None:
    """container[key] as a dict; missing → None or InvalidRecord, wrong type → InvalidRecord."""
    value = container.get(key)
    if type(value) is dict:
        return value
    if value is None and not required:
        return None
    raise InvalidRecord(f"missing_field:{what}" if value is None else f"wrong_type:{what}")


def list_field(container: dict | None, key: str, what: str) -> list:
    """container[key] as a list ([] when absent or null)."""
    if container is None:
        return []
    value = container.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise InvalidRecord(f"wrong_type:{what}")
    return value


def str_field(container: dict, key: str, what: str, required: bool = False, default: str | None = None) -> str | None:
    value = container.get(key)
    if type(value) is str:
        return value
    if value is None:
        if required:
            raise InvalidRecord(f"missing_field:{what}")
        return default
    raise InvalidRecord(f"wrong_type:{what}")


def id_field(container: dict, key: str, what: str) -> str:
    """An id that platforms give as a string (or, in old payloads, a number): always a non-empty string."""
    value = container.get(key)
    if type(value) is str and value:
        return value
    if type(value) is int and value >= 0:
        return str(value)
    if value is None or value == "":
        raise InvalidRecord(f"missing_field:{what}")
    raise InvalidRecord(f"wrong_type:{what}")


def clip_text(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS]


def finish(**fields: Any) -> dict:
    """Validate an adapter's post (same bounds as canonical input)."""
    return encodable(validate_post(fields))
