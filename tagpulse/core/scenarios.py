"""Labelled scenarios for backtesting the spike detector (pure: no I/O).

A scenario is a list of posts `(t, tag, platform, author, is_share)` with a
follower count per author, plus ground truth: the bursts, each an interval
[start, end] of one (tag, platform) with its size relative to the baseline.
Posts are aggregated into window rows exactly as the pipeline emits them
(`window_rows`: no row for an empty window), replayed through a
`SpikeDetector` and scored at the event level (`evaluate`):

* a spike is true if a burst of its (tag, platform) has
  start ≤ detected_at ≤ end + tolerance (default: one window size, while a
  window still holds posts of the burst);
* recall = bursts with at least one true spike / bursts;
* precision = true spikes / all spikes (after the detector's cooldown);
* time to detect = windows (hops) from the burst start to the end of the
  first window that fired: ceil((detected_at − start) / hop).

Every rate below is in posts per hour; generation is seeded and deterministic.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from tagpulse.core.spikes import SpikeConfig, SpikeDetector, Spike

HOUR = 3600
DAY = 86400
# Synthetic scenarios start on a Monday at 00:00 UTC.
T0 = int(datetime(2024, 3, 4, tzinfo=timezone.utc).timestamp())

Post = tuple[int, str, str, str, bool]  # (event time, tag, platform, author id, is_share)


@dataclass(frozen=True)
class Burst:
    tag: str
    platform: str
    start: int
    end: int
    magnitude: float     # posts at the burst's height ÷ the baseline at that time
    shape: str


@dataclass
class Scenario:
    name: str
    description: str
    start: int
    end: int
    posts: list[Post] = field(default_factory=list)
    followers: dict[str, int] = field(default_factory=dict)
    bursts: list[Burst] = field(default_factory=list)


# --------------------------------------------------------------------------- generation

RateFn = Callable[[np.ndarray], np.ndarray]   # epoch seconds -> posts per hour


def daily_cycle(base: float, amplitude: float, peak_hour: float = 18.0) -> RateFn:
    """base × (1 + amplitude·cos(…)): busiest at peak_hour UTC, quietest 12 h later."""
    def rate(t: np.ndarray) -> np.ndarray:
        hour = (t % DAY) / HOUR
        return base * (1.0 + amplitude * np.cos(2 * math.pi * (hour - peak_hour) / 24.0))
    return rate


def burst_shape(shape: str, start: int, end: int, ramp_s: int = 1800, half_life_s: int = 1800) -> RateFn:
    """0 … 1 multiplier of the burst's excess over the baseline."""
    def f(t: np.ndarray) -> np.ndarray:
        inside = (t >= start) & (t < end)
        if shape == "step":
            y = np.ones_like(t, dtype=float)
        elif shape == "ramp":
            y = np.clip((t - start) / ramp_s, 0.0, 1.0)
        elif shape == "decay":
            y = 0.5 ** ((t - start) / half_life_s)
        else:
            raise ValueError(shape)
        return np.where(inside, y, 0.0)
    return f


class Generator:
    """Poisson posts minute by minute, with a plausible author population per tag."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.posts: list[Post] = []
        self.followers: dict[str, int] = {}
        self._fresh = 0

    def _new_author(self, prefix: str) -> str:
        self._fresh += 1
        return f"{prefix}{self._fresh}"

    def _followers_for(self, authors: list[str]) -> None:
        new = [a for a in dict.fromkeys(authors) if a not in self.followers]
        if new:
            counts = np.exp(self.rng.normal(5.3, 1.6, len(new))).astype(int)   # median ≈ 200
            self.followers.update(zip(new, counts.tolist()))

    def emit(self, tag: str, platform: str, start: int, end: int, rate: RateFn, *,
             regulars: int | None = None, regular_share: float = 0.3, crowd: str = "u",
             is_share: bool = False, noise: float = 0.0) -> int:
        """Posts of one (tag, platform) in [start, end) at `rate(t)` posts per hour.

        A share `regular_share` of posts come from `regulars` habitual posters of
        the tag (default ≈ its hourly rate), the rest from accounts never seen
        before, so unique authors per hour stay a little below posts per hour.
        `noise` multiplies the rate by a log-normal factor per hour (real traffic
        is burstier than Poisson).
        """
        minutes = np.arange(start - start % 60, end, 60, dtype=np.int64)
        if len(minutes) == 0:
            return 0
        lam = np.maximum(rate(minutes), 0.0) / 60.0
        if noise:
            hours = (minutes - minutes[0]) // HOUR
            factors = np.exp(self.rng.normal(-noise * noise / 2, noise, int(hours[-1]) + 1))
            lam = lam * factors[hours]
        counts = self.rng.poisson(lam)
        n = int(counts.sum())
        if n == 0:
            return 0
        times = np.repeat(minutes, counts) + self.rng.integers(0, 60, n)
        if regulars is None:
            regulars = max(5, int(float(np.mean(lam)) * 60))
        is_regular = self.rng.random(n) < regular_share
        regular_ids = self.rng.integers(0, regulars, n)
        authors = [f"{tag}:{platform}:r{r}" if reg else self._new_author(crowd)
                   for reg, r in zip(is_regular.tolist(), regular_ids.tolist())]
        self._followers_for(authors)
        self.posts.extend((t, tag, platform, a, is_share) for t, a in zip(times.tolist(), authors))
        return n

    def flood(self, tag: str, platform: str, start: int, end: int, accounts: list[str], per_minute: float) -> None:
        """Bot accounts posting at a steady clip: many posts, very few authors."""
        self._followers_for(accounts)
        for minute in range(start, end, 60):
            for account in accounts:
                for _ in range(int(self.rng.poisson(per_minute))):
                    self.posts.append((minute + int(self.rng.integers(0, 60)), tag, platform, account, False))

    def scenario(self, name: str, description: str, start: int, end: int, bursts: list[Burst]) -> Scenario:
        self.posts.sort()
        return Scenario(name, description, start, end, self.posts, self.followers, bursts)


def _burst_scenario(name: str, description: str, seed: int, days: int, magnitude: float, shape: str,
                    duration_s: int, bases: list[float], **shape_args) -> Scenario:
    """Burst tags with daily cycles plus background tags; one burst per burst tag, at varied times."""
    g = Generator(seed)
    start, end = T0, T0 + days * DAY
    rng = np.random.default_rng(seed + 1)
    bursts = []
    for i, base in enumerate(bases):
        tag = f"burst{i}"
        base_rate = daily_cycle(base, 0.5, peak_hour=16 + 2 * i)
        g.emit(tag, "twitter", start, end, base_rate)
        # after the first day (warm-up and a day of baseline), at a random time of day
        b_start = start + DAY + int(rng.integers(0, (days - 1) * DAY - duration_s - 3 * HOUR)) // 300 * 300
        b_end = b_start + duration_s
        f = burst_shape(shape, b_start, b_end, **shape_args)
        g.emit(tag, "twitter", b_start, b_end, lambda t, f=f, r=base_rate: (magnitude - 1) * r(t) * f(t),
               regulars=20, regular_share=0.1, crowd="c")
        label_end = b_end
        if shape == "decay":
            # the burst is over when its excess falls below the baseline (total < 2×)
            label_end = min(b_end, b_start + int(shape_args.get("half_life_s", 1800) * math.log2(magnitude - 1)))
        bursts.append(Burst(tag, "twitter", b_start, label_end, magnitude, shape))
    _background(g, start, end, seed)
    return g.scenario(name, description, start, end, bursts)


def _background(g: Generator, start: int, end: int, seed: int) -> None:
    """Tags that never burst: these must stay silent in every scenario."""
    g.emit("news", "twitter", start, end, daily_cycle(400, 0.6, 13), noise=0.1)
    g.emit("music", "mastodon", start, end, daily_cycle(25, 0.7, 20))
    g.emit("rstats", "mastodon", start, end, daily_cycle(6, 0.5, 15))


# --------------------------------------------------------------------------- the library

def step(magnitude: float, bases: list[float], duration_s: int = HOUR) -> Callable[[int, bool], Scenario]:
    def build(seed: int, small: bool) -> Scenario:
        return _burst_scenario(f"step-{magnitude:g}x", f"{magnitude:g}× step bursts lasting {duration_s // 60} min",
                               seed, 2 if small else 3, magnitude, "step", duration_s, bases)
    return build


def ramp_10x(seed: int, small: bool) -> Scenario:
    return _burst_scenario("ramp-10x", "bursts ramping linearly to 10× over 30 min, then holding for 1 h",
                           seed, 2 if small else 3, 10, "ramp", 90 * 60, [40, 80, 160, 320], ramp_s=1800)


def decay_20x(seed: int, small: bool) -> Scenario:
    return _burst_scenario("decay-20x", "spike-and-decay: a jump to 20× halving every 30 min",
                           seed, 2 if small else 3, 20, "decay", 4 * HOUR, [30, 60, 120, 240], half_life_s=1800)


def spike_50x(seed: int, small: bool) -> Scenario:
    return _burst_scenario("spike-50x", "short 50× bursts of 20 min on small tags",
                           seed, 2 if small else 3, 50, "step", 20 * 60, [8, 15, 30, 60])


def quiet_days(seed: int, small: bool) -> Scenario:
    g = Generator(seed)
    start, end = T0, T0 + (3 if small else 7) * DAY
    for i, base in enumerate([0.5, 2, 4, 8, 15, 30]):
        g.emit(f"quiet{i}", "mastodon", start, end, daily_cycle(base, 0.7, 12 + 2 * i))
    return g.scenario("quiet-days", "small tags (0.5–30 posts/h) with daily cycles and no burst", start, end, [])


def busy_days(seed: int, small: bool) -> Scenario:
    g = Generator(seed)
    start, end = T0, T0 + (3 if small else 7) * DAY
    for i, base in enumerate([200, 600, 1500, 4000]):
        # strong cycles (night ≈ 15 % of the peak) and over-dispersed hours
        g.emit(f"busy{i}", "twitter", start, end, daily_cycle(base, 0.75, 10 + 3 * i), noise=0.15)
    return g.scenario("busy-days", "big tags (200–4000 posts/h), strong daily cycles, noisy hours, no burst",
                      start, end, [])


def single_author_flood(seed: int, small: bool) -> Scenario:
    g = Generator(seed)
    start, end = T0, T0 + (2 if small else 3) * DAY
    for i, base in enumerate([15, 40, 120]):
        g.emit(f"flooded{i}", "twitter", start, end, daily_cycle(base, 0.5, 17))
    # one bot: 30 posts a minute for an hour (≈ 1,800 posts, 1 author)
    g.flood("flooded0", "twitter", start + DAY + 10 * HOUR, start + DAY + 11 * HOUR, ["bot:spam1"], 30)
    # one bot on a bigger tag, for 3 hours
    g.flood("flooded2", "twitter", start + DAY + 15 * HOUR, start + DAY + 18 * HOUR, ["bot:spam2"], 20)
    # a ring of three accounts, 10 posts a minute each
    g.flood("flooded1", "twitter", start + DAY + 20 * HOUR, start + DAY + 21 * HOUR,
            ["bot:ring1", "bot:ring2", "bot:ring3"], 10)
    return g.scenario("single-author-flood", "bot floods: one account (×2) and a ring of three, no real burst",
                      start, end, [])


def organic_growth(seed: int, small: bool) -> Scenario:
    g = Generator(seed)
    days = 3 if small else 5
    start, end = T0, T0 + days * DAY
    span = end - start

    def exp_growth(lo: float, hi: float, amplitude: float) -> RateFn:
        cycle = daily_cycle(1.0, amplitude, 18)
        return lambda t: lo * (hi / lo) ** ((t - start) / span) * cycle(t)

    g.emit("growing0", "twitter", start, end, exp_growth(10, 300, 0.5))
    g.emit("growing1", "twitter", start, end, exp_growth(50, 1000, 0.3))
    g.emit("growing2", "mastodon", start, end, lambda t: 2 + 60 * (t - start) / span)   # linear
    return g.scenario("organic-growth", "tags growing 20–30× over days (no burst)", start, end, [])


# ---- the seed campaign

EINBUCH_TAKEOFF = int(datetime(2015, 5, 21, 19, 0, tzinfo=timezone.utc).timestamp())
EINBUCH_START = int(datetime(2015, 5, 20, tzinfo=timezone.utc).timestamp())
EINBUCH_END = int(datetime(2015, 5, 24, tzinfo=timezone.utc).timestamp())
EINBUCH_IMPRESSIONS_AT = int(datetime(2015, 5, 22, 12, 50, tzinfo=timezone.utc).timestamp())


def _campaign_wave(t: np.ndarray) -> np.ndarray:
    """Relative campaign activity after take-off: evening wave, night lull, a second morning wave."""
    h = (t - EINBUCH_TAKEOFF) / HOUR
    evening = np.clip(h / 1.5, 0, 1) * np.exp(-np.maximum(h - 2.0, 0) / 3.0)
    morning = np.exp(-((h - 15.0) / 3.0) ** 2) * 0.6          # ≈ 10:00 UTC next day
    tail = 0.08 * np.exp(-np.maximum(h - 18, 0) / 24.0)
    return np.where(h >= 0, evening + morning + tail, 0.0)


def einbuchfuerkai(seed: int, small: bool) -> Scenario:
    """The seed campaign, 2015-05-20 … 05-23 UTC, as window-level ground truth.

    Faithful to `simulate einbuchfuerkai`'s figures: on facebook one original
    post and ≈12,800 shares of it; on twitter impressions summing to ≈14.8 M by
    2015-05-22 12:50 UTC; ≈40 instagram posts; background tags.  The campaign
    took off on the evening of 2015-05-21 (19:00 UTC, 21:00 in Germany).
    """
    g = Generator(seed)
    start, end = EINBUCH_START, EINBUCH_END
    tag = "einbuchfuerkai"
    wave_hours = float(np.sum(_campaign_wave(np.arange(start, end, 60, dtype=np.int64)))) / 60.0

    # facebook: the original post, a trickle of shares before take-off, then the wave
    g.posts.append((int(datetime(2015, 5, 20, 10, 0, tzinfo=timezone.utc).timestamp()), tag, "facebook",
                    "fb:kai-family", False))
    g._followers_for(["fb:kai-family"])
    trickle_start = int(datetime(2015, 5, 20, 10, 5, tzinfo=timezone.utc).timestamp())
    g.emit(tag, "facebook", trickle_start, EINBUCH_TAKEOFF, lambda t: np.full(len(t), 1.5), is_share=True,
           regular_share=0.05, crowd="fb")
    shares_left = 12_800 - len([p for p in g.posts if p[2] == "facebook" and p[4]])
    peak = shares_left / wave_hours
    g.emit(tag, "facebook", EINBUCH_TAKEOFF, end, lambda t: peak * _campaign_wave(t), is_share=True,
           regular_share=0.02, regulars=50, crowd="fb")

    # twitter: a few tweets a day before, then the wave (≈ 5,000 tweets)
    g.emit(tag, "twitter", trickle_start, EINBUCH_TAKEOFF, lambda t: np.full(len(t), 1.0), regular_share=0.2,
           regulars=10, crowd="tw")
    g.emit(tag, "twitter", EINBUCH_TAKEOFF, end, lambda t: 5_000 / wave_hours * _campaign_wave(t),
           regular_share=0.1, regulars=100, crowd="tw")
    # scale twitter followers so that impressions reach 14.8 M by 2015-05-22 12:50
    tweets = [p for p in g.posts if p[1] == tag and p[2] == "twitter" and p[0] < EINBUCH_IMPRESSIONS_AT]
    total = sum(g.followers[p[3]] for p in tweets)
    if total:
        scale = 14_800_000 / total
        for author in {p[3] for p in g.posts if p[1] == tag and p[2] == "twitter"}:
            g.followers[author] = max(1, round(g.followers[author] * scale))

    # instagram: ≈ 40 posts after take-off — far too few to be a spike
    g.emit(tag, "instagram", EINBUCH_TAKEOFF, end, lambda t: np.full(len(t), 40 / ((end - EINBUCH_TAKEOFF) / HOUR)),
           crowd="ig")

    # background: German book and news tags with ordinary days
    g.emit("berlin", "twitter", start, end, daily_cycle(150, 0.6, 17), noise=0.1)
    g.emit("buch", "twitter", start, end, daily_cycle(20, 0.6, 19))
    g.emit("kinderbuch", "facebook", start, end, daily_cycle(4, 0.6, 19))
    g.emit("lesen", "instagram", start, end, daily_cycle(12, 0.5, 18))
    g.emit("esc2015", "twitter", start, end, daily_cycle(60, 0.6, 20))

    campaign_end = int(datetime(2015, 5, 22, 18, 0, tzinfo=timezone.utc).timestamp())
    bursts = [Burst(tag, "twitter", EINBUCH_TAKEOFF, campaign_end, 100.0, "campaign"),
              Burst(tag, "facebook", EINBUCH_TAKEOFF, campaign_end, 100.0, "campaign")]
    return g.scenario("einbuchfuerkai", "the seed campaign: take-off on 2015-05-21 19:00 UTC on twitter and facebook",
                      start, end, bursts)


# name -> (builder, part of --small)
SCENARIOS: dict[str, tuple[Callable[[int, bool], Scenario], bool]] = {
    "step-2x": (step(2, [60, 120, 240, 480], 2 * HOUR), False),
    "step-5x": (step(5, [40, 80, 160, 320]), True),
    "step-10x": (step(10, [20, 40, 80, 160]), False),
    "ramp-10x": (ramp_10x, False),
    "decay-20x": (decay_20x, True),
    "spike-50x": (spike_50x, False),
    "quiet-days": (quiet_days, True),
    "busy-days": (busy_days, False),
    "single-author-flood": (single_author_flood, True),
    "organic-growth": (organic_growth, False),
    "einbuchfuerkai": (einbuchfuerkai, True),
}

GOAL_MAGNITUDE = 5.0     # the recall goal applies to bursts at least this many times the baseline


def build(name: str, seed: int = 1, small: bool = False) -> Scenario:
    builder, _ = SCENARIOS[name]
    # each scenario gets its own stream of random numbers, whatever else runs
    return builder(seed * 1000 + sorted(SCENARIOS).index(name), small)


# --------------------------------------------------------------------------- aggregation

def window_rows(posts: list[Post], followers: dict[str, int], size: int, hop: int) -> list[dict]:
    """Final window rows like `tagpulse.windows`, in window order; empty windows have no row.

    Plain Python, independent of the stream code: posts go into panes of one
    hop, and a window slides over the panes keeping a count per author.
    """
    if size % hop:
        raise ValueError("window size must be a multiple of the hop")
    panes: dict[tuple[str, str], dict[int, list]] = {}
    for t, tag, platform, author, is_share in posts:
        pane = panes.setdefault((tag, platform), {}).setdefault(t - t % hop, [0, 0, []])
        pane[0] += 1
        pane[1] += is_share
        pane[2].append(author)
    per = size // hop
    rows = []
    for (tag, platform), by_start in panes.items():
        starts = sorted(by_start)
        # windows [s, s + size) with s in (pane − size, pane]; walk them in order, skipping long gaps
        window_starts = sorted({s for p in starts for s in range(p - size + hop, p + 1, hop)})
        in_window: Counter = Counter()
        posts_n = shares_n = impressions = reach = 0
        current: set[int] = set()     # pane starts currently inside the sliding window

        def add(p: int, sign: int) -> None:
            nonlocal posts_n, shares_n, impressions, reach
            pane = by_start[p]
            posts_n += sign * pane[0]
            shares_n += sign * pane[1]
            for author in pane[2]:
                impressions += sign * followers.get(author, 0)
                before = in_window[author]
                in_window[author] = before + sign
                if before == 0 and sign > 0:
                    reach += followers.get(author, 0)
                elif before == 1 and sign < 0:
                    reach -= followers.get(author, 0)
                    del in_window[author]

        for s in window_starts:
            for p in [p for p in current if p < s]:
                add(p, -1)
                current.discard(p)
            for k in range(per):
                p = s + k * hop
                if p in by_start and p not in current:
                    add(p, +1)
                    current.add(p)
            if posts_n:
                rows.append({
                    "tag": tag, "platform": platform, "window_size": size, "window_start": s,
                    "window_end": s + size, "posts": posts_n, "originals": posts_n - shares_n,
                    "shares": shares_n, "unique_authors": len(in_window), "potential_reach": reach,
                    "impressions": impressions, "engagement": 0,
                })
    rows.sort(key=lambda r: (r["window_end"], r["tag"], r["platform"]))
    return rows


# --------------------------------------------------------------------------- evaluation

@dataclass
class Result:
    name: str
    bursts: int = 0                 # all labelled bursts
    goal_bursts: int = 0            # bursts ≥ GOAL_MAGNITUDE
    detected: int = 0
    goal_detected: int = 0
    spikes: int = 0
    true_spikes: int = 0
    ttd: list[int] = field(default_factory=list)        # windows, bursts ≥ goal magnitude
    ttd_all: list[int] = field(default_factory=list)    # windows, every detected burst
    false_spikes: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.true_spikes / self.spikes if self.spikes else None

    @property
    def recall(self) -> float | None:
        return self.goal_detected / self.goal_bursts if self.goal_bursts else None

    @property
    def recall_all(self) -> float | None:
        return self.detected / self.bursts if self.bursts else None

    @property
    def median_ttd(self) -> float | None:
        return statistics.median(self.ttd) if self.ttd else None

    def to_dict(self) -> dict:
        return {
            "scenario": self.name, "bursts": self.bursts, "goal_bursts": self.goal_bursts,
            "detected": self.detected, "goal_detected": self.goal_detected, "spikes": self.spikes,
            "true_spikes": self.true_spikes, "precision": self.precision, "recall": self.recall,
            "recall_all": self.recall_all, "median_ttd_windows": self.median_ttd, "ttd_windows": self.ttd,
            "false_spikes": self.false_spikes, "missed": self.missed,
        }


def _utc(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def evaluate(scenario: Scenario, spikes: list[Spike], hop: int, tolerance_s: int) -> Result:
    result = Result(scenario.name, bursts=len(scenario.bursts))
    first_hit: dict[Burst, int] = {}
    for spike in spikes:
        hit = None
        for burst in scenario.bursts:
            if (burst.tag, burst.platform) == (spike.tag, spike.platform) and \
                    burst.start <= spike.detected_at <= burst.end + tolerance_s:
                hit = burst
                break
        result.spikes += 1
        if hit is None:
            result.false_spikes.append(f"{spike.tag}/{spike.platform} at {_utc(spike.detected_at)}: {spike.reason}")
            continue
        result.true_spikes += 1
        first_hit[hit] = min(first_hit.get(hit, spike.detected_at), spike.detected_at)
    for burst in scenario.bursts:
        goal = burst.magnitude >= GOAL_MAGNITUDE
        result.goal_bursts += goal
        if burst in first_hit:
            windows = max(1, math.ceil((first_hit[burst] - burst.start) / hop))
            result.detected += 1
            result.ttd_all.append(windows)
            if goal:
                result.goal_detected += 1
                result.ttd.append(windows)
        else:
            result.missed.append(f"{burst.tag}/{burst.platform} {burst.magnitude:g}× {burst.shape} "
                                 f"from {_utc(burst.start)}")
    return result


def replay(scenario: Scenario, config: SpikeConfig, size: int, hop: int) -> list[Spike]:
    detector = SpikeDetector(config)
    return detector.observe_many(window_rows(scenario.posts, scenario.followers, size, hop))


def run(name: str, config: SpikeConfig | None = None, seed: int = 1, small: bool = False,
        window: tuple[int, int] | None = None, tolerance_s: int | None = None) -> tuple[Result, list[Spike]]:
    config = config or SpikeConfig()
    size, hop = window or config.windows[0]
    if config.hop_of(size) != hop:
        config = SpikeConfig(**{**config.__dict__, "windows": ((size, hop),)})
    scenario = build(name, seed, small)
    spikes = replay(scenario, config, size, hop)
    return evaluate(scenario, spikes, hop, size if tolerance_s is None else tolerance_s), spikes


def overall(results: list[Result]) -> Result:
    total = Result("overall")
    for r in results:
        total.bursts += r.bursts
        total.goal_bursts += r.goal_bursts
        total.detected += r.detected
        total.goal_detected += r.goal_detected
        total.spikes += r.spikes
        total.true_spikes += r.true_spikes
        total.ttd += r.ttd
        total.ttd_all += r.ttd_all
    return total
