"""Viral spike detection on final window results (pure: no I/O, no clock).

The detector reads the final rows of `tagpulse.windows` (one row per tag,
platform and window, in window order per key) and keeps a small baseline per
(tag, platform, window_size): an EWMA of the post count, an EWMA of the squared
prediction error (the variance) and an EWMA of the unique-author count.

A window fires when three independent questions all say yes (docs/spikes.md):

* Poisson (Gnip "Trend Detection in Social Data"): is the observed count
  outside the 99 % Poisson interval of the expected count?  η = (c − ν) / (CI_high − CI_low).
* EWMA z-score: is it also far outside what this tag usually does?  The EWMA
  variance is never below the Poisson variance ν, and on tags with daily cycles
  or bursty habits it is larger, which keeps those tags quiet.
* Unique authors (Mastodon `Trends::Tags`): did more *people* than expected
  use the tag?  (o − e)² / e with e ≥ 1 and o ≥ a floor.  A flood from one bot
  raises the count but not this score, so it never fires on its own.

Windows the pipeline did not emit had zero posts; the detector fills such gaps
with zeros.  Baselines learn from clipped values (at most μ + clip·σ), so a
burst does not become its own baseline within minutes, while a lasting change
of level is still absorbed within a few half-lives.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Iterable

STATE_VERSION = 1


# --------------------------------------------------------------------------- scores

def poisson_interval(expected: float, confidence: float = 0.99) -> tuple[float, float]:
    """Two-sided `confidence` interval of a Poisson count with mean `expected`.

    The exact (Garwood) interval is chi2.ppf(α/2, 2ν)/2 … chi2.ppf(1 − α/2, 2ν + 2)/2.
    Without scipy we use Byar's approximation, which is those chi-square quantiles
    taken through the Wilson–Hilferty cube-root transform; it is within about 1 %
    of the exact bounds for ν ≥ 1 (tests/test_spikes.py checks this against an
    exact bisection on the Poisson CDF).
    """
    nu = max(float(expected), 0.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    if nu > 0:
        base = 1.0 - 1.0 / (9.0 * nu) - z / (3.0 * math.sqrt(nu))
        low = nu * base ** 3 if base > 0 else 0.0
    else:
        low = 0.0
    up = nu + 1.0
    high = up * (1.0 - 1.0 / (9.0 * up) + z / (3.0 * math.sqrt(up))) ** 3
    return low, high


def poisson_eta(observed: float, expected: float, confidence: float = 0.99) -> float:
    """Gnip's point-by-point score η = (|c − ν| / ν) ÷ ((CI_high − CI_low) / ν).

    The ν cancels.  We keep the sign (a drop is negative) because only rises
    are spikes.
    """
    low, high = poisson_interval(expected, confidence)
    return (observed - expected) / (high - low)


def poisson_z(observed: float, expected: float) -> float:
    """Normal deviate of a Poisson count: z with P(X ≥ observed | expected) ≈ Φ(−z).

    Wilson–Hilferty cube-root form, 3√c·(1 − 1/(9c) − (μ/c)^⅓); unlike
    (c − μ)/√μ it keeps the long right tail of small counts, so 8 posts when
    1.3 were expected is z ≈ 3.7, not 5.6.
    """
    c = float(observed)
    mu = max(float(expected), 1e-12)
    if c <= 0:
        return -math.sqrt(2.0 * mu)
    return 3.0 * math.sqrt(c) * (1.0 - 1.0 / (9.0 * c) - (mu / c) ** (1.0 / 3.0))


def z_score(observed: float, expected: float, variance: float) -> float:
    """(x − μ) / σ with σ² never below the Poisson variance μ (counts are not normal)."""
    return (observed - expected) / math.sqrt(max(variance, expected, 1e-12))


def author_score(observed: float, expected: float, floor: int = 5) -> float:
    """Mastodon's trending score (o − e)² / e, with e ≥ 1; zero unless o ≥ e and o ≥ floor."""
    e = max(float(expected), 1.0)
    if observed < e or observed < floor:
        return 0.0
    return (observed - e) ** 2 / e


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SpikeConfig:
    """Thresholds and baseline settings; every count floor is per window of `windows`."""

    # (size, hop) seconds of the window results the detector runs on; rows of
    # other sizes are ignored.  1h windows every 5 min: see docs/spikes.md.
    windows: tuple[tuple[int, int], ...] = ((3600, 300),)
    half_life_s: int = 3 * 3600      # EWMA half-life of the baseline
    trend: float = 0.1               # Holt trend gain β (0 = plain EWMA): follows daily cycles without lag
    confidence: float = 0.99         # Poisson interval for η
    eta_min: float = 1.0             # η ≥ this: outside the whole width of the 99 % interval
    z_min: float = 4.0               # and (x − μ)/σ ≥ this with the tag's own EWMA variance
    authors_min: float = 16.0        # and (o − e)²/e ≥ this (≈ a 4σ rise in people) …
    authors_z_min: float = 3.0       # … that is also ≥ this many of the tag's own σ of authors
    onset_z_min: float = 4.0         # sliding windows: the rise from the previous window, in its own σ
    onset_level_z_min: float = 2.0   # … fires early if the window itself is at least this elevated
    onset_ratio_min: float = 1.5     # … and the newest hop added ≥ this many baseline hops of posts
    min_posts: int = 20              # floors: a window needs this many posts …
    min_authors: int = 10            # … and this many unique authors to fire at all
    min_expected: float = 1.0        # ν and e are never below this
    clip_sigma: float = 3.0          # the baseline learns from min(x, μ + clip·σ)
    cooldown_s: int = 2 * 3600       # after a spike, the key stays silent this long …
    warmup_s: int = 12 * 3600        # a key needs this much history before it may fire
    new_keys_fire: bool = True       # a key first seen after the detector's warm-up had zero history
    gap_fill_max: int = 2000         # zero windows applied one by one; longer gaps decay in closed form

    def __post_init__(self) -> None:
        if not self.clip_sigma >= 0:  # a negative clip would turn the learning clip inside out
            raise ValueError(f"clip_sigma must be >= 0, got {self.clip_sigma!r}")

    def hop_of(self, size: int) -> int | None:
        for s, hop in self.windows:
            if s == size:
                return hop
        return None

    def alpha(self, hop: int) -> float:
        """EWMA weight per hop such that the weight of a value halves every half_life_s."""
        return 1.0 - 0.5 ** (hop / self.half_life_s)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["windows"] = [list(w) for w in self.windows]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SpikeConfig":
        data = dict(data)
        if "windows" in data:
            data["windows"] = tuple(tuple(int(x) for x in w) for w in data["windows"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- output

def human_duration(seconds: int) -> str:
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % width == 0:
            return f"{seconds // width}{unit}"
    return f"{seconds}s"


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:,.1f}".rstrip("0").rstrip(".")
    return f"{x:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Spike:
    """One alert.  `row()` has exactly the columns of the ClickHouse `spikes` table."""

    tag: str
    platform: str
    window_size: int
    window_start: int
    detected_at: int          # window_end of a final window; the event time for an early alert
    observed: int             # posts in the window (partial window for early alerts)
    expected: float           # ν, the expected posts of that (partial) window
    score: float              # η, the Poisson score
    method: str
    reason: str
    authors: int = 0
    expected_authors: float = 0.0
    z: float = 0.0
    author_score: float = 0.0
    early: bool = False

    def row(self) -> dict:
        return {
            "tag": self.tag, "platform": self.platform, "window_size": self.window_size,
            "window_start": self.window_start, "detected_at": self.detected_at,
            "observed": self.observed, "expected": self.expected, "score": self.score,
            "method": self.method, "reason": self.reason,
        }

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- state

@dataclass(slots=True)
class Baseline:
    """Everything the detector remembers about one (tag, platform, window_size)."""

    first: int               # window_start from which the key counts as observed (warm-up)
    last: int                # window_start of the last window applied
    mean: float              # EWMA of posts per window
    var: float               # EWMA of the squared prediction error
    authors: float           # EWMA of unique authors per window
    authors_var: float = 0.0  # EWMA of the squared prediction error of authors
    trend: float = 0.0       # Holt trend of posts per window, per hop
    authors_trend: float = 0.0
    step_var: float = 0.0    # EWMA of the squared rise from one window to the next (posts)
    prev_posts: int = 0      # posts and authors of the previous window (0 if it had no row)
    prev_authors: int = 0
    fired: int | None = None  # window_start of the last spike
    armed: bool = True       # False after a spike until a window falls below the count test

    def to_list(self) -> list:
        return [self.first, self.last, self.mean, self.var, self.authors, self.authors_var, self.trend,
                self.authors_trend, self.step_var, self.prev_posts, self.prev_authors, self.fired, self.armed]

    @classmethod
    def from_list(cls, data: list) -> "Baseline":
        (first, last, mean, var, authors, authors_var, trend, authors_trend, step_var, prev_posts, prev_authors,
         fired, armed) = data
        return cls(int(first), int(last), float(mean), float(var), float(authors), float(authors_var),
                   float(trend), float(authors_trend), float(step_var), int(prev_posts), int(prev_authors), None if fired is None else int(fired),
                   bool(armed))


Key = tuple[str, str, int]


@dataclass
class _Scores:
    posts: int
    authors: int
    expected: float
    sigma: float
    expected_authors: float
    eta: float
    z: float
    author_score: float
    authors_z: float
    step: int = 0
    step_z: float = 0.0
    step_authors: int = 0
    step_authors_z: float = 0.0
    floors: bool = False
    level: bool = False       # the window's count is far above the baseline (η and z)
    people: bool = False      # … and so is its number of unique authors
    onset: bool = False       # the rise since the previous sliding window is sharp, in posts and in authors

    @property
    def fires(self) -> bool:
        return self.floors and ((self.level and self.people) or self.onset)


def _holt_step(level: float, trend: float, var: float, x: float, a: float, keep: float, b: float, clip: float,
               floor: float) -> tuple[float, float, float]:
    """One step of Holt's linear method in error-correction form, from x clipped at forecast + clip·σ:
    (level, trend, variance) after it. The forecast is level + trend (never below 0); all three learn
    from the clipped forecast error. Conditional expressions pick what max()/min() would pick."""
    forecast = level + trend
    if forecast < 0.0:
        forecast = 0.0
    spread = forecast if forecast > var else var
    cap = forecast + clip * math.sqrt(floor if floor > spread else spread)
    diff = (cap if cap < x else x) - forecast
    level = forecast + a * diff
    return level, (trend + a * b * diff) if level > 0 else 0.0, keep * (var + a * diff * diff)


@dataclass
class SpikeDetector:
    """Feed final window rows with `observe`; it returns a `Spike` or None.

    Rows must arrive in window order per key; an older or repeated window of a
    key is ignored (so a replay after a restart cannot double-apply a window).
    """

    config: SpikeConfig = field(default_factory=SpikeConfig)
    started: int | None = None            # first window_start this detector ever saw
    keys: dict[Key, Baseline] = field(default_factory=dict)
    _alphas: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)  # hop -> weight
    _hops: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)  # size -> hop

    def __post_init__(self) -> None:
        self._hops = {size: hop for size, hop in reversed(self.config.windows)}  # the first wins, as in hop_of

    # ---- public API

    def observe(self, row: dict) -> Spike | None:
        parsed = self._parse(row)
        if parsed is None:
            return None
        key, start, posts, authors, hop = parsed
        return self._observe(key, hop, start, posts, authors)

    def observe_final(self, tag: str, platform: str, size: int, start: int, posts: int,
                      authors: int) -> Spike | None:
        """observe() for the fields of a final row as the merge stage built it, without _parse's checks:
        non-negative ints, in window order per key. Stage 2 only adds up what stage 1 validated."""
        hop = self._hops.get(size)
        if hop is None:
            return None
        return self._observe((tag, platform, size), hop, start, posts, authors)

    def _observe(self, key: Key, hop: int, start: int, posts: int, authors: int) -> Spike | None:
        if self.started is None:
            self.started = start
        state = self.keys.get(key)
        if state is None:
            state = self._new_baseline(key[2], start, hop, posts, authors)
            self.keys[key] = state
            if state.last == start:          # seeded from this very window: nothing to score
                return None
        if start <= state.last:
            return None
        self._fill_gap(state, key[2], start, hop)

        cfg = self.config
        if posts < cfg.min_posts or authors < cfg.min_authors:
            # Below the floors nothing fires, and most rows of a busy stream end here. Only
            # `level` could matter, to re-arm a key disarmed by a spike; every other key is armed.
            if not state.armed and not self._level(state, posts, 1.0):
                state.armed = True
            self._learn(state, key[2], hop, posts, authors)
            state.last = start
            return None

        s = self._score(state, key[2], hop, posts, authors, 1.0)
        fire = self._may_fire(state, start) and s.fires

        self._learn(state, key[2], hop, posts, authors)
        state.last = start
        if fire:
            state.fired = start
            state.armed = False
        elif not s.level:
            state.armed = True
        if not fire:
            return None
        return self._spike(key, start, start + key[2], s, early=False)

    def observe_open(self, row: dict, as_of: int) -> Spike | None:
        """Score a still-open window (posts so far, up to event time `as_of`) without changing any state.

        Only the level test runs, against the expectation scaled to the elapsed
        part of the window.  An early spike is provisional: the stream should
        alert on it but store only the results of final windows (whose `observe`
        may or may not confirm it).
        """
        parsed = self._parse(row)
        if parsed is None:
            return None
        key, start, posts, authors, hop = parsed
        state = self.keys.get(key)
        if state is None or start <= state.last:
            return None
        size = key[2]
        fraction = min(max((as_of - start) / size, hop / size), 1.0)
        # Windows between state.last and this one are unknown here (they may
        # still be open); the un-decayed baseline only makes an early alert rarer.
        s = self._score(state, size, hop, posts, authors, fraction)
        if not (self._may_fire(state, start) and s.floors and s.level and s.people):
            return None
        return self._spike(key, start, int(as_of), s, early=True)

    def observe_many(self, rows: Iterable[dict]) -> list[Spike]:
        return [spike for row in rows if (spike := self.observe(row)) is not None]

    def expected(self, tag: str, platform: str, window_size: int) -> float | None:
        state = self.keys.get((tag, platform, window_size))
        return None if state is None else max(state.mean, self.config.min_expected)

    def prune(self, now: int, epsilon: float = 1e-3) -> int:
        """Forget keys whose baseline has decayed to ~0 by `now` and that are not cooling down.

        A forgotten key that comes back is treated as a new key with zero
        history, which is what its decayed baseline said anyway; this keeps the
        state bounded by the tags seen in the last few half-lives.
        """
        dropped = 0
        for key, state in list(self.keys.items()):
            hop = self._hops.get(key[2]) or key[2]
            windows = max(0, (now - state.last) // hop)
            decay = (1.0 - self.config.alpha(hop)) ** windows
            cooling = state.fired is not None and now - state.fired < self.config.cooldown_s
            if not cooling and state.mean * decay < epsilon and state.authors * decay < epsilon:
                del self.keys[key]
                dropped += 1
        return dropped

    # ---- persistence

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "started": self.started,
            "keys": [[tag, platform, size, *state.to_list()]
                     for (tag, platform, size), state in self.keys.items()],
        }

    @classmethod
    def from_dict(cls, data: dict, config: SpikeConfig | None = None) -> "SpikeDetector":
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"spike detector state version {version!r}, expected {STATE_VERSION}")
        keys = {(str(item[0]), str(item[1]), int(item[2])): Baseline.from_list(item[3:]) for item in data["keys"]}
        started = data.get("started")
        return cls(config or SpikeConfig(), None if started is None else int(started), keys)

    def key_state(self, tag: str, platform: str, window_size: int) -> list | None:
        """One key's state as a small JSON-able list, for a per-key changelog."""
        state = self.keys.get((tag, platform, window_size))
        return None if state is None else state.to_list()

    def set_key_state(self, tag: str, platform: str, window_size: int, data: list | None) -> None:
        if data is None:
            self.keys.pop((tag, platform, window_size), None)
        else:
            self.keys[(tag, platform, window_size)] = Baseline.from_list(data)

    # ---- internals

    def _parse(self, row: dict):
        """(key, start, posts, authors, hop) or None for rows this detector does not run on."""
        try:
            size = int(row["window_size"])
            hop = self._hops.get(size)
            if hop is None:
                return None
            key = (str(row["tag"]), str(row["platform"]), size)
            start = int(row["window_start"])
            posts = int(row["posts"])
            authors = int(row.get("unique_authors", posts))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None     # a malformed row never crashes the detector
        if posts < 0 or authors < 0:
            return None
        return key, start, posts, authors, hop

    def _may_fire(self, state: Baseline, start: int) -> bool:
        cfg = self.config
        warmed = start - state.first >= cfg.warmup_s
        cooled = state.fired is None or (start - state.fired >= cfg.cooldown_s and state.armed)
        return warmed and cooled

    def _new_baseline(self, size: int, start: int, hop: int, posts: int, authors: int) -> Baseline:
        cfg = self.config
        if cfg.new_keys_fire and self.started is not None and start - self.started >= cfg.warmup_s:
            # The pipeline has been watching for a whole warm-up and never saw
            # this key: its history is zeros, so it is warmed up already.
            return Baseline(first=start - cfg.warmup_s, last=start - hop, mean=0.0, var=0.0, authors=0.0)
        # Seen during the detector's own warm-up: seed the baseline from this window.
        return Baseline(first=start, last=start, mean=float(posts), var=float(posts), authors=float(authors),
                        authors_var=float(authors), step_var=2.0 * posts * hop / size,
                        prev_posts=posts, prev_authors=authors)

    def _fill_gap(self, state: Baseline, size: int, start: int, hop: int) -> None:
        missing = (start - state.last) // hop - 1
        if missing <= 0:
            return
        state.armed = True      # a zero window is below any count test
        for _ in range(min(missing, self.config.gap_fill_max)):
            self._learn(state, size, hop, 0, 0)
        rest = missing - self.config.gap_fill_max
        if rest > 0:
            decay = (1.0 - self.config.alpha(hop)) ** rest
            state.mean *= decay
            state.var *= decay
            state.authors *= decay
            state.authors_var *= decay
            state.step_var *= decay
            state.trend = state.authors_trend = 0.0

    def _score(self, state: Baseline, size: int, hop: int, posts: int, authors: int, fraction: float) -> _Scores:
        cfg = self.config
        expected = max((state.mean + state.trend) * fraction, cfg.min_expected)
        variance = max(state.var * fraction, expected)
        expected_authors = max((state.authors + state.authors_trend) * fraction, cfg.min_expected)
        authors_var = max(state.authors_var * fraction, expected_authors)
        if posts < cfg.min_posts or authors < cfg.min_authors:
            # Below the floors nothing fires; only `level` matters (it re-arms a key after a
            # spike). Most rows of a busy stream end here, so skip the other scores.
            z = z_score(posts, expected, variance)
            level = self._level(state, posts, fraction)
            return _Scores(posts=posts, authors=authors, expected=expected, sigma=math.sqrt(variance),
                           expected_authors=expected_authors, eta=0.0, z=z, author_score=0.0, authors_z=0.0,
                           level=level)
        s = _Scores(
            posts=posts, authors=authors, expected=expected, sigma=math.sqrt(variance),
            expected_authors=expected_authors,
            eta=poisson_eta(posts, expected, cfg.confidence),
            z=z_score(posts, expected, variance),
            author_score=author_score(authors, expected_authors, cfg.min_authors),
            authors_z=z_score(authors, expected_authors, authors_var),
        )
        s.floors = posts >= cfg.min_posts and authors >= cfg.min_authors
        s.level = s.eta >= cfg.eta_min and s.z >= cfg.z_min
        s.people = s.author_score >= cfg.authors_min and s.authors_z >= cfg.authors_z_min
        if size > hop and fraction >= 1.0:
            # Two sliding windows share all but one hop: under the baseline the
            # rise c_t − c_(t−1) is one new hop minus one dropped hop, a Skellam
            # variable with variance 2·ν·hop/size (or the tag's own, if larger).
            # We score the newest hop as if the dropped one was average: a
            # Poisson count of ν·hop/size + rise, in Wilson–Hilferty z (right
            # for small counts); ÷ √2 because the dropped hop was just as
            # uncertain, and ÷ the tag's over-dispersion (its own σ of rises
            # over the Poisson one).  Authors get the same treatment.
            share = hop / size
            poisson_sd = math.sqrt(2.0 * expected * share)
            dispersion = math.sqrt(2.0) * math.sqrt(max(state.step_var, poisson_sd ** 2)) / poisson_sd
            s.step = posts - state.prev_posts
            s.step_z = poisson_z(expected * share + s.step, expected * share) / dispersion
            s.step_authors = authors - state.prev_authors
            s.step_authors_z = poisson_z(expected_authors * share + s.step_authors,
                                         expected_authors * share) / dispersion
            s.onset = (s.step_z >= cfg.onset_z_min and s.step_authors_z >= cfg.onset_z_min
                       and s.z >= cfg.onset_level_z_min and s.step >= cfg.onset_ratio_min * expected * share)
        return s

    def _level(self, state: Baseline, posts: int, fraction: float) -> bool:
        """Is the count far above the baseline (η and z)? The one test that matters below the floors."""
        cfg = self.config
        expected = max((state.mean + state.trend) * fraction, cfg.min_expected)
        variance = max(state.var * fraction, expected)
        return (z_score(posts, expected, variance) >= cfg.z_min
                and poisson_eta(posts, expected, cfg.confidence) >= cfg.eta_min)

    def _learn(self, state: Baseline, size: int, hop: int, posts: int, authors: int) -> None:
        """One EWMA step (Finch's incremental mean and variance) from values clipped at μ + clip·σ.

        It runs for every window the detector scores and every empty window it fills in, so its
        arithmetic uses locals and conditional expressions instead of attribute reads and max()/min()
        calls (which took most of its time), with the same results.
        """
        cfg = self.config
        a = self._alphas.get(hop)
        if a is None:
            a = self._alphas[hop] = cfg.alpha(hop)
        keep = 1.0 - a
        clip, floor, b = cfg.clip_sigma, cfg.min_expected, cfg.trend
        state.mean, state.trend, state.var = _holt_step(state.mean, state.trend, state.var, float(posts),
                                                        a, keep, b, clip, floor)
        state.authors, state.authors_trend, state.authors_var = _holt_step(
            state.authors, state.authors_trend, state.authors_var, float(authors), a, keep, b, clip, floor)
        if size > hop:
            mean, step_var = state.mean, state.step_var
            poisson = 2.0 * (floor if floor > mean else mean) * hop / size
            bound = clip * math.sqrt(poisson if poisson > step_var else step_var)
            step = float(posts - state.prev_posts)
            if step > bound:
                step = bound
            elif step < -bound:
                step = -bound
            state.step_var = keep * step_var + a * step * step
        state.prev_posts = posts
        state.prev_authors = authors

    def _spike(self, key: Key, start: int, detected_at: int, s: _Scores, early: bool) -> Spike:
        cfg = self.config
        tag, platform, size = key
        tests = []
        if s.level and s.people:
            tests.append(f"Poisson η {_num(s.eta)} ≥ {_num(cfg.eta_min)}; z {_num(s.z)} ≥ {_num(cfg.z_min)}; "
                         f"authors score {_num(s.author_score)} ≥ {_num(cfg.authors_min)} "
                         f"({s.authors:,} vs expected {_num(s.expected_authors)})")
            method = "poisson+ewma+authors"
        else:
            tests.append(f"onset: +{s.step:,} posts (z {_num(s.step_z)}) and +{s.step_authors:,} authors "
                         f"(z {_num(s.step_authors_z)}) since the previous window, ≥ {_num(cfg.onset_z_min)}; "
                         f"Poisson η {_num(s.eta)}; z {_num(s.z)}")
            method = "onset+authors"
        reason = (
            f"{s.posts:,} posts by {s.authors:,} authors in {human_duration(size)}"
            f"{' so far' if early else ''} vs expected {_num(s.expected)} ± {_num(s.sigma)} (EWMA); "
            + "; ".join(tests)
        )
        return Spike(
            tag=tag, platform=platform, window_size=size, window_start=start, detected_at=detected_at,
            observed=s.posts, expected=round(s.expected, 3), score=round(s.eta, 3),
            method=method + ("/early" if early else ""), reason=reason,
            authors=s.authors, expected_authors=round(s.expected_authors, 3), z=round(s.z, 3),
            author_score=round(s.author_score, 3), early=early,
        )
