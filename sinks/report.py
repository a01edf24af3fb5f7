"""`tagpulse report` logic (pure): the queries, the report model built from their rows, and its text form.

No I/O here: the command runs QUERIES (server-side parameters, never string
formatting of user input) and hands the rows to build_report(); render_text()
turns the model into terminal text, and an HTML renderer can reuse the model.

Where each figure comes from:
- totals, reach over time and top contributors come from `tagpulse.posts`
  (one row per unique post), so nothing is double counted; sums of
  `reach_windows` would count a post once per overlapping (hopping) window;
- the peak window comes from `tagpulse.reach_windows` (final window rows);
- late posts come from `tagpulse.late_events`;
- spikes come from `tagpulse.spikes` (the stream's detector), each with the
  completeness of its source over the spike's window;
- completeness (duplicate, late and invalid rates) comes from
  `tagpulse.completeness`, which is counted per source (platform) and minute
  before posts are split by tag: it describes the sources that carry the tag.
Queries in OPTIONAL_QUERIES read tables a database created before they existed
may lack; the command treats a missing table there as "no rows".
Definitions: potential reach = Σ over unique authors of their largest follower
count; impressions = Σ over posts of the author's follower count.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tagpulse.core.spikes import human_duration

MAX_TIME = 4_102_444_800  # 2100-01-01: "no upper bound", still a valid DateTime

_RANGE = ("has(hashtags, {tag:String}) "
          "AND created_at >= toDateTime({since:Int64}, 'UTC') AND created_at < toDateTime({until:Int64}, 'UTC')")

QUERIES: dict[str, str] = {
    "platforms": f"""
SELECT platform, sum(n) AS posts, sum(s) AS shares, count() AS unique_authors, sum(mf) AS potential_reach,
       sum(imp) AS impressions, sum(eng) AS engagement, min(first) AS first_seen, max(last) AS last_seen
FROM (
    SELECT platform, author_id, count() AS n, countIf(is_share) AS s, max(author_followers) AS mf,
           sum(author_followers) AS imp, sum(likes + shares + replies + quotes) AS eng,
           min(toUnixTimestamp(created_at)) AS first, max(toUnixTimestamp(created_at)) AS last
    FROM tagpulse.posts
    WHERE {_RANGE}
    GROUP BY platform, author_id
)
GROUP BY platform
ORDER BY platform""",
    "buckets": f"""
SELECT platform, intDiv(toUnixTimestamp(created_at), {{window:UInt32}}) * {{window:UInt32}} AS bucket,
       count() AS posts, countIf(is_share) AS shares, sum(author_followers) AS impressions
FROM tagpulse.posts
WHERE {_RANGE}
GROUP BY platform, bucket
ORDER BY bucket, platform""",
    # How much each bucket adds to the cumulative potential reach: per author, the increase of
    # their running maximum follower count (an author counts once, with their largest count so far).
    "reach_gains": f"""
SELECT platform, g.1 AS bucket, sum(g.2) AS gain
FROM (
    SELECT platform, author_id, arraySort(groupArray((b, mf))) AS seq,
           arrayMap(i -> arrayMax(arraySlice(arrayMap(t -> t.2, seq), 1, i)), arrayEnumerate(seq)) AS runmax,
           arrayMap(i -> (seq[i].1, runmax[i] - if(i = 1, 0, runmax[i - 1])), arrayEnumerate(seq)) AS gains
    FROM (
        SELECT platform, author_id, intDiv(toUnixTimestamp(created_at), {{window:UInt32}}) * {{window:UInt32}} AS b,
               max(author_followers) AS mf
        FROM tagpulse.posts
        WHERE {_RANGE}
        GROUP BY platform, author_id, b
    )
    GROUP BY platform, author_id
)
ARRAY JOIN gains AS g
GROUP BY platform, bucket
ORDER BY bucket, platform""",
    "top": f"""
SELECT platform, author_id, argMax(author_handle, author_followers) AS handle,
       max(author_followers) AS followers, count() AS posts, countIf(is_share) AS shares
FROM tagpulse.posts
WHERE {_RANGE}
GROUP BY platform, author_id
ORDER BY followers DESC, posts DESC, platform, author_id
LIMIT {{top:UInt32}}""",
    "peak": """
SELECT toUnixTimestamp(window_start) AS start, toUnixTimestamp(window_end) AS end,
       sum(posts) AS posts, sum(impressions) AS impressions, sum(potential_reach) AS potential_reach,
       sum(unique_authors) AS unique_authors
FROM tagpulse.reach_windows
WHERE tag = {tag:String} AND window_size = {window:UInt32}
  AND window_start >= toDateTime({since:Int64}, 'UTC') AND window_end <= toDateTime({until:Int64}, 'UTC')
GROUP BY start, end
ORDER BY posts DESC, impressions DESC, start
LIMIT 1""",
    "windows": """
SELECT window_size, count() AS rows, uniqExact(window_start) AS windows
FROM tagpulse.reach_windows
WHERE tag = {tag:String}
  AND window_start >= toDateTime({since:Int64}, 'UTC') AND window_end <= toDateTime({until:Int64}, 'UTC')
GROUP BY window_size
ORDER BY window_size""",
    "late": """
SELECT window_size, sum(events) AS events
FROM tagpulse.late_events
WHERE tag = {tag:String}
  AND window_start >= toDateTime({since:Int64}, 'UTC') AND window_start < toDateTime({until:Int64}, 'UTC')
GROUP BY window_size
ORDER BY window_size""",
    # Each alert with its source's completeness over [window_start, window_start + window_size).
    "spikes": """
WITH s AS (
    SELECT *, arrayJoin(range(toUInt32(window_start), toUInt32(window_start) + window_size, 60)) AS minute
    FROM tagpulse.spikes
    WHERE tag = {tag:String}
      AND window_start >= toDateTime({since:Int64}, 'UTC') AND window_start < toDateTime({until:Int64}, 'UTC')
)
SELECT s.platform AS platform, s.window_size AS window_size, toUnixTimestamp(s.window_start) AS start,
       toUnixTimestamp(s.detected_at) AS detected_at, s.observed AS observed, s.expected AS expected,
       s.score AS score, s.method AS method, s.reason AS reason,
       sum(c.received) AS received, sum(c.duplicates) AS duplicates, sum(c.late) AS late
FROM s
LEFT JOIN (
    SELECT platform, toUInt32(window_start) AS minute, sum(received) AS received, sum(duplicates) AS duplicates,
           sum(late) AS late
    FROM tagpulse.completeness
    WHERE (platform, toUInt32(window_start)) IN (SELECT platform, minute FROM s)
    GROUP BY platform, minute
) AS c ON c.platform = s.platform AND c.minute = s.minute
GROUP BY platform, window_size, start, detected_at, observed, expected, score, method, reason
ORDER BY start, platform, window_size
LIMIT 500""",
    # Completeness of the sources that carry the tag (and of 'unknown': unreadable input), in the period.
    "completeness": """
SELECT platform, sum(received) AS received, sum(duplicates) AS duplicates, sum(late) AS late,
       sum(invalid) AS invalid
FROM tagpulse.completeness
WHERE window_start >= toDateTime({since:Int64}, 'UTC') AND window_start < toDateTime({until:Int64}, 'UTC')
  AND (platform = 'unknown' OR platform IN (SELECT DISTINCT platform FROM tagpulse.posts
                                            WHERE has(hashtags, {tag:String})))
GROUP BY platform
ORDER BY platform = 'unknown', platform""",
    "completeness_buckets": """
SELECT platform, intDiv(toUnixTimestamp(window_start), {window:UInt32}) * {window:UInt32} AS bucket,
       sum(received) AS received, sum(duplicates) AS duplicates, sum(late) AS late
FROM tagpulse.completeness
WHERE window_start >= toDateTime({since:Int64}, 'UTC') AND window_start < toDateTime({until:Int64}, 'UTC')
  AND platform IN (SELECT DISTINCT platform FROM tagpulse.posts WHERE has(hashtags, {tag:String}))
GROUP BY platform, bucket
ORDER BY bucket, platform""",
}

# Queries over tables added after the first schema version: absent tables mean "no rows".
OPTIONAL_QUERIES = frozenset({"spikes", "completeness", "completeness_buckets"})


# ----------------------------------------------------------------------------- inputs
def canonical(tag: str) -> str:
    """The tag's canonical key, whatever the user typed ('#einBuchfürKai' -> 'einbuchfuerkai')."""
    try:
        from tagpulse.core.hashtags import canonical_tag
    except ImportError:
        canonical_tag = None
    if canonical_tag is not None:
        key = canonical_tag(tag.strip().lstrip("#"))
        if key:
            return key
    return _fallback_canonical(tag)


def _fallback_canonical(tag: str) -> str:
    # Until tagpulse.core.hashtags lands: NFKC, German transliteration, lowercase.
    text = unicodedata.normalize("NFKC", tag.strip().lstrip("#＃"))
    for src, dst in (("Ä", "Ae"), ("Ö", "Oe"), ("Ü", "Ue"), ("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss"),
                     ("ẞ", "SS")):
        text = text.replace(src, dst)
    return text.casefold()


def parse_time(text: str, now: float) -> int:
    """'2015-05-20', '2015-05-20T09:15', '2015-05-20 09:15:00Z', an epoch number, or '24h' (ago) -> epoch seconds."""
    from tagpulse.config import parse_duration

    raw = text.strip()
    if not raw:
        raise ValueError("empty time")
    if raw[-1].lower() in "smhd" and raw[:-1].replace(".", "", 1).isdigit():
        return int(now) - parse_duration(raw)
    if raw.replace(".", "", 1).isdigit() and len(raw) > 8:
        return int(float(raw))
    iso = raw.replace(" ", "T", 1)
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (use 2015-05-20, 2015-05-20T09:15Z, or 24h for 24 hours ago)") \
            from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def query_parameters(tag: str, since: int | None, until: int | None, window: int, top: int) -> dict:
    return {"tag": tag, "since": since if since is not None else 0,
            "until": until if until is not None else MAX_TIME, "window": window, "top": top}


# ----------------------------------------------------------------------------- model
@dataclass
class PlatformTotals:
    platform: str
    posts: int
    shares: int
    unique_authors: int
    potential_reach: int
    impressions: int
    engagement: int
    first_seen: int
    last_seen: int

    @property
    def originals(self) -> int:
        return self.posts - self.shares


@dataclass
class Bucket:
    start: int
    posts: int = 0
    impressions: int = 0
    cum_posts: int = 0
    cum_impressions: int = 0
    cum_potential_reach: int = 0
    cum_impressions_by_platform: dict[str, int] = field(default_factory=dict)
    cum_reach_by_platform: dict[str, int] = field(default_factory=dict)
    posts_by_platform: dict[str, int] = field(default_factory=dict)


@dataclass
class Contributor:
    platform: str
    author_id: str
    handle: str
    followers: int
    posts: int
    shares: int


@dataclass
class Peak:
    start: int
    end: int
    posts: int
    impressions: int
    potential_reach: int


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclass
class Completeness:
    """Received, duplicate, late and invalid records of one source (or all: platform 'all') in the period."""

    platform: str
    received: int
    duplicates: int
    late: int
    invalid: int
    duplicate_rate: float = 0.0   # duplicates / received
    late_rate: float = 0.0        # late / received
    invalid_rate: float = 0.0     # invalid / (received + invalid)

    def __post_init__(self):
        self.duplicate_rate = _rate(self.duplicates, self.received)
        self.late_rate = _rate(self.late, self.received)
        self.invalid_rate = _rate(self.invalid, self.received + self.invalid)


@dataclass
class CompletenessBucket:
    start: int
    platform: str
    received: int
    duplicates: int
    late: int
    duplicate_rate: float = 0.0
    late_rate: float = 0.0

    def __post_init__(self):
        self.duplicate_rate = _rate(self.duplicates, self.received)
        self.late_rate = _rate(self.late, self.received)


@dataclass
class SpikeMark:
    """One alert of the stream's detector, with its source's completeness over the spike's window."""

    platform: str
    window_size: int
    start: int
    detected_at: int
    observed: int
    expected: float
    score: float
    method: str
    reason: str
    received: int = 0
    duplicates: int = 0
    late: int = 0
    duplicate_rate: float = 0.0
    late_rate: float = 0.0

    def __post_init__(self):
        self.duplicate_rate = _rate(self.duplicates, self.received)
        self.late_rate = _rate(self.late, self.received)

    @property
    def end(self) -> int:
        return self.start + self.window_size


@dataclass
class Report:
    tag: str
    asked: str
    since: int | None
    until: int | None
    window: int
    platforms: list[PlatformTotals]
    total: PlatformTotals | None
    buckets: list[Bucket]
    top: list[Contributor]
    peak: Peak | None
    peak_bucket: Bucket | None
    windows: dict[int, int]   # window_size -> number of final windows stored
    late: dict[int, int]      # window_size -> late posts counted
    spikes: list[SpikeMark] = field(default_factory=list)
    completeness: list[Completeness] = field(default_factory=list)   # per source, then 'all' last
    completeness_buckets: list[CompletenessBucket] = field(default_factory=list)

    @property
    def first_seen(self) -> int | None:
        return self.total.first_seen if self.total else None


def _i(value) -> int:
    # JSON output quotes 64-bit integers; None means an empty aggregate.
    return int(value) if value not in (None, "") else 0


def _f(value) -> float:
    return float(value) if value not in (None, "") else 0.0


def build_report(tag: str, asked: str, since: int | None, until: int | None, window: int,
                 rows: dict[str, list[dict]]) -> Report:
    platforms = [PlatformTotals(r["platform"], _i(r["posts"]), _i(r["shares"]), _i(r["unique_authors"]),
                                _i(r["potential_reach"]), _i(r["impressions"]), _i(r["engagement"]),
                                _i(r["first_seen"]), _i(r["last_seen"]))
                 for r in rows.get("platforms", [])]
    total = None
    if platforms:
        # Author ids are platform-scoped, so totals over platforms are plain sums.
        total = PlatformTotals("all", *(sum(getattr(p, f) for p in platforms) for f in
                                        ("posts", "shares", "unique_authors", "potential_reach", "impressions",
                                         "engagement")),
                               min(p.first_seen for p in platforms), max(p.last_seen for p in platforms))

    by_start: dict[int, Bucket] = {}
    per_platform: dict[int, dict[str, list[int]]] = {}  # start -> platform -> [impressions, reach gain]
    for r in rows.get("buckets", []):
        start = _i(r["bucket"])
        bucket = by_start.setdefault(start, Bucket(start))
        bucket.posts += _i(r["posts"])
        bucket.impressions += _i(r["impressions"])
        per_platform.setdefault(start, {}).setdefault(r["platform"], [0, 0])[0] += _i(r["impressions"])
        bucket.posts_by_platform[r["platform"]] = bucket.posts_by_platform.get(r["platform"], 0) + _i(r["posts"])
    for r in rows.get("reach_gains", []):
        start = _i(r["bucket"])
        by_start.setdefault(start, Bucket(start))
        per_platform.setdefault(start, {}).setdefault(r["platform"], [0, 0])[1] += _i(r["gain"])
    buckets = []
    cum_posts = cum_impressions = cum_reach = 0
    cum_imp_p: dict[str, int] = {}
    cum_reach_p: dict[str, int] = {}
    for start in sorted(by_start):
        bucket = by_start[start]
        for platform, (impressions, gain) in per_platform.get(start, {}).items():
            cum_imp_p[platform] = cum_imp_p.get(platform, 0) + impressions
            cum_reach_p[platform] = cum_reach_p.get(platform, 0) + gain
            cum_reach += gain
        cum_posts += bucket.posts
        cum_impressions += bucket.impressions
        bucket.cum_posts, bucket.cum_impressions, bucket.cum_potential_reach = cum_posts, cum_impressions, cum_reach
        bucket.cum_impressions_by_platform = dict(cum_imp_p)
        bucket.cum_reach_by_platform = dict(cum_reach_p)
        buckets.append(bucket)

    top = [Contributor(r["platform"], str(r["author_id"]), str(r["handle"]), _i(r["followers"]), _i(r["posts"]),
                       _i(r["shares"])) for r in rows.get("top", [])]
    peak_rows = [r for r in rows.get("peak", []) if _i(r["posts"]) > 0]
    peak = None
    if peak_rows:
        r = peak_rows[0]
        peak = Peak(_i(r["start"]), _i(r["end"]), _i(r["posts"]), _i(r["impressions"]), _i(r["potential_reach"]))
    peak_bucket = max(buckets, key=lambda b: (b.posts, b.impressions, -b.start)) if buckets else None
    windows = {_i(r["window_size"]): _i(r["windows"]) for r in rows.get("windows", [])}
    late = {_i(r["window_size"]): _i(r["events"]) for r in rows.get("late", [])}

    spikes = [SpikeMark(r["platform"], _i(r["window_size"]), _i(r["start"]), _i(r["detected_at"]),
                        _i(r["observed"]), _f(r["expected"]), _f(r["score"]), str(r["method"]), str(r["reason"]),
                        _i(r.get("received")), _i(r.get("duplicates")), _i(r.get("late")))
              for r in rows.get("spikes", [])]
    completeness = [Completeness(r["platform"], _i(r["received"]), _i(r["duplicates"]), _i(r["late"]),
                                 _i(r["invalid"])) for r in rows.get("completeness", [])]
    if completeness:
        completeness.append(Completeness("all", *(sum(getattr(c, f) for c in completeness)
                                                  for f in ("received", "duplicates", "late", "invalid"))))
    # Completeness over time only where the tag has buckets: invalid input and other tags' quiet
    # stretches would otherwise stretch the time axis far beyond the tag's life.
    span = (buckets[0].start, buckets[-1].start) if buckets else None
    completeness_buckets = [CompletenessBucket(_i(r["bucket"]), r["platform"], _i(r["received"]),
                                               _i(r["duplicates"]), _i(r["late"]))
                            for r in rows.get("completeness_buckets", [])
                            if span and span[0] <= _i(r["bucket"]) <= span[1]]
    return Report(tag, asked, since, until, window, platforms, total, buckets, top, peak, peak_bucket, windows, late,
                  spikes, completeness, completeness_buckets)


# ----------------------------------------------------------------------------- text
def fmt_time(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# One formatting of window sizes everywhere ("1h", "5m", "90s"): the detector's.
fmt_duration = human_duration


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(rate: float) -> str:
    return f"{100 * rate:.2f}%"


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: Report) -> str:
    out: list[str] = []
    title = f"#{report.tag}"
    if report.asked.strip().lstrip("#") != report.tag:
        title += f"  (you asked for {report.asked!r})"
    span = f"{fmt_time(report.since) if report.since is not None else 'beginning'} .. " \
           f"{fmt_time(report.until) if report.until is not None else 'now'} UTC"
    out += [title, f"period: {span}", ""]
    if report.total is None:
        out.append("No posts with this tag in the period (tagpulse.posts).")
        if report.windows:
            out.append("There are window rows for it in tagpulse.reach_windows, outside the period or not yet matched.")
        return "\n".join(out) + "\n"

    first = min(report.platforms, key=lambda p: p.first_seen)
    out.append(f"first seen {fmt_time(first.first_seen)} UTC on {first.platform}; "
               f"last seen {fmt_time(report.total.last_seen)} UTC")
    out.append("")
    out.append("Totals per platform (from tagpulse.posts: every unique post counted once)")
    rows = [[p.platform, _n(p.posts), _n(p.shares), _n(p.originals), _n(p.unique_authors), _n(p.potential_reach),
             _n(p.impressions), _n(p.engagement)] for p in report.platforms + [report.total]]
    out += _table(["platform", "posts", "shares", "originals", "unique authors", "potential reach", "impressions",
                   "engagement"], rows)
    out.append("")

    size = fmt_duration(report.window)
    platforms = [p.platform for p in report.platforms]
    out.append(f"Reach over time, {size} buckets (from tagpulse.posts; cum. = cumulative since the period start; "
               "buckets without posts omitted)")
    header = ["bucket start (UTC)", "posts", "impressions", "cum. posts", "cum. impressions", "cum. potential reach"]
    header += [f"cum. impr. {p}" for p in platforms]
    rows = []
    for b in report.buckets:
        if not b.posts:
            continue
        rows.append([fmt_time(b.start)[:16], _n(b.posts), _n(b.impressions), _n(b.cum_posts), _n(b.cum_impressions),
                     _n(b.cum_potential_reach)] + [_n(b.cum_impressions_by_platform.get(p, 0)) for p in platforms])
    out += _table(header, rows)
    out.append("")

    out.append(f"Top {len(report.top)} contributors by followers (from tagpulse.posts)")
    rows = [[c.platform, c.handle or c.author_id, _n(c.followers), _n(c.posts), _n(c.shares)] for c in report.top]
    out += _table(["platform", "author", "followers", "posts", "shares"], rows, left=2)
    out.append("")

    if report.peak is not None:
        p = report.peak
        out.append(f"Peak {size} window (from tagpulse.reach_windows, all platforms): "
                   f"{fmt_time(p.start)} .. {fmt_time(p.end)} UTC: {_n(p.posts)} posts, {_n(p.impressions)} "
                   f"impressions, potential reach {_n(p.potential_reach)}")
    else:
        have = ", ".join(fmt_duration(s) for s in sorted(report.windows)) or "none"
        out.append(f"No final {size} windows in tagpulse.reach_windows for this tag (window sizes stored: {have}).")
    if report.peak_bucket is not None:
        b = report.peak_bucket
        out.append(f"Busiest {size} bucket (from tagpulse.posts): {fmt_time(b.start)} UTC: {_n(b.posts)} posts, "
                   f"{_n(b.impressions)} impressions")
    if report.late:
        late = ", ".join(f"{_n(n)} for {fmt_duration(s)} windows" for s, n in sorted(report.late.items()))
        out.append(f"Late posts (arrived after their window closed, not in reach_windows; from tagpulse.late_events): "
                   f"{late}")
    out.append("")

    if report.spikes:
        out.append(f"Spikes (from tagpulse.spikes; the source's duplicate and late rates over the spike's window, "
                   "from tagpulse.completeness)")
        rows = [[fmt_time(m.start)[:16], fmt_duration(m.window_size), m.platform, _n(m.observed),
                 f"{m.expected:,.1f}", f"{m.score:.2f}", _pct(m.duplicate_rate) if m.received else "-",
                 _pct(m.late_rate) if m.received else "-"] for m in report.spikes]
        out += _table(["window start (UTC)", "size", "platform", "posts", "expected", "score", "duplicates",
                       "late"], rows, left=3)
        out.append("")
    if report.completeness:
        out.append("Completeness of the sources carrying the tag, in the period (from tagpulse.completeness; counted "
                   "per source and minute for all tags; 'unknown' = unreadable input, counted at processing time)")
        rows = [[c.platform, _n(c.received), _n(c.duplicates), _pct(c.duplicate_rate), _n(c.late),
                 _pct(c.late_rate), _n(c.invalid), _pct(c.invalid_rate)] for c in report.completeness]
        out += _table(["source", "received", "duplicates", "dup. rate", "late", "late rate", "invalid",
                       "invalid rate"], rows)
        out.append("")
    out.append("potential reach = sum over unique authors of their largest follower count; impressions = sum over "
               "posts of the author's followers; totals over platforms are sums (author ids are platform-scoped).")
    return "\n".join(out) + "\n"
