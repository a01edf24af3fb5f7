"""What one per-tag gauge export costs on one core, by the number of tags a worker holds.

    python -m bench.tag_export [--tags 5000 10000 30000 60000] [--repeat 5]

`TagGauges.export()` ranks every tag seen in the last hour and sets the top tags' gauges; the worker runs it
at most every 5 s while window rows arrive, on its event loop. Rows arrive at boundaries, so the export used
to run right after a boundary's first commit (streams.observe.stage2), on the chain the boundary's other
steps and commits wait for; it now waits until the live close is over. Prints JSON: seconds per export.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from tagpulse import metrics as m
from tagpulse.core.windows import WINDOW_ROW_FIELDS, window_row_tuple


def window_row(tag: str, size: int, end: int, rng: random.Random) -> tuple:
    """A row as stage 2 emits it (fields the gauges do not read are zero)."""
    return window_row_tuple({**dict.fromkeys(WINDOW_ROW_FIELDS, 0), "tag": tag, "platform": "mastodon",
                             "window_size": size, "window_start": end - size, "window_end": end,
                             "posts": rng.randint(1, 50), "potential_reach": rng.randint(1, 10**6),
                             "impressions": rng.randint(1, 10**6)})


def export_seconds(n_tags: int, repeat: int) -> list[float]:
    rng = random.Random(n_tags)
    gauges = m.TagGauges()
    tags = [f"tag{i}" for i in range(n_tags)]
    end = 1_800_000_000
    gauges.add_windows([window_row(t, 3600, end, rng) for t in tags])
    seconds = []
    for _ in range(repeat):
        end += 60  # a boundary's 1-minute rows for half the tags, then the export
        gauges.add_windows([window_row(t, 60, end, rng) for t in tags[: n_tags // 2]])
        began = time.perf_counter()
        gauges.export()
        seconds.append(time.perf_counter() - began)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, nargs="+", default=[5000, 10000, 30000, 60000])
    parser.add_argument("--repeat", type=int, default=5)
    ns = parser.parse_args(argv)
    m.init_spike_counters()
    result = {}
    for n in ns.tags:
        seconds = export_seconds(n, ns.repeat)
        result[str(n)] = {"median_s": round(statistics.median(seconds), 4), "max_s": round(max(seconds), 4),
                          "us_per_tag": round(statistics.median(seconds) / n * 1e6, 1)}
    print(json.dumps({"what": "TagGauges.export() on one core, by tags held", "exports": result}, indent=1))


if __name__ == "__main__":
    main()
