"""Canonical post lines for the differential tests of the msgspec fast paths (producer and worker)."""
from __future__ import annotations

import random

import orjson

# Posts that decode as complete canonical objects yet need validate_post (the fast path sends
# them, or the whole message in the worker, through the reference path) ...
FINISH_EDITS = [
    {"created_at": "2015-02-30T00:00:00Z"}, {"created_at": "2015-05-20 09:00:00Z"},
    {"created_at": "2005-12-31T23:59:59Z"}, {"created_at": "2100-01-01T00:00:00Z"},
    {"is_share": True, "original_post_id": None}, {"is_share": False, "original_post_id": "p1"},
    {"is_share": True, "original_post_id": "p1", "likes": 7}, {"hashtags": ["#Kafka", "kafka", "#", ""]},
    {"hashtags": ["x" * 300]}, {"hashtags": ["t"] * 100}, {"author_followers": 2_000_000_000}, {"lang": None},
    {"post_id": "é" * 2048}, {"extra": {"nested": [1, 2]}}, {"created_at": "2099-12-31T23:59:59Z"},
]
# ... and posts the bulk decoder refuses (their block or message takes the reference path whole).
DECODE_EDITS = [
    {"hashtags": ["t"] * 101}, {"author_followers": 2_000_000_001}, {"likes": 1.0}, {"text": "x" * 100_001},
    {"post_id": "é" * 2049}, {"platform": "Mastodon"}, {"author_handle": None}, {"is_share": 0},
]


def canonical_lines(seed: int, edits: list[dict]) -> list[bytes]:
    from tagpulse import hostile

    rng = random.Random(seed)
    ctx = hostile.Context(rng)
    lines = [orjson.dumps(ctx.post()) for _ in range(200)]
    for edit in edits:
        lines.insert(rng.randrange(len(lines)), orjson.dumps(dict(ctx.post(), **edit)))
    return lines
