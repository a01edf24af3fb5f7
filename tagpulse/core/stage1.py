"""Stage 1: dedup and per-partition window panes for one input partition (pure).

The state machine behind the `dedup-window` agent. It turns raw-topic records
into unique posts, dead letters and *pane shares*: this partition's share of
each closed 1-minute pane per (tag, platform), with its author map. Stage 2
(tagpulse.core.stage2) merges the shares of every partition and assembles the
windows. Every change is recorded in a changelog delta so the shell can
persist it in the same Kafka transaction as the outputs.

Semantics (docs/streaming.md):
- watermark = max event time seen in this partition - grace; a pane is shipped
  once the watermark passes its end, and never again as a whole;
- a post whose pane was already shipped is late for each of its windows that
  closed here (counted, not folded in); its share of the windows still open
  here goes to stage 2 as a window share;
- a partition idle for idle_timeout (and caught up) advances its watermark to
  wall clock - grace, so a finished replay closes every window.
"""
from __future__ import annotations

import heapq
import struct
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress
from operator import attrgetter, itemgetter

import msgspec
import numpy as np
import orjson

from tagpulse.core.dedup import DedupIndex, key_hashes
from tagpulse.core.windows import (IncompatibleState, Reach, WindowSpec, ends_in, pane_width, post_engagement,
                                   window_starts)

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
# keys restore in a second instead of parsing ten million JSON pairs. Panes leave
# the state when they are shipped (TPD1 kept them until their windows closed here
# and shipped windows, so its state cannot be continued). TPD3 records the posts
# folded since the previous delta, in their compact pane form, and a restore folds
# them again; TPD2 wrote every pane a batch touched whole, author map included, so a
# live partition (a batch every 0.1 s, each touching the busy tags' minute-old panes)
# wrote as many changelog bytes as raw posts came in. TPD2 records are still read.
DELTA_MAGIC = b"TPD3"
# A delta that empties panes shipped ahead of their close (ship_early): the same layout plus "z", the
# panes to empty before its folds are applied. Its own magic, so that a tagpulse from before refuses
# it rather than keep the posts it shipped early and ship them again at the close.
EARLY_DELTA_MAGIC = b"TPD4"
_PANE_SNAPSHOTS_MAGIC = b"TPD2"
# A snapshot (TPS1) is the whole state in the same layout: every open pane whole, every dedup
# key. Restoring one starts from nothing, so the changelog before it can be deleted.
SNAPSHOT_MAGIC = b"TPS1"
_DELTA_HEAD = struct.Struct("<4sI")


@dataclass
class Stage1Result:
    # canonical posts: dicts, or schemas.post.WirePost structs (same fields; msgspec encodes both)
    unique_posts: list = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)
    late: dict[tuple, int] = field(default_factory=dict)  # (tag, platform, size, start) -> events
    partials: list[list] = field(default_factory=list)  # pane shares: [pane_start, tag, platform, *Reach.to_list()]
    early: set[int] = field(default_factory=set)  # pane starts of partials shipped ahead of their close
    # (size, start, tag, platform) -> share of posts that came after their pane was shipped
    window_shares: dict[tuple, Reach] = field(default_factory=dict)
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

    def count_duplicate(self, platform: str, t: int) -> None:
        self.duplicates[platform] = self.duplicates.get(platform, 0) + 1
        self._source(platform, t)[1] += 1

    def count_received(self, platforms: list[str], times: list[int]) -> None:
        """Count a message's valid posts per platform and per (platform, minute) at once."""
        posts_in = self.posts_in
        for platform, n in Counter(platforms).items():
            posts_in[platform] = posts_in.get(platform, 0) + n
        for (platform, minute), n in Counter(zip(platforms, [t - t % 60 for t in times])).items():
            self._source(platform, minute)[0] += n

    def unique_post_dicts(self) -> list[dict]:
        """The unique posts as canonical post dicts, whichever decoder read them."""
        return [post if type(post) is dict else msgspec.structs.asdict(post) for post in self.unique_posts]

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

    def window_share_rows(self) -> list[list]:
        """[size, start, tag, platform, *Reach.to_list()] for stage 2."""
        return [[*key, *reach.to_list()] for key, reach in self.window_shares.items()]


class DedupWindowState:
    """All state of one stage-1 partition; mutate only through process/advance_idle."""

    # Apply a message whose posts all fall in open panes a column at a time (_apply_in_open_panes);
    # False takes every post through _apply_post (the differential test compares the two).
    bulk_apply = True

    def __init__(self, partition: int, specs: tuple[WindowSpec, ...], grace: int, dedup_ttl: int,
                 decode=None):
        self.partition = partition
        self.specs = tuple(specs)
        self.width = pane_width(self.specs)
        self.grace = grace
        self.dedup_ttl = dedup_ttl
        self._decode = decode or _default_decode()
        # durable state
        self.offset = -1
        self.max_event: int | None = None
        self.watermark: int | None = None
        self.idle = False
        self.dedup = DedupIndex()
        # open panes: pane start -> (tag, platform) -> Reach; only panes not shipped yet
        self._panes: dict[int, dict[tuple[str, str], Reach]] = {}
        self._pane_heap: list[int] = []  # pane starts, for shipping oldest first
        # A restore's folded posts by pane start, folded on first use of the panes (see `panes`)
        self._restored_folds: dict[int, list] = {}
        # changes since the last delta()
        self._new_keys: list[int] = []
        self._new_times: list[int] = []
        # (pane start, platform, author, followers, is_share, engagement, tags) per folded post
        self._folded: list[tuple] = []
        self._evicted: list[int] = []
        self._emptied: list[int] = []  # panes shipped early since the last delta (emptied, still open)
        self._expired_to: int | None = None
        # Panes shipped early by early_due()'s policy: not again (not durable: after a restart a pane
        # may go early once more, which only splits its shares further).
        self._early: set[int] = set()

    @property
    def panes(self) -> dict[int, dict[tuple[str, str], Reach]]:
        """Open panes: pane start -> (tag, platform) -> Reach; only panes not shipped yet.

        A restore reads the posts folded into panes record by record, and most of those panes ship
        in a later record: folding them as read was most of a restore's work (bench.restore, a
        partition after five live minutes at 25k posts/s: 5.4 s to apply its changelog, 2.4 s this
        way). They wait here, by pane, until the pane ships (dropped) or the panes are first used."""
        if self._restored_folds:
            folds, self._restored_folds = self._restored_folds, {}
            for pane_folds in folds.values():
                self._fold_into(self._panes, pane_folds)  # each pane is there since its first fold was read
        return self._panes

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
        posts, dead_letters, skipped = _decode_value(value, where, self._decode)
        if dead_letters:
            result.dead_letters += dead_letters
        result.skipped += skipped
        if not posts:
            return
        platforms, post_ids, authors, followers, created, tags, shares, engagements = _columns(posts)
        key_array = key_hashes(platforms, post_ids)
        dedup = self.dedup
        generation = dedup.generation
        # One vectorised dedup lookup for the whole message instead of one per post.
        known = dedup.probe(key_array)
        times = list(map(_epoch_cached, created))
        result.count_received(platforms, times)
        if self.bulk_apply and self._all_in_open_panes(times):
            self._apply_in_open_panes(posts, key_array.tolist(), known, times, platforms,
                                      (authors, followers, shares, engagements, tags), result)
            return
        for post, key, in_arrays, t, platform, post_fields in zip(
                posts, key_array.tolist(), known, times, platforms,
                zip(authors, followers, shares, engagements, tags)):
            if dedup.generation != generation:
                in_arrays = None  # expiry ran mid-message: the probe is stale
            self._apply_post(post, key, in_arrays, t, platform, post_fields, result)

    def _all_in_open_panes(self, times: list[int]) -> bool:
        """Whether every post of a message is a duplicate or a fold into an open pane, whatever its order:
        none too old for dedup, none in a shipped pane, and the watermark (moved by these posts at most
        to the latest minus grace) ends no pane, so nothing ships and no dedup key expires meanwhile.
        Most messages of a stream are like that: their posts are seconds apart, panes a minute wide."""
        watermark = self.watermark
        if watermark is None:
            return False
        width = self.width
        first = min(times)
        highest = max(watermark, max(times) - self.grace)
        return (highest // width == watermark // width and first - first % width + width > watermark
                and first >= highest - self.dedup_ttl)

    def _apply_in_open_panes(self, posts: list, keys: list[int], known: list[bool], times: list[int],
                             platforms: list[str], fields: tuple[list, ...], result: Stage1Result) -> None:
        """_apply_post of every post of a message that _all_in_open_panes admits, a column at a time:
        the same state, outputs and changelog, without the per-post checks that cannot fire."""
        fresh = self.dedup.add_each(keys, times, known)
        width = self.width
        panes_of = [t - t % width for t in times]
        if all(fresh):
            new_posts, new_keys, new_times = posts, keys, times
            folds = list(zip(panes_of, platforms, *fields))
        else:
            for platform, t, is_new in zip(platforms, times, fresh):
                if not is_new:
                    result.count_duplicate(platform, t)
            new_posts = list(compress(posts, fresh))
            if not new_posts:
                return
            new_keys, new_times = list(compress(keys, fresh)), list(compress(times, fresh))
            folds = list(compress(zip(panes_of, platforms, *fields), fresh))
        self._new_keys += new_keys
        self._new_times += new_times
        result.unique_posts += new_posts
        self._folded += folds
        self._fold_all(folds)
        if self.idle:
            self.idle = False
            result.watermark_changed = True
        # Within the pane the watermark was in (_all_in_open_panes): _advance ships nothing.
        self._see_event_time(max(new_times), result)

    def _apply_post(self, post, key: int, in_arrays: bool | None, t: int, platform: str, post_fields: tuple,
                    result: Stage1Result) -> None:
        """One post; post_fields = (author, followers, is_share, engagement, tags), its share of a window."""
        watermark = self.watermark
        if watermark is not None and t < watermark - self.dedup_ttl:
            # Older than the dedup horizon: we could no longer tell it from a
            # duplicate, and every window it belongs to closed long ago.
            self._late(t, platform, post_fields, result, share_open=False)
            result._source(platform, t)[2] += 1
            return
        if not self.dedup.add(key, t, in_arrays):
            result.count_duplicate(platform, t)
            return
        self._new_keys.append(key)
        self._new_times.append(t)
        result.unique_posts.append(post)
        if self.idle:
            self.idle = False
            result.watermark_changed = True
        ps = t - t % self.width
        if watermark is None or ps + self.width > watermark:
            fold = (ps, platform, *post_fields)
            self._folded.append(fold)
            self._fold_all((fold,))
        else:
            result._source(platform, t)[2] += 1  # its pane was shipped: late for at least its 1-minute window
            self._late(t, platform, post_fields, result, share_open=True)
        self._see_event_time(t, result)

    def _see_event_time(self, t: int, result: Stage1Result) -> None:
        """A unique post at event time t: the max event time, and with it the watermark, may move on."""
        if self.max_event is None or t > self.max_event:
            self.max_event = t
            candidate = t - self.grace
            if self.watermark is None or candidate > self.watermark:
                self._advance(candidate, result)

    def _late(self, t: int, platform: str, post_fields: tuple, result: Stage1Result, share_open: bool) -> None:
        """A post whose pane was shipped: late for each of its windows that closed here.

        With share_open, its share of the windows still open here goes to stage 2 as
        window shares. Lateness is decided by this partition's watermark, so it
        depends on the partition's record order only, never on processing timing.
        """
        watermark = self.watermark
        assert watermark is not None  # a post is late only against a watermark
        *share, tags = post_fields
        late = result.late
        shares = result.window_shares
        for size, hop in self.specs:
            for start in window_starts(t, size, hop):
                if start + size <= watermark:
                    for tag in tags:
                        late_key = (tag, platform, size, start)
                        late[late_key] = late.get(late_key, 0) + 1
                elif share_open:
                    for tag in tags:
                        share_key = (size, start, tag, platform)
                        reach = shares.get(share_key)
                        if reach is None:
                            reach = shares[share_key] = Reach()
                        reach.add_post(*share)

    def _fold_all(self, folds) -> None:
        """Fold posts into their panes (after what a restore left to fold: `panes`).
        A fold is (pane start, platform, author, followers, is_share, engagement, tags)."""
        self._fold_into(self.panes, folds)

    def _fold_into(self, panes: dict, folds) -> None:
        pane_start: int | None = None
        pane: dict[tuple[str, str], Reach] = {}
        for ps, platform, author, followers, is_share, engagement, tags in folds:
            if ps != pane_start:  # a message's posts are mostly of one pane
                pane_start = ps
                if ps in panes:
                    pane = panes[ps]
                else:
                    pane = panes[ps] = {}
                    heapq.heappush(self._pane_heap, ps)
            for tag in tags:
                reach = pane.get((tag, platform))
                if reach is None:
                    reach = pane[(tag, platform)] = Reach()
                reach.add_post(author, followers, is_share, engagement)

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
        if not ends_in(old, new_watermark, self.width):
            return  # no pane ended: nothing can close
        self._ship(new_watermark, result)
        horizon = new_watermark - self.dedup_ttl
        if self._expired_to is None or horizon >= self._expired_to + DEDUP_EXPIRY_STEP:
            self.dedup.expire(horizon)
            self._expired_to = horizon

    def _ship(self, watermark: int, result: Stage1Result) -> None:
        """Panes that ended at or before the watermark become partials and leave the state."""
        heap, width = self._pane_heap, self.width
        while heap and heap[0] + width <= watermark:
            ps = heapq.heappop(heap)
            pane = self.panes.pop(ps, None)
            if pane is None:
                continue
            self._early.discard(ps)
            self._evicted.append(ps)
            result.partials.extend([ps, tag, platform, *reach.to_list()] for (tag, platform), reach in pane.items())

    # ------------------------------------------------------- early shipping
    def early_due(self, now: float, lead: float) -> list[int]:
        """Open panes to ship ahead of their close: ending within `lead` seconds of `now` (wall clock)
        and not closed by then yet, once each. A replay's panes ended long before `now`: none."""
        width, grace, early = self.width, self.grace, self._early
        return [ps for ps, pane in self.panes.items()
                if pane and ps not in early and ps + width - lead <= now < ps + width + grace]

    def ship_early(self, pane_starts: list[int], result: Stage1Result) -> None:
        """Ship what these open panes hold now as partials, and keep them open, empty.

        Live, a boundary's work waits for the last stage-1 partition's pane shares, and stage 2 merges
        them before it can close: shipping most of a minute's pane a few seconds before it closes
        leaves the close only the rest. Stage 2 merges shares of a pane however they are split (sums,
        and the largest follower count per author), so the rows stay the same."""
        for ps in pane_starts:
            pane = self.panes.get(ps)
            self._early.add(ps)
            if not pane:
                continue
            result.partials.extend([ps, tag, platform, *reach.to_list()] for (tag, platform), reach in pane.items())
            result.early.add(ps)
            self.panes[ps] = {}
            self._emptied.append(ps)
            # Its posts folded since the last delta left with the shares: a restore must not fold them again.
            self._folded = [fold for fold in self._folded if fold[0] != ps]

    # ------------------------------------------------------------ changelog
    def delta(self) -> bytes:
        """Changes since the previous delta(), for the changelog; resets the tracking."""
        panes = self.panes
        body = {
            "o": self.offset,
            "me": self.max_event,
            "wm": self.watermark,
            "idle": self.idle,
            # posts of panes shipped in this batch already are not needed to restore
            "f": [fold for fold in self._folded if fold[0] in panes],
            "x": self._evicted,
            "e": self._expired_to,
        }
        magic = DELTA_MAGIC
        if self._emptied:
            body["z"] = self._emptied
            magic = EARLY_DELTA_MAGIC
        keys = np.array(self._new_keys, np.int64).tobytes()
        times = np.array([min(max(t, 0), 0xFFFFFFFF) for t in self._new_times], np.uint32).tobytes()
        self._new_keys, self._new_times, self._folded, self._evicted, self._emptied = [], [], [], [], []
        head = orjson.dumps(body)
        return _DELTA_HEAD.pack(magic, len(head)) + head + keys + times

    def snapshot(self) -> bytes:
        """The whole state as one changelog record (and the tracking reset, as by delta())."""
        keys, times = self.dedup.to_arrays()
        body = {
            "o": self.offset,
            "me": self.max_event,
            "wm": self.watermark,
            "idle": self.idle,
            "p": [[ps, tag, platform, reach.to_list()] for ps, pane in self.panes.items()
                  for (tag, platform), reach in pane.items()],
            "x": [],
            "e": self._expired_to,
        }
        self._new_keys, self._new_times, self._folded, self._evicted, self._emptied = [], [], [], [], []
        head = orjson.dumps(body)
        return _DELTA_HEAD.pack(SNAPSHOT_MAGIC, len(head)) + head + keys.tobytes() + times.tobytes()

    def apply_delta(self, raw: bytes) -> bool:
        """Apply one changelog record; True if it was a snapshot."""
        if raw[:4] not in (DELTA_MAGIC, EARLY_DELTA_MAGIC, _PANE_SNAPSHOTS_MAGIC, SNAPSHOT_MAGIC):
            raise IncompatibleState(f"stage 1 partition {self.partition}: changelog record of format "
                                    f"{raw[:4]!r}, expected {DELTA_MAGIC!r}")
        if raw[:4] == SNAPSHOT_MAGIC:
            # Everything before a snapshot is in it: start from nothing (a restore may also have
            # read records that a truncation then deleted, and met the snapshot after them).
            self.dedup = DedupIndex()
            self._panes, self._pane_heap, self._restored_folds = {}, [], {}
            self._expired_to = None
        _, head_len = _DELTA_HEAD.unpack_from(raw)
        start = _DELTA_HEAD.size
        body = orjson.loads(raw[start:start + head_len])
        tail = memoryview(raw)[start + head_len:]
        n = len(tail) // 12
        self.dedup.add_arrays(np.frombuffer(tail[:8 * n], np.int64).copy(),
                              np.frombuffer(tail[8 * n:], np.uint32).copy())
        self.offset = body["o"]
        self.max_event = body["me"]
        self.watermark = body["wm"]
        self.idle = body["idle"]
        panes, pending = self._panes, self._restored_folds
        for ps in body.get("z", ()):  # shipped early: the folds after it are in "f"
            if ps in panes:
                pending.pop(ps, None)
                panes[ps] = {}
        for fold in body.get("f", ()):
            folds = pending.get(fold[0])
            if folds is None:
                pending[fold[0]] = [fold]
                if fold[0] not in panes:  # open from its first post on, as when the posts were folded
                    panes[fold[0]] = {}
                    heapq.heappush(self._pane_heap, fold[0])
            else:
                folds.append(fold)
        for ps, tag, platform, data in body.get("p", ()):  # TPD2 and snapshots: the pane whole
            pane = panes.get(ps)
            if pane is None:
                pane = panes[ps] = {}
                heapq.heappush(self._pane_heap, ps)
            if ps in pending:  # its folds read so far come first
                self._fold_into(panes, pending.pop(ps))
            pane[(tag, platform)] = Reach.from_list(data)
        for ps in body["x"]:
            panes.pop(ps, None)
            pending.pop(ps, None)
        if body["e"] is not None:
            self.dedup.expire(body["e"])
            self._expired_to = body["e"]
        return raw[:4] == SNAPSHOT_MAGIC


_COLUMNS = ("platform", "post_id", "author_id", "author_followers", "created_at", "hashtags", "is_share")
_STRUCT_COLUMNS = [attrgetter(name) for name in _COLUMNS]
_DICT_COLUMNS = [itemgetter(name) for name in _COLUMNS]


def _columns(posts: list) -> list[list]:
    """The fields stage 1 uses, one list per field, + engagement. A message's posts are all canonical
    dicts or all WirePost structs (the bulk decoder's; no dict is built for them)."""
    if type(posts[0]) is dict:
        columns = [list(map(get, posts)) for get in _DICT_COLUMNS]
        return columns + [list(map(post_engagement, posts))]
    columns = [list(map(get, posts)) for get in _STRUCT_COLUMNS]
    return columns + [[p.likes + p.shares + p.replies + p.quotes for p in posts]]


def _default_decode():
    from tagpulse.core.decode import decode_record
    return decode_record


def _decode_value(value: bytes, where: str, decode) -> tuple[list, list[dict], int]:
    from tagpulse.core.decode import decode_posts
    return decode_posts(value, where, decode)
