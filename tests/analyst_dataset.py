"""A small but realistic analyst database, written through the sink's real insert path.

Until the session fixture `demo_db` (the real pipeline on the simulated campaign) lands,
the analyst tests (test_queries, test_html_report, test_completeness) use this: the seed
campaign of tagpulse.core.scenarios (#einBuchfuerKai on facebook, twitter and instagram,
twitter impressions ≈ 14.8 M by 2015-05-22 12:50 UTC) plus two background tags, turned
into canonical posts; window rows from the plain-Python oracle (tagpulse.core.windows);
spikes from the real detector; completeness rows shaped like the worker's (repeated keys
across messages, an 'unknown' source for invalid input). Everything goes through
sinks.clickhouse.insert_messages into a chDB directory after apply_migrations, so the
queries under test run on real ClickHouse tables.

chDB holds its directory for the life of a process, so `build()` runs in a subprocess
(`python tests/analyst_dataset.py URL`) and readers open the directory afterwards.
"""
from __future__ import annotations

import subprocess
import sys
import zlib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = "einbuchfuerkai"
BACKGROUND = ("buch", "lesen")
# Invalid records carry no platform and are counted in the minute of processing (wall) time.
PROCESSING_TIME = 1_764_000_000


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _h(*parts) -> int:
    """A stable pseudo-random number per key (no RNG state, same on every run)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def canonical_posts() -> list[dict]:
    from tagpulse.core import scenarios

    scenario = scenarios.build("einbuchfuerkai", seed=1, small=True)
    posts = []
    for i, (t, tag, platform, author, is_share) in enumerate(scenario.posts):
        if tag != TAG and tag not in BACKGROUND:
            continue
        followers = int(scenario.followers.get(author, 0))
        likes = 0 if is_share else _h("likes", i) % 7
        posts.append({
            "platform": platform, "post_id": f"{platform[:2]}{i}", "author_id": author,
            "author_handle": "@" + author.rsplit(":", 1)[-1], "author_followers": followers,
            "created_at": _iso(t), "lang": "de", "text": f"#{tag} post {i}", "hashtags": [tag],
            "is_share": bool(is_share), "original_post_id": None, "likes": likes, "shares": 0,
            "replies": _h("replies", i) % 2, "quotes": 0,
        })
    return posts


def late_posts(posts: list[dict]) -> list[dict]:
    """Two twitter posts that, in this story, arrived after their 1-minute window had closed."""
    from tagpulse.core.stage1 import epoch_seconds

    return [p for p in posts if p["platform"] == "twitter" and TAG in p["hashtags"]
            and epoch_seconds(p["created_at"]) >= 1432234800][:2]


def window_rows(posts: list[dict]) -> list[dict]:
    """What the stream emits: every window of every post, except late posts in the windows they missed."""
    from tagpulse.core.stage1 import epoch_seconds
    from tagpulse.core.windows import oracle_windows

    late = {id(p) for p in late_posts(posts)}
    rows = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts if id(p) not in late), [(60, 60)])
    rows += oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), [(3600, 300), (86400, 3600)])
    for row in rows:
        row["closed_at"] = float(row["window_end"] + 15)
    return rows


def spike_rows() -> list[dict]:
    from tagpulse.core import scenarios
    from tagpulse.core.spikes import SpikeConfig

    scenario = scenarios.build("einbuchfuerkai", seed=1, small=True)
    config = SpikeConfig()
    rows = []
    for size, hop in config.windows:
        rows += [s.row() for s in scenarios.replay(scenario, config, size, hop) if s.tag in (TAG, *BACKGROUND)]
    return rows


def completeness_messages(posts: list[dict]) -> list[list[dict]]:
    """Messages of completeness rows as the worker emits them: one key may appear in several messages."""
    from tagpulse.core.stage1 import epoch_seconds

    per_minute: dict[tuple[str, int], int] = {}
    for p in posts:
        t = epoch_seconds(p["created_at"])
        key = (p["platform"], t - t % 60)
        per_minute[key] = per_minute.get(key, 0) + 1
    late_per_minute: dict[tuple[str, int], int] = {}
    for p in late_posts(posts):
        t = epoch_seconds(p["created_at"])
        late_per_minute[(p["platform"], t - t % 60)] = late_per_minute.get((p["platform"], t - t % 60), 0) + 1
    first, second = [], []
    for (platform, start), n in sorted(per_minute.items()):
        # 0–7 % of the unique posts, plus now and then a redelivered record in a quiet minute
        duplicates = n * (_h("dup", platform, start) % 8) // 100 + (_h("dup1", platform, start) % 10 == 0)
        late = late_per_minute.get((platform, start), 0)   # late posts are unique posts: already in n
        row = {"platform": platform, "window_start": start, "received": n + duplicates,
               "duplicates": duplicates, "late": late, "invalid": 0}
        if _h("split", platform, start) % 3 == 0 and row["received"] > 1:
            # The same key in two worker batches: the rows must be summed.
            part = {k: (v // 2 if isinstance(v, int) and k != "window_start" else v) for k, v in row.items()}
            rest = {k: (row[k] - part[k] if isinstance(row[k], int) and k != "window_start" else row[k])
                    for k in row}
            first.append(part)
            second.append(rest)
        else:
            first.append(row)
    unknown = [{"platform": "unknown", "window_start": PROCESSING_TIME + 60 * k, "received": 0, "duplicates": 0,
                "late": 0, "invalid": 3 + k} for k in range(3)]
    size = 500
    return [first[i:i + size] for i in range(0, len(first), size)] + [second, unknown]


def late_rows(posts: list[dict]) -> list[dict]:
    """One row per late post and window, as separate worker batches would report them."""
    from tagpulse.core.stage1 import epoch_seconds

    rows = []
    for p in late_posts(posts):
        t = epoch_seconds(p["created_at"])
        rows.append({"tag": TAG, "platform": p["platform"], "window_size": 60, "window_start": t - t % 60,
                     "events": 1})
    return rows


def dead_letter_rows() -> list[dict]:
    return [{"stage": "worker", "reason": "not JSON", "raw": "{oops", "raw_bytes": 5, "source": "t/0/17",
             "at": float(PROCESSING_TIME + 5)},
            {"stage": "produce", "reason": "missing field author_id", "raw": "{}", "raw_bytes": 2,
             "source": "replay.jsonl:3", "at": float(PROCESSING_TIME + 7)}]


def build(url: str) -> dict[str, int]:
    """Write the whole dataset into the (empty) database at `url`; returns rows per table."""
    import orjson

    from sinks import clickhouse as ch

    client = ch.connect(url)
    ch.apply_migrations(client)
    posts = canonical_posts()
    tables = {
        "posts": [posts[i:i + 2000] for i in range(0, len(posts), 2000)],
        "reach_windows": (lambda rows: [rows[i:i + 5000] for i in range(0, len(rows), 5000)])(window_rows(posts)),
        "spikes": [spike_rows()],
        "late_events": [late_rows(posts)],
        "dead_letters": [dead_letter_rows()],
        "completeness": completeness_messages(posts),
    }
    counts = {}
    for table, messages in tables.items():
        ch.insert_messages(client, url, table, [(0, offset, orjson.dumps(rows))
                                                for offset, rows in enumerate(messages) if rows])
        counts[table] = sum(len(m) for m in messages)
    return counts


_BUILT: dict[str, str] = {}


def analyst_db_url(tmp_path_factory) -> str:
    """The chDB URL of the dataset, built once per test process."""
    if "url" not in _BUILT:
        home = tmp_path_factory.mktemp("analyst")
        url = f"chdb://{home / 'clickhouse'}"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), url], cwd=REPO, check=True, timeout=600)
        _BUILT["url"] = url
    return _BUILT["url"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(build(sys.argv[1]))
