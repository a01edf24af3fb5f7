"""warm() is only a cache: however and whenever it is called, closes give the rows of a never-warmed twin.

PaneWindows.warm() merges the heads of upcoming sliding windows between boundaries (streams/app.py calls
MergeState.warm() while warm_due() says so). These differential tests call it at odd times — behind the
frontier, ahead of it, off a pane boundary — with panes and late shares arriving after a warm looked
ahead, idle jumps, per-size closes, evictions and restores between warm and close, and compare every
close with a twin that is never warmed and with windows merged straight from their panes.
"""
from __future__ import annotations

import random
from math import gcd

import orjson
import pytest

from tagpulse.core.stage2 import MergeState
from tagpulse.core.windows import PaneWindows, Reach
from windowkit import add_random_post, merged_from_panes

T0 = 1432080000


def _random_specs(rnd):
    specs = {(60, 60)}
    for _ in range(rnd.randrange(1, 4)):
        hop = rnd.choice([120, 180, 300, 600, 900, 1200])
        size = hop * rnd.randrange(1, 7)
        if size not in {s for s, _ in specs}:
            specs.add((size, hop))
    return tuple(sorted(specs))


@pytest.mark.parametrize("seed", range(8))
def test_warm_at_odd_times_never_changes_a_close(seed):
    rnd = random.Random(seed)
    # Seed 0 runs the default chain of parts (day windows of hours of 5-minute blocks) on a scaled clock.
    specs = ((60, 60), (600, 120), (1800, 600)) if seed == 0 else _random_specs(rnd)
    width = 0
    for size, hop in specs:
        width = gcd(width, gcd(size, hop))
    warmed, cold = PaneWindows(specs), PaneWindows(specs)
    panes, extras, warm_extras, cold_extras = {}, {}, {}, {}
    warm_calls = 0

    def add(ps, tag):
        add_random_post(rnd, panes, (warmed, cold), ps, tag, platform="tw", authors=8)

    closed, now = T0 - width, T0
    for step in range(160):
        for _ in range(rnd.randrange(5)):
            add(now, f"t{rnd.randrange(5)}")
        if rnd.random() < 0.35:  # a share for an older pane that some window still holds
            oldest = warmed.oldest_needed(closed)
            candidates = [ps for ps in range(oldest - oldest % width, now + width, width) if ps >= oldest]
            if candidates:
                add(rnd.choice(candidates), f"t{rnd.randrange(6)}")
        if rnd.random() < 0.15:  # a share of one open window only
            size, hop = rnd.choice(specs)
            start = ((closed - size) // hop + 1) * hop + hop * rnd.randrange(max(1, size // hop))
            key = (size, start, f"t{rnd.randrange(7)}", "tw")
            share = Reach(1, 0, 3, 0, {f"late{step}": 3})
            for target in (extras, warm_extras, cold_extras):
                target.setdefault(key, Reach()).merge(share.copy())
        new = closed + width * (rnd.randrange(2, 200) if rnd.random() < 0.05 else 1)
        for _ in range(rnd.randrange(3)):  # before the close, at odd times
            warmed.warm(closed + rnd.choice([0, -width, width, 2 * width, rnd.randrange(-300, 900),
                                             rnd.randrange(1, width)]))
            warm_calls += 1
            if rnd.random() < 0.3:  # panes keep arriving after a warm that looked ahead
                add(rnd.choice([now, now - width, now + width]), f"t{rnd.randrange(5)}")
        for size in [None] if rnd.random() < 0.5 else [s for s, _ in specs]:
            expected = merged_from_panes(panes, extras, specs, closed, new, size)
            rows = warmed.close(closed, new, warm_extras, size=size)
            assert rows == cold.close(closed, new, cold_extras, size=size), (seed, step)
            assert sorted(rows) == sorted(expected), (seed, step)
            for key in [k for k in extras if k[0] + k[1] <= new and (size is None or k[0] == size)]:
                del extras[key]
        closed, now = new, max(now + width, new)
        evicted = warmed.evict(closed)
        assert evicted == cold.evict(closed)
        for ps in evicted:
            panes.pop(ps, None)
        for _ in range(rnd.randrange(5)):  # between boundaries, as the shell does
            warmed.warm(closed)
            warm_calls += 1
        if rnd.random() < 0.03:
            warmed.evict_panes([])  # replaying an evict record drops the caches
    assert warm_calls > 200


def _merge_input(rnd, wm, specs, step):
    rows = []
    for _ in range(rnd.randrange(6)):
        ps = wm - wm % 60
        if rnd.random() < 0.3:
            ps -= 60 * rnd.randrange(1, 90)  # a late partial of an older pane, often folded already
        rows.append([ps, f"t{rnd.randrange(5)}", "tw", 1, int(rnd.random() < 0.3), rnd.randrange(50), 1,
                     {f"u{rnd.randrange(9)}": rnd.randrange(100)}])
    windows = []
    if rnd.random() < 0.1:
        size, hop = rnd.choice(specs[1:])
        start = (wm // hop) * hop - hop * rnd.randrange(size // hop)
        windows.append([size, start, f"t{rnd.randrange(5)}", "tw", 1, 0, 3, 0, {f"w{step}": 3}])
    return rows, windows


@pytest.mark.parametrize("seed", range(4))
def test_merge_state_warmed_and_restored_between_warm_and_close_gives_the_cold_rows(seed):
    """MergeState as the shell drives it: warm() while warm_due(), and now and then a crash whose
    replacement is restored from the warmed state's changelog (sometimes a snapshot) and warmed again."""
    rnd = random.Random(seed)
    specs = ((60, 60), (600, 120), (1800, 600))
    warmed, cold = MergeState(0, 1, specs), MergeState(0, 1, specs)
    changelog = []
    warms = restores = 0

    def drive(state, record, log):
        results = [state.process([record])]
        if log is not None:
            log.append(state.delta())
        while state.pending():
            results.append(state.close_step())
            if log is not None:
                log.append(state.delta())
        return [(sorted(r.rows), dict(r.late)) for r in results]

    wm = T0
    for step in range(700):
        rows, windows = _merge_input(rnd, wm, specs, step)
        wm += rnd.choice([60, 60, 60, 30, 90, 120]) if rnd.random() > 0.02 else 60 * rnd.randrange(5, 400)
        record = (step, orjson.dumps({"src": 0, "wm": wm, "idle": False, "rows": rows, "windows": windows}))
        assert drive(warmed, record, changelog) == drive(cold, record, None), (seed, step)
        for _ in range(rnd.randrange(6)):
            if warmed.warm_due():
                warmed.warm()
                warms += 1
        if rnd.random() < 0.03:
            if rnd.random() < 0.5:
                changelog[:] = [warmed.snapshot()]
            warmed = MergeState(0, 1, specs)
            for delta in changelog:
                warmed.apply_delta(delta)
            restores += 1
            if warmed.warm_due():
                warmed.warm()
                warms += 1
    assert warms > 50 and restores > 5
