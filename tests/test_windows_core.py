"""Pure window / dedup / reach logic, without Kafka: stage 1 + stage 2 against the oracle."""
from __future__ import annotations

import random

import orjson
import pytest

from streams.partition_tasks import pack_json_arrays, tag_partition
from tagpulse.core.dedup import DedupIndex, key_hash
from tagpulse.core.stage1 import DedupWindowState, RecordError, epoch_seconds
from tagpulse.core.stage2 import MergeState
from tagpulse.core.windows import Reach, oracle_windows, pane_width, row_key, window_row_dict, window_starts
from windowkit import add_random_post, merged_from_panes

SPECS = ((60, 60), (3600, 300), (86400, 3600))
T0 = 1432080000  # 2015-05-20T00:00:00Z


def iso(t: int) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_post(i: int, t: int, tags, author: int, followers: int, platform="twitter", share=False) -> dict:
    return {
        "platform": platform, "post_id": f"p{i}", "author_id": f"a{author}", "author_handle": f"h{author}",
        "author_followers": followers, "created_at": iso(t), "lang": "de", "text": "x", "hashtags": list(tags),
        "is_share": share, "original_post_id": "p0" if share else None,
        "likes": 0 if share else i % 3, "shares": 0, "replies": 0 if share else i % 2, "quotes": 0,
    }


def passthrough(item):
    if not isinstance(item, dict) or "post_id" not in item:
        raise RecordError("not_a_post")
    return [item]


def test_window_starts_cover_exactly_the_windows_containing_t():
    for t in [0, 59, 60, 299, 300, 3599, 86399, T0 + 123, -1, -61]:
        for size, hop in SPECS:
            starts = list(window_starts(t, size, hop))
            assert len(starts) == size // hop
            assert all(s % hop == 0 and s <= t < s + size for s in starts)


def test_window_specs_take_one_hop_per_size():
    from tagpulse.config import parse_window_specs

    assert parse_window_specs("24h/1h, 1m,1h/5m,1m") == SPECS
    with pytest.raises(SystemExit, match="one hop per window size"):
        parse_window_specs("1h/5m,1h/10m")


def test_pane_width_is_gcd():
    assert pane_width(SPECS) == 60
    assert pane_width(((90, 30), (120, 120))) == 30


def test_reach_counts_authors_once_with_their_largest_follower_count():
    r = Reach()
    r.add_post("a", 10, False, 1)
    r.add_post("a", 30, True, 0)
    r.add_post("b", 5, False, 2)
    row = window_row_dict(r.row("t", "x", 60, 0))
    assert row["posts"] == 3 and row["shares"] == 1 and row["originals"] == 2
    assert row["unique_authors"] == 2 and row["potential_reach"] == 35
    assert row["impressions"] == 45 and row["engagement"] == 3


def test_dedup_index_and_expiry():
    d = DedupIndex()
    k = key_hash("twitter", "1")
    assert d.add(k, 100) and not d.add(k, 200)
    assert key_hash("twitter", "1") == k != key_hash("mastodon", "1")
    assert d.expire(101) == 1 and len(d) == 0


def test_bulk_key_hashes_equal_key_hash():
    from tagpulse.core.dedup import key_hashes
    pairs = [("twitter", "1"), ("mastodon", "109382"), ("bluesky", "at://did:plc:x/app.bsky.feed.post/3k"),
             ("twitter", "ü\ud800")]  # a lone surrogate hashes as it always did
    hashes = key_hashes([p for p, _ in pairs], [i for _, i in pairs])
    assert hashes.tolist() == [key_hash(p, i) for p, i in pairs]
    assert key_hashes([], []).tolist() == []


def synthetic_stream(n=3000, seed=1, dup_rate=0.05, disorder=8, max_gap=90):
    rng = random.Random(seed)
    tags = ["einbuchfuerkai", "buchtipp", "lesen", "kafka", "montag"]
    posts = []
    t = T0
    for i in range(n):
        t += rng.randint(0, max_gap)
        k = rng.randint(1, 3)
        chosen = rng.sample(tags, k)
        author = rng.randint(1, 400)
        posts.append(make_post(i, t, chosen, author, rng.randint(0, 50000) + author,
                               platform=rng.choice(["twitter", "facebook"]), share=rng.random() < 0.3))
    arrivals = [(epoch_seconds(p["created_at"]) + rng.uniform(0, disorder), p) for p in posts]
    arrivals += [(epoch_seconds(p["created_at"]) + rng.uniform(0, disorder), p)
                 for p in posts if rng.random() < dup_rate]
    arrivals.sort(key=lambda a: a[0])
    return posts, [p for _, p in arrivals]


def send(p, res, state, partial_topic, partitions):
    """Stage 1's message to each stage-2 partition, as the worker writes it (in one message)."""
    for q in range(partitions):
        panes = [s for s in res.partials if tag_partition(s[1], partitions) == q]
        windows = [s for s in res.window_share_rows() if tag_partition(s[2], partitions) == q]
        partial_topic[q].append(orjson.dumps({"src": p, "wm": state.watermark, "idle": state.idle,
                                              "rows": panes, "windows": windows}))


def run_pipeline(arrivals, partitions=3, batch=37, restart_every=None, snapshot_every=None, early_seed=None):
    """Route like the producer, run stage 1 per partition, then stage 2, with optional restarts from the changelog.

    With snapshot_every, every so many changelog records is a snapshot; restarts then alternate between
    the whole changelog and the part from the last snapshot on (what is left after a truncation).
    With early_seed, stage 1 ships random open panes early after batches (DedupWindowState.ship_early),
    some of them several times.
    """
    early = random.Random(early_seed) if early_seed is not None else None
    snapshots: dict[tuple, int] = {}  # (stage, partition) -> index of the latest snapshot in its log

    def changelog(stage, partition, state, log):
        if snapshot_every and len(log) % snapshot_every == snapshot_every - 1:
            snapshots[(stage, partition)] = len(log)
            log.append(state.snapshot())
        else:
            log.append(state.delta())

    def restore(stage, partition, fresh, log, restarts=[0]):
        restarts[0] += 1
        first = snapshots.get((stage, partition), 0) if restarts[0] % 2 else 0
        for d in log[first:]:
            fresh.apply_delta(d)
        return fresh

    by_partition = {p: [] for p in range(partitions)}
    from aiokafka.partitioner import murmur2
    for post in arrivals:
        key = f"{post['platform']}:{post['post_id']}".encode()
        by_partition[(murmur2(key) & 0x7FFFFFFF) % partitions].append(post)
    s1 = {p: DedupWindowState(p, SPECS, 10, 7 * 86400, decode=passthrough) for p in range(partitions)}
    logs1 = {p: [] for p in range(partitions)}
    s2 = {q: MergeState(q, partitions, SPECS) for q in range(partitions)}
    logs2 = {q: [] for q in range(partitions)}
    partial_topic = {q: [] for q in range(partitions)}
    rows, late, uniques = [], [], []

    def stage1_batch(p, records):
        state = s1[p]
        wm_before = state.watermark
        res = state.process(records)
        if early is not None:
            state.ship_early([ps for ps in state.panes if early.random() < 0.4], res)
        uniques.extend(res.unique_post_dicts())
        late.extend(res.late_rows())
        send(p, res, state, partial_topic, partitions)
        changelog(1, p, state, logs1[p])
        del wm_before

    offsets = {p: 0 for p in range(partitions)}
    n_batches = 0
    for p in range(partitions):
        msgs = [orjson.dumps(chunk) for chunk in [by_partition[p][i:i + 5] for i in range(0, len(by_partition[p]), 5)]]
        for i in range(0, len(msgs), batch):
            records = [(offsets[p] + j, m) for j, m in enumerate(msgs[i:i + batch])]
            offsets[p] += len(records)
            stage1_batch(p, records)
            n_batches += 1
            if restart_every and n_batches % restart_every == 0:
                fresh = restore(1, p, DedupWindowState(p, SPECS, 10, 7 * 86400, decode=passthrough), logs1[p])
                assert fresh.offset == s1[p].offset and fresh.watermark == s1[p].watermark
                assert len(fresh.dedup) == len(s1[p].dedup)
                s1[p] = fresh
    for p in range(partitions):
        res = s1[p].advance_idle(2_000_000_000)
        send(p, res, s1[p], partial_topic, partitions)
    steps = 0
    for q in range(partitions):
        records = list(enumerate(partial_topic[q]))
        for i in range(0, len(records), 7):
            res = s2[q].process(records[i:i + 7])
            while True:
                # Like the shell: one transaction (here: one delta) per close step.
                rows.extend(res.row_dicts())
                late.extend(res.late_rows())
                changelog(2, q, s2[q], logs2[q])
                steps += 1
                if restart_every and steps % 3 == 2:
                    fresh = restore(2, q, MergeState(q, partitions, SPECS), logs2[q])
                    assert fresh.panes.keys() == s2[q].panes.keys()
                    assert fresh.closed == s2[q].closed
                    s2[q] = fresh
                if not s2[q].pending():
                    break
                res = s2[q].close_step()
    return sorted(rows, key=row_key), late, uniques


def process_all(merge, records):
    """process() and every close step after it, in one result (no transactions to split them into)."""
    res = merge.process(records)
    while merge.pending():
        step = merge.close_step()
        res.rows += step.rows
        res.spikes += step.spikes
        for k, n in step.late.items():
            res.late[k] = res.late.get(k, 0) + n
    return res


def test_streaming_equals_oracle_with_duplicates_and_disorder():
    posts, arrivals = synthetic_stream()
    rows, late, uniques = run_pipeline(arrivals)
    assert late == []
    assert len(uniques) == len(posts)
    expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    assert len(rows) == len(expected)
    assert rows == expected


def test_streaming_equals_oracle_across_restarts_from_changelog():
    posts, arrivals = synthetic_stream(seed=7)
    rows, late, _ = run_pipeline(arrivals, restart_every=2)
    expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    assert rows == expected and late == []


def test_streaming_equals_oracle_across_restarts_from_snapshots_and_truncated_changelogs():
    posts, arrivals = synthetic_stream(seed=11)
    rows, late, _ = run_pipeline(arrivals, restart_every=2, snapshot_every=3)
    expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    assert rows == expected and late == []


@pytest.mark.parametrize("snapshot_every", [None, 3])
def test_late_window_shares_give_the_same_rows_and_late_counts_across_restarts(snapshot_every):
    # Posts up to 20 minutes behind their time: many are late for their minute and travel as window
    # shares for the 1 h and day windows still open, across changelog records and restores.
    _posts, arrivals = synthetic_stream(seed=17, disorder=1200, max_gap=20)
    straight = run_pipeline(arrivals, batch=3)
    restarted = run_pipeline(arrivals, batch=3, restart_every=2, snapshot_every=snapshot_every)
    rows, late, _ = straight
    assert sum(n["events"] for n in late) > 100  # the case is there
    assert restarted[0] == rows
    assert sorted(map(orjson.dumps, restarted[1])) == sorted(map(orjson.dumps, late))


@pytest.mark.parametrize("snapshot_every", [None, 3])
def test_panes_shipped_early_give_the_same_rows_across_restarts(snapshot_every):
    # Posts seconds apart and small batches: a pane spans several batches and changelog records, so
    # restores meet panes emptied by an early shipment after earlier records folded posts into them.
    posts, arrivals = synthetic_stream(seed=13, max_gap=4)
    rows, late, _ = run_pipeline(arrivals, batch=2, restart_every=2, snapshot_every=snapshot_every, early_seed=5)
    expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    assert rows == expected and late == []


def test_a_pane_goes_early_once_shortly_before_its_end_and_never_in_a_replay():
    state = DedupWindowState(0, SPECS, 10, 7 * 86400, decode=passthrough)
    t = T0 - T0 % 60
    state.process([(0, orjson.dumps([make_post(1, t + 5, ["a"], 1, 10), make_post(2, t + 30, ["b"], 2, 20)]))])
    assert state.early_due(t + 50, lead=5) == []  # more than 5 s before the pane's end
    assert state.early_due(t + 56, lead=5) == [t]
    assert state.early_due(t + 75, lead=5) == []  # past end + grace: the close ships it (a replay)
    res = state.process([(1, orjson.dumps([make_post(3, t + 40, ["a"], 3, 30)]))])
    state.ship_early(state.early_due(t + 56, lead=5), res)
    assert sorted((p[1], p[3]) for p in res.partials) == [("a", 2), ("b", 1)] and res.early == {t}
    assert state.panes[t] == {} and state.early_due(t + 57, lead=5) == []  # once
    delta = state.delta()
    assert delta[:4] == b"TPD4"  # a tagpulse from before refuses it
    state.process([(2, orjson.dumps([make_post(4, t + 58, ["a"], 4, 40)]))])
    assert state.delta()[:4] == b"TPD3"
    closing = state.process([(3, orjson.dumps([make_post(5, t + 80, ["c"], 5, 50)]))])
    assert [(p[0], p[1], p[3]) for p in closing.partials] == [(t, "a", 1)] and not closing.early


def test_late_post_is_counted_and_not_folded_into_closed_windows():
    state = DedupWindowState(0, SPECS, 10, 7 * 86400, decode=passthrough)
    merge = MergeState(0, 1, SPECS)
    on_time = make_post(1, T0 + 30, ["a"], 1, 100)
    far_ahead = make_post(2, T0 + 200, ["a"], 2, 100)
    late_post = make_post(3, T0 + 40, ["a"], 3, 100)

    def to_merge(offset, res):
        message = {"src": 0, "wm": state.watermark, "idle": state.idle, "rows": res.partials,
                   "windows": res.window_share_rows()}
        return process_all(merge, [(offset, orjson.dumps(message))])

    res = state.process([(0, orjson.dumps([on_time, far_ahead]))])
    # The pane [T0, T0+60) was shipped when the watermark reached T0+190.
    assert [p[:4] for p in res.partials] == [[T0, "a", "twitter", 1]]
    out = to_merge(0, res)
    assert [(r["window_size"], r["window_start"], r["posts"]) for r in out.row_dicts()] == [(60, T0, 1)]
    res = state.process([(1, orjson.dumps(late_post))])
    # Late for the 1-minute window that closed at this partition; a share of the 36 open ones.
    assert res.unique_posts == [late_post] and res.partials == []
    assert res.late == {("a", "twitter", 60, T0): 1} and len(res.window_shares) == 36
    out = to_merge(1, res)
    assert out.rows == [] and out.late == {}
    out = to_merge(2, state.advance_idle(2_000_000_000))
    hours = {r["window_start"]: r["posts"] for r in out.row_dicts() if r["window_size"] == 3600}
    assert len(hours) == 12 and set(hours.values()) == {3}
    days = [r for r in out.row_dicts() if r["window_size"] == 86400]
    assert len(days) == 24 and {r["posts"] for r in days} == {3} and {r["unique_authors"] for r in days} == {3}


def test_late_share_alone_in_its_window_makes_a_row_in_window_order():
    merge = MergeState(0, 1, SPECS)
    share = [3600, T0, "solo", "twitter", 1, 0, 5, 0, {"x": 5}]
    pane = [T0 + 3600, "solo", "twitter", 1, 0, 7, 0, {"y": 7}]
    out = process_all(merge, [(0, orjson.dumps({"src": 0, "wm": T0 + 2 * 86400, "idle": False,
                                                "rows": [pane], "windows": [share]}))])
    hours = [(r["window_start"], r["posts"]) for r in out.row_dicts() if r["window_size"] == 3600]
    assert hours == sorted(hours) and (T0, 1) in hours and len(hours) == 13


def test_pane_shares_of_final_windows_are_late_and_dropped_once_every_window_is_final():
    merge = MergeState(0, 1, SPECS)
    share = [T0, "a", "twitter", 2, 0, 10, 0, {"x": 5}]
    process_all(merge, [(0, orjson.dumps({"src": 0, "wm": T0 + 2 * 86400, "idle": False, "rows": []}))])
    out = process_all(merge, [(1, orjson.dumps({"src": 0, "wm": T0 + 2 * 86400, "idle": False, "rows": [share]}))])
    assert out.rows == [] and merge.panes == {}
    assert sum(out.late.values()) == 2 * (1 + 12 + 24) and len(out.late) == 37


def test_a_long_jump_of_the_frontier_closes_in_steps_with_the_rows_of_one_close():
    """A replay's end makes days of windows final at once: closed CLOSE_STEP of window ends per step."""
    panes = [[T0 + 600 * k, tag, "twitter", 1 + k % 3, 0, 10, 1, {f"u{k % 7}": 10 + k}]
             for k in range(30) for tag in ("a", "b")]
    first = orjson.dumps({"src": 0, "wm": T0 + 20 * 60, "idle": False, "rows": panes})
    jump = orjson.dumps({"src": 0, "wm": T0 + 3 * 86400, "idle": True, "rows": []})

    whole = MergeState(0, 1, SPECS, close_step_s=None)
    expected = process_all(whole, [(0, first)]).rows + process_all(whole, [(1, jump)]).rows

    stepped = MergeState(0, 1, SPECS, close_step_s=3600)
    rows = process_all(stepped, [(0, first)]).rows
    log = [stepped.delta()]
    out, bounds = stepped.process([(1, jump)]), []
    while True:
        bounds.append(stepped.final_until)
        rows += out.rows
        log.append(stepped.delta())
        assert all(r["window_end"] <= stepped.closed[r["window_size"]] for r in out.row_dicts())
        if not stepped.pending():
            break
        out = stepped.close_step()
    assert sorted(rows) == sorted(expected)
    rows = [window_row_dict(r) for r in rows]
    for key in {(r["tag"], r["window_size"]) for r in rows}:  # window order per key (the spike detector)
        starts = [r["window_start"] for r in rows if (r["tag"], r["window_size"]) == key]
        assert starts == sorted(starts)
    assert len(bounds) > 20 and all(0 <= b - a <= 3600 for a, b in zip(bounds, bounds[1:-1]))
    assert bounds[-1] == T0 + 3 * 86400  # past the last window holding a pane: straight to the frontier

    # A restart between two steps: the close is finished before the next record is applied.
    restored = MergeState(0, 1, SPECS, close_step_s=3600)
    for d in log[:4]:
        restored.apply_delta(d)
    assert restored.pending()
    straggler = orjson.dumps({"src": 0, "wm": T0 + 3 * 86400, "idle": True,
                              "rows": [[T0, "a", "twitter", 5, 0, 1, 0, {"z": 1}]]})
    res = restored.process([(2, straggler)])
    done = len(rows) - len(res.rows)
    assert rows[done:] == res.row_dicts() and not restored.pending()
    assert sum(res.late.values()) == 5 * (1 + 12 + 24)  # late for every window of its pane, as without the crash


def _boundary_messages(end: int) -> list[bytes]:
    """Panes of two tags over the hour before `end`, then the watermark that passes `end`."""
    panes = [[end - 3600 + 60 * k, tag, "twitter", 1, 0, 10, 0, {f"u{k % 5}": 10 + k}]
             for k in range(60) for tag in ("a", "b")]
    return [orjson.dumps({"src": 0, "wm": end - 1, "idle": False, "rows": panes}),
            orjson.dumps({"src": 0, "wm": end + 30, "idle": False, "rows": []})]


def test_a_boundary_emits_its_minute_rows_before_assembling_the_hour_windows():
    """The 1-minute rows of a boundary that also closes 1 h windows come in a step of their own."""
    end = T0 + 7200  # a whole hour: the 1 m, 1 h and 24 h windows all have ends here
    first, boundary = _boundary_messages(end)
    merge = MergeState(0, 1, SPECS)
    process_all(merge, [(0, first)])
    merge.delta()
    steps = [merge.process([(1, boundary)])]
    deltas = [merge.delta()]
    while merge.pending():
        steps.append(merge.close_step())
        deltas.append(merge.delta())
    assert [{r["window_size"] for r in s.row_dicts()} for s in steps] == [{60}, {3600}, {86400}]
    assert [r["window_end"] for r in steps[0].row_dicts()] == [end, end]
    assert len(steps[1].rows) == 2 and len(steps[2].rows) == 2 and merge.final_until == end + 30

    # A plain minute needs one step: the longer sizes move along without a step of their own.
    minute = orjson.dumps({"src": 0, "wm": end + 90, "idle": False,
                           "rows": [[end, "a", "twitter", 1, 0, 5, 0, {"v": 5}]]})
    out = merge.process([(2, minute)])
    assert [r["window_size"] for r in out.row_dicts()] == [60] and not merge.pending()
    assert merge.closed == {60: end + 90, 3600: end + 90, 86400: end + 90}

    # A restart after the minute step: the hour and day windows come next, and a record arriving
    # meanwhile meets the close finished first, as it would have without the restart.
    restored = MergeState(0, 1, SPECS)
    for d in _deltas_until_first_step(first, boundary):
        restored.apply_delta(d)
    assert restored.closed == {60: end + 30, 3600: end - 1, 86400: end - 1} and restored.pending()
    straggler = orjson.dumps({"src": 0, "wm": end + 30, "idle": False,
                              "rows": [[end - 60, "a", "twitter", 4, 0, 1, 0, {"z": 1}]]})
    res = restored.process([(2, straggler)])
    assert sorted(res.rows) == sorted(steps[1].rows + steps[2].rows)
    # Late for the windows ending at the boundary; those ending later are open and hold it.
    assert res.late == {("a", "twitter", size, end - size): 4 for size in (60, 3600, 86400)}


def _deltas_until_first_step(first: bytes, boundary: bytes) -> list[bytes]:
    merge = MergeState(0, 1, SPECS)
    process_all(merge, [(0, first)])
    deltas = [merge.delta()]
    merge.process([(1, boundary)])
    return deltas + [merge.delta()]


def test_bad_records_become_dead_letters_and_do_not_stop_the_batch():
    state = DedupWindowState(0, SPECS, 10, 7 * 86400, decode=passthrough)
    good = make_post(1, T0, ["a"], 1, 5)
    res = state.process([(0, b"{truncated"), (1, orjson.dumps([{"x": 1}, good])), (2, b"\xff\xfe")])
    assert [d["reason"] for d in res.dead_letters] == ["invalid_json", "not_a_post", "invalid_utf8"]
    assert res.unique_posts == [good]


def test_merge_waits_for_every_upstream_partition_and_ignores_idle_empty_ones():
    m = MergeState(0, upstream_partitions=3, specs=((60, 60),))
    partial = [T0, "a", "twitter", 2, 0, 10, 0, {"x": 5}]
    res = m.process([(0, orjson.dumps({"src": 0, "wm": T0 + 100, "idle": False, "rows": [partial]}))])
    assert res.rows == []
    res = m.process([(1, orjson.dumps({"src": 1, "wm": None, "idle": True, "rows": []}))])
    assert res.rows == []  # partition 2 has not reported yet
    partial2 = [T0, "a", "twitter", 1, 1, 7, 0, {"x": 9, "y": 1}]
    res = m.process([(2, orjson.dumps({"src": 2, "wm": T0 + 60, "idle": False, "rows": [partial2]}))])
    assert len(res.rows) == 1
    row = res.row_dicts()[0]
    assert row["posts"] == 3 and row["unique_authors"] == 2 and row["potential_reach"] == 10
    # A straggler share for a final window is late, never a second row.
    res = m.process([(3, orjson.dumps({"src": 1, "wm": T0 + 70, "idle": False, "rows": [partial]}))])
    assert res.rows == [] and res.late == {("a", "twitter", 60, T0): 2}


def test_pack_json_arrays_respects_the_size_limit():
    rows = [{"i": i, "pad": "x" * 100} for i in range(1000)]
    msgs = pack_json_arrays(rows, max_bytes=10_000)
    assert all(len(m) <= 10_000 for m in msgs)
    assert [r for m in msgs for r in orjson.loads(m)] == rows


@pytest.mark.parametrize("seed", [2, 3])
def test_oracle_property_random_specs(seed):
    posts, arrivals = synthetic_stream(n=800, seed=seed)
    rows, late, _ = run_pipeline(arrivals, partitions=2, batch=5)
    expected = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), SPECS)
    assert rows == expected


def test_merge_with_spikes_restores_detector_state_from_its_delta():
    from tagpulse.core.merge_spikes import MergeWithSpikes

    specs = ((3600, 3600),)

    def feed(state, offset, start, posts, authors, tag="viral"):
        partial = [start, tag, "twitter", posts, 0, posts * 10, 0, {f"a{i}": 10 for i in range(authors)}]
        msg = {"src": 0, "wm": start + 3600, "idle": False, "rows": [partial]}
        return state.process([(offset, orjson.dumps(msg))])

    live = MergeWithSpikes(0, upstream_partitions=1, specs=specs)
    log = []
    spikes = []
    for i in range(400):
        posts = 30 if i < 380 else 3000
        res = feed(live, i, T0 + i * 3600, posts, min(posts, 25) if i < 380 else 900)
        spikes += res.spikes
        log.append(live.delta())
    assert spikes, "a 100x burst after a long flat baseline must fire"
    restored = MergeWithSpikes(0, upstream_partitions=1, specs=specs)
    for d in log:
        restored.apply_delta(d)
    assert restored.detector.to_dict() == live.detector.to_dict()
    assert restored.offset == live.offset and restored.final_until == live.final_until
    # A snapshot in the log, read whole or from the snapshot on, gives the same state.
    log.append(live.snapshot())
    for i in range(400, 410):  # another tag: the deltas after the snapshot do not carry "viral"
        feed(live, i, T0 + i * 3600, 30, 25, tag="calm")
        log.append(live.delta())
    for first in (0, 400):
        again = MergeWithSpikes(0, upstream_partitions=1, specs=specs)
        for d in log[first:]:
            again.apply_delta(d)
        assert again.detector.to_dict() == live.detector.to_dict()
        assert again.panes == live.panes and again.closed == live.closed and again.offset == live.offset


@pytest.mark.parametrize("case", ["one_block_long_jump", "blocks_far_apart", "late_shares_of_another_size",
                                  "random"])
def test_close_equals_windows_merged_straight_from_their_panes(case):
    """PaneWindows.close against a brute-force merge: the same rows, and each key's in window order.
    The cases reach the per-key shortcuts: a key with one block (its windows share one row body), keys
    whose blocks are more than a window apart (the windows between hold nothing), and late window
    shares pending (no shortcut)."""
    from tagpulse.core.windows import PaneWindows

    rnd = random.Random(case)
    specs = ((60, 60), (3600, 300), (86400, 3600))
    windows = PaneWindows(specs)
    panes, extras = {}, {}

    def add(ps, tag, followers):
        reach = Reach()
        reach.add_post(f"u{rnd.randrange(5)}", followers, rnd.random() < 0.3, rnd.randrange(4))
        panes.setdefault(ps, {}).setdefault((tag, "twitter"), Reach()).merge(reach)
        windows.add(ps, (tag, "twitter"), reach.copy())

    if case == "one_block_long_jump":
        add(T0 + 600, "solo", 7)
        old, new = T0 + 660, T0 + 30 * 86400  # a replay's end: windows walked from the panes
    elif case == "blocks_far_apart":
        for ps in (T0, T0 + 2 * 86400, T0 + 5 * 86400 + 3600):
            add(ps, "far", 3)
            add(ps + 60, "near", 4)
        old, new = T0 - 60, T0 + 7 * 86400
    elif case == "late_shares_of_another_size":
        add(T0 + 120, "a", 5)
        add(T0 + 7200, "b", 6)
        extras = {(3600, T0, "a", "twitter"): Reach(1, 0, 9, 0, {"late": 9}),
                  (86400, T0 - 3600, "c", "twitter"): Reach(2, 1, 4, 1, {"x": 4})}
        old, new = T0 + 180, T0 + 2 * 86400
    else:
        for _ in range(300):
            add(T0 + 60 * rnd.randrange(3 * 24 * 60), f"t{rnd.randrange(12)}", rnd.randrange(100))
        add(T0 + 86400 + 1800, "lonely", 9)  # one block among many panes: day windows walk the clock
        old, new = T0 + 60 * rnd.randrange(60), T0 + 4 * 86400
    expected = merged_from_panes(panes, extras, specs, old, new)
    rows = windows.close(old, new, {k: v.copy() for k, v in extras.items()})
    assert sorted(rows) == sorted(expected) and rows
    for key in {row[:3] for row in rows}:
        starts = [row[3] for row in rows if row[:3] == key]
        assert starts == sorted(starts)


@pytest.mark.parametrize("seed", range(3))
def test_warmed_live_closes_equal_cold_ones_and_windows_merged_straight_from_their_panes(seed):
    """Boundary by boundary, like a live stream: warm() a random number of times between closes (the
    heads and last blocks it prepares), shares arriving after their pane was folded (late for the
    shortest windows, still open for the longer ones) and window shares. Each close gives the rows of a
    PaneWindows never warmed, in the same order, and equals a brute-force merge from the panes."""
    from tagpulse.core.windows import PaneWindows

    rnd = random.Random(seed)
    specs = ((60, 60), (600, 120), (1800, 600))  # 120 divides 600: blocks of blocks, as hours of 5 minutes
    warmed, cold = PaneWindows(specs), PaneWindows(specs)
    panes: dict = {}
    extras: dict = {}
    warm_extras: dict = {}
    cold_extras: dict = {}
    warmed_some = 0

    def add(ps, tag):
        add_random_post(rnd, panes, (warmed, cold), ps, tag)

    closed = T0 - 60
    for minute in range(150):
        now = T0 + 60 * minute
        for _ in range(rnd.randrange(6)):
            add(now, f"t{rnd.randrange(5)}")
        if rnd.random() < 0.3:  # a share for a pane folded already (its 1-minute window is final)
            add(now - 60 * rnd.randrange(1, 25), f"t{rnd.randrange(5)}")
        if rnd.random() < 0.2:  # a share of one open window only
            size, hop = rnd.choice(specs[1:])
            start = (now // hop) * hop - hop * rnd.randrange(size // hop)
            key = (size, start, f"t{rnd.randrange(7)}", "twitter")
            share = Reach(1, 0, 3, 0, {f"late{minute}": 3})
            for target in (extras, warm_extras, cold_extras):
                target.setdefault(key, Reach()).merge(share.copy())
        new = now + 60
        expected = merged_from_panes(panes, extras, specs, closed, new)
        rows, cold_rows = warmed.close(closed, new, warm_extras), cold.close(closed, new, cold_extras)
        assert rows == cold_rows
        assert sorted(rows) == sorted(expected)
        for key in [k for k in extras if k[0] + k[1] <= new]:
            del extras[key]
        closed = new
        assert warmed.evict(closed) == cold.evict(closed)
        for _ in range(rnd.randrange(4)):
            warmed_some += warmed.warm_due(closed)
            warmed.warm(closed)
    assert warmed_some > 50  # warming really happened between most boundaries


def test_merge_with_spikes_scores_its_rows_as_the_detector_scores_them_as_dicts():
    """The merge feeds the detector the fields of its row tuples (observe_final); a detector fed the
    same rows as dicts (observe, as any other reader would) must find the same spikes and state."""
    from tagpulse.core.merge_spikes import MergeWithSpikes
    from tagpulse.core.spikes import SpikeDetector

    specs = ((60, 60), (3600, 300))
    merge = MergeWithSpikes(0, upstream_partitions=1, specs=specs)
    rows, spikes = [], []
    for i in range(12 * 44):  # a pane every 5 minutes for 44 h; "viral" bursts for two hours, then is quiet
        start = T0 + i * 300
        partials = [[start, "calm", "twitter", 3, 1, 30, 2, {f"c{i % 4}": 10}]]
        if i % 7:
            partials.append([start, "sparse", "mastodon", 1, 0, 5, 0, {"s": 5}])
        burst = 12 * 38 <= i < 12 * 40
        n = 400 if burst else 2 + i % 3
        partials.append([start, "viral", "twitter", n, 0, 10 * n, 0,
                         {f"v{k}": 10 + k for k in range(n if burst else 2)}])
        res = process_all(merge, [(i, orjson.dumps({"src": 0, "wm": start + 300, "idle": False, "rows": partials}))])
        rows += res.row_dicts()
        spikes += res.spikes
    assert spikes and {s.tag for s in spikes} == {"viral"}
    assert merge.detector.keys[("viral", "twitter", 3600)].armed  # re-armed by the quiet windows after the burst
    detector = SpikeDetector()
    assert detector.observe_many(rows) == spikes
    assert detector.to_dict() == merge.detector.to_dict()


def test_completeness_counts_received_duplicates_late_and_invalid_per_source():
    state = DedupWindowState(0, SPECS, 10, 7 * 86400, decode=passthrough)
    a = make_post(1, T0 + 30, ["x"], 1, 10, platform="mastodon")
    b = make_post(2, T0 + 300, ["x"], 2, 10, platform="mastodon")
    late = make_post(3, T0 + 40, ["x"], 3, 10, platform="mastodon")
    res = state.process([(0, orjson.dumps([a, b, a, late])), (1, b"not json")])
    rows = {(r["platform"], r["window_start"]): r for r in res.completeness_rows(invalid_window_start=123)}
    first = rows[("mastodon", T0)]
    assert (first["received"], first["duplicates"], first["late"]) == (3, 1, 1)
    assert rows[("mastodon", T0 + 300)]["received"] == 1
    assert rows[("unknown", 123)]["invalid"] == 1


def test_late_posts_give_the_same_rows_and_late_counts_across_restarts():
    # Disorder beyond the 10 s grace: many posts reach their partition after their pane shipped.
    posts, arrivals = synthetic_stream(n=3000, seed=4, disorder=150)
    rows, late, uniques = run_pipeline(arrivals)
    assert late and len(uniques) == len(posts)
    rows_r, late_r, _ = run_pipeline(arrivals, restart_every=2)
    assert rows_r == rows
    assert sorted(map(orjson.dumps, late_r)) == sorted(map(orjson.dumps, late))
    rows_s, late_s, _ = run_pipeline(arrivals, restart_every=2, snapshot_every=3)
    assert rows_s == rows
    assert sorted(map(orjson.dumps, late_s)) == sorted(map(orjson.dumps, late))
    # Every post is in each of its 37 windows per tag exactly once: either counted there or late.
    counted = sum(r["posts"] for r in rows) + sum(r["events"] for r in late)
    assert counted == sum(37 * len(p["hashtags"]) for p in posts)


def _stage1_outcome(res) -> tuple:
    return (res.unique_post_dicts(), res.dead_letters, sorted(res.late.items()), res.partials,
            res.window_share_rows(), res.posts_in, res.duplicates, res.skipped, res.watermark_changed,
            list(res.completeness.items()))


@pytest.mark.parametrize("seed,decode,specs", [(1, passthrough, SPECS), (2, passthrough, SPECS), (3, None, SPECS),
                                               (4, passthrough, ((30, 30), (600, 90), (3600, 3600)))])
def test_messages_applied_a_column_at_a_time_equal_the_per_post_path(seed, decode, specs):
    """Stage 1 applies a message whose posts all fall in open panes in bulk (bulk_apply): same results,
    state and changelog records as taking every post through the per-post checks, on a dense stream
    with duplicates (also within a message), posts beyond the grace, posts older than the dedup
    horizon, idle advances and a restart."""
    rng = random.Random(seed)
    tags = ["einbuchfuerkai", "buchtipp", "lesen", "kafka", "montag", "x"]
    arrivals, t = [], T0
    for i in range(8000):
        t += rng.choice([0] * 300 + [1, 2, 30])  # ≈ 9 posts a second, now and then a gap
        late_by = rng.choice([0] * 400 + [25, 70, 200])  # beyond the 10 s grace: late for some windows
        if rng.random() < 0.001:  # older than the 2 h dedup horizon of this state, or right at it
            late_by = rng.choice([3 * 3600, 7208, 7209, 7210, 7211, 7212])
        post = make_post(i, t - late_by, rng.sample(tags, rng.randint(0, 3)), rng.randint(1, 300),
                         rng.randint(0, 5000), platform=rng.choice(["twitter", "mastodon"]), share=rng.random() < 0.3)
        arrivals.append(post)
        if rng.random() < 0.04:  # a duplicate: mostly at once, a few from much earlier
            arrivals.append(post if rng.random() < 0.9 else arrivals[rng.randrange(len(arrivals))])
    bulk = DedupWindowState(0, specs, 10, 7200, decode=decode)
    per_post = DedupWindowState(0, specs, 10, 7200, decode=decode)
    per_post.bulk_apply = False
    applied = []
    bulk._apply_in_open_panes = lambda *args: (applied.append(1),
                                                 DedupWindowState._apply_in_open_panes(bulk, *args))
    offset = i = messages = 0
    while i < len(arrivals):
        size = rng.choice([1, 5, 20, 50, 200])
        records = []
        for _ in range(rng.randint(1, 4)):
            records.append((offset, orjson.dumps(arrivals[i:i + size])))
            offset, i, messages = offset + 1, i + size, messages + 1
        assert _stage1_outcome(bulk.process(records)) == _stage1_outcome(per_post.process(records))
        if rng.random() < 0.08:  # an idle partition: the watermark jumps to the "wall clock"
            wall = bulk.max_event + rng.randint(0, 400)
            assert _stage1_outcome(bulk.advance_idle(wall)) == _stage1_outcome(per_post.advance_idle(wall))
        assert bulk.delta() == per_post.delta()
        if rng.random() < 0.03:
            snapshot = bulk.snapshot()
            assert snapshot == per_post.snapshot()
            restored = DedupWindowState(0, specs, 10, 7200, decode=decode)
            restored.apply_delta(snapshot)
            restored._apply_in_open_panes = bulk._apply_in_open_panes
            bulk = restored
    # Both paths ran: messages in bulk, and per post (shipping panes, late or too old posts, after idle jumps).
    assert len(applied) >= 15 and messages - len(applied) >= 15, (len(applied), messages)
    assert bulk.snapshot() == per_post.snapshot()


def test_a_post_made_too_old_by_the_watermark_its_own_message_moves_is_treated_alike_in_bulk():
    # A dedup horizon shorter than a pane (25 s), so a post can be too old while its pane is open: the
    # watermark starts 20 s into a pane and the message moves it 20 s on (same pane) before a post of
    # that pane's first second, inside the horizon at the start of the message and beyond it by then.
    states = [DedupWindowState(0, SPECS, 10, 25, decode=passthrough) for _ in range(2)]
    states[1].bulk_apply = False
    pane = T0 + 3 * 3600
    message = [make_post(1, pane + 50, ["a"], 1, 10), make_post(2, pane, ["a"], 2, 10)]
    outcomes = []
    for state in states:
        state.process([(0, orjson.dumps([make_post(0, pane + 30, ["a"], 0, 10)]))])
        assert state.watermark == pane + 20
        outcomes.append((_stage1_outcome(state.process([(1, orjson.dumps(message))])), state.delta()))
    assert outcomes[0] == outcomes[1]
    assert [p["post_id"] for p in outcomes[0][0][0]] == ["p1"]  # p2 is too old when its turn comes
