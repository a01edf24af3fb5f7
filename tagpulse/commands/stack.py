"""`tagpulse stack up | down | status | reset`: the local Kafka broker, Prometheus and Alertmanager."""
from __future__ import annotations

import json
import sys

HELP = "start, stop or inspect the local stack (Kafka KRaft broker, Prometheus, Alertmanager)"


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "reset"],
                        help="up: start what is not running and create the topics; down: stop (data is kept); "
                             "status: what runs, where, what is missing; reset: stop and delete the home's data "
                             "(topics, state, embedded ClickHouse; needs --yes)")
    parser.add_argument("--yes", action="store_true", help="reset: yes, delete the data")
    parser.add_argument("--no-prometheus", action="store_true",
                        help="up: start Kafka only, not Prometheus/Alertmanager")
    parser.add_argument("--json", action="store_true", help="status: print JSON")


def run(args) -> int:
    from tagpulse import config, stack

    settings = config.load()

    def say(message: str) -> None:
        print(f"[stack] {message}", file=sys.stderr, flush=True)

    try:
        if args.action == "up":
            for line in stack.up(settings, prometheus=not args.no_prometheus, say=say):
                print(line)
            print(f"home: {settings.home}  (tagpulse stack status / tagpulse stack down)")
        elif args.action == "down":
            for line in stack.stop(settings):
                print(line)
        elif args.action == "reset":
            if not args.yes:
                print(f"tagpulse stack reset deletes every topic, the pipeline state and the embedded ClickHouse "
                      f"data under {settings.home}; run it again with --yes", file=sys.stderr)
                return 2
            for line in stack.reset(settings):
                print(line)
        else:
            report = stack.status(settings)
            print(json.dumps(report, indent=2) if args.json else stack.format_status(report))
    except stack.StackError as exc:
        print(f"tagpulse stack {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
