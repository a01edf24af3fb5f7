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

from dataclasses import dataclass, field
from math import gcd
from typing import Iterable, Iterator

WindowSpec = tuple[int, int]  # (size, hop) seconds


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

    def row(self, tag: str, platform: str, size: int, start: int) -> dict:
        return {
            "tag": tag,
            "platform": platform,
            "window_size": size,
            "window_start": start,
            "window_end": start + size,
            "posts": self.posts,
            "originals": self.posts - self.shares,
            "shares": self.shares,
            "unique_authors": len(self.authors),
            "potential_reach": sum(self.authors.values()),
            "impressions": self.impressions,
            "engagement": self.engagement,
        }


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
    rows = [r.row(tag, platform, size, start) for (tag, platform, size, start), r in acc.items()]
    rows.sort(key=row_key)
    return rows


def row_key(row: dict) -> tuple:
    return (row["tag"], row["platform"], row["window_size"], row["window_start"])


def windows_of_panes(pane_starts: Iterable[int], width: int, size: int, hop: int,
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
