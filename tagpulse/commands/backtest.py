"""`tagpulse backtest`: replay labelled scenarios through the spike detector and score it.

Prints precision, recall (bursts ≥ 5× baseline) and median time-to-detect per
scenario and overall, and exits 1 when the overall figures miss the goals
(docs/spikes.md), so CI can fail on a detector regression.
"""
from __future__ import annotations

import json
import sys
import time

HELP = "replay labelled burst scenarios through the spike detector; exit 1 below the precision/recall goals"

GOAL_PRECISION = 0.9
GOAL_RECALL = 0.9
GOAL_MEDIAN_TTD = 2.0


def add_arguments(parser) -> None:
    parser.add_argument("--scenario", nargs="+", metavar="NAME",
                        help="scenarios to run (default: all; with --small the CI subset)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the scenario generator (default: 1)")
    parser.add_argument("--small", action="store_true", help="the quick CI subset, shorter scenarios")
    parser.add_argument("--window", default=None,
                        help="window spec SIZE/HOP to run the detector on (default: the detector's, 1h/5m)")
    parser.add_argument("--json", metavar="FILE", help="also write per-scenario results and spikes as JSON")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every false spike and missed burst")


def _fmt(value, pattern: str = "{:.2f}") -> str:
    return "—" if value is None else pattern.format(value)


def run(args) -> int:
    from tagpulse.config import parse_window_specs
    from tagpulse.core import scenarios
    from tagpulse.core.spikes import SpikeConfig, human_duration

    if args.list:
        for name, (builder, small) in scenarios.SCENARIOS.items():
            doc = scenarios.build(name, 1, True).description
            print(f"{name:22} {'small ' if small else '      '}{doc}")
        return 0

    names = args.scenario or [n for n, (_, small) in scenarios.SCENARIOS.items() if small or not args.small]
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        print(f"tagpulse backtest: unknown scenario {', '.join(unknown)}; "
              f"known: {', '.join(scenarios.SCENARIOS)}", file=sys.stderr)
        return 2
    config = SpikeConfig()
    window = config.windows[0]
    if args.window:
        try:
            specs = parse_window_specs(args.window)
        except (SystemExit, ValueError):
            print(f"tagpulse backtest: --window {args.window!r} is not SIZE/HOP (e.g. 1h/5m, 1m)", file=sys.stderr)
            return 2
        if len(specs) != 1:
            print("tagpulse backtest: --window takes one SIZE/HOP", file=sys.stderr)
            return 2
        window = specs[0]
    size, hop = window

    results, report = [], []
    print(f"detector on {human_duration(size)} windows every {human_duration(hop)}; seed {args.seed}"
          f"{'; small' if args.small else ''}")
    header = f"{'scenario':22} {'bursts≥5×':>9} {'found':>6} {'all':>7} {'spikes':>6} {'precision':>9} " \
             f"{'recall':>6} {'median TTD':>10}  time"
    print(header)
    print("-" * len(header))
    for name in names:
        started = time.monotonic()
        result, spikes = scenarios.run(name, config, seed=args.seed, small=args.small, window=window)
        elapsed = time.monotonic() - started
        results.append(result)
        print(f"{name:22} {result.goal_bursts:>9} {result.goal_detected:>6} "
              f"{result.detected:>3}/{result.bursts:<3} {result.spikes:>6} {_fmt(result.precision):>9} "
              f"{_fmt(result.recall):>6} {_fmt(result.median_ttd, '{:g} win'):>10}  {elapsed:.1f}s")
        if args.verbose:
            for line in result.false_spikes:
                print(f"    false spike: {line}")
            for line in result.missed:
                print(f"    missed: {line}")
        report.append({**result.to_dict(), "spikes_detail": [s.to_dict() for s in spikes]})
    total = scenarios.overall(results)
    print("-" * len(header))
    print(f"{'overall':22} {total.goal_bursts:>9} {total.goal_detected:>6} {total.detected:>3}/{total.bursts:<3} "
          f"{total.spikes:>6} {_fmt(total.precision):>9} {_fmt(total.recall):>6} "
          f"{_fmt(total.median_ttd, '{:g} win'):>10}")

    failures = []
    # No spike at all cannot be imprecise; no labelled burst cannot be missed.
    precision = 1.0 if total.precision is None else total.precision
    recall = 1.0 if total.recall is None else total.recall
    if precision < GOAL_PRECISION:
        failures.append(f"precision {precision:.2f} < {GOAL_PRECISION}")
    if recall < GOAL_RECALL:
        failures.append(f"recall {recall:.2f} < {GOAL_RECALL} (bursts ≥ {scenarios.GOAL_MAGNITUDE:g}× baseline)")
    if total.median_ttd is not None and total.median_ttd > GOAL_MEDIAN_TTD:
        failures.append(f"median time-to-detect {total.median_ttd:g} > {GOAL_MEDIAN_TTD:g} windows")
    print(f"goals: precision ≥ {GOAL_PRECISION}, recall ≥ {GOAL_RECALL} for bursts ≥ {scenarios.GOAL_MAGNITUDE:g}×, "
          f"median time-to-detect ≤ {GOAL_MEDIAN_TTD:g} windows ({human_duration(hop)} each): "
          + ("MET" if not failures else "MISSED — " + "; ".join(failures)))

    if args.json:
        payload = {"window": {"size": size, "hop": hop}, "seed": args.seed, "small": args.small,
                   "config": config.to_dict(), "scenarios": report, "overall": total.to_dict(),
                   "goals_met": not failures, "failures": failures}
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, indent=2, ensure_ascii=False)
        except OSError as exc:
            print(f"tagpulse backtest: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 2
    return 1 if failures else 0
