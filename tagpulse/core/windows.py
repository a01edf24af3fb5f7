"""Event-time window arithmetic and reach aggregates (pure, no I/O).

A window spec is (size, hop) in seconds; window starts are multiples of the hop
on the UTC epoch, and a post at time t belongs to every window
[start, start + size) that contains t.

Posts are folded into *panes*: tumbling buckets whose width is the gcd of every
size and hop, so each window is an exact union of panes ("No pane, no gain",
Li et al. 2005). A post then costs one fold per tag however many overlapping
windows it belongs to; windows are assembled from panes once, when they close.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from math import gcd
from operator import itemgetter
from typing import Iterable, Iterator, Mapping

import orjson

WindowSpec = tuple[int, int]  # (size, hop) seconds
# A final window row: tag, platform, then ints, in WINDOW_ROW_FIELDS order without closed_at.
WindowRow = tuple


class IncompatibleState(Exception):
    """A changelog written by a tagpulse whose state format this one cannot continue from."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}: this namespace holds state of an older tagpulse, which this version cannot continue "
            "exactly; run the new version in a fresh namespace (TAGPULSE_NAMESPACE=…), or wipe the local "
            "stack's data with `tagpulse stack reset --yes`")


def pane_width(specs: Iterable[WindowSpec]) -> int:
    width = 0
    for size, hop in specs:
        width = gcd(width, gcd(size, hop))
    return width


def window_starts(t: int, size: int, hop: int) -> range:
    """Starts of all windows of one spec that contain time t, oldest first."""
    # s is a multiple of hop with t - size < s <= t; floor division keeps this right for t < 0.
    first = ((t - size) // hop + 1) * hop
    last = (t // hop) * hop
    return range(first, last + 1, hop)


@dataclass(slots=True)
class Reach:
    """Aggregate of posts for one (tag, platform) over a pane or a window."""

    posts: int = 0
    shares: int = 0
    impressions: int = 0
    engagement: int = 0
    # author id -> the largest follower count seen for that author
    authors: dict[str, int] = field(default_factory=dict)

    def add_post(self, author: str, followers: int, is_share: bool, engagement: int) -> None:
        self.posts += 1
        if is_share:
            self.shares += 1
        self.impressions += followers
        self.engagement += engagement
        known = self.authors.get(author)
        if known is None or followers > known:
            self.authors[author] = followers

    def merge(self, other: "Reach") -> None:
        self.posts += other.posts
        self.shares += other.shares
        self.impressions += other.impressions
        self.engagement += other.engagement
        authors, theirs = self.authors, other.authors
        if not authors:
            self.authors = dict(theirs)
            return
        # Set and dict operations run in C; only authors present on both sides need a
        # Python-level max. A window merges 12-24 blocks, so this is the hot loop.
        common = authors.keys() & theirs.keys()
        if not common:
            authors.update(theirs)
            return
        keep = {a: f for a in common if (f := authors[a]) > theirs[a]}
        authors.update(theirs)
        if keep:
            authors.update(keep)

    def copy(self) -> "Reach":
        return Reach(self.posts, self.shares, self.impressions, self.engagement, dict(self.authors))

    def to_list(self) -> list:
        return [self.posts, self.shares, self.impressions, self.engagement, self.authors]

    @classmethod
    def from_list(cls, data: list) -> "Reach":
        posts, shares, impressions, engagement, authors = data
        return cls(posts, shares, impressions, engagement, dict(authors))

    def row(self, tag: str, platform: str, size: int, start: int) -> WindowRow:
        """The final row of one window (WINDOW_ROW_FIELDS without closed_at)."""
        return (tag, platform, size, start, start + size, *self.row_values())

    def row_values(self) -> tuple:
        """The fields of row() from posts on: what every window with exactly these posts shares."""
        posts, authors = self.posts, self.authors
        return (posts, posts - self.shares, self.shares, len(authors), sum(authors.values()), self.impressions,
                self.engagement)


def post_engagement(post: dict) -> int:
    return post["likes"] + post["shares"] + post["replies"] + post["quotes"]


def oracle_windows(posts: Iterable[tuple[int, dict]], specs: Iterable[WindowSpec]) -> list[dict]:
    """Plain recomputation of every window row from (event_time, post) pairs.

    The reference the streaming result must equal row for row: no panes, no
    watermarks, every post folded straight into every window it belongs to.
    Callers pass unique posts only.
    """
    acc: dict[tuple, Reach] = {}
    specs = list(specs)
    for t, post in posts:
        for size, hop in specs:
            for start in window_starts(t, size, hop):
                for tag in post["hashtags"]:
                    key = (tag, post["platform"], size, start)
                    reach = acc.get(key)
                    if reach is None:
                        reach = acc[key] = Reach()
                    reach.add_post(post["author_id"], post["author_followers"], post["is_share"], post_engagement(post))
    rows = [window_row_dict(r.row(tag, platform, size, start)) for (tag, platform, size, start), r in acc.items()]
    rows.sort(key=row_key)
    return rows


# A final window row is a tuple of these fields in this order; on the windows topic, a JSON array
# with closed_at (epoch float, when the worker committed it) appended: ≈ 95 bytes where the same
# row as an object took ≈ 255, so the broker carries and the sink parses about a third (the day
# windows of every tag are most rows). Stage 2 builds the tuples directly: a dict per row, then an
# array, cost more than the assembly of the window itself. Readers take both shapes on the topic
# (window_rows_of): messages written up to commit 3bda3c2 hold objects.
WINDOW_ROW_FIELDS = ("tag", "platform", "window_size", "window_start", "window_end", "posts", "originals",
                     "shares", "unique_authors", "potential_reach", "impressions", "engagement", "closed_at")
# Positions in a row tuple, for code that reads a few fields of many rows.
(ROW_TAG, ROW_PLATFORM, ROW_SIZE, ROW_START, ROW_END, ROW_POSTS, ROW_ORIGINALS, ROW_SHARES, ROW_AUTHORS,
 ROW_REACH, ROW_IMPRESSIONS, ROW_ENGAGEMENT, ROW_CLOSED_AT) = range(len(WINDOW_ROW_FIELDS))


def window_row_arrays(rows: list[WindowRow], closed_at: float) -> list[tuple]:
    """Final rows (Reach.row tuples) as the windows topic carries them (orjson writes tuples as arrays)."""
    return [(*row, closed_at) for row in rows]


def window_row_dict(row: WindowRow) -> dict:
    """One row tuple as a dict of WINDOW_ROW_FIELDS (closed_at only if the tuple has it)."""
    return dict(zip(WINDOW_ROW_FIELDS, row))


def window_row_tuple(row: Mapping) -> WindowRow:
    """A row given by field names (closed_at ignored) as the tuple stage 2 builds: window_row_dict's inverse."""
    return tuple(row[name] for name in WINDOW_ROW_FIELDS[:ROW_CLOSED_AT])


def window_rows_of(value: bytes) -> list[dict]:
    """The rows of one windows-topic message as dicts, whichever shape it holds."""
    return [row if type(row) is dict else window_row_dict(row) for row in orjson.loads(value)]


def row_key(row: dict) -> tuple:
    return (row["tag"], row["platform"], row["window_size"], row["window_start"])


def union_row_values(a: Reach, b: Reach, a_reach: int | None = None) -> tuple:
    """row_values() of a and b merged, without building the merged author map (a head holds an
    hour or a day of authors; copying it for every key at a boundary was most of a close).
    `a_reach`: the sum of a's follower counts, when known (a warmed head's, summed before)."""
    posts, shares = a.posts + b.posts, a.shares + b.shares
    mine, theirs = a.authors, b.authors
    common = mine.keys() & theirs.keys()
    reach = (sum(mine.values()) if a_reach is None else a_reach) + sum(theirs.values())
    if common:
        reach -= sum([min(mine[author], theirs[author]) for author in common])  # max(x, y) = x + y - min(x, y)
    return (posts, posts - shares, shares, len(mine) + len(theirs) - len(common), reach,
            a.impressions + b.impressions, a.engagement + b.engagement)


def ends_in(old: int | None, new: int, hop: int) -> bool:
    """Whether a window of this hop can end in (old, new]: window ends are multiples of the hop."""
    return old is None or new // hop != old // hop


def windows_of_panes(pane_starts: Iterable[int], size: int, hop: int,
                     after_end: int | None, up_to_end: int) -> Iterator[int]:
    """Starts of windows that contain any of the panes and end in (after_end, up_to_end]."""
    seen: set[int] = set()
    for ps in pane_starts:
        # A window [s, s+size) contains the pane [ps, ps+width) when s <= ps < s+size.
        for start in window_starts(ps, size, hop):
            end = start + size
            if end > up_to_end or (after_end is not None and end <= after_end):
                continue
            if start not in seen:
                seen.add(start)
                yield start


Key = tuple[str, str]  # (tag, platform)


_window_order = itemgetter(ROW_SIZE, ROW_START)
_NEVER = -(1 << 62)  # before any pane


class PaneWindows:
    """Panes of per-(tag, platform) reach, and the windows assembled from them as they close.

    Panes are tumbling buckets `pane_width(specs)` wide. Windows of a spec with a
    hop wider than a pane are assembled from cached hop *blocks* (the panes of
    [start, start + hop) merged), so a 24 h window costs at most 24 merges, not 1440.

    Live, a boundary closes one window per key and size, and all of it but its last pane is final
    before: warm() merges that, between boundaries, into the window's *head* (its blocks but the
    last, one per call, then the last block's finer blocks and panes as they become final) and
    sums each key's follower counts once it is complete. The close then reads two maps per key,
    the head and the last pane, and walks only the last pane's authors: a top tag's hour or day of
    authors is neither copied nor walked at the boundary. Blocks and heads are a cache: a pane
    that gets a share after it was folded drops what holds it.
    """

    def __init__(self, specs: Iterable[WindowSpec]):
        self.specs = tuple(specs)
        self.width = pane_width(self.specs)
        self.min_hop = min(hop for _, hop in self.specs)
        self.panes: dict[int, dict[Key, Reach]] = {}
        self._heap: list[int] = []  # pane starts, for eviction oldest first
        # hop -> block start -> its panes merged per key (built whole when first read)
        self._blocks: dict[int, dict[int, dict[Key, Reach]]] = {
            hop: {} for hop in sorted({hop for _, hop in self.specs if hop != self.width})}
        # A day window's hour blocks come from the 5-minute blocks the hour windows built
        # anyway (12 merges per key instead of 60), when a finer hop divides this one.
        self._finer: dict[int, int | None] = {
            hop: max((h for h in self._blocks if h < hop and hop % h == 0), default=None) for hop in self._blocks}
        # hop -> the spans a head folds, coarsest first: (3600, 300, 60) for a day window every hour
        self._parts: dict[int, tuple[int, ...]] = {}
        for hop in self._blocks:
            chain, span = [hop], self._finer[hop]
            while span is not None:
                chain.append(span)
                span = self._finer[span]
            self._parts[hop] = (*chain, self.width)
        # size -> [window start, key map, folded up to, keys whose Reach the map owns, follower sums]:
        # that size's next window but its last part, merged (warm(), _close_window()); the sums per
        # key once nothing but the last part is left (None before)
        self._heads: dict[int, list] = {}
        # No block or head holds a pane starting at or after this: a share for a newer pane (live,
        # nearly all of them) needs no look at the cache.
        self._folded_until = _NEVER

    def add(self, ps: int, key: Key, reach: Reach) -> None:
        """Merge reach into pane ps; the caller hands reach over (it is kept, not copied)."""
        pane = self.panes.get(ps)
        if pane is None:
            pane = self.panes[ps] = {}
            heapq.heappush(self._heap, ps)
        if ps < self._folded_until:
            self._drop_folded(ps)
        known = pane.get(key)
        if known is None:
            pane[key] = reach
        else:
            known.merge(reach)

    def _drop_folded(self, ps: int) -> None:
        """Drop the blocks and heads that folded pane ps: it is getting a share they do not hold."""
        for hop, blocks in self._blocks.items():
            if blocks:
                blocks.pop(ps - ps % hop, None)  # folded again when read
        if self._heads:
            for size in [size for size, head in self._heads.items() if head[0] <= ps < head[2]]:
                del self._heads[size]

    def last_window_end(self) -> int | None:
        """End of the last window that holds a pane (None without panes)."""
        if not self.panes:
            return None
        last = max(self.panes)
        return max((last // hop) * hop + size for size, hop in self.specs)

    def oldest_needed(self, closed_to: int) -> int:
        """The first pane start that some window ending after closed_to still contains."""
        return min(((closed_to - size) // hop + 1) * hop for size, hop in self.specs)

    def close(self, old: int | None, new: int, extras: dict[tuple, Reach] | None = None,
              size: int | None = None) -> list[WindowRow]:
        """Rows of the windows ending in (old, new] that hold at least one post (of one size if given).

        `extras` maps (size, start, tag, platform) to a share of one window only
        (posts that reached it after their pane); the ones of closing windows are
        merged in and removed. Rows of one (tag, platform, size) come out in
        window order (the spike detector needs that).
        """
        rows: list[WindowRow] = []
        extras = extras if extras else None
        if self.panes:
            pane_starts = None
            for spec_size, hop in self.specs:
                if size is not None and spec_size != size:
                    continue
                if not ends_in(old, new, hop):
                    continue
                if pane_starts is None:
                    pane_starts = sorted(self.panes)
                starts = self._closing_starts(pane_starts, spec_size, hop, old, new)
                if len(starts) == 1 and hop != self.width:
                    self._close_window(spec_size, hop, starts[0], rows, extras)  # a live boundary
                elif starts:
                    self._close_spec(spec_size, hop, starts, rows, extras)
        if extras:
            alone = [key for key in extras if key[0] + key[1] <= new and (size is None or key[0] == size)]
            if alone:
                # Windows that only late shares reached: place them in window order.
                for key in alone:
                    share_size, start, tag, platform = key
                    rows.append(extras.pop(key).row(tag, platform, share_size, start))
                rows.sort(key=_window_order)
        return rows

    def evict(self, closed_to: int) -> list[int]:
        """Drop panes (and blocks) no open window needs; returns the evicted pane starts."""
        bound = self.oldest_needed(closed_to)
        heap, evicted = self._heap, []
        while heap and heap[0] < bound:
            ps = heapq.heappop(heap)
            if self.panes.pop(ps, None) is not None:
                evicted.append(ps)
        for hop, blocks in self._blocks.items():
            if blocks:
                oldest_open = min(((closed_to - size) // h + 1) * h for size, h in self.specs if h == hop)
                for bs in [bs for bs in blocks if bs < oldest_open]:
                    del blocks[bs]
        for size in [size for size, head in self._heads.items() if head[0] + size <= closed_to]:
            del self._heads[size]
        return evicted

    def evict_panes(self, pane_starts: Iterable[int]) -> None:
        """Drop the given panes (replaying a changelog; the heap skips them lazily)."""
        for ps in pane_starts:
            self.panes.pop(ps, None)
        for blocks in self._blocks.values():
            blocks.clear()
        self._heads.clear()
        self._folded_until = _NEVER

    def _close_spec(self, size: int, hop: int, starts: list[int], rows: list[WindowRow],
                    extras: dict[tuple, Reach] | None = None) -> None:
        """Rows of the windows of one spec starting at `starts` (ascending).

        Per key, the windows are walked in order over the key's non-empty blocks:
        consecutive windows that hold the same blocks share one merge (and one row
        body), and a window that only gains blocks extends a copy of the previous
        one. A quiet tag's 24 overlapping day windows then cost one or two merges.
        """
        per_key: dict[Key, tuple[list[int], list[Reach]]] = {}
        for bs in range(starts[0], starts[-1] + size, hop):
            for key, reach in self._block(hop, bs).items():
                entry = per_key.get(key)
                if entry is None:
                    per_key[key] = ([bs], [reach])
                else:
                    entry[0].append(bs)
                    entry[1].append(reach)
        append = rows.append
        for (tag, platform), (block_starts, reaches) in per_key.items():
            # Only windows starting in (first block - size, last block] hold one of the key's blocks.
            first = bisect_right(starts, block_starts[0] - size)
            last = bisect_right(starts, block_starts[-1], first)
            if len(block_starts) == 1 and extras is None:
                # One block (most keys of a busy close: a tag seen within one hop): every window
                # holding it has the same posts, so one row body serves them all.
                tail = reaches[0].row_values()
                for start in starts[first:last]:
                    append((tag, platform, size, start, start + size, *tail))
                continue
            lo = hi = 0  # block index range of the previous window
            merged: Reach | None = None
            body: WindowRow | None = None  # the row of the previous window, if it had the same posts
            # suffixes[k - suffix_base]: blocks k..j-1 merged, for windows that only lose blocks at their start
            suffixes: list[Reach] | None = None
            for start in starts[first:last]:
                i = bisect_left(block_starts, start, lo)
                j = bisect_left(block_starts, start + size, max(i, hi))
                if i == j:
                    continue
                if merged is not None and i > lo and j == hi and j - i > 1:
                    # The window lost blocks at its start only (the end of a replay: windows sliding
                    # past the last data). Merging each such window anew cost 12 + 11 + … merges per
                    # key; suffix merges built once, right to left, cost one merge and a copy each.
                    if suffixes is None:
                        suffixes = [reaches[j - 1]]
                        for k in range(j - 2, i - 1, -1):
                            acc = suffixes[-1].copy()
                            acc.merge(reaches[k])
                            suffixes.append(acc)
                        suffixes.reverse()
                        suffix_base = i
                    merged = suffixes[i - suffix_base]
                    body = None
                elif merged is None or i != lo or j < hi:
                    suffixes = None
                    if j - i == 1:
                        merged = reaches[i]  # read only below: no copy needed
                    else:
                        merged = Reach()
                        for k in range(i, j):
                            merged.merge(reaches[k])
                    body = None
                elif j > hi:
                    suffixes = None
                    merged = merged.copy()
                    for k in range(hi, j):
                        merged.merge(reaches[k])
                    body = None
                lo, hi = i, j
                if extras is not None:
                    extra = extras.pop((size, start, tag, platform), None)
                    if extra is not None:
                        alone = merged.copy()
                        alone.merge(extra)
                        append(alone.row(tag, platform, size, start))
                        continue
                if body is None:
                    body = merged.row(tag, platform, size, start)
                    append(body)
                else:
                    append((tag, platform, size, start, start + size, *body[ROW_POSTS:]))

    def warm_due(self, final_to: int) -> bool:
        """Whether warm(final_to) has anything to do."""
        return any(self._warm_plan(final_to))

    def warm(self, final_to: int) -> None:
        """Fold what is final up to final_to into the head the next close of each sliding size reads.

        One block per call into the head while it lacks blocks, then the last block's finer blocks and
        panes that are final, and the follower sums once only the last pane is left: a call takes a
        few hundred ms at most (warm_due() says whether more is left). Only a cache: the rows do not
        change, whenever and however often this runs.
        """
        for size, hop, end, head in self._warm_plan(final_to):
            if head is None or head[0] != end - size:
                head = self._heads[size] = [end - size, {}, end - size, set(), None]
            span = self._next_part(hop, end, head[2])
            if span == hop:
                self._fold_part_into_head(head, span)
                continue
            while span is not None and head[2] + span <= final_to:
                self._fold_part_into_head(head, span)
                span = self._next_part(hop, end, head[2])
            if span is None and head[4] is None:
                head[4] = {key: sum(reach.authors.values()) for key, reach in head[1].items()}

    def _warm_plan(self, final_to: int) -> Iterator[tuple[int, int, int, list | None]]:
        """(size, hop, next window end, head) of each sliding size whose head warm() would change."""
        for size, hop in self.specs:
            if hop == self.width:
                continue
            end = (final_to // hop + 1) * hop  # the next window end of this spec
            head = self._heads.get(size)
            if head is None or head[0] != end - size:
                yield size, hop, end, head
                continue
            span = self._next_part(hop, end, head[2])
            if (head[4] is None) if span is None else head[2] + span <= final_to:
                yield size, hop, end, head

    def _next_part(self, hop: int, end: int, at: int) -> int | None:
        """The span of the part a head folded up to `at` takes next, for its window ending at `end`:
        blocks of the hop up to the window's last block, that block's finer blocks up to its last
        one, then panes up to the last pane, which the close reads (None: nothing but it is left)."""
        for span in self._parts[hop]:
            if at + span <= end - span:
                return span
        return None

    def _fold_part_into_head(self, head: list, span: int) -> None:
        """Merge the head's next part (a block of `span`, or a pane) into it."""
        self._fold_map_into_head(head, self._block(span, head[2]), span)

    def _fold_map_into_head(self, head: list, block: dict[Key, Reach], span: int) -> None:
        """A key's first map is kept, not copied (a folded pane or block is not changed again: a late
        share drops it and the head); the second copies it."""
        merged, owned = head[1], head[3]
        for key, reach in block.items():
            acc = merged.get(key)
            if acc is None:
                merged[key] = reach
                continue
            if key not in owned:
                merged[key] = acc = acc.copy()
                owned.add(key)
            acc.merge(reach)
        head[2] += span
        head[4] = None
        if head[2] > self._folded_until:
            self._folded_until = head[2]

    def _close_window(self, size: int, hop: int, start: int, rows: list[WindowRow],
                      extras: dict[tuple, Reach] | None) -> None:
        """The rows of one window of a sliding spec: its head (warmed or merged now) and its last part.

        Rows come in the order _close_spec gives them (keys by their first block)."""
        end = start + size
        head = self._heads.pop(size, None)
        if head is None or head[0] != start or head[2] > end - self.width:
            head = [start, {}, start, set(), None]
        parts = self._parts[hop]
        while (span := self._next_part(hop, end, head[2])) is not None:
            if span == self.width and len(parts) > 2 and head[2] == end - parts[-2]:
                # Not warmed into the last finer block (a replay): read that block whole, one merge
                # of its panes, rather than fold them into this head one part at a time.
                break
            self._fold_part_into_head(head, span)
        merged: dict[Key, Reach] = head[1]
        sums: dict[Key, int] = head[4] or {}
        last = self._block(end - head[2], head[2])
        append = rows.append

        def emit(key: Key, reach: Reach, other: Reach | None, reach_sum: int | None) -> None:
            tag, platform = key
            extra = extras.pop((size, start, tag, platform), None) if extras is not None else None
            if extra is not None:
                alone = reach.copy()
                if other is not None:
                    alone.merge(other)
                alone.merge(extra)
                append(alone.row(tag, platform, size, start))
            elif other is not None:
                append((tag, platform, size, start, end, *union_row_values(reach, other, reach_sum)))
            elif reach_sum is None:
                append((tag, platform, size, start, end, *reach.row_values()))
            else:
                posts, shares = reach.posts, reach.shares
                append((tag, platform, size, start, end, posts, posts - shares, shares, len(reach.authors),
                        reach_sum, reach.impressions, reach.engagement))

        for key, reach in merged.items():
            emit(key, reach, last.get(key), sums.get(key))
        for key, reach in last.items():
            if key not in merged:
                emit(key, reach, None, None)

    def _block(self, hop: int, start: int) -> dict[Key, Reach]:
        """The panes of [start, start + hop) merged per key, kept for the windows that read it again."""
        if hop == self.width:
            return self.panes.get(start) or {}
        blocks = self._blocks[hop]
        block = blocks.get(start)
        if block is not None:
            return block
        block = blocks[start] = {}
        end = start + hop
        finer = self._finer[hop]
        step = finer or self.width
        for part in range(start, end, step):
            pane = self._block(finer, part) if finer else self.panes.get(part)
            if not pane:
                continue
            for key, reach in pane.items():
                acc = block.get(key)
                if acc is None:
                    block[key] = acc = Reach()
                acc.merge(reach)
        if end > self._folded_until:
            self._folded_until = end
        return block

    @staticmethod
    def _closing_starts(pane_starts: list[int], size: int, hop: int, old: int | None, new: int) -> list[int]:
        """Starts of windows ending in (old, new] that hold at least one pane."""
        first_pane, last_pane = pane_starts[0], pane_starts[-1]
        lo_end = (old // hop + 1) * hop if old is not None else None
        hi_end = (new // hop) * hop
        if lo_end is None or (hi_end - lo_end) // hop + 1 > len(pane_starts):
            # A long jump (idle advance of a replay): walk the panes instead of the clock.
            return sorted(windows_of_panes(pane_starts, size, hop, old, new))
        return [end - size for end in range(lo_end, hi_end + 1, hop)
                if end - size <= last_pane and end > first_pane]
