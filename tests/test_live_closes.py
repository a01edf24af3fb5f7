"""Stage 1 waits while stage 2 closes live windows in the same worker (streams.app.LiveCloses).

At a boundary the close steps of every size and their transactions decide when the rows arrive; stage 1's
batches after the boundary only fold posts into panes that close a minute later, so they wait. These tests
hold the gate's promises: a batch waits for every running close, and is never starved by closes that
follow each other.
"""
from __future__ import annotations

import asyncio


def test_a_stage1_batch_waits_until_every_running_close_ended():
    from streams.app import LiveCloses

    async def scenario():
        closes = LiveCloses()
        first, second = closes.__enter__(), closes.__enter__()  # two partitions close at once
        batch = asyncio.ensure_future(closes.wait())
        await asyncio.sleep(0.01)
        first.__exit__(None, None, None)
        await asyncio.sleep(0.01)
        assert not batch.done(), "ran while the other partition still closed"
        second.__exit__(None, None, None)
        await asyncio.wait_for(batch, 1)
        await asyncio.wait_for(closes.wait(), 1)  # nothing running: no wait at all

    asyncio.run(scenario())


def test_a_waiting_batch_runs_when_a_close_ends_even_if_the_next_one_starts_at_once():
    from streams.app import LiveCloses

    async def scenario():
        closes = LiveCloses()
        with closes:
            batch = asyncio.ensure_future(closes.wait())
            await asyncio.sleep(0.01)
        with closes:  # the next close starts before the batch got to run
            await asyncio.wait_for(batch, 1)

    asyncio.run(scenario())


def test_a_close_that_fails_does_not_hold_stage1_forever():
    from streams.app import LiveCloses

    async def scenario():
        closes = LiveCloses()
        try:
            with closes:
                raise RuntimeError("commit failed")
        except RuntimeError:
            pass
        await asyncio.wait_for(closes.wait(), 1)

    asyncio.run(scenario())
