"""What a live close's timing line tells (streams.app, streams.observe).

The timing lines are how a slow boundary gets explained after the fact (BENCHMARKS.md, "Latency"): each
close step's line must place the records that closed the window on the same clock as the commit, window
end + grace, so the wait splits into transport and batching, the worker's other partitions and its own step.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace


def _event(partition: int, timestamp: float | None):
    return SimpleNamespace(message=SimpleNamespace(partition=partition, timestamp=timestamp))


def _window_row(tag: str, size: int, end: int) -> tuple:
    """A row as stage 2 emits it (fields the gauges do not read are zero)."""
    from tagpulse.core.windows import WINDOW_ROW_FIELDS, window_row_tuple

    return window_row_tuple({**dict.fromkeys(WINDOW_ROW_FIELDS, 0), "tag": tag, "platform": "mastodon",
                             "window_size": size, "window_start": end - size, "window_end": end, "posts": 3,
                             "potential_reach": 100, "impressions": 120})


def test_arrivals_take_each_partitions_latest_record_and_the_batch_time():
    from streams.app import _arrivals

    arrivals = _arrivals([_event(2, 100.5), _event(3, 100.2), _event(2, 100.9), _event(2, None)], taken=101.0)
    assert set(arrivals) == {2, 3}
    assert (arrivals[2].created, arrivals[2].taken) == (100.9, 101.0)
    assert arrivals[3].created == 100.2


def test_a_live_close_line_places_records_batch_and_step_after_window_end_plus_grace(caplog, monkeypatch):
    import time

    from streams import observe

    end = 1_800_000_000
    monkeypatch.setattr(observe, "_grace", 10.0)
    monkeypatch.setattr(observe, "_tags", None)
    monkeypatch.setattr(time, "time", lambda: end + 10 + 1.25)
    result = SimpleNamespace(late={}, rows=[_window_row("einbuchfuerkai", 60, end)], spikes=())
    state = SimpleNamespace(panes={})
    path = (end + 10 + 0.30, end + 10 + 0.45, end + 10 + 0.70)
    with caplog.at_level(logging.INFO, logger="tagpulse.streams"):
        observe.stage2(3, result, state, 0.2, path)
    [line] = [r.getMessage() for r in caplog.records if "final rows" in r.getMessage()]
    assert "committed 1.25 s after window end + grace" in line
    assert line.endswith("records written +0.30, taken +0.45, step from +0.70")


def test_the_tag_gauges_wait_while_a_live_close_runs_and_export_after_it(monkeypatch):
    """The per-tag export ranks every tag on the event loop; on a boundary's chain it delayed the other
    partition's step and commit. During a live close nothing exports; the one-second timer does after it."""
    from streams import app, observe
    from tagpulse import metrics as m

    tags = m.TagGauges()
    monkeypatch.setattr(observe, "_tags", tags)
    monkeypatch.setattr(observe, "_last_export", 0.0)
    end = 1_800_000_000
    result = SimpleNamespace(late={}, rows=[_window_row("einbuchfuerkai", 60, end),
                                            _window_row("einbuchfuerkai", 3600, end)], spikes=())
    state = SimpleNamespace(panes={})
    with app.live_closes:
        observe.stage2(0, result, state, 0.1, None, flush=False)
        app.report_consumer_lag()  # the timer's tick during the close
        assert tags.changed and observe._last_export == 0.0, "exported on the boundary's chain"
    app.report_consumer_lag()
    assert not tags.changed and observe._last_export > 0
    assert m.TAG_POSTS_PER_MINUTE.labels(tag="einbuchfuerkai")._value.get() == 3
