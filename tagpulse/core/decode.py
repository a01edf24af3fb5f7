"""One raw-topic item -> canonical posts, for the worker (pure).

Our own producers send canonical posts, so that path is tried first and costs
one validation; anything else goes through the format adapters. Every failure
becomes a RecordError with a reason, whatever the input looked like.
"""
from __future__ import annotations

from producers.adapters import parse_record
from schemas.post import InvalidRecord, validate_post

from tagpulse.core.stage1 import RecordError


def decode_record(item) -> list[dict]:
    try:
        if isinstance(item, dict) and "post_id" in item and "hashtags" in item and "platform" in item:
            return [validate_post(item)]
        return parse_record(item)
    except InvalidRecord as exc:
        raise RecordError(getattr(exc, "reason", None) or str(exc)) from None
    except RecordError:
        raise
    except Exception as exc:  # hostile input must never stop the stream
        raise RecordError(f"unparseable: {type(exc).__name__}") from None
