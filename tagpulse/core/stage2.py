"""Stage 2: merge per-partition partial windows into final windows (pure).

Stage 1 partitions posts by post id (so duplicates meet), which spreads one
tag over every partition. Each stage-1 partition sends its share of a window
(counts plus its author map) when its own watermark closes that window, and,
in the same message, its new watermark. A window is final once every upstream
partition has closed it; then the shares are merged (author maps by max
followers, so an author posting in two partitions is counted once) and the row
is emitted exactly once.

An upstream partition that never saw a post and reports itself idle does not
hold windows back (Flink's idleness); one that never reported holds everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

import orjson

from tagpulse.core.windows import Reach

_window_of = itemgetter(0, 1)


@dataclass
class Stage2Result:
    rows: list[dict] = field(default_factory=list)  # final windows, without closed_at
    late: dict[tuple, int] = field(default_factory=dict)  # (tag, platform, size, start) -> events

    def late_rows(self) -> list[dict]:
        return [
            {"tag": tag, "platform": platform, "window_size": size, "window_start": start, "events": n}
            for (tag, platform, size, start), n in self.late.items()
        ]


class MergeState:
    def __init__(self, partition: int, upstream_partitions: int):
        self.partition = partition
        self.upstream_partitions = upstream_partitions
        self.offset = -1
        # upstream partition -> [watermark or None, idle]
        self.upstream: dict[int, list] = {}
        self.final_until: int | None = None
        self.pending: dict[tuple[int, int, str, str], Reach] = {}
        # changes since the last delta()
        self._accepted: list[list] = []
        self._removed: list[list] = []

    def process(self, records: list[tuple[int, bytes]]) -> Stage2Result:
        result = Stage2Result()
        for offset, value in records:
            if offset <= self.offset:
                continue
            self.offset = offset
            message = orjson.loads(value)
            self._accept(message, result)
        self._finalise(result)
        return result

    def _accept(self, message: dict, result: Stage2Result) -> None:
        final_until = self.final_until
        for partial in message["rows"]:
            size, start, tag, platform = partial[0], partial[1], partial[2], partial[3]
            if final_until is not None and start + size <= final_until:
                # Final already (the upstream partition was idle and came back): never reopen.
                k = (tag, platform, size, start)
                result.late[k] = result.late.get(k, 0) + partial[4]
                continue
            self._merge_partial(partial)
            self._accepted.append(partial)
        self.upstream[message["src"]] = [message["wm"], message["idle"]]

    def _merge_partial(self, partial: list) -> None:
        """partial comes straight from orjson.loads: its author map is ours to keep, no copy."""
        size, start, tag, platform, posts, shares, impressions, engagement, authors = partial
        key = (size, start, tag, platform)
        known = self.pending.get(key)
        if known is None:
            self.pending[key] = Reach(posts, shares, impressions, engagement, authors)
        else:
            known.merge(Reach(posts, shares, impressions, engagement, authors))

    def frontier(self) -> int | None:
        """The time up to which every upstream partition has closed its windows."""
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

    def _finalise(self, result: Stage2Result) -> None:
        frontier = self.frontier()
        if frontier is None or (self.final_until is not None and frontier <= self.final_until):
            return
        self.final_until = frontier
        # Window order per key is what the spike detector needs; sorting on (size, start)
        # only (stable) avoids comparing tag strings for every pending window.
        ready = sorted((k for k in self.pending if k[0] + k[1] <= frontier), key=_window_of)
        for key in ready:
            size, start, tag, platform = key
            result.rows.append(self.pending.pop(key).row(tag, platform, size, start))
            self._removed.append(list(key))

    def delta(self) -> bytes:
        body = {
            "o": self.offset,
            "u": self.upstream,
            "f": self.final_until,
            "a": self._accepted,
            "x": self._removed,
        }
        self._accepted, self._removed = [], []
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)

    def apply_delta(self, raw: bytes) -> None:
        body = orjson.loads(raw)
        self.offset = body["o"]
        self.upstream = {int(k): v for k, v in body["u"].items()}
        self.final_until = body["f"]
        for partial in body["a"]:
            self._merge_partial(partial)
        for key in body["x"]:
            self.pending.pop(tuple(key), None)
