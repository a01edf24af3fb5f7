"""`tagpulse faults`: the fault suite of issue 4 (tagpulse/faults.py, docs/reliability.md).

Runs each scenario on a fresh namespace with the real worker(s) and sink,
injects its faults, waits until every window is final and compares ClickHouse
with the oracle. Exit 0 only when every scenario is exact; 1 on any difference;
2 when the suite cannot run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HELP = "fault suite: kill, rebalance and outage scenarios, ClickHouse compared with the oracle row for row"


def add_arguments(parser) -> None:
    from tagpulse.faults import SCALES, SCENARIO_HELP, SCENARIOS

    parser.epilog = "scenarios:\n" + "\n".join(f"  {name:15} {SCENARIO_HELP[name]}" for name in SCENARIOS) + (
        "\n\nA private Kafka broker is started in the work directory unless TAGPULSE_KAFKA names one "
        "(then broker-restart is left out). Every scenario gets its own namespace and chDB directory.")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--scale", choices=sorted(SCALES), default="small",
                        help=", ".join(f"{k}: {v:,} posts" for k, v in SCALES.items()) + " (default: small)")
    parser.add_argument("--posts", type=int, metavar="N", help="unique posts in the replay (overrides --scale)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="NAME",
                        help="run this scenario (repeat for several; default: all)")
    parser.add_argument("--seed", type=int, default=7, help="replay and fault timing seed (default: 7)")
    parser.add_argument("--outage", type=float, default=30.0, metavar="SECONDS",
                        help="how long the broker (broker-restart) and ClickHouse (sink-outage) stay down "
                             "(default: 30)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--workdir", metavar="DIR",
                        help="logs, broker and chDB data here, kept afterwards (default: a temporary directory, "
                             "removed when every scenario is exact)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory in any case")


def run(args) -> int:
    import logging

    from tagpulse import faults

    # aiokafka logs each retried produce (a leader not elected yet on a fresh topic) as a warning: noise here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.posts is not None and args.posts < 100:
        print("tagpulse faults: --posts must be at least 100", file=sys.stderr)
        return 2
    if args.outage <= 0:
        print("tagpulse faults: --outage must be positive", file=sys.stderr)
        return 2
    n_posts = args.posts or faults.SCALES[args.scale]
    external = os.environ.get("TAGPULSE_KAFKA", "").strip() or None
    scenarios = list(dict.fromkeys(args.scenario or faults.SCENARIOS))
    if external and "broker-restart" in scenarios:
        if args.scenario:
            print("tagpulse faults: broker-restart stops and starts the suite's own broker; "
                  f"unset TAGPULSE_KAFKA ({external}) to run it", file=sys.stderr)
            return 2
        scenarios.remove("broker-restart")
        say(f"TAGPULSE_KAFKA={external}: broker-restart left out (it needs the suite's own broker)")

    started = time.time()
    try:
        reports = faults.run_suite(scenarios, n_posts=n_posts, seed=args.seed, workdir=args.workdir, log=say,
                                   outage_s=args.outage, keep=args.keep, external_kafka=external)
    except Exception as exc:  # no Java, no jars, a broker that will not start: one line, no traceback
        from tagpulse.stack import StackError

        if isinstance(exc, (StackError, ValueError, OSError)):
            print(f"tagpulse faults: {exc}", file=sys.stderr)
            return 2
        raise
    print(faults.format_reports(reports))
    failed = [r.scenario for r in reports if not r.ok]
    print(f"\n{len(reports) - len(failed)} of {len(reports)} scenarios exact"
          + (f"; FAILED: {', '.join(failed)}" if failed else "")
          + f" ({n_posts:,} posts, seed {args.seed}, {time.time() - started:.0f}s)")
    if args.json:
        result = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                  "seconds": round(time.time() - started, 1), "posts": n_posts, "seed": args.seed,
                  "outage_s": args.outage, "machine": {"cpus": os.cpu_count()},
                  "scenarios": [r.as_dict() for r in reports], "ok": not failed}
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 1 if failed else 0


def say(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
