"""How long a live boundary's close takes per window size, with and without warm(): pure, one core.

    python -m bench.live_close [--posts N] [--rate R] [--pairs K] [--out DIR]

The latency part of `bench.run` runs 5 minutes live, so its 1 h windows hold one or two 5-minute
blocks, never the twelve of a pipeline that has run for an hour. This feeds a stream of that shape
(synthetic posts at R posts/s of event time, default 500/s for 2 M posts: 66 minutes, so the later
5-minute boundaries close 1 h windows of twelve blocks and one hour boundary closes day windows)
through one stage-1 and one stage-2 partition in batches like the worker's, and times each close step
that emits rows, by window size: the merge step with the spike detector and its changelog delta
(what runs before the step's transaction). "cold" closes without preparation; "warm" calls
MergeState.warm() between batches as the worker's shell does (PaneWindows.warm: the next boundary's
1 h and day windows merged ahead); "early" is warm, and stage 1 ships each pane's shares 2 s of event
time before its end as the live worker does (DedupWindowState.ship_early), the rest at its close; it
also times stage 1's batches that ship a pane at its close. The variants alternate K times; every run
must give the same rows. With --backlog N, N late posts arrive at once --backlog-at seconds into the
stream (stage 1 sends them on as window shares, which every later close step of stage 2 holds).
Writes bench/results/<timestamp>-live-close.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import orjson

from bench.generate import synthetic_arrivals
from bench.profile_core import decoder
from streams.partition_tasks import tune_gc as tune_worker_gc
from tagpulse.config import parse_window_specs
from tagpulse.core.merge_spikes import MergeWithSpikes
from tagpulse.core.stage1 import DedupWindowState

RESULTS = Path(__file__).resolve().parent / "results"
TAKE = 20  # messages of 500 posts per batch: a live worker's batches are small
EARLY_SHIP_S = 2.0  # the worker's default (TAGPULSE_EARLY_SHIP)


def run(messages: list[bytes], specs, warm: bool, early: bool = False) -> dict:
    state = DedupWindowState(0, specs, 10, 7 * 86400, decode=decoder())
    merge = MergeWithSpikes(0, 1, specs)
    steps: list[tuple[int, int, float]] = []  # (window size, rows, seconds)
    warm_s: list[float] = []
    ship_s: list[float] = []  # stage 1: batches that shipped a pane at its close (process, delta, message)
    digest = 0
    most_shares = 0  # window shares held by stage 2 at most

    def timed(step) -> None:
        nonlocal digest
        a = time.perf_counter()
        out = step()
        merge.delta()
        seconds = time.perf_counter() - a
        if out.rows:
            steps.append((out.rows[0][2], len(out.rows), seconds))
            digest ^= hash(tuple(sorted(out.rows)))

    for i in range(0, len(messages), TAKE):
        a = time.perf_counter()
        res = state.process([(i + j, m) for j, m in enumerate(messages[i:i + TAKE])])
        if early:  # live, event time is the wall clock's: the latest one stands for "now"
            state.ship_early(state.early_due(state.max_event, EARLY_SHIP_S), res)
        state.delta()
        msg = orjson.dumps({"src": 0, "wm": state.watermark, "idle": False, "rows": res.partials,
                            "windows": res.window_share_rows()})
        if any(p[0] not in res.early for p in res.partials):
            ship_s.append(time.perf_counter() - a)
        timed(lambda: merge.process([(i, msg)]))
        most_shares = max(most_shares, len(merge.window_shares))
        while merge.pending():
            timed(merge.close_step)
        if warm and merge.warm_due():
            a = time.perf_counter()
            merge.warm()
            warm_s.append(time.perf_counter() - a)
    return {"steps": steps, "warm_s": warm_s, "ship_s": ship_s, "digest": digest, "most_shares": most_shares}


def summary(steps: list[tuple[int, int, float]]) -> dict:
    by_size: dict[str, dict] = {}
    for size in sorted({s for s, _, _ in steps}):
        mine = [(rows, sec) for s, rows, sec in steps if s == size]
        by_size[str(size)] = {"steps": len(mine), "rows_median": int(statistics.median(r for r, _ in mine)),
                              "median_s": round(statistics.median(s for _, s in mine), 3),
                              "max_s": round(max(s for _, s in mine), 3),
                              "seconds": [round(s, 3) for _, s in mine]}
    return by_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=500.0, help="posts per second of event time")
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--windows", default="1m,1h/5m,24h/1h")
    parser.add_argument("--variants", default="cold,warm",
                        help="comma list of cold, warm and early (warm, and stage 1 ships panes early)")
    parser.add_argument("--backlog", type=int, default=0,
                        help="posts arriving late, all at once, --backlog-at seconds of event time into the stream "
                             "and dated over the time before it but its last 2 minutes: stage 1 sends them on as "
                             "window shares of the 1 h and day windows still open (a platform's backlog)")
    parser.add_argument("--backlog-at", type=float, default=1200.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the result file")
    args = parser.parse_args()
    specs = parse_window_specs(args.windows)
    posts, _unique = synthetic_arrivals(args.posts, rate_per_s=args.rate)
    messages = [orjson.dumps(posts[i:i + 500]) for i in range(0, len(posts), 500)]
    del posts
    if args.backlog:
        span = args.backlog_at - 120
        late, _ = synthetic_arrivals(args.backlog, seed=7, rate_per_s=args.backlog / span)
        for i, post in enumerate(late):
            post["post_id"] = f"late{i}"
        at = int(args.backlog_at * args.rate / 500)
        messages[at:at] = [orjson.dumps(late[i:i + 500]) for i in range(0, len(late), 500)]
        del late
    gc.collect()
    tune_worker_gc()  # as the worker does: the input is not garbage either
    runs: dict[str, list[dict]] = {v: [] for v in args.variants.split(",")}
    for _ in range(args.pairs):
        for variant in runs:
            runs[variant].append(run(messages, specs, variant != "cold", early=variant == "early"))
            gc.collect()
    digests = {r["digest"] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        raise SystemExit("cold and warm closes gave different rows")
    result: dict = {"posts": args.posts, "rate_per_s": args.rate, "windows": args.windows, "pairs": args.pairs,
                    "backlog": args.backlog, "backlog_at_s": args.backlog_at,
                    "note": "seconds per close step that emits rows (merge step with the spike detector and "
                            "its delta), one stage-2 partition on one core"}
    for variant, rs in runs.items():
        result[variant] = summary([s for r in rs for s in r["steps"]])
    for variant, rs in runs.items():
        result[variant]["window_shares_max"] = max(r["most_shares"] for r in rs)
        ships = [s for r in rs for s in r["ship_s"]]
        result[variant]["stage1_close_batches"] = {"count": len(ships),
                                                   "median_s": round(statistics.median(ships), 4) if ships else None,
                                                   "max_s": round(max(ships, default=0.0), 4)}
    if "warm" in runs:
        warm_calls = [w for r in runs["warm"] for w in r["warm_s"]]
        result["warm"]["calls"] = {"count": len(warm_calls), "total_s": round(sum(warm_calls), 3),
                                   "max_s": round(max(warm_calls, default=0.0), 3)}
    if "warm" in runs and "early" in runs:
        result["ratios_early_to_warm"] = {size: round(result["early"][size]["median_s"] / warm["median_s"], 2)
                                          for size, warm in result["warm"].items()
                                          if size.isdigit() and warm["median_s"]}
    if "warm" in runs and "cold" in runs:
        result["ratios_warm_to_cold"] = {size: round(result["warm"][size]["median_s"] / cold["median_s"], 2)
                                         for size, cold in result["cold"].items() if size.isdigit() and cold["median_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%dT%H%M%S')}-live-close.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
