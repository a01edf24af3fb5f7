"""Anchor: the naive Faust pattern, one windowed Table update per (post, tag, window spec).

    BENCH_TOPIC=... BENCH_KAFKA=... BENCH_STORE=rocksdb://|memory:// BENCH_STATE=FILE \
        python -m faust -A bench.anchor_faust worker

What the Faust documentation suggests for "count per hashtag per hopping window":
one post per Kafka message, `async for post in stream`, and for each tag
`table[tag] += ...` on a `.hopping()` table. Counts posts and sums followers for
the three default window specs. The process writes how many posts it processed
to BENCH_STATE every second; the harness reads the rate from it.
"""
from __future__ import annotations

import os
import time

import faust

BOOTSTRAP = os.environ["BENCH_KAFKA"]
TOPIC = os.environ["BENCH_TOPIC"]
STORE = os.environ.get("BENCH_STORE", "memory://")
STATE = os.environ["BENCH_STATE"]

app = faust.App(f"anchor-{TOPIC}", broker=f"kafka://{BOOTSTRAP}", store=STORE, web_enabled=False,
                topic_partitions=4, topic_replication_factor=1, consumer_auto_offset_reset="earliest",
                datadir=os.environ.get("BENCH_DATADIR", "/tmp/tagpulse-bench-faust"))
posts_topic = app.topic(TOPIC, value_serializer="json")

minute = app.Table("posts_1m", default=int, partitions=4).tumbling(60, expires=3600)
hour = app.Table("posts_1h", default=int, partitions=4).hopping(3600, 300, expires=3 * 3600)
day = app.Table("posts_24h", default=int, partitions=4).hopping(86400, 3600, expires=2 * 86400)
followers_1h = app.Table("followers_1h", default=int, partitions=4).hopping(3600, 300, expires=3 * 3600)

processed = 0
started = None
last_done = 0.0


@app.agent(posts_topic)
async def count(stream):
    global processed, started, last_done
    # group_by repartitions by tag, which is what a per-tag table needs in Faust.
    async for post in stream:
        if started is None:
            started = time.time()
        for tag in post.get("hashtags") or ():
            minute[tag] += 1
            hour[tag] += 1
            day[tag] += 1
            followers_1h[tag] += post.get("author_followers", 0)
        processed += 1
        last_done = time.time()


@app.timer(interval=1.0)
async def report():
    with open(STATE + ".tmp", "w") as f:
        f.write(f"{processed} {started or 0} {last_done}\n")
    os.replace(STATE + ".tmp", STATE)
