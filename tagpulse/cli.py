"""`tagpulse` command line: one sub-command per module in tagpulse.commands.

Each command module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so
`tagpulse parse` never pays for importing Faust or chDB.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order of `tagpulse --help`.
COMMANDS: dict[str, str] = {
    "demo": "tagpulse.commands.demo",
    "stack": "tagpulse.commands.stack",
    "parse": "tagpulse.commands.parse",
    "produce": "tagpulse.commands.produce",
    "simulate": "tagpulse.commands.simulate",
    "worker": "tagpulse.commands.worker",
    "sink": "tagpulse.commands.sink",
    "sql": "tagpulse.commands.sql",
    "report": "tagpulse.commands.report",
    "tags": "tagpulse.commands.tags",
    "ingest": "tagpulse.commands.ingest",
    "backtest": "tagpulse.commands.backtest",
    "faults": "tagpulse.commands.faults",
    "hostile": "tagpulse.commands.hostile",
}


def _load(name: str):
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name]:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagpulse", description="Real-time hashtag tracking on Kafka, Faust and ClickHouse.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tagpulse parse … | head` must not end with a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
