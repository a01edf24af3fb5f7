"""Pure stage-1 + stage-2 throughput on one core, no Kafka: where does the CPU go?

    python -m bench.profile_core [--posts N] [--profile]

Feeds one partition's worth of posts (messages of 500 posts, batches of 200 messages,
like the worker) through DedupWindowState with the real decoder (validation on),
takes a changelog delta after every batch like the shell does, merges the pane
partials into windows with the spike detector (MergeWithSpikes, up to the end of the
replay's close, step by step), and makes each step's outputs as the shell does: the
window rows for the topic and the per-tag gauges (stage2_s: merge and delta, and
warm() between batches as the shell calls it; outputs_s: the outputs).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import orjson

from bench.generate import synthetic_arrivals
from streams.partition_tasks import pack_json_arrays, tune_gc as tune_worker_gc
from tagpulse import config
from tagpulse.core.merge_spikes import MergeWithSpikes
from tagpulse.core.stage1 import DedupWindowState
from tagpulse.core.stage2 import CLOSE_STEP
from tagpulse.core.windows import window_row_arrays
from tagpulse.metrics import TagGauges


def decoder():
    try:
        from tagpulse.core.decode import decode_record
        return decode_record
    except ImportError:  # adapters not there yet: the canonical path only
        from schemas.post import validate_post
        return lambda item: [validate_post(item)]


def run(messages: list[bytes], take: int, specs, close_step_s: int = CLOSE_STEP) -> dict:
    state = DedupWindowState(0, specs, 10, 7 * 86400, decode=decoder())
    merge = MergeWithSpikes(0, 1, specs, close_step_s=close_step_s)
    gauges = TagGauges()
    delta_bytes = partials = rows = 0
    t_start = time.perf_counter()
    times = dict.fromkeys(("stage1_s", "delta_s", "stage2_s", "outputs_s"), 0.0)

    def stage2(step) -> None:
        """One stage-2 transaction's work: the merge step and its delta, then its outputs as the shell
        makes them (window rows for the topic, per-tag gauges; the registry export is left out)."""
        nonlocal rows
        a = time.perf_counter()
        out = step()
        merge.delta()
        b = time.perf_counter()
        pack_json_arrays(window_row_arrays(out.rows, 0.0))
        gauges.add_windows(out.rows)
        times["stage2_s"] += b - a
        times["outputs_s"] += time.perf_counter() - b
        rows += len(out.rows)

    for i in range(0, len(messages), take):
        a = time.perf_counter()
        res = state.process([(i + j, m) for j, m in enumerate(messages[i:i + take])])
        b = time.perf_counter()
        delta_bytes += len(state.delta())
        times["stage1_s"] += b - a
        times["delta_s"] += time.perf_counter() - b
        partials += len(res.partials)
        msg = orjson.dumps({"src": 0, "wm": state.watermark, "idle": False, "rows": res.partials})
        stage2(lambda: merge.process([(i, msg)]))
        if merge.warm_due():  # as the shell does after a batch's close steps
            a = time.perf_counter()
            merge.warm()
            times["stage2_s"] += time.perf_counter() - a
    res = state.advance_idle(4_000_000_000)
    msg = orjson.dumps({"src": 0, "wm": state.watermark, "idle": True, "rows": res.partials})
    stage2(lambda: merge.process([(len(messages), msg)]))
    while merge.pending():  # the close of the replay's end, in steps as the worker commits it
        stage2(merge.close_step)
    return {"seconds": time.perf_counter() - t_start, **times, "delta_bytes": delta_bytes, "partials": partials,
            "rows": rows, "dedup_keys": len(state.dedup), "spike_keys": len(merge.detector.keys)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200_000)
    parser.add_argument("--take", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--close-step", type=int, default=CLOSE_STEP,
                        help="seconds of window ends per close step (tagpulse.core.stage2.CLOSE_STEP)")
    parser.add_argument("--default-gc", action="store_true", help="keep Python's default GC thresholds")
    args = parser.parse_args()
    arrivals, unique = synthetic_arrivals(args.posts)
    messages = [orjson.dumps(arrivals[i:i + 500]) for i in range(0, len(arrivals), 500)]
    specs = config.parse_window_specs("1m,1h/5m,24h/1h")
    if not args.default_gc:
        tune_worker_gc()  # as the worker does: the input is not garbage either
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
    out = run(messages, args.take, specs, args.close_step)
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    out["posts_per_s"] = round(len(arrivals) / out["seconds"])
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
