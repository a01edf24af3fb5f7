"""The tagpulse Faust app: `faust -A streams.app worker --without-web` or `tagpulse worker`.

Two agents, each a thin shell over a pure state machine:
- dedup_and_window (stage 1, tagpulse.core.stage1) on the raw posts topic;
- merge_windows (stage 2, tagpulse.core.stage2) on the partial windows topic.

Throughput comes from amortising Faust's per-message cost: producers pack
hundreds of posts into one Kafka message, agents take many messages at a time,
and each (partition, batch) costs one Kafka transaction. Faust's own windowed
tables and exactly-once mode are not used (they close windows on wall-clock
time, lose windows on rebalance and double count: faust-streaming #193, #385,
#517); see docs/streaming.md for the semantics we implement instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import msgspec
import orjson

from streams.observe import LIVE_CLOSE_S
from streams.transport import App
from streams.partition_tasks import (PartitionLost, PartitionTask, away_from_closes, pack_json_arrays,
                                     tag_partition, tune_gc as tune_worker_gc)
from tagpulse import config
from tagpulse.kafka_security import faust_credentials
from tagpulse.core.stage1 import DedupWindowState
from tagpulse.core.merge_spikes import MergeWithSpikes
from tagpulse.core.windows import IncompatibleState, pane_width, window_row_arrays

log = logging.getLogger("tagpulse.streams")

settings = config.load()
topics = settings.topics


def _load_aliases() -> None:
    """Tag aliases (`tagpulse tags alias add`) apply to every post validated from now on."""
    from tagpulse.core import hashtags

    path = settings.home / "aliases.json"
    if path.exists():
        hashtags.set_aliases(hashtags.AliasTable.load(path))


_load_aliases()

# Messages per agent batch: each message holds up to ~500 posts from our producers.
TAKE_MESSAGES = int(os.environ.get("TAGPULSE_TAKE_MESSAGES", "200"))
# A batch waits at most this long for more messages. Live, every window close waits for it
# twice (stage 1, then stage 2): 0.2 s put the close 0.3–0.5 s later than 0.1 s did in the
# latency benchmark. Under a backlog batches fill before it expires; only a trickle of
# messages pays, with up to 1/TAKE_WITHIN transactions per partition and second (0.1 s is
# also Kafka Streams' commit interval under exactly-once).
TAKE_WITHIN_S = float(os.environ.get("TAGPULSE_TAKE_WITHIN", "0.1"))

app = App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="memory://",
    # Faust's own data folder (it keeps no state of ours) under TAGPULSE_HOME, not in whatever
    # directory the worker was started from.
    datadir=os.environ.get("APP_DATADIR") or str(settings.home / "faust-data"),
    web_enabled=False,
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    broker_max_poll_records=2000,
    consumer_max_fetch_size=8 * 1024 * 1024,
    stream_buffer_maxsize=4096,
    producer_acks=-1,
    broker_credentials=faust_credentials(),
    # A worker killed with -9 holds its partitions until its session expires; Faust's
    # consumer heartbeats from its own thread, so a short session is safe and lets a
    # restarted worker (or the survivors) take over in seconds rather than a minute.
    broker_session_timeout=float(os.environ.get("TAGPULSE_SESSION_TIMEOUT", "10")),
    broker_heartbeat_interval=3.0,
)

# acks=False: Faust must never commit offsets of these topics; our transactions do.
raw_topic = app.topic(topics.raw, value_serializer="raw", key_serializer="raw", acks=False)
partial_topic = app.topic(topics.partial_windows, value_serializer="raw", key_serializer="raw", acks=False)


def _snapshot_quiet(now: float) -> bool:
    return away_from_closes(now, pane_width(settings.windows), settings.grace_s)


class LiveCloses:
    """Stage 1 of this worker waits while stage 2 closes live windows here.

    At a boundary every size's rows wait for stage 2's close steps and their transactions, while
    stage 1's batches after the boundary only fold posts into panes that close a minute later.
    Both share the worker's core (one GIL): at half the maximum rate stage 1 kept half of it, and
    with a worker's two partitions closing their 1 h windows at once each step ran at a quarter of
    its speed (0.8–0.9 s for ≈ 0.2 s of CPU). Waiting costs stage 1 nothing it is measured by: the
    records wait in Kafka, and it catches up in the seconds before the next boundary. Closes of
    windows older than LIVE_CLOSE_S (a replay, a long catch-up) are not held for (see run_stage2):
    there stage 1 and 2 overlap their I/O. A shorter catch-up is held for and runs slower, and a
    close whose transaction keeps retrying holds stage 1 as long (COMMIT_RETRY_SECONDS at most).
    """

    def __init__(self) -> None:
        self._running = 0
        self._none = asyncio.Event()
        self._none.set()

    def __enter__(self) -> "LiveCloses":
        self._running += 1
        self._none.clear()
        return self

    def __exit__(self, *exc) -> None:
        self._running -= 1
        if not self._running:
            self._none.set()

    async def wait(self) -> None:
        """Until no live close runs (a set() wakes every waiter, even if a new close starts before it runs)."""
        await self._none.wait()

    @property
    def running(self) -> bool:
        return self._running > 0


live_closes = LiveCloses()


class NotOwned(Exception):
    """The partition is not ours (any more): its records are someone else's to process."""


class Stage:
    """Owns the PartitionTasks of one stage in this worker.

    `owned` is the set of partitions the consumer group gave us, kept by our own
    rebalance callbacks. A task is only opened for an owned partition: opening a
    task initialises the partition's transactional producer, which fences every
    other producer of that partition — including our own task of the same
    partition that a revocation is still closing (an idle-timer tick or a
    buffered batch during a rebalance did exactly that, then crashed the worker).
    """

    def __init__(self, name: str, source_topic: str, changelog_topic: str, make_state):
        self.name = name
        self.source_topic = source_topic
        self.changelog_topic = changelog_topic
        self.make_state = make_state
        self.owned: set[int] = set()
        self.tasks: dict[int, PartitionTask] = {}
        self._opening: dict[int, asyncio.Future] = {}

    async def task(self, partition: int) -> PartitionTask:
        task = self.tasks.get(partition)
        if task is not None:
            return task
        if partition not in self.owned:
            raise NotOwned(f"{self.name} partition {partition}")
        opening = self._opening.get(partition)
        if opening is None:
            opening = self._opening[partition] = asyncio.ensure_future(PartitionTask.open(
                bootstrap=settings.kafka_bootstrap, app_id=settings.app_id, stage=self.name,
                source_topic=self.source_topic, partition=partition,
                changelog_topic=self.changelog_topic, state=self.make_state(partition),
                snapshot_min_bytes=settings.snapshot_min_bytes, snapshot_quiet=_snapshot_quiet))
        try:
            task = await opening
        finally:
            self._opening.pop(partition, None)
        if partition not in self.owned:  # revoked while its state was being restored
            await task.close()
            raise NotOwned(f"{self.name} partition {partition}")
        self.tasks[partition] = task
        return task

    async def drop(self, partition: int) -> None:
        # No longer owned first, so nothing reopens the partition while its batch finishes.
        self.owned.discard(partition)
        opening = self._opening.get(partition)
        if opening is not None:
            await asyncio.wait([opening])  # task() sees the revocation and closes what it opened
        task = self.tasks.pop(partition, None)
        if task is not None:
            async with task.lock:
                await task.close()

    async def drop_all(self) -> None:
        for partition in list(self.tasks):
            await self.drop(partition)


def _dead_letter_outputs(rows: list[dict], partition: int) -> list[tuple[str, int, bytes]]:
    now = time.time()
    for row in rows:
        row["at"] = now
    return [(topics.dead_letters, partition % settings.partitions, value) for value in pack_json_arrays(rows)]


stage1 = Stage(
    "dedup-window", topics.raw, topics.stage1_state,
    lambda p: DedupWindowState(p, settings.windows, settings.grace_s, settings.dedup_ttl_s),
)
stage2 = Stage(
    "merge", topics.partial_windows, topics.stage2_state,
    lambda p: MergeWithSpikes(p, upstream_partitions=settings.partitions, specs=settings.windows),
)


# Stage 1's unique posts are WirePost structs when the bulk decoder read their message.
_encode_posts = msgspec.json.Encoder().encode


def stage1_outputs(task: PartitionTask, result, wm_before, idle_before) -> list[tuple[str, int, bytes]]:
    state: DedupWindowState = task.state
    p = task.partition
    out = [(topics.unique_posts, p, v) for v in pack_json_arrays(result.unique_posts, encode=_encode_posts)]
    out += [(topics.late, p, v) for v in pack_json_arrays(result.late_rows())]
    out += _dead_letter_outputs(result.dead_letters, p)
    now = int(time.time())
    out += [(topics.completeness, p, v) for v in pack_json_arrays(result.completeness_rows(now - now % 60))]
    if result.partials or result.window_shares or result.watermark_changed or task.transactions == 0:
        n = settings.partitions
        panes: dict[int, list] = {q: [] for q in range(n)}
        for share in result.partials:
            panes[tag_partition(share[1], n)].append(share)
        windows: dict[int, list] = {q: [] for q in range(n)}
        for share in result.window_share_rows():
            windows[tag_partition(share[2], n)].append(share)
        for q in range(n):
            chunks = [(b"windows", c) for c in pack_json_arrays(windows[q])]
            chunks += [(b"rows", c) for c in pack_json_arrays(panes[q])] or [(b"rows", b"[]")]
            # Only the last chunk announces the new watermark, so the merge stage
            # cannot finalise a window before it has every chunk of this batch.
            for i, (field, chunk) in enumerate(chunks):
                last = i == len(chunks) - 1
                marker = {"src": p, "wm": state.watermark if last else wm_before,
                          "idle": state.idle if last else idle_before}
                out.append((topics.partial_windows, q,
                            orjson.dumps(marker)[:-1] + b',"' + field + b'":' + chunk + b"}"))
    return out


async def run_stage1(partition: int, records: list[tuple[int, bytes]]) -> None:
    task = await stage1.task(partition)
    async with task.lock:
        state: DedupWindowState = task.state
        wm_before, idle_before, offset_before = state.watermark, state.idle, state.offset
        result = state.process(records, topics.raw)
        if state.offset == offset_before:
            return  # every record was applied before (redelivery after a restart)
        if settings.early_ship_s > 0:
            state.ship_early(state.early_due(time.time(), settings.early_ship_s), result)
        outputs = stage1_outputs(task, result, wm_before, idle_before)
        await task.commit_state(outputs, state.offset + 1)
        task.last_activity = time.monotonic()
    metrics_stage1(partition, result, state)


async def idle_stage1(partition: int, now: float) -> None:
    task = await stage1.task(partition)
    async with task.lock:
        state: DedupWindowState = task.state
        if time.monotonic() - task.last_activity < settings.idle_timeout_s:
            return
        highwater = app.consumer.highwater(app_tp(topics.raw, partition))
        if highwater is not None and highwater > state.offset + 1:
            return  # a backlog is waiting: not idle, just busy elsewhere
        wm_before, idle_before = state.watermark, state.idle
        width = state.width
        result = state.advance_idle(now)
        crossed = (wm_before is None) != (state.watermark is None) or (
            state.watermark is not None and wm_before is not None and state.watermark // width != wm_before // width)
        if not (result.partials or result.window_shares or crossed or idle_before != state.idle
                or task.transactions == 0):
            return
        outputs = stage1_outputs(task, result, wm_before, idle_before)
        await task.commit_state(outputs, None)
    metrics_stage1(partition, result, state)


def stage2_outputs(partition: int, result) -> list[tuple[str, int, bytes]]:
    outputs = [(topics.windows, partition, v) for v in pack_json_arrays(window_row_arrays(result.rows, time.time()))]
    outputs += [(topics.late, partition, v) for v in pack_json_arrays(result.late_rows())]
    outputs += [(topics.spikes, partition, v) for v in pack_json_arrays([s.row() for s in result.spikes])]
    return outputs


async def run_stage2(partition: int, records: list[tuple[int, bytes]], arrival: "Arrival | None" = None) -> None:
    task = await stage2.task(partition)
    async with task.lock:
        state: MergeWithSpikes = task.state
        offset_before = state.offset
        began = time.perf_counter()
        result = state.process(records)
        step_s = time.perf_counter() - began
        path = None if arrival is None else (arrival.created, arrival.taken, time.time() - step_s)
        if state.offset == offset_before and not result.rows:
            return
        frontier = state.frontier()
        live = bool(result.rows) and frontier is not None and frontier > time.time() - LIVE_CLOSE_S
        with (live_closes if live else contextlib.nullcontext()):
            # A long jump of the frontier closes in steps, one transaction each, so the sink
            # inserts the first rows while the next are assembled (tagpulse.core.stage2.CLOSE_STEP).
            # The input offset goes with the last step: after a crash between steps the records
            # come again, are skipped as applied, and their process() finishes the close at once.
            while True:
                last = not state.pending()
                commit = task.begin_commit(stage2_outputs(partition, result), state.offset + 1 if last else None)
                if last:
                    await commit
                    metrics_stage2(partition, result, state, step_s, path, flush=not live)
                    break
                # The next step (the 1 h and day windows of every tag, a replay's end) runs in a thread
                # while this step's transaction goes to the broker: a boundary's 1 h step no longer
                # waits for the 1-minute commit's round trips, nor the day step for the 1 h one's. The
                # event loop keeps fetching and committing in between (the GIL switches every 5 ms),
                # so the other partitions' rows of the same boundary do not wait for this one's long
                # windows. Only this task touches the partition's state meanwhile: it holds the
                # partition's lock, and begin_commit took this step's changelog record already.
                step = asyncio.ensure_future(asyncio.to_thread(timed_close_step, state))
                try:
                    await commit
                except BaseException:
                    # The caller drops the partition (or the worker): let the thread finish with the
                    # state first, it must not change under whoever looks at it next.
                    await asyncio.wait([step])
                    raise
                metrics_stage2(partition, result, state, step_s, path, flush=not live)
                result, step_s = await step
        if state.warm_due():
            # Between boundaries, merge what the next boundary's 1 h and day windows will read
            # (their earlier blocks, the panes final by now), a bounded part per batch: that
            # close then folds its last pane and merges two maps per key. No rows, no changelog.
            await asyncio.to_thread(state.warm)
        task.last_activity = time.monotonic()


def timed_close_step(state: MergeWithSpikes):
    began = time.perf_counter()
    result = state.close_step()
    return result, time.perf_counter() - began


def app_tp(topic: str, partition: int):
    from faust.types import TP
    return TP(topic, partition)


class Arrival:
    """When a partition's records of one batch were written and taken by the agent (wall clock):
    the live timing lines split a close's wait into transport and batching, the worker's other
    partitions' steps, and its own."""

    __slots__ = ("created", "taken")

    def __init__(self, taken: float) -> None:
        self.created = 0.0  # latest record timestamp (stage 1's send, just before its commit)
        self.taken = taken  # when take_events gave the agent the batch


def _arrivals(events, taken: float) -> dict[int, Arrival]:
    arrivals: dict[int, Arrival] = {}
    for event in events:
        message = event.message
        arrival = arrivals.get(message.partition)
        if arrival is None:
            arrival = arrivals[message.partition] = Arrival(taken)
        if message.timestamp and message.timestamp > arrival.created:
            arrival.created = message.timestamp
    return arrivals


def _group(events) -> dict[int, list[tuple[int, bytes]]]:
    by_partition: dict[int, list[tuple[int, bytes]]] = {}
    for event in events:
        message = event.message
        by_partition.setdefault(message.partition, []).append((message.offset, message.value))
    for records in by_partition.values():
        records.sort(key=lambda r: r[0])
    return by_partition


async def _run_batch(runner, stage: Stage, events, arrivals: dict | None = None) -> None:
    groups = _group(events)
    # Events fetched before a rebalance may still sit in the stream buffer. Processing
    # them would open the partition here again and fence its new owner mid-batch, so
    # records of partitions we no longer own are dropped: the owner reads them itself.
    for partition in [p for p in groups if p not in stage.owned]:
        del groups[partition]
    results = await asyncio.gather(*(runner(p, recs) if arrivals is None else runner(p, recs, arrivals.get(p))
                                     for p, recs in groups.items()), return_exceptions=True)
    for partition, outcome in zip(groups, results):
        if isinstance(outcome, NotOwned):
            continue  # revoked while the batch waited: the new owner reads these records
        if isinstance(outcome, PartitionLost):
            log.warning("%s", outcome)
            still_owned = partition in stage.owned
            await stage.drop(partition)
            if still_owned:
                # Fenced while the group still gives us the partition: the records of
                # this batch are consumed but not committed. Only a restart (from the
                # committed offset) reads them again, so crash rather than skip them.
                fatal(f"{stage.name} partition {partition} fenced while assigned", outcome)
        elif isinstance(outcome, BaseException):
            fatal(f"{stage.name} partition {partition} failed", outcome)


# Exit codes: 70 = crashed, a restart resumes exactly; 78 = the stored state cannot be continued by this
# version, restarting would only fail again (tagpulse worker does not restart on it).
EXIT_CRASHED, EXIT_INCOMPATIBLE_STATE = 70, 78


def fatal(what: str, exc: BaseException) -> None:
    """Crash the worker: every effect is transactional, so a restart resumes exactly."""
    if isinstance(exc, IncompatibleState):
        log.critical("%s", exc)
        logging.shutdown()
        os._exit(EXIT_INCOMPATIBLE_STATE)
    log.critical("%s: %r — exiting so the worker restarts from committed state", what, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_CRASHED)


@app.agent(raw_topic)
async def dedup_and_window(stream):
    async for events in stream.take_events(TAKE_MESSAGES, within=TAKE_WITHIN_S):
        await live_closes.wait()
        await _run_batch(run_stage1, stage1, events)


@app.agent(partial_topic)
async def merge_windows(stream):
    async for events in stream.take_events(TAKE_MESSAGES, within=TAKE_WITHIN_S):
        await _run_batch(run_stage2, stage2, events, _arrivals(events, time.time()))


@app.timer(interval=1.0)
async def advance_idle_partitions():
    now = time.time()
    report_consumer_lag()
    for partition in sorted(stage1.owned):
        try:
            await idle_stage1(partition, now)
        except NotOwned:
            pass  # revoked meanwhile
        except PartitionLost as exc:
            log.warning("%s", exc)
            await stage1.drop(partition)
        except Exception as exc:
            fatal(f"idle advance of partition {partition} failed", exc)


def report_consumer_lag() -> None:
    from streams import observe

    if not live_closes.running:  # not on a boundary's chain of steps and commits (observe.stage2)
        observe.flush_tag_gauges()
    for stage in (stage1, stage2):
        for partition, task in list(stage.tasks.items()):
            highwater = app.consumer.highwater(app_tp(stage.source_topic, partition))
            if highwater is not None:
                observe.consumer_lag(stage.source_topic, partition, highwater - task.state.offset - 1)


@app.on_partitions_revoked.connect
async def on_revoked(app, revoked, **kwargs):
    for tp in revoked:
        if tp.topic == topics.raw:
            await stage1.drop(tp.partition)
        elif tp.topic == topics.partial_windows:
            await stage2.drop(tp.partition)


@app.on_partitions_assigned.connect
async def on_assigned(app, assigned, **kwargs):
    # The assignment replaces, not adds: drop tasks for partitions we no longer own.
    for stage in (stage1, stage2):
        stage.owned = {tp.partition for tp in assigned if tp.topic == stage.source_topic}
        for partition in [p for p in stage.tasks if p not in stage.owned]:
            await stage.drop(partition)


@app.on_worker_init.connect
def tune_gc(app, **kwargs):
    tune_worker_gc()


@app.on_worker_init.connect
def start_metrics(app, **kwargs):
    from streams import observe
    observe.start_worker_metrics(settings)


def metrics_stage1(partition, result, state) -> None:
    from streams import observe
    observe.stage1(partition, result, state)


def metrics_stage2(partition, result, state, step_s: float, path=None, flush: bool = True) -> None:
    from streams import observe
    observe.stage2(partition, result, state, step_s, path, flush)
