"""Duplicate detection by (platform, post_id), with expiry by event time (pure).

Keys are kept as stable 64-bit hashes, not strings: ten million ids must fit in
a few hundred megabytes. Two different ids collide with probability about
n^2 / 2^65 (3e-6 for 10 M ids), which we accept and document; a collision drops
one unique post as a duplicate.
"""
from __future__ import annotations

from hashlib import blake2b


def key_hash(platform: str, post_id: str) -> int:
    """Stable across processes and machines (Python's hash() is salted per process)."""
    digest = blake2b(f"{platform}:{post_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class DedupIndex:
    """Seen keys with the event time they were first seen at.

    `expire(horizon)` forgets keys first seen before `horizon`; the stream calls
    it with watermark - ttl, so expiry follows event time, not wall time, and a
    replay of the changelog expires exactly the same keys.
    """

    __slots__ = ("_seen", "_expired_before")

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}
        self._expired_before: int | None = None

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    def add(self, key: int, event_time: int) -> bool:
        """Record the key; False when it was seen before (a duplicate)."""
        seen = self._seen
        if key in seen:
            return False
        seen[key] = event_time
        return True

    def expire(self, horizon: int) -> int:
        """Forget keys first seen before horizon; returns how many were dropped."""
        if self._expired_before is not None and horizon <= self._expired_before:
            return 0
        self._expired_before = horizon
        stale = [k for k, t in self._seen.items() if t < horizon]
        for k in stale:
            del self._seen[k]
        return len(stale)

    @property
    def expired_before(self) -> int | None:
        return self._expired_before

    def items(self):
        return self._seen.items()
