"""Anchor: Quix Streams doing the same windowed aggregation (bench-only dependency).

    BENCH_TOPIC=... BENCH_KAFKA=... BENCH_STATE=FILE BENCH_STATE_DIR=DIR python -m bench.anchor_quix

One post per Kafka message; explode the post into (tag, followers) rows, group by
tag (Quix repartitions through a topic), and for each of the three default specs
count posts and sum followers in an event-time window with 10 s grace, emitting
final results. Writes its progress to BENCH_STATE every second.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum

BOOTSTRAP = os.environ["BENCH_KAFKA"]
TOPIC = os.environ["BENCH_TOPIC"]
STATE = os.environ["BENCH_STATE"]
SPECS = [(60, 60), (3600, 300), (86400, 3600)]

processed = 0
started = 0.0
last_done = 0.0


def on_processed(topic: str, partition: int, offset: int) -> None:
    global processed, started, last_done
    # The windows are updated from the repartition topic, so the job is done when that
    # topic's last message is processed; posts are counted on the source topic.
    last_done = time.time()
    if topic != TOPIC:
        return
    processed += 1
    if not started:
        started = last_done


def reporter() -> None:
    # A thread, so the file is current even when the stream finished between two reports.
    while True:
        time.sleep(0.5)
        if processed:
            with open(STATE + ".tmp", "w") as f:
                f.write(f"{processed} {started} {last_done}\n")
            os.replace(STATE + ".tmp", STATE)


def event_ms(value, key, timestamp, headers) -> int:
    return int(datetime.fromisoformat(value["created_at"].replace("Z", "+00:00")).timestamp() * 1000)


def main() -> None:
    app = Application(broker_address=BOOTSTRAP, consumer_group=f"quix-{TOPIC}", auto_offset_reset="earliest",
                      state_dir=os.environ.get("BENCH_STATE_DIR", "/tmp/tagpulse-bench-quix"),
                      on_message_processed=on_processed, loglevel="WARNING")
    topic = app.topic(TOPIC, value_deserializer="json", timestamp_extractor=event_ms)
    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda post: [{"tag": t, "followers": post.get("author_followers", 0)}
                                  for t in post.get("hashtags") or ()], expand=True)
    sdf = sdf.group_by("tag")
    for size, hop in SPECS:
        if size == hop:
            window = sdf.tumbling_window(size * 1000, grace_ms=10_000)
        else:
            window = sdf.hopping_window(size * 1000, hop * 1000, grace_ms=10_000)
        window.agg(posts=Count(), followers=Sum("followers")).final()
    threading.Thread(target=reporter, daemon=True).start()
    app.run()


if __name__ == "__main__":
    main()
