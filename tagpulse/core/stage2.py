"""Stage 2: merge per-partition pane partials and assemble final windows (pure).

Stage 1 partitions posts by post id (so duplicates meet), which spreads one
tag over every partition. Each stage-1 partition sends its share of a
1-minute pane (counts plus its author map) once its own watermark passes the
pane's end, and, in the same message, its new watermark. Here, per tag
partition, the shares are merged into one pane store (author maps by max
followers, so an author posting in two partitions is counted once), and a
window is assembled from the panes and emitted exactly once when it is final:
when every upstream partition's watermark has passed its end.

An upstream partition that never saw a post and reports itself idle does not
hold windows back (Flink's idleness); one that never reported holds everything.
Posts that reach a stage-1 partition after their pane was shipped arrive as
*window shares*, for the windows still open at that partition only. A share
that arrives for a window already final here (a partition that was idle and
came back) is counted late for that window, never folded in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from tagpulse.core.windows import (IncompatibleState, PaneWindows, Reach, WindowRow, WindowSpec, ends_in,
                                   window_row_dict, window_starts)

# Version 3: closed-to time per window size ("f" a map). Version 2 (one closed-to time for every
# size) is read as that time for each size; version 1 (unversioned, window partials) is not.
STATE_VERSION = 3
# A snapshot record: version 3's fields, and the state starts from nothing. Its own version, so
# that a tagpulse from before snapshots refuses it instead of adding it to the state it has.
SNAPSHOT_VERSION = 4

# A jump of the frontier (the end of a replay, an idle upstream moving to the wall clock)
# makes a day of windows final at once: millions of rows that the sink could read only when
# the whole close is committed. Closing at most CLOSE_STEP seconds of window ends per step
# (one transaction each) lets the sink insert while the rest is being assembled. Each step walks
# every key with a pane, so steps are not made smaller than that: with 2 h, a replay's day windows
# took 12 walks (stage 2 of 1 M bench posts on one core 8.2-9.3 s; with 6 h, 4 walks, 6.6-6.9 s).
CLOSE_STEP = 6 * 3600


@dataclass
class Stage2Result:
    rows: list[WindowRow] = field(default_factory=list)  # final windows (Reach.row), without closed_at
    late: dict[tuple, int] = field(default_factory=dict)  # (tag, platform, size, start) -> events
    spikes: list = field(default_factory=list)  # filled by MergeWithSpikes

    def row_dicts(self) -> list[dict]:
        """The final rows as dicts of WINDOW_ROW_FIELDS (without closed_at)."""
        return [window_row_dict(row) for row in self.rows]

    def late_rows(self) -> list[dict]:
        return [
            {"tag": tag, "platform": platform, "window_size": size, "window_start": start, "events": n}
            for (tag, platform, size, start), n in self.late.items()
        ]


class MergeState:
    def __init__(self, partition: int, upstream_partitions: int, specs: tuple[WindowSpec, ...],
                 close_step_s: int | None = CLOSE_STEP):
        self.partition = partition
        self.close_step_s = close_step_s
        self.upstream_partitions = upstream_partitions
        self.offset = -1
        # upstream partition -> [watermark or None, idle]
        self.upstream: dict[int, list] = {}
        self.windows = PaneWindows(specs)
        # window size -> every window of that size ending at or before this time is final (emitted)
        self.closed: dict[int, int | None] = {size: None for size, _ in self.windows.specs}
        # (size, start, tag, platform) -> window share of posts that came after their pane
        self.window_shares: dict[tuple, Reach] = {}
        # window size -> window end -> the keys of its window shares, each once: a close takes only
        # the shares of the windows it emits, a restore drops those of windows emitted since. A
        # backlog of late posts leaves hundreds of thousands of shares; looking at each of them at
        # every close step cost 30 ms a look on one core, and a restore that did so after every
        # record was quadratic.
        self._share_keys: dict[int, dict[int, list[tuple]]] = {}
        # changes since the last delta()
        self._accepted: list[list] = []
        self._accepted_windows: list[list] = []
        self._evicted: list[int] = []

    @property
    def panes(self) -> dict:
        return self.windows.panes

    @property
    def final_until(self) -> int | None:
        """Every window ending at or before this time is final (None: not every size closed any yet)."""
        marks = [mark for mark in self.closed.values() if mark is not None]
        return min(marks) if len(marks) == len(self.closed) else None

    def process(self, records: list[tuple[int, bytes]]) -> Stage2Result:
        """Apply records in offset order (skipping those applied before), then take one close step.

        A close left unfinished (a restart between two steps) is finished first, so every record
        meets the same closed-to times as in an uninterrupted run: the output never depends on where
        a crash fell. After process(), the shell calls close_step() while pending() says so.
        """
        result = Stage2Result()
        while self.pending():
            self._finalise(result)
        for offset, value in records:
            if offset <= self.offset:
                continue
            self.offset = offset
            self._accept(orjson.loads(value), result)
        self._finalise(result)
        return result

    def _accept(self, message: dict, result: Stage2Result) -> None:
        closed = self.closed
        latest = max((c for c in closed.values() if c is not None), default=None)
        windows = self.windows
        min_hop = windows.min_hop
        for partial in message.get("rows", ()):
            ps = partial[0]
            # The first window to end after this pane ends at the next boundary of the smallest hop.
            if latest is not None and (ps // min_hop + 1) * min_hop <= latest:
                if not self._count_late(partial, result):
                    continue  # every window holding the pane is final: nothing to keep
            self._add(partial)
            self._accepted.append(partial)
        for share in message.get("windows", ()):
            size, start, tag, platform, posts = share[0], share[1], share[2], share[3], share[4]
            done = closed.get(size)
            if done is not None and start + size <= done:
                k = (tag, platform, size, start)
                result.late[k] = result.late.get(k, 0) + posts
                continue
            self._add_window_share(share)
            self._accepted_windows.append(share)
        self.upstream[message["src"]] = [message["wm"], message["idle"]]

    def _count_late(self, partial: list, result: Stage2Result) -> bool:
        """Count a share as late for its final windows; True when some window holding it is still open."""
        ps, tag, platform, posts = partial[0], partial[1], partial[2], partial[3]
        late = result.late
        still_open = False
        for size, hop in self.windows.specs:
            done = self.closed[size]
            for start in window_starts(ps, size, hop):
                if done is not None and start + size <= done:
                    k = (tag, platform, size, start)
                    late[k] = late.get(k, 0) + posts
                else:
                    still_open = True
        return still_open

    def _add(self, partial: list) -> None:
        ps, tag, platform, posts, shares, impressions, engagement, authors = partial
        # A copy: the pane merges later shares into its map, and `partial` is still
        # to be written to the changelog as it arrived.
        self.windows.add(ps, (tag, platform), Reach(posts, shares, impressions, engagement, dict(authors)))

    def _add_window_share(self, share: list) -> None:
        size, start, tag, platform, posts, shares, impressions, engagement, authors = share
        reach = Reach(posts, shares, impressions, engagement, dict(authors))
        key = (size, start, tag, platform)
        known = self.window_shares.get(key)
        if known is None:
            self.window_shares[key] = reach
            self._share_keys.setdefault(size, {}).setdefault(start + size, []).append(key)
        else:
            known.merge(reach)

    def _take_window_shares(self, size: int, until: int) -> dict[tuple, Reach]:
        """Remove and return the window shares of the windows of this size ending at or before until."""
        by_end = self._share_keys.get(size)
        taken: dict[tuple, Reach] = {}
        if by_end:
            pop = self.window_shares.pop
            for end in [end for end in by_end if end <= until]:
                for key in by_end.pop(end):
                    taken[key] = pop(key)
        return taken

    def frontier(self) -> int | None:
        """The time up to which every upstream partition has closed its panes."""
        if len(self.upstream) < self.upstream_partitions:
            return None
        marks = []
        for watermark, idle in self.upstream.values():
            if watermark is None:
                if idle:
                    continue  # never saw a post: nothing to wait for
                return None
            marks.append(watermark)
        return min(marks) if marks else None

    def pending(self) -> bool:
        """Windows are final (the frontier passed their end) but not closed yet."""
        frontier = self.frontier()
        return frontier is not None and self._behind(frontier)

    def _behind(self, frontier: int) -> bool:
        """Whether some window size is not yet closed up to this frontier."""
        return any(c is None or frontier > c for c in self.closed.values())

    def close_step(self) -> Stage2Result:
        """The next step of a pending close (see CLOSE_STEP)."""
        result = Stage2Result()
        self._finalise(result)
        return result

    def _finalise(self, result: Stage2Result) -> None:
        """One close step: the windows of the smallest size that has rows ending by the step's stop.

        Sizes close smallest first, one transaction each: a boundary that also closes the sliding
        1 h windows (every 5 minutes) would otherwise hold its 1-minute rows back until every 1 h
        window of every tag is assembled (≈1 s later in the latency benchmark). Sizes without a
        window ending by the stop move along in the same step. The stop depends
        only on the smallest closed-to time and on the panes (none is evicted before every size
        reached the stop), so a close cut short by a restart goes on to the same stop.
        """
        frontier = self.frontier()
        if frontier is None or not self._behind(frontier):  # pending(), with the frontier kept for the stop
            return
        stop = self._next_stop(frontier)
        closed, windows = self.closed, self.windows
        emitted = False
        for size, hop in sorted(windows.specs):
            old = closed[size]
            if old is not None and old >= stop:
                continue
            if not ends_in(old, stop, hop):
                closed[size] = stop
            elif not emitted:
                closed[size] = stop
                rows = windows.close(old, stop, self._take_window_shares(size, stop), size=size)
                if rows:
                    result.rows.extend(rows)
                    emitted = True  # larger sizes with windows to close wait for the next step
        final_until = self.final_until
        if final_until is not None:
            self._evicted.extend(windows.evict(final_until))

    def warm_due(self) -> bool:
        """Whether warm() has work: panes final since the last close step or warm()."""
        final_until = self.final_until
        return final_until is not None and not self.pending() and self.windows.warm_due(final_until)

    def warm(self) -> None:
        """Between close steps, prepare part of the next boundary's longer windows (PaneWindows.warm).

        Changes no row and no changelog record; warm_due() says whether more is left."""
        final_until = self.final_until
        if final_until is not None and not self.pending():
            self.windows.warm(final_until)

    def _next_stop(self, frontier: int) -> int:
        """How far this close step goes: CLOSE_STEP of window ends, or straight on when nothing is left."""
        old, step = self.final_until, self.close_step_s
        if old is None or not step or frontier - old <= step:
            return frontier
        stop = old + step
        last_end = self.windows.last_window_end()
        share_ends = [max(by_end) for by_end in self._share_keys.values() if by_end]
        if share_ends:
            share_end = max(share_ends)
            last_end = share_end if last_end is None else max(last_end, share_end)
        # Past the end of the last window that holds anything, the rest of the jump is empty.
        return frontier if last_end is None or stop >= last_end else stop

    def delta(self) -> bytes:
        body = {
            "v": STATE_VERSION,
            "o": self.offset,
            "u": self.upstream,
            "f": self.closed,
            "a": self._accepted,
            "w": self._accepted_windows,
            "x": self._evicted,
        }
        self._accepted, self._accepted_windows, self._evicted = [], [], []
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)

    def snapshot(self) -> bytes:
        """The whole state as one changelog record, a delta that starts from nothing (SNAPSHOT_VERSION):
        every pane share and window share as if accepted now (and the tracking reset, as by delta())."""
        body = {
            "v": SNAPSHOT_VERSION,
            "o": self.offset,
            "u": self.upstream,
            "f": self.closed,
            "a": [[ps, tag, platform, *reach.to_list()] for ps, pane in self.windows.panes.items()
                  for (tag, platform), reach in pane.items()],
            "w": [[*key, *reach.to_list()] for key, reach in self.window_shares.items()],
            "x": [],
        }
        self._accepted, self._accepted_windows, self._evicted = [], [], []
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)

    def apply_delta(self, raw: bytes) -> bool:
        """Apply one changelog record; True if it was a snapshot. A restore: the records in changelog
        order on a fresh state, before its first process()."""
        body = orjson.loads(raw)
        version = body.get("v") if isinstance(body, dict) else None
        if version not in (2, STATE_VERSION, SNAPSHOT_VERSION):
            found = body.get("v", 1) if isinstance(body, dict) else "?"
            raise IncompatibleState(f"stage 2 partition {self.partition}: changelog record of version {found}, "
                                    f"expected {STATE_VERSION}")
        if version == SNAPSHOT_VERSION:  # everything before it is in it
            self.windows = PaneWindows(self.windows.specs)
            self.window_shares = {}
            self._share_keys = {}
        self.offset = body["o"]
        self.upstream = {int(k): v for k, v in body["u"].items()}
        if version == 2:
            self.closed = dict.fromkeys(self.closed, body["f"])
        else:
            recorded = {int(size): until for size, until in body["f"].items()}
            # A size added to TAGPULSE_WINDOWS since starts where the others are.
            known = [c for c in recorded.values() if c is not None]
            self.closed = {size: recorded.get(size, min(known, default=None)) for size in self.closed}
        for partial in body["a"]:
            self._add(partial)
        for share in body["w"]:
            self._add_window_share(share)
        # Shares of windows emitted since are dropped (the close that emitted them removed them).
        for size, until in self.closed.items():
            if until is not None:
                self._take_window_shares(size, until)
        evicted = set(body["x"])
        if evicted:
            self.windows.evict_panes(evicted)
        return version == SNAPSHOT_VERSION
