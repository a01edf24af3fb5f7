"""`tagpulse worker`: run the Faust stream worker, restarting it when it crashes.

The worker exits on purpose when something unexpected happens (every effect
is transactional, so a fresh process resumes exactly where the committed state
left off); this supervisor restarts it with a backoff. `--once` runs a single
worker process without supervision (what `faust -A streams.app worker` does).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

HELP = "run the stream worker (dedup + reach windows); several workers share the partitions"


def add_arguments(parser) -> None:
    parser.add_argument("--loglevel", "-l", default="warn", choices=["crit", "error", "warn", "info", "debug"],
                        help="Faust log level (default: warn)")
    parser.add_argument("--once", action="store_true", help="run one worker process, do not restart it")
    parser.add_argument("--logfile", help="append the worker's log to this file instead of stderr")


def worker_command(loglevel: str) -> list[str]:
    return [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "--without-web", "-l", loglevel]


def ensure_topics() -> None:
    from tagpulse import config
    from tagpulse.stack import ensure_topics as create

    create(config.load())


def run(args) -> int:
    try:
        ensure_topics()
    except Exception as exc:  # a clear line, not a traceback: usually the broker is down
        from tagpulse import config
        print(f"tagpulse worker: cannot reach Kafka at {config.load().kafka_bootstrap} ({exc}); "
              "run: tagpulse stack up", file=sys.stderr)
        return 1
    out = open(args.logfile, "ab") if args.logfile else None
    if args.once:
        return subprocess.call(worker_command(args.loglevel), stdout=out, stderr=out)

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backoff = 1.0
    child = None
    while True:
        started = time.monotonic()
        child = subprocess.Popen(worker_command(args.loglevel), stdout=out, stderr=out)
        code = child.wait()
        if stopping:
            return 0
        if code == 78:  # streams.app.EXIT_INCOMPATIBLE_STATE: a restart would fail the same way
            print("tagpulse worker: the stored state cannot be continued by this version (see the worker log); "
                  "not restarting", file=sys.stderr)
            return code
        if time.monotonic() - started > 60:
            backoff = 1.0
        print(f"tagpulse worker: worker pid {child.pid} exited with {code}; restarting in {backoff:.0f}s",
              file=sys.stderr)
        time.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
        if os.environ.get("TAGPULSE_WORKER_NO_RESTART"):
            return code
