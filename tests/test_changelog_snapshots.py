"""Changelog snapshots and truncation (streams/partition_tasks.py).

The states' side (a snapshot restores the same state, read whole or from the snapshot on) is
in test_windows_core.py. Here: reassembling records from fragments when a truncation cuts one,
and on the real broker, the shell writing snapshots in its transactions, truncating the
changelog with DeleteRecords, and a new owner restoring from what is left.
"""
from __future__ import annotations

import orjson
import pytest

from test_windows_core import SPECS, T0, make_post



def batches(n: int, size: int = 300):
    """n raw messages of `size` canonical posts, a minute of event time each, some posts repeated."""
    for b in range(n):
        posts = [make_post(b * size + i, T0 + b * 60 + i % 60, [f"t{i % 7}", "all"], i % 50, 100 + i)
                 for i in range(size)]
        yield orjson.dumps(posts + posts[:10])  # duplicates within the message


def test_fragments_are_joined_and_a_record_cut_by_a_truncation_is_dropped():
    from streams.partition_tasks import FRAGMENT_MARK, Fragments, fragment_delta

    record = bytes(range(256)) * 40
    pieces = fragment_delta(record, max_bytes=3000)
    assert len(pieces) == 4 and all(p.startswith(FRAGMENT_MARK) for p in pieces[:-1])
    joined = Fragments()
    assert [joined.feed(10 + i, p) for i, p in enumerate(pieces)] == [None, None, None, record]
    assert joined.feed(15, b"whole") == b"whole"  # a gap after a complete record is a transaction marker
    # Two fragments read, then the changelog was truncated to a snapshot at offset 40.
    cut = Fragments()
    assert cut.feed(20, pieces[0]) is None and cut.feed(21, pieces[1]) is None
    snapshot = fragment_delta(b"S" * 5000, max_bytes=3000)
    assert [cut.feed(40 + i, p) for i, p in enumerate(snapshot)] == [None, b"S" * 5000]
    cut = Fragments()
    assert cut.feed(20, pieces[0]) is None
    assert cut.feed(40, b"small snapshot") == b"small snapshot"  # the tail of nothing: dropped


def test_a_due_snapshot_waits_for_the_quiet_part_of_a_pane_but_not_forever():
    from streams.partition_tasks import SnapshotSchedule, away_from_closes

    # 1-minute panes, 10 s grace: windows close from hh:mm:10 on; quiet from 12 s to 42 s after that.
    minute = 1_800_000_000 - 1_800_000_000 % 60
    quiet = [s for s in range(60) if away_from_closes(minute + s, 60, 10)]
    assert quiet[0] == 22 and quiet[-1] == 52
    assert not away_from_closes(minute + 10.5, 60, 10)  # a boundary's close steps
    assert away_from_closes(minute + 2, 10, 0)  # any pane width has a quiet part

    schedule = SnapshotSchedule(min_bytes=1000, quiet=lambda now: away_from_closes(now, 60, 10))
    schedule.count(b"x" * 999, snapshot=False)
    assert not schedule.due(minute + 30)  # not enough written since the last snapshot
    schedule.count(b"x", snapshot=False)
    assert schedule.due(minute + 30) and not schedule.due(minute + 11)
    schedule.count(b"x" * 1000, snapshot=False)  # twice the threshold: no more waiting
    assert schedule.due(minute + 11)
    schedule.count(b"s" * 1500, snapshot=True)  # the next one is due after as much as this one
    schedule.count(b"x" * 1499, snapshot=False)
    assert not schedule.due(minute + 30)
    assert SnapshotSchedule(min_bytes=10).due() is False
    unconditional = SnapshotSchedule(min_bytes=10)
    unconditional.count(b"x" * 10, snapshot=False)
    assert unconditional.due(minute + 11)  # no quiet predicate: due as soon as enough was written


def test_a_stage2_snapshot_is_refused_by_code_that_predates_snapshots():
    """A rollback during a rolling deploy must not add a snapshot to the state it restored so far:
    the snapshot has its own version, which the earlier code refused as unknown."""
    from tagpulse.core.stage2 import SNAPSHOT_VERSION, STATE_VERSION, MergeState

    record = orjson.loads(MergeState(0, 1, SPECS).snapshot())
    assert record["v"] == SNAPSHOT_VERSION and SNAPSHOT_VERSION not in (2, 3) and STATE_VERSION == 3


@pytest.mark.integration
def test_a_snapshot_truncates_the_changelog_and_the_next_owner_restores_from_it(namespace_settings):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streamkit import run
    from streams.partition_tasks import PartitionTask
    from tagpulse.core.stage1 import DedupWindowState

    settings = namespace_settings
    topic = settings.topics.stage1_state

    def open_task(state):
        return PartitionTask.open(bootstrap=settings.kafka_bootstrap, app_id=settings.app_id, stage="dedup-window",
                                  source_topic=settings.topics.raw, partition=0, changelog_topic=topic, state=state)

    async def log_start() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return (await consumer.beginning_offsets([tp]))[tp]
        finally:
            await consumer.stop()

    async def go():
        live = DedupWindowState(0, SPECS, 10, 7 * 86400)
        task = await open_task(live)
        task.schedule.min_bytes = 40_000  # a snapshot every few batches
        snapshots = 0
        try:
            for offset, message in enumerate(batches(12)):
                live.process([(offset, message)], "raw")
                await task.commit_state([], None)
                if task.schedule.since_snapshot == 0:
                    snapshots += 1
                    await task._truncation  # the test reads the log start right after
                    assert task.truncated_to is not None
        finally:
            await task.close()
        assert snapshots >= 2
        start = await log_start()
        assert start == task.truncated_to > 0

        restored = DedupWindowState(0, SPECS, 10, 7 * 86400)
        again = await open_task(restored)
        await again.close()
        # It read the last snapshot and the deltas after it, nothing before, and goes on with the
        # snapshot schedule where the previous owner left it (no snapshot just for having restored).
        assert again.restored_bytes == task.schedule.snapshot_bytes + task.schedule.since_snapshot
        assert (again.schedule.snapshot_bytes, again.schedule.since_snapshot) == \
               (task.schedule.snapshot_bytes, task.schedule.since_snapshot)
        assert (restored.offset, restored.watermark, restored.max_event) == \
               (live.offset, live.watermark, live.max_event)
        assert restored.panes == live.panes
        assert sorted(restored.dedup.items()) == sorted(live.dedup.items())
        # And it goes on like the live state would.
        message = list(batches(13))[12]
        a = live.process([(12, message)], "raw")
        b = restored.process([(12, message)], "raw")
        assert (a.partials, a.duplicates, len(a.unique_posts)) == (b.partials, b.duplicates, len(b.unique_posts))

    run(go())


@pytest.mark.integration
def test_a_commit_begun_holds_the_state_as_it_was_then_not_the_next_steps_changes(namespace_settings):
    """Stage 2 runs its next close step while the last step's transaction commits (streams.app):
    begin_commit must take the changelog record at once, so a crash after the first transaction
    restores the state of the first step, and the second record adds exactly the rest."""
    from streamkit import run
    from streams.partition_tasks import PartitionTask, restore_changelog
    from tagpulse.core.stage1 import DedupWindowState

    settings = namespace_settings
    topic = settings.topics.stage1_state
    messages = list(batches(2))

    def new_state():
        return DedupWindowState(0, SPECS, 10, 7 * 86400)

    async def restored():
        state = new_state()
        await restore_changelog(settings.kafka_bootstrap, topic, 0, state.apply_delta)
        return state

    async def go():
        live = new_state()
        task = await PartitionTask.open(bootstrap=settings.kafka_bootstrap, app_id=settings.app_id,
                                        stage="dedup-window", source_topic=settings.topics.raw, partition=0,
                                        changelog_topic=topic, state=live)
        try:
            live.process([(0, messages[0])], "raw")
            first = task.begin_commit([], None)
            live.process([(1, messages[1])], "raw")  # the next step, before the first transaction ran
            await first
            after_first = await restored()
            expected = new_state()
            expected.process([(0, messages[0])], "raw")
            assert after_first.offset == 0 and after_first.panes == expected.panes
            assert sorted(after_first.dedup.items()) == sorted(expected.dedup.items())

            await task.begin_commit([], None)
            after_second = await restored()
            assert after_second.offset == live.offset == 1 and after_second.panes == live.panes
            assert sorted(after_second.dedup.items()) == sorted(live.dedup.items())
        finally:
            await task.close()

    run(go())
