"""Stage 1: dedup and per-partition window panes for one input partition (pure).

The state machine behind the `dedup-window` agent. It turns raw-topic records
into unique posts, dead letters, late-event counts and *partial* windows (this
partition's share of each window, with its author map), and records every
change it makes in a changelog delta so the shell can persist it in the same
Kafka transaction as the outputs.

Semantics (docs/streaming.md):
- watermark = max event time seen in this partition - grace; a window closes
  when the watermark passes its end, and a closed window never reopens;
- a post for a closed window is late: counted per window, not folded in;
- a partition idle for idle_timeout (and caught up) advances its watermark to
  wall clock - grace, so a finished replay closes every window.
"""
from __future__ import annotations

import heapq
import struct
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import orjson

from tagpulse.core.dedup import DedupIndex, key_hash
from tagpulse.core.windows import Reach, WindowSpec, pane_width, post_engagement, window_starts

# How far the dedup horizon must move before we scan for expired keys: a scan
# walks the whole index, so it runs at most once per hour of event time.
DEDUP_EXPIRY_STEP = 3600


class RecordError(Exception):
    """A record that cannot become a post; `reason` goes to the dead letters."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def epoch_seconds(created_at: str) -> int:
    # created_at is validated RFC 3339 UTC with a 'Z' suffix.
    return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())


# A stream repeats the same second many times: parse each distinct string once.
_EPOCH_CACHE: dict[str, int] = {}


def _epoch_cached(created_at: str) -> int:
    t = _EPOCH_CACHE.get(created_at)
    if t is None:
        if len(_EPOCH_CACHE) > 200_000:
            _EPOCH_CACHE.clear()
        t = _EPOCH_CACHE[created_at] = epoch_seconds(created_at)
    return t


# Changelog delta = magic, length of the JSON part, JSON part, then the new dedup
# keys (int64) and their times (uint32) as raw little-endian arrays: ten million
# keys restore in a second instead of parsing ten million JSON pairs.
DELTA_MAGIC = b"TPD1"
_DELTA_HEAD = struct.Struct("<4sI")


@dataclass
class Stage1Result:
    unique_posts: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    late: dict[tuple, int] = field(default_factory=dict)  # (tag, platform, size, start) -> events
    partials: list[list] = field(default_factory=list)  # [size, start, tag, platform, *Reach.to_list()]
    posts_in: dict[str, int] = field(default_factory=dict)  # platform -> valid posts read
    duplicates: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    watermark_changed: bool = False
    # (platform, 1-minute window of event time) -> [received, duplicates, late]
    completeness: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def _source(self, platform: str, t: int) -> list[int]:
        key = (platform, t - t % 60)
        counts = self.completeness.get(key)
        if counts is None:
            counts = self.completeness[key] = [0, 0, 0]
        return counts

    def completeness_rows(self, invalid_window_start: int) -> list[dict]:
        """Per-source counts; invalid records have no platform and are counted at processing time."""
        rows = [{"platform": platform, "window_start": start, "received": c[0], "duplicates": c[1], "late": c[2],
                 "invalid": 0} for (platform, start), c in self.completeness.items()]
        if self.dead_letters:
            rows.append({"platform": "unknown", "window_start": invalid_window_start, "received": 0,
                         "duplicates": 0, "late": 0, "invalid": len(self.dead_letters)})
        return rows

    def late_rows(self) -> list[dict]:
        return [
            {"tag": tag, "platform": platform, "window_size": size, "window_start": start, "events": n}
            for (tag, platform, size, start), n in self.late.items()
        ]


class DedupWindowState:
    """All state of one stage-1 partition; mutate only through process/advance_idle."""

    def __init__(self, partition: int, specs: tuple[WindowSpec, ...], grace: int, dedup_ttl: int,
                 decode=None):
        self.partition = partition
        self.specs = tuple(specs)
        self.width = pane_width(self.specs)
        self.max_size = max(size for size, _ in self.specs)
        self.min_hop = min(hop for _, hop in self.specs)
        self.block_hops = sorted({hop for _, hop in self.specs if hop != self.width})
        self.grace = grace
        self.dedup_ttl = dedup_ttl
        self._decode = decode or _default_decode()
        # durable state
        self.offset = -1
        self.max_event: int | None = None
        self.watermark: int | None = None
        self.idle = False
        self.dedup = DedupIndex()
        self.panes: dict[int, dict[tuple[str, str], Reach]] = {}
        self._pane_heap: list[int] = []  # pane starts, for eviction oldest first
        # hop -> block start -> panes of [start, start + hop) merged; windows are
        # assembled from these so a 24 h window costs 24 merges, not 1440
        self._blocks: dict[int, dict[int, dict[tuple[str, str], Reach]]] = {h: {} for h in self.block_hops}
        # changes since the last delta()
        self._new_keys: list[int] = []
        self._new_times: list[int] = []
        self._dirty: set[tuple[int, str, str]] = set()
        self._evicted: list[int] = []
        self._expired_to: int | None = None

    # ----------------------------------------------------------------- input
    def process(self, records: list[tuple[int, bytes]], source: str = "") -> Stage1Result:
        """Apply records (offset, value) in offset order; skips offsets already applied."""
        result = Stage1Result()
        for offset, value in records:
            if offset <= self.offset:
                continue
            self.offset = offset
            self._process_value(value, f"{source}/{self.partition}/{offset}", result)
        self.dedup.compact()
        return result

    def _process_value(self, value: bytes, where: str, result: Stage1Result) -> None:
        valid, dead_letters, skipped = _decode_value(value, where, self._decode)
        if dead_letters:
            result.dead_letters += dead_letters
        result.skipped += skipped
        if not valid:
            return
        # One vectorised dedup lookup for the whole message instead of one per post.
        keys = [key_hash(post["platform"], post["post_id"]) for post in valid]
        dedup = self.dedup
        generation = dedup.generation
        known = dedup.probe(keys)
        for post, key, in_arrays in zip(valid, keys, known):
            if dedup.generation != generation:
                in_arrays = None  # expiry ran mid-message: the probe is stale
            self._apply_post(post, result, key, in_arrays)

    def _apply_post(self, post: dict, result: Stage1Result, key: int, in_arrays: bool | None = None) -> None:
        platform = post["platform"]
        t = _epoch_cached(post["created_at"])
        result.posts_in[platform] = result.posts_in.get(platform, 0) + 1
        source = result._source(platform, t)
        source[0] += 1
        watermark = self.watermark
        if watermark is not None and t < watermark - self.dedup_ttl:
            # Older than the dedup horizon: we could no longer tell it from a
            # duplicate, and every window it belongs to closed long ago.
            self._count_late(post, t, result)
            source[2] += 1
            return
        if not self.dedup.add(key, t, in_arrays):
            result.duplicates[platform] = result.duplicates.get(platform, 0) + 1
            source[1] += 1
            return
        self._new_keys.append(key)
        self._new_times.append(t)
        result.unique_posts.append(post)
        if self.idle:
            self.idle = False
            result.watermark_changed = True
        # The earliest window containing t ends at the next boundary of the smallest hop.
        if watermark is None or (t // self.min_hop + 1) * self.min_hop > watermark:
            self._fold(post, t)
        else:
            source[2] += 1  # late for at least its earliest window
            if self._count_late(post, t, result) < len(self.specs):
                self._fold(post, t)
        if self.max_event is None or t > self.max_event:
            self.max_event = t
            candidate = t - self.grace
            if watermark is None or candidate > watermark:
                self._advance(candidate, result)

    def _count_late(self, post: dict, t: int, result: Stage1Result) -> int:
        """Count the post as late for each closed window it belongs to; returns how many specs were fully closed."""
        watermark = self.watermark
        fully_closed = 0
        for size, hop in self.specs:
            starts = window_starts(t, size, hop)
            closed = [s for s in starts if s + size <= watermark]
            if not closed:
                continue
            if len(closed) == len(starts):
                fully_closed += 1
            for start in closed:
                for tag in post["hashtags"]:
                    k = (tag, post["platform"], size, start)
                    result.late[k] = result.late.get(k, 0) + 1
        return fully_closed

    def _fold(self, post: dict, t: int) -> None:
        ps = t - t % self.width
        pane = self.panes.get(ps)
        if pane is None:
            pane = self.panes[ps] = {}
            heapq.heappush(self._pane_heap, ps)
        for hop, blocks in self._blocks.items():
            if blocks:
                blocks.pop(ps - ps % hop, None)  # a late post changes a block built earlier
        platform = post["platform"]
        author = post["author_id"]
        followers = post["author_followers"]
        is_share = post["is_share"]
        engagement = post_engagement(post)
        dirty = self._dirty
        for tag in post["hashtags"]:
            reach = pane.get((tag, platform))
            if reach is None:
                reach = pane[(tag, platform)] = Reach()
            reach.add_post(author, followers, is_share, engagement)
            dirty.add((ps, tag, platform))

    # ------------------------------------------------------------ watermark
    def advance_idle(self, wall_now: float) -> Stage1Result:
        """Called by the shell when the partition has been idle and caught up for idle_timeout."""
        result = Stage1Result()
        if not self.idle:
            self.idle = True
            result.watermark_changed = True
        if self.watermark is not None:
            candidate = int(wall_now) - self.grace
            if candidate > self.watermark:
                self._advance(candidate, result)
        return result

    def _advance(self, new_watermark: int, result: Stage1Result) -> None:
        old = self.watermark
        self.watermark = new_watermark
        result.watermark_changed = True
        if old is not None and new_watermark // self.width == old // self.width:
            return  # window ends are multiples of the pane width: nothing can close
        self._close(old, new_watermark, result)
        self._evict(new_watermark)
        horizon = new_watermark - self.dedup_ttl
        if self._expired_to is None or horizon >= self._expired_to + DEDUP_EXPIRY_STEP:
            self.dedup.expire(horizon)
            self._expired_to = horizon

    def _close(self, old: int | None, new: int, result: Stage1Result) -> None:
        if not self.panes:
            return
        pane_starts = None
        for size, hop in self.specs:
            if old is not None and new // hop == old // hop:
                continue  # window ends are multiples of the hop: none of this spec ended
            if pane_starts is None:
                pane_starts = sorted(self.panes)
            starts = self._closing_starts(pane_starts, size, hop, old, new)
            if starts:
                self._close_spec(size, hop, starts, result.partials)

    def _close_spec(self, size: int, hop: int, starts: list[int], partials: list) -> None:
        """Partials of the windows of one spec starting at `starts` (ascending).

        Per key, the windows are walked in order over the key's non-empty blocks:
        consecutive windows that hold the same blocks share one merge, and a window
        that only gains blocks extends a copy of the previous one. A quiet tag's 24
        overlapping day windows then cost one or two merges instead of 24.
        """
        per_key: dict[tuple[str, str], tuple[list[int], list[Reach]]] = {}
        for bs in range(starts[0], starts[-1] + size, hop):
            block = self._block(hop, bs)
            for key, reach in block.items():
                entry = per_key.get(key)
                if entry is None:
                    per_key[key] = ([bs], [reach])
                else:
                    entry[0].append(bs)
                    entry[1].append(reach)
        for (tag, platform), (block_starts, reaches) in per_key.items():
            lo = hi = 0  # block index range of the previous window
            merged: Reach | None = None
            data: list | None = None
            n = len(block_starts)
            for start in starts:
                i = bisect_left(block_starts, start, lo)
                j = bisect_left(block_starts, start + size, max(i, hi))
                if i == j:
                    continue
                if merged is None or i != lo or j < hi:
                    merged = Reach()
                    for k in range(i, j):
                        merged.merge(reaches[k])
                    data = merged.to_list()
                elif j > hi:
                    merged = merged.copy()
                    for k in range(hi, j):
                        merged.merge(reaches[k])
                    data = merged.to_list()
                lo, hi = i, j
                partials.append([size, start, tag, platform, *data])
                if i >= n:
                    break

    def _block(self, hop: int, start: int) -> dict[tuple[str, str], Reach]:
        if hop == self.width:
            return self.panes.get(start) or {}
        blocks = self._blocks[hop]
        block = blocks.get(start)
        if block is None:
            block = {}
            for ps in range(start, start + hop, self.width):
                pane = self.panes.get(ps)
                if not pane:
                    continue
                for key, reach in pane.items():
                    acc = block.get(key)
                    if acc is None:
                        block[key] = acc = Reach()
                    acc.merge(reach)
            blocks[start] = block
        return block

    def _closing_starts(self, pane_starts: list[int], size: int, hop: int, old: int | None, new: int) -> list[int]:
        """Starts of windows ending in (old, new] that hold at least one pane."""
        first_pane, last_pane = pane_starts[0], pane_starts[-1]
        lo_end = (old // hop + 1) * hop if old is not None else None
        hi_end = (new // hop) * hop
        starts: set[int] = set()
        if lo_end is not None and (hi_end - lo_end) // hop + 1 <= len(pane_starts):
            for end in range(lo_end, hi_end + 1, hop):
                start = end - size
                if start <= last_pane and end > first_pane:
                    starts.add(start)
        else:
            # A long jump (idle advance of a replay): walk the panes instead of the clock.
            for ps in pane_starts:
                for start in window_starts(ps, size, hop):
                    end = start + size
                    if end <= new and (old is None or end > old):
                        starts.add(start)
        return sorted(starts)

    def _evict(self, watermark: int) -> None:
        # A pane is needed while some window containing it is open; the oldest
        # open window of spec (size, hop) starts at ((W - size) // hop + 1) * hop.
        bound = min(((watermark - size) // hop + 1) * hop for size, hop in self.specs)
        heap = self._pane_heap
        while heap and heap[0] < bound:
            ps = heapq.heappop(heap)
            if self.panes.pop(ps, None) is not None:
                self._evicted.append(ps)
        for hop, blocks in self._blocks.items():
            if blocks:
                oldest_open = min(((watermark - size) // h + 1) * h for size, h in self.specs if h == hop)
                for bs in [bs for bs in blocks if bs < oldest_open]:
                    del blocks[bs]

    # ------------------------------------------------------------ changelog
    def delta(self) -> bytes:
        """Changes since the previous delta(), for the changelog; resets the tracking."""
        panes = [[ps, tag, platform, self.panes[ps][(tag, platform)].to_list()]
                 for ps, tag, platform in self._dirty if ps in self.panes]
        body = {
            "o": self.offset,
            "me": self.max_event,
            "wm": self.watermark,
            "idle": self.idle,
            "p": panes,
            "x": self._evicted,
            "e": self._expired_to,
        }
        keys = np.array(self._new_keys, np.int64).tobytes()
        times = np.array([min(max(t, 0), 0xFFFFFFFF) for t in self._new_times], np.uint32).tobytes()
        self._new_keys, self._new_times, self._dirty, self._evicted = [], [], set(), []
        head = orjson.dumps(body)
        return _DELTA_HEAD.pack(DELTA_MAGIC, len(head)) + head + keys + times

    def apply_delta(self, raw: bytes) -> None:
        if raw[:4] == DELTA_MAGIC:
            _, head_len = _DELTA_HEAD.unpack_from(raw)
            start = _DELTA_HEAD.size
            body = orjson.loads(raw[start:start + head_len])
            tail = memoryview(raw)[start + head_len:]
            n = len(tail) // 12
            self.dedup.add_arrays(np.frombuffer(tail[:8 * n], np.int64).copy(),
                                  np.frombuffer(tail[8 * n:], np.uint32).copy())
        else:  # a JSON delta written before the binary format
            body = orjson.loads(raw)
            for key, t in body["d"]:
                self.dedup.add(key, t)
        self.offset = body["o"]
        self.max_event = body["me"]
        self.watermark = body["wm"]
        self.idle = body["idle"]
        for ps, tag, platform, data in body["p"]:
            pane = self.panes.get(ps)
            if pane is None:
                pane = self.panes[ps] = {}
                heapq.heappush(self._pane_heap, ps)
            pane[(tag, platform)] = Reach.from_list(data)
        for ps in body["x"]:
            self.panes.pop(ps, None)
        if body["e"] is not None:
            self.dedup.expire(body["e"])
            self._expired_to = body["e"]


def _default_decode():
    from tagpulse.core.decode import decode_record
    return decode_record


def _decode_value(value: bytes, where: str, decode) -> tuple[list[dict], list[dict], int]:
    from tagpulse.core.decode import decode_value
    return decode_value(value, where, decode)
