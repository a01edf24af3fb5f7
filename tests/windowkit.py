"""Windows merged the slow, obvious way: the reference the pane-based close is compared with."""
from __future__ import annotations

from tagpulse.core.windows import Reach


def merged_from_panes(panes: dict, extras: dict, specs, old, new, size=None) -> list[tuple]:
    """Every window ending in (old, new] merged straight from its panes (plus its share), per key."""
    rows = []
    keys = {key for pane in panes.values() for key in pane} | {(k[2], k[3]) for k in extras}
    for spec_size, hop in specs:
        if size is not None and spec_size != size:
            continue
        ends = range((old // hop + 1) * hop, new + 1, hop)
        for tag, platform in sorted(keys):
            for end in ends:
                start = end - spec_size
                acc, found = Reach(), False
                for ps, pane in panes.items():
                    if start <= ps < end and (tag, platform) in pane:
                        acc.merge(pane[(tag, platform)])
                        found = True
                extra = extras.get((spec_size, start, tag, platform))
                if extra is not None:
                    acc.merge(extra)
                    found = True
                if found:
                    rows.append(acc.row(tag, platform, spec_size, start))
    return rows


def add_random_post(rnd, panes: dict, twins, ps: int, tag: str, platform: str = "twitter", authors: int = 6) -> None:
    """One random post's reach, folded into pane ps of the reference panes and of each PaneWindows in twins."""
    reach = Reach()
    reach.add_post(f"u{rnd.randrange(authors)}", rnd.randrange(100), rnd.random() < 0.3, rnd.randrange(4))
    panes.setdefault(ps, {}).setdefault((tag, platform), Reach()).merge(reach)
    for windows in twins:
        windows.add(ps, (tag, platform), reach.copy())
