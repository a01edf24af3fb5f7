"""The worker opens a partition's task only while the group gives it the partition.

Opening a task initialises the partition's transactional producer, which fences
every other producer of the partition — including our own task that a revocation
is still closing. Two workers on a 500k-post replay crashed that way (an idle
tick reopened a partition mid-revocation), so ownership is our own bookkeeping,
updated by the rebalance callbacks, and checked before anything is opened.
"""
from __future__ import annotations

import asyncio

import pytest


def test_a_partition_not_owned_is_never_opened():
    from streams import app

    stage = app.Stage("probe", "topic", "changelog", make_state=lambda p: pytest.fail("opened"))
    with pytest.raises(app.NotOwned):
        asyncio.run(stage.task(3))


def test_drop_revokes_ownership_before_waiting_for_the_batch():
    from streams import app

    class Busy:
        """A task whose batch still holds the lock when the revocation arrives."""

        def __init__(self):
            self.lock = asyncio.Lock()
            self.closed = False

        async def close(self):
            self.closed = True

    async def scenario():
        stage = app.Stage("probe", "topic", "changelog", make_state=None)
        stage.owned = {1}
        busy = stage.tasks[1] = Busy()
        await busy.lock.acquire()
        dropping = asyncio.ensure_future(stage.drop(1))
        await asyncio.sleep(0.01)
        # The batch is still running; the partition is already not ours, so nothing reopens it.
        assert 1 not in stage.owned and not busy.closed
        with pytest.raises(app.NotOwned):
            await stage.task(1)
        busy.lock.release()
        await dropping
        assert busy.closed

    asyncio.run(scenario())
