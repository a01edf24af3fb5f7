"""Unit tests of the spike detector (tagpulse.core.spikes): pure, no I/O."""
from __future__ import annotations

import json
import math

import pytest

from tagpulse.core import scenarios as S
from tagpulse.core.spikes import (SpikeConfig, SpikeDetector, author_score, poisson_eta, poisson_interval,
                                  poisson_z, z_score)

HOUR = 3600


# --------------------------------------------------------------------------- scores

def _poisson_cdf(k: int, lam: float) -> float:
    return sum(math.exp(i * math.log(lam) - lam - math.lgamma(i + 1)) for i in range(k + 1))


def _exact_interval(k: int, confidence: float) -> tuple[float, float]:
    """Garwood's exact interval by bisection on the Poisson CDF (what chi-square quantiles give)."""
    tail = (1 - confidence) / 2

    def solve(f, lo, hi):
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(lambda lam: tail - (1 - _poisson_cdf(k - 1, lam)), 1e-9, k + 50)
    upper = solve(lambda lam: _poisson_cdf(k, lam) - tail, 1e-9, 3 * k + 50)
    return lower, upper


@pytest.mark.parametrize("k", [1, 3, 10, 50, 300])
def test_poisson_interval_matches_exact_garwood(k):
    low, high = poisson_interval(k, 0.99)
    exact_low, exact_high = _exact_interval(k, 0.99)
    assert high == pytest.approx(exact_high, rel=0.01)
    assert abs(low - exact_low) <= 0.01 * k + 0.01


def test_poisson_scores_known_values():
    low, high = poisson_interval(10)
    assert (low, high) == (pytest.approx(3.717, abs=0.05), pytest.approx(21.40, abs=0.1))
    assert poisson_eta(30, 10) == pytest.approx(20 / (high - low))
    assert poisson_eta(30, 10) == pytest.approx(1.13, abs=0.01)
    assert poisson_eta(5, 10) < 0                     # drops are negative, never spikes
    assert poisson_interval(0)[0] == 0.0
    assert poisson_interval(0)[1] == pytest.approx(-math.log(0.005), rel=0.01)   # exact upper bound for 0


def test_author_and_z_scores_known_values():
    assert author_score(30, 10) == 40.0               # (30 − 10)² / 10
    assert author_score(6, 0) == 25.0                 # e is at least 1
    assert author_score(8, 10) == 0.0                 # fewer than expected
    assert author_score(4, 1) == 0.0                  # below the floor of 5 people
    assert z_score(20, 10, 4) == pytest.approx(10 / math.sqrt(10))   # σ² never below the Poisson μ
    assert z_score(20, 10, 25) == pytest.approx(2.0)
    # Wilson–Hilferty keeps the long tail of small counts: 8 when 1.3 expected is not 5.6σ
    assert 3.4 < poisson_z(8, 1.3) < 4.0
    assert poisson_z(1100, 1000) == pytest.approx(100 / math.sqrt(1000), rel=0.05)


# --------------------------------------------------------------------------- helpers

def _rows(build) -> list[dict]:
    g = S.Generator(7)
    build(g)
    return S.window_rows(sorted(g.posts), g.followers, 3600, 300)


def _const(rate):
    return lambda t: rate + 0.0 * t


T0 = S.T0


# --------------------------------------------------------------------------- behaviour

def test_flat_background_never_fires_over_two_weeks():
    rows = _rows(lambda g: [g.emit("flat", "twitter", T0, T0 + 14 * 86400, _const(80)),
                            g.emit("small", "mastodon", T0, T0 + 14 * 86400, _const(8)),
                            g.emit("cycle", "twitter", T0, T0 + 14 * 86400, S.daily_cycle(300, 0.7))])
    assert len(rows) > 3 * 14 * 280
    assert SpikeDetector().observe_many(rows) == []


def _flood(g, accounts: list[str]) -> None:
    g.emit("tag", "twitter", T0, T0 + 2 * 86400, _const(40))
    g.flood("tag", "twitter", T0 + 30 * HOUR, T0 + 32 * HOUR, accounts, 30 / len(accounts))


def test_one_author_flood_does_not_fire_but_a_crowd_does():
    assert SpikeDetector().observe_many(_rows(lambda g: _flood(g, ["bot"]))) == []
    # control: the same number of posts from a crowd of 1,000 accounts is a spike
    crowd = [f"person{i}" for i in range(1000)]
    spikes = SpikeDetector().observe_many(_rows(lambda g: _flood(g, crowd)))
    assert len(spikes) == 1 and T0 + 30 * HOUR < spikes[0].detected_at <= T0 + 31 * HOUR


def _quiet_tag_with_burst(g, burst_posts: int) -> None:
    g.emit("quiet", "mastodon", T0, T0 + 2 * 86400, _const(0.5))
    start = T0 + 30 * HOUR
    g.posts.extend((start + 60 * i, "quiet", "mastodon", f"fan{i}", False) for i in range(burst_posts))
    g._followers_for([f"fan{i}" for i in range(burst_posts)])


def test_floors_keep_tiny_bursts_quiet():
    rows = _rows(lambda g: _quiet_tag_with_burst(g, 15))
    assert SpikeDetector().observe_many(rows) == []                          # 15 posts < min_posts 20
    fired = SpikeDetector(SpikeConfig(min_posts=10)).observe_many(rows)
    assert len(fired) == 1 and fired[0].observed >= 10


def _two_bursts(g, gap_h: float) -> None:
    g.emit("tag", "twitter", T0, T0 + 3 * 86400, _const(60))
    for k in range(2):
        start = T0 + int((30 + k * gap_h) * HOUR)
        g.emit("tag", "twitter", start, start + 1800, _const(1200), regular_share=0.0)


def test_cooldown_merges_close_bursts_but_not_distant_ones():
    rows = _rows(lambda g: _two_bursts(g, 1))
    assert len(SpikeDetector().observe_many(rows)) == 1          # second burst 1 h later: inside the 2 h cooldown
    rows = _rows(lambda g: _two_bursts(g, 3))
    assert len(SpikeDetector().observe_many(rows)) == 2          # 3 h later: a new alert
    assert len(SpikeDetector(SpikeConfig(cooldown_s=5 * HOUR)).observe_many(rows)) == 1


def test_missing_windows_are_zeros():
    rows = _rows(lambda g: [g.emit("sparse", "twitter", T0, T0 + 3 * 86400, _const(3))])
    padded = []
    for row in rows:
        if padded and row["window_start"] - padded[-1]["window_start"] > 300:
            for start in range(padded[-1]["window_start"] + 300, row["window_start"], 300):
                padded.append({**row, "window_start": start, "window_end": start + 3600, "posts": 0,
                               "unique_authors": 0})
        padded.append(row)
    assert len(padded) > len(rows)
    a, b = SpikeDetector(), SpikeDetector()
    assert a.observe_many(rows) == b.observe_many(padded)
    assert a.to_dict() == b.to_dict()


def test_replayed_and_malformed_rows_are_ignored():
    rows = _rows(lambda g: _two_bursts(g, 6))
    a, b = SpikeDetector(), SpikeDetector()
    spikes = a.observe_many(rows)
    noisy = []
    for row in rows:
        noisy += [row, dict(row), {"tag": "x"}, {**row, "posts": "many"}, {**row, "window_size": 60}]
    assert b.observe_many(noisy) == spikes
    assert a.to_dict() == b.to_dict()


def test_state_round_trip_gives_identical_outputs():
    scenario = S.build("step-10x", seed=3, small=True)
    rows = S.window_rows(scenario.posts, scenario.followers, 3600, 300)
    half = len(rows) // 2
    original = SpikeDetector()
    original.observe_many(rows[:half])
    restored = SpikeDetector.from_dict(json.loads(json.dumps(original.to_dict())))
    per_key = SpikeDetector(started=original.started)
    for (tag, platform, size) in original.keys:
        per_key.set_key_state(tag, platform, size, json.loads(json.dumps(original.key_state(tag, platform, size))))
    rest_a, rest_b, rest_c = (d.observe_many(rows[half:]) for d in (original, restored, per_key))
    assert rest_a, "the second half should contain bursts"
    assert rest_a == rest_b == rest_c
    assert original.to_dict() == restored.to_dict() == per_key.to_dict()
    with pytest.raises(ValueError):
        SpikeDetector.from_dict({"version": 99, "keys": []})


def test_observe_open_fires_early_without_changing_state():
    scenario = S.build("spike-50x", seed=1, small=True)
    rows = S.window_rows(scenario.posts, scenario.followers, 3600, 300)
    burst = scenario.bursts[0]
    detector = SpikeDetector()
    before = [r for r in rows if r["window_end"] <= burst.start]
    detector.observe_many(before)
    state = json.dumps(detector.to_dict())
    # the window opening right at the burst start, 10 minutes in: only posts so far
    posts = [p for p in scenario.posts if p[1] == burst.tag and burst.start <= p[0] < burst.start + 600]
    partial = {"tag": burst.tag, "platform": "twitter", "window_size": 3600, "window_start": burst.start,
               "window_end": burst.start + 3600, "posts": len(posts), "unique_authors": len({p[3] for p in posts})}
    early = detector.observe_open(partial, as_of=burst.start + 600)
    assert early is not None and early.early and early.detected_at == burst.start + 600
    assert "so far" in early.reason
    assert json.dumps(detector.to_dict()) == state
    # a quiet partial window does not fire
    assert detector.observe_open({**partial, "posts": 2, "unique_authors": 2}, burst.start + 600) is None


def test_einbuchfuerkai_fires_within_the_first_hour_of_take_off():
    scenario = S.build("einbuchfuerkai", seed=1, small=True)
    rows = S.window_rows(scenario.posts, scenario.followers, 3600, 300)
    spikes = SpikeDetector().observe_many(rows)
    campaign = [s for s in spikes if s.tag == "einbuchfuerkai"]
    for platform in ("twitter", "facebook"):
        first = min((s for s in campaign if s.platform == platform), key=lambda s: s.detected_at)
        assert S.EINBUCH_TAKEOFF < first.detected_at <= S.EINBUCH_TAKEOFF + HOUR, platform
        assert first.row().keys() == {"tag", "platform", "window_size", "window_start", "detected_at",
                                      "observed", "expected", "score", "method", "reason"}
        assert f"{first.observed:,} posts by" in first.reason
    # background tags and the 40 instagram posts stay silent
    assert {(s.tag, s.platform) for s in spikes} <= {("einbuchfuerkai", "twitter"), ("einbuchfuerkai", "facebook")}


def test_window_rows_match_a_plain_recount():
    scenario = S.build("single-author-flood", seed=2, small=True)
    rows = S.window_rows(scenario.posts[:3000], scenario.followers, 3600, 300)
    for row in rows[::97]:
        inside = [p for p in scenario.posts[:3000] if (p[1], p[2]) == (row["tag"], row["platform"])
                  and row["window_start"] <= p[0] < row["window_end"]]
        assert row["posts"] == len(inside)
        assert row["unique_authors"] == len({p[3] for p in inside})
        assert row["potential_reach"] == sum(scenario.followers[a] for a in {p[3] for p in inside})


def test_prune_forgets_only_decayed_keys():
    rows = _rows(lambda g: [g.emit("gone", "twitter", T0, T0 + 86400, _const(30)),
                            g.emit("alive", "twitter", T0, T0 + 5 * 86400, _const(30))])
    detector = SpikeDetector()
    detector.observe_many(rows)
    assert detector.prune(now=T0 + 5 * 86400) == 1
    assert list(detector.keys) == [("alive", "twitter", 3600)]


def _campaign_keys(posts) -> tuple[set, set]:
    """(keys the campaign's posts carry, keys fed only by flat background streams) of `simulate einbuchfuerkai`."""
    campaign_tags = {"einbuchfuerkai", "einbildfuerkai"}
    every, campaign = set(), set()
    for post in posts:
        keys = {(tag, post["platform"]) for tag in post["hashtags"]}
        every |= keys
        if campaign_tags & set(post["hashtags"]):
            campaign |= keys
    return campaign, every - campaign


def test_simulated_campaign_fires_within_its_first_hour_and_flat_tags_stay_silent():
    """Issue 7's done-when on `tagpulse simulate einbuchfuerkai` itself (the stream the demo replays), windowed
    like the pipeline; tests/test_spike_alert_e2e.py runs the same stream through the live worker."""
    from producers.simulate import TAKEOFF, simulate_einbuchfuerkai
    from tagpulse.core.stage1 import epoch_seconds
    from tagpulse.core.windows import oracle_windows

    unique = {}
    for post in simulate_einbuchfuerkai(seed=0):
        unique.setdefault((post["platform"], post["post_id"]), post)
    rows = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in unique.values()), [(3600, 300)])
    rows.sort(key=lambda r: (r["window_end"], r["tag"], r["platform"]))
    spikes = SpikeDetector().observe_many(rows)
    for platform in ("twitter", "facebook"):
        first = min(s.detected_at for s in spikes if (s.tag, s.platform) == ("einbuchfuerkai", platform))
        assert TAKEOFF < first <= TAKEOFF + HOUR, platform
    campaign, flat = _campaign_keys(unique.values())
    assert len(flat) >= 8
    assert not {(s.tag, s.platform) for s in spikes} & flat
    # Tags riding in the campaign's tweets (#buchtipp, #Kinderbuch) may spike with it; nothing else does.
    assert {(s.tag, s.platform) for s in spikes} <= campaign
    assert not [s for s in spikes if s.platform == "instagram"]


def test_a_window_below_the_floors_re_arms_a_key_only_once_its_count_is_back_to_normal():
    """After a spike a key is disarmed until a window falls below the count test; windows below the
    floors are scored for that alone (most rows are below the floors, and skip every other score)."""
    detector = SpikeDetector(SpikeConfig(windows=((HOUR, HOUR),), warmup_s=10 * HOUR, cooldown_s=2 * HOUR,
                                         min_posts=40))

    def observe(i: int, posts: int, authors: int):
        return detector.observe({"tag": "kai", "platform": "twitter", "window_size": HOUR,
                                 "window_start": T0 + i * HOUR, "posts": posts, "unique_authors": authors})

    assert [observe(i, 5, 5) for i in range(48)] == [None] * 48
    assert observe(48, 300, 200) is not None
    state = detector.keys[("kai", "twitter", HOUR)]
    # Still far above the baseline, though below the posts floor: the key stays disarmed …
    assert observe(49, 30, 5) is None and observe(50, 30, 5) is None and not state.armed
    assert observe(51, 300, 200) is None  # … so a burst after the cooldown does not fire yet.
    assert observe(52, 2, 2) is None and state.armed  # back to normal: armed again
    assert observe(53, 300, 200) is not None


def _reference_learn(cfg: SpikeConfig, state, size: int, hop: int, posts: int, authors: int) -> None:
    """The EWMA step as first written (plain max/min): the detector's tuned one must match it bit for bit."""
    a, clip, b = cfg.alpha(hop), cfg.clip_sigma, cfg.trend
    for level, trend, var, x in (("mean", "trend", "var", posts),
                                 ("authors", "authors_trend", "authors_var", authors)):
        forecast = max(getattr(state, level) + getattr(state, trend), 0.0)
        sigma = math.sqrt(max(getattr(state, var), forecast, cfg.min_expected))
        diff = min(float(x), forecast + clip * sigma) - forecast
        setattr(state, var, (1.0 - a) * (getattr(state, var) + a * diff * diff))
        setattr(state, level, forecast + a * diff)
        setattr(state, trend, (getattr(state, trend) + a * b * diff) if getattr(state, level) > 0 else 0.0)
    if size > hop:
        step_sd = math.sqrt(max(state.step_var, 2.0 * max(state.mean, cfg.min_expected) * hop / size))
        step = max(min(float(posts - state.prev_posts), clip * step_sd), -clip * step_sd)
        state.step_var = (1.0 - a) * state.step_var + a * step * step
    state.prev_posts = posts
    state.prev_authors = authors


@pytest.mark.parametrize("seed, hop", [(1, 300), (2, 300), (3, HOUR)])
def test_the_ewma_step_equals_its_plain_form_on_bursts_drops_and_gaps(seed, hop):
    """Sliding (1 h every 5 min, with the step variance) and tumbling 1 h windows."""
    import random

    import orjson

    rnd = random.Random(seed)
    config = SpikeConfig(windows=((HOUR, hop),))
    tuned, plain = SpikeDetector(config), SpikeDetector(config)
    plain._learn = lambda state, size, hop, posts, authors: _reference_learn(plain.config, state, size, hop,
                                                                           posts, authors)
    rows, start = [], T0
    for _ in range(3000):
        start += hop * rnd.choice([1, 1, 1, 2, 7, 40])  # gaps are filled with zero windows
        posts = rnd.choice([0, 1, 3, 20, 50, 400, 5000])  # clipped bursts and drops, both directions
        rows.append({"tag": f"t{rnd.randrange(4)}", "platform": "twitter", "window_size": HOUR,
                     "window_start": start, "posts": posts, "unique_authors": rnd.randint(0, posts)})
    assert tuned.observe_many(rows) == plain.observe_many(rows)
    # As JSON: bit for bit, -0.0 included (== takes it for 0.0).
    assert orjson.dumps(tuned.to_dict()) == orjson.dumps(plain.to_dict())


def test_a_size_listed_twice_is_scored_with_its_first_hop_by_either_entry():
    config = SpikeConfig(windows=((HOUR, 300), (HOUR, 600)), warmup_s=HOUR)
    rows = [{"tag": "kai", "platform": "twitter", "window_size": HOUR, "window_start": T0 + 300 * i,
             "posts": 500 if i == 40 else 5, "unique_authors": 400 if i == 40 else 5} for i in range(60)]
    by_row, by_fields = SpikeDetector(config), SpikeDetector(config)
    spikes = by_row.observe_many(rows)
    assert spikes == [s for row in rows if (s := by_fields.observe_final(
        row["tag"], row["platform"], HOUR, row["window_start"], row["posts"], row["unique_authors"]))]
    assert spikes and by_row.to_dict() == by_fields.to_dict()


def test_a_negative_clip_is_refused():
    with pytest.raises(ValueError, match="clip_sigma"):
        SpikeConfig(clip_sigma=-1.0)
