"""`tagpulse report TAG --html FILE`: the report model (sinks/report.py) as one self-contained HTML page.

Pure: render_html(report) -> str, no I/O. The page needs no network to open:
CSS is inline and the charts are inline SVG drawn here (no JavaScript, no CDN,
no web fonts). Sections: totals per platform; reach over time (cumulative
impressions and potential reach per platform, spikes marked); posts per bucket
per platform (stacked, spikes marked); spikes with their source's completeness;
top contributors; completeness per source, and its duplicate/late rates over
time; the peak window and late posts; definitions.

Each chart's plot area has its own background colour (PLOT_FILLS), which lets
a test find the chart in a screenshot and check that data was drawn inside it.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import datetime, timezone

from sinks.report import Report, fmt_duration, fmt_time

# Fixed colours per platform, so a platform looks the same in every chart and report.
PLATFORM_COLOURS = {
    "twitter": "#1f77b4",
    "facebook": "#9467bd",
    "instagram": "#e377c2",
    "mastodon": "#2ca02c",
    "bluesky": "#17becf",
}
FALLBACK_COLOURS = ("#ff7f0e", "#8c564b", "#bcbd22", "#7f7f7f", "#393b79", "#637939")
SPIKE_COLOUR = "#d62728"
# Background of each chart's plot area: distinct, so the charts can be located in a screenshot.
PLOT_FILLS = {"reach": "#f7f9fe", "posts": "#f8fdf7", "completeness": "#fef8f4"}
GRID_COLOUR = "#dddddd"

WIDTH, HEIGHT = 1100, 340
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 76, 20, 26, 46


def platform_colours(platforms: list[str]) -> dict[str, str]:
    colours, spare = {}, iter(FALLBACK_COLOURS * 4)
    for platform in platforms:
        colours[platform] = PLATFORM_COLOURS.get(platform) or next(spare)
    return colours


# ----------------------------------------------------------------------------- formatting
def human(value: float) -> str:
    """14_800_000 -> '14.8M', 12_801 -> '12.8k', 40 -> '40'."""
    value = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.2g}"


def pct(rate: float) -> str:
    if rate == 0:
        return "0%"
    if rate < 0.001:
        return "<0.1%"
    return f"{100 * rate:.1f}%"


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least `top` (1, 2, 2.5, 5 × 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-9 * top:
        ticks.append(ticks[-1] + step)
    return ticks


_TIME_STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)


def time_ticks(lo: int, hi: int, most: int = 9) -> list[int]:
    span = max(hi - lo, 1)
    step = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1] * max(1, math.ceil(span / most / _TIME_STEPS[-1])))
    first = lo - lo % step + (step if lo % step else 0)
    return list(range(first, hi + 1, step))


def time_label(t: int, step: int) -> str:
    moment = datetime.fromtimestamp(t, tz=timezone.utc)
    if step % 86400 == 0:
        return moment.strftime("%Y-%m-%d")
    if moment.hour == 0 and moment.minute == 0:
        return moment.strftime("%m-%d")
    return moment.strftime("%H:%M")


# ----------------------------------------------------------------------------- charts
@dataclass
class Frame:
    """Maps data (time, value) to SVG coordinates of one chart's plot area."""

    t0: int
    t1: int
    top: float
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def left(self) -> int:
        return MARGIN_LEFT

    @property
    def right(self) -> int:
        return self.width - MARGIN_RIGHT

    @property
    def upper(self) -> int:
        return MARGIN_TOP

    @property
    def lower(self) -> int:
        return self.height - MARGIN_BOTTOM

    def x(self, t: float) -> float:
        return self.left + (t - self.t0) / max(self.t1 - self.t0, 1) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.lower - value / (self.top or 1) * (self.lower - self.upper)


def _f(v: float) -> str:
    return f"{v:.1f}"


def _axes(frame: Frame, fill: str, ticks: list[float], fmt, label: str) -> list[str]:
    out = [f'<rect class="plot" x="{frame.left}" y="{frame.upper}" width="{frame.right - frame.left}" '
           f'height="{frame.lower - frame.upper}" fill="{fill}" shape-rendering="crispEdges"/>']
    for tick in ticks:
        y = round(frame.y(tick)) + 0.5
        out.append(f'<line x1="{frame.left}" x2="{frame.right}" y1="{y}" y2="{y}" stroke="{GRID_COLOUR}" '
                   'stroke-width="1" shape-rendering="crispEdges"/>')
        out.append(f'<text x="{frame.left - 8}" y="{_f(y + 4)}" text-anchor="end" class="tick">{esc(fmt(tick))}</text>')
    time_points = time_ticks(frame.t0, frame.t1)
    step = time_points[1] - time_points[0] if len(time_points) > 1 else 86400
    previous_day = None
    for t in time_points:
        x = round(frame.x(t)) + 0.5
        # Labels at the right edge would be cut off: anchor them at their end there.
        anchor = "end" if x > frame.right - 40 else "middle"
        out.append(f'<line x1="{x}" x2="{x}" y1="{frame.lower}" y2="{frame.lower + 5}" stroke="#888" '
                   'shape-rendering="crispEdges"/>')
        out.append(f'<text x="{x}" y="{frame.lower + 18}" text-anchor="{anchor}" class="tick">'
                   f'{esc(time_label(t, step))}</text>')
        day = t // 86400
        if step < 86400 and day != previous_day:
            out.append(f'<text x="{x}" y="{frame.lower + 33}" text-anchor="{anchor}" class="tick day">'
                       f'{esc(datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d"))}</text>')
            previous_day = day
    out.append(f'<line x1="{frame.left}" x2="{frame.right}" y1="{frame.lower + 0.5}" y2="{frame.lower + 0.5}" '
               'stroke="#888" shape-rendering="crispEdges"/>')
    out.append(f'<text x="14" y="{(frame.upper + frame.lower) / 2}" class="axis" text-anchor="middle" '
               f'transform="rotate(-90 14 {(frame.upper + frame.lower) / 2})">{esc(label)}</text>')
    return out


def _spike_marks(frame: Frame, report: Report) -> tuple[list[str], list[str]]:
    """Shaded bands (drawn under the data) and labelled triangles (drawn over it) for every spike."""
    bands, markers = [], []
    for spike in report.spikes:
        if spike.end < frame.t0 or spike.start > frame.t1:
            continue
        x0, x1 = max(frame.x(spike.start), frame.left), min(frame.x(spike.end), frame.right)
        title = (f"spike on {spike.platform}: {spike.observed:,} posts in the {fmt_duration(spike.window_size)} window "
                 f"from {fmt_time(spike.start)} UTC, expected {spike.expected:,.1f} (score {spike.score:.2f})")
        bands.append(f'<rect class="spike-band" x="{_f(x0)}" y="{frame.upper}" width="{_f(max(x1 - x0, 2))}" '
                     f'height="{frame.lower - frame.upper}" fill="{SPIKE_COLOUR}" fill-opacity="0.10"/>')
        cx = (x0 + x1) / 2
        markers.append(f'<path class="spike" d="M{_f(cx - 7)},{frame.upper - 12} h14 l-7,12 z" fill="{SPIKE_COLOUR}">'
                       f'<title>{esc(title)}</title></path>')
    return bands, markers


def _svg(frame: Frame, name: str, label: str, parts: list[str]) -> str:
    return (f'<svg class="chart" id="chart-{name}" width="{frame.width}" height="{frame.height}" '
            f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{esc(label)}" '
            'xmlns="http://www.w3.org/2000/svg">' + "".join(parts) + "</svg>")


def _polyline(points: list[tuple[float, float]], colour: str, dashed: bool = False, cls: str = "series") -> str:
    dash = ' stroke-dasharray="7 5"' if dashed else ""
    coords = " ".join(f"{_f(x)},{_f(y)}" for x, y in points)
    return (f'<polyline class="{cls}" points="{coords}" fill="none" stroke="{colour}" stroke-width="2.5" '
            f'stroke-linejoin="round"{dash}/>')


def _time_span(report: Report) -> tuple[int, int]:
    t0 = report.buckets[0].start
    t1 = report.buckets[-1].start + report.window
    return t0, max(t1, t0 + report.window)


def reach_chart(report: Report, colours: dict[str, str]) -> str:
    """Cumulative impressions (solid) and potential reach (dashed) per platform over time."""
    t0, t1 = _time_span(report)
    platforms = [p.platform for p in report.platforms]
    top = max([max(b.cum_impressions_by_platform.values(), default=0) for b in report.buckets] +
              [max(b.cum_reach_by_platform.values(), default=0) for b in report.buckets] + [1])
    ticks = nice_ticks(top)
    frame = Frame(t0, t1, ticks[-1])
    parts = _axes(frame, PLOT_FILLS["reach"], ticks, human, "cumulative impressions / potential reach")
    bands, markers = _spike_marks(frame, report)
    parts += bands
    for platform in platforms:
        for key, dashed in (("cum_reach_by_platform", True), ("cum_impressions_by_platform", False)):
            # Within a bucket the figure grows from the previous total to the new one; between
            # buckets without posts it stays flat.
            points, previous = [(frame.x(t0), frame.y(0))], 0
            for b in report.buckets:
                value = getattr(b, key).get(platform, 0)
                points.append((frame.x(b.start), frame.y(previous)))
                points.append((frame.x(b.start + report.window), frame.y(value)))
                previous = value
            points.append((frame.x(t1), frame.y(previous)))
            parts.append(_polyline(points, colours[platform], dashed, f"series {key} {esc(platform)}"))
    parts += markers
    return _svg(frame, "reach", "cumulative impressions and potential reach per platform over time", parts)


def posts_chart(report: Report, colours: dict[str, str]) -> str:
    """Posts per bucket, stacked by platform: one <path> of rectangles per platform keeps the page small."""
    t0, t1 = _time_span(report)
    platforms = [p.platform for p in report.platforms]
    top = max([b.posts for b in report.buckets] + [1])
    ticks = nice_ticks(top)
    frame = Frame(t0, t1, ticks[-1])
    parts = _axes(frame, PLOT_FILLS["posts"], ticks, human, f"posts per {fmt_duration(report.window)}")
    bands, markers = _spike_marks(frame, report)
    parts += bands
    paths = {p: [] for p in platforms}
    for b in report.buckets:
        x0 = frame.x(b.start)
        width = max(frame.x(b.start + report.window) - x0 - (1 if report.window * 200 > t1 - t0 else 0), 0.8)
        base = 0
        for platform in platforms:
            n = b.posts_by_platform.get(platform, 0)
            if not n:
                continue
            y_top, y_base = frame.y(base + n), frame.y(base)
            paths[platform].append(f"M{_f(x0)},{_f(y_base)}h{_f(width)}V{_f(y_top)}h{_f(-width)}z")
            base += n
    for platform, d in paths.items():
        if d:
            parts.append(f'<path class="bars {esc(platform)}" d="{"".join(d)}" fill="{colours[platform]}"/>')
    parts += markers
    return _svg(frame, "posts", f"posts per {fmt_duration(report.window)} per platform", parts)


def completeness_chart(report: Report, colours: dict[str, str]) -> str | None:
    """Duplicate rate (solid) and late rate (dashed) per platform and bucket."""
    if not report.completeness_buckets:
        return None
    t0, t1 = _time_span(report)
    by_platform: dict[str, list] = {}
    for c in report.completeness_buckets:
        by_platform.setdefault(c.platform, []).append(c)
    top = max([max(c.duplicate_rate, c.late_rate) for c in report.completeness_buckets] + [0.01])
    ticks = nice_ticks(top)
    frame = Frame(t0, t1, ticks[-1], height=280)
    parts = _axes(frame, PLOT_FILLS["completeness"], ticks, pct, "share of received records")
    for platform, rows in by_platform.items():
        colour = colours.get(platform, "#555555")
        for key, dashed in (("duplicate_rate", False), ("late_rate", True)):
            points = [(frame.x(c.start + report.window / 2), frame.y(getattr(c, key))) for c in rows]
            if len(points) == 1:
                points.append((points[0][0] + 1, points[0][1]))
            parts.append(_polyline(points, colour, dashed, f"series {key} {esc(platform)}"))
    return _svg(frame, "completeness", "duplicate and late rate per platform over time", parts)


# ----------------------------------------------------------------------------- page
CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       margin: 0; background: #ffffff; }
main { max-width: 1140px; margin: 0 auto; padding: 20px 20px 60px; }
h1 { font-size: 28px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 34px 0 6px; border-bottom: 1px solid #e5e5e5; padding-bottom: 4px; }
.sub, .note { color: #666; font-size: 13px; }
.note { margin: 4px 0 10px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0 4px; }
.card { border: 1px solid #e3e3e3; border-radius: 8px; padding: 8px 14px; min-width: 140px; }
.card b { display: block; font-size: 22px; }
.card span { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 14px; }
th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }
th { background: #f6f6f6; font-weight: 600; }
td.l, th.l { text-align: left; }
td.reason { white-space: normal; text-align: left; color: #555; font-size: 12px; max-width: 380px; }
tr.total td { font-weight: 600; border-top: 1px solid #ccc; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
          vertical-align: -1px; }
.legend { font-size: 13px; color: #444; margin: 4px 0 2px; }
.legend span { margin-right: 16px; white-space: nowrap; }
.legend svg { vertical-align: middle; margin-right: 4px; }
svg.chart { display: block; max-width: 100%; height: auto; }
svg text.tick { font-size: 11px; fill: #555; }
svg text.day { fill: #888; }
svg text.axis { font-size: 12px; fill: #555; }
.bar { background: #e9eef7; height: 8px; border-radius: 4px; min-width: 120px; }
.bar i { display: block; height: 8px; border-radius: 4px; }
.warn { color: #a33; }
details { margin: 6px 0; font-size: 13px; }
footer { margin-top: 40px; color: #666; font-size: 12px; }
"""


def _n(value: int) -> str:
    return f"{value:,}"


def _line_key(colour: str, dashed: bool) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (f'<svg width="26" height="10" aria-hidden="true"><line x1="1" y1="5" x2="25" y2="5" stroke="{colour}" '
            f'stroke-width="2.5"{dash}/></svg>')


def _legend(colours: dict[str, str], styles: tuple[tuple[str, bool], ...] | None, spikes: bool) -> str:
    items = []
    for platform, colour in colours.items():
        items.append(f'<span><i class="swatch" style="background:{colour}"></i>{esc(platform)}</span>')
    for label, dashed in styles or ():
        items.append(f"<span>{_line_key('#555', dashed)}{esc(label)}</span>")
    if spikes:
        items.append(f'<span><i class="swatch" style="background:{SPIKE_COLOUR}"></i>spike (detector alert; '
                     "shaded: its window)</span>")
    return f'<div class="legend">{"".join(items)}</div>'


def _table(header: list[str], rows: list[list[str]], left: int = 1, total_last: bool = False,
           cls: dict[int, str] | None = None) -> str:
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left or (cls or {}).get(i) else f"<th>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            klass = (cls or {}).get(i) or ("l" if i < left else "")
            cells.append(f'<td class="{klass}">{cell}</td>' if klass else f"<td>{cell}</td>")
        total = ' class="total"' if total_last and r == len(rows) - 1 else ""
        body.append(f"<tr{total}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _period(report: Report) -> str:
    since = fmt_time(report.since) if report.since is not None else "beginning"
    until = fmt_time(report.until) if report.until is not None else "now"
    return f"{since} .. {until} UTC"


def render_html(report: Report) -> str:
    title = f"#{report.tag}"
    asked = report.asked.strip()
    head = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>tagpulse report {esc(title)}</title><style>{CSS}</style></head><body><main>")
    out = [head, f"<h1>{esc(title)}</h1>"]
    sub = f"period {esc(_period(report))}"
    if asked.lstrip("#") != report.tag:
        sub += f" · you asked for {esc(asked)}"
    out.append(f'<div class="sub">{sub} · buckets of {esc(fmt_duration(report.window))}</div>')
    if report.total is None:
        out.append('<p id="empty">No posts with this tag in the period (tagpulse.posts).</p>')
        out.append(_footer())
        return "".join(out) + "</main></body></html>\n"

    total = report.total
    first = min(report.platforms, key=lambda p: p.first_seen)
    colours = platform_colours([p.platform for p in report.platforms])
    cards = [(human(total.posts), "posts"), (human(total.shares), "shares"), (human(total.unique_authors),
             "unique authors"), (human(total.potential_reach), "potential reach"),
             (human(total.impressions), "impressions"), (human(total.engagement), "engagement")]
    out.append('<div class="cards">' + "".join(f"<div class=\"card\"><b>{v}</b><span>{esc(k)}</span></div>"
                                               for v, k in cards) + "</div>")
    out.append(f'<p class="note">first seen {esc(fmt_time(first.first_seen))} UTC on {esc(first.platform)}; last seen '
               f"{esc(fmt_time(total.last_seen))} UTC</p>")

    out.append("<h2>Totals per platform</h2>")
    out.append('<p class="note">From tagpulse.posts: every unique post counted once.</p>')
    rows = [[f'<i class="swatch" style="background:{colours.get(p.platform, "#fff")}"></i>{esc(p.platform)}'
             if p.platform != "all" else "all", _n(p.posts), _n(p.shares), _n(p.originals), _n(p.unique_authors),
             _n(p.potential_reach), _n(p.impressions), _n(p.engagement)] for p in report.platforms + [total]]
    out.append(_table(["platform", "posts", "shares", "originals", "unique authors", "potential reach",
                       "impressions", "engagement"], rows, total_last=True))

    size = fmt_duration(report.window)
    out.append("<h2>Reach over time</h2>")
    out.append(f'<p class="note">Cumulative since the period start, per platform, in {esc(size)} buckets (from '
               "tagpulse.posts). Impressions (solid) count every post times its author's followers — the campaign's "
               "\"theoretical reach\"; potential reach (dashed) counts each author once, with their largest "
               "follower count.</p>")
    out.append(_legend(colours, (("impressions", False), ("potential reach", True)), bool(report.spikes)))
    out.append(reach_chart(report, colours))
    out.append(_bucket_details(report))

    out.append(f"<h2>Posts per {esc(size)}</h2>")
    out.append('<p class="note">Unique posts per bucket, stacked by platform (from tagpulse.posts).</p>')
    out.append(_legend(colours, None, bool(report.spikes)))
    out.append(posts_chart(report, colours))

    out.append("<h2>Spikes</h2>")
    if report.spikes:
        out.append('<p class="note">Alerts of the stream\'s detector (tagpulse.spikes), with the duplicate and late '
                   "rates of the source over the spike's window (tagpulse.completeness): a spike made of duplicates or "
                   "replayed late data shows high rates there.</p>")
        rows = [[esc(fmt_time(m.start)[:16]), esc(fmt_duration(m.window_size)), esc(m.platform), _n(m.observed),
                 f"{m.expected:,.1f}", f"{m.score:.2f}", pct(m.duplicate_rate) if m.received else "–",
                 pct(m.late_rate) if m.received else "–", esc(m.reason)] for m in report.spikes]
        out.append(_table(["window start (UTC)", "window", "platform", "posts", "expected", "score", "duplicates",
                           "late", "why"], rows, left=3, cls={8: "reason"}))
    else:
        out.append('<p class="note">No spike alerts for this tag in the period (tagpulse.spikes).</p>')

    out.append(f"<h2>Top {len(report.top)} contributors</h2>")
    out.append('<p class="note">By largest follower count seen (from tagpulse.posts).</p>')
    most = max([c.followers for c in report.top] + [1])
    rows = [[esc(c.platform), esc(c.handle or c.author_id), _n(c.followers),
             f'<div class="bar"><i style="width:{100 * c.followers / most:.1f}%;'
             f'background:{colours.get(c.platform, "#888")}"></i></div>', _n(c.posts), _n(c.shares)]
            for c in report.top]
    out.append(_table(["platform", "author", "followers", "", "posts", "shares"], rows, left=2))

    out.append("<h2>Completeness</h2>")
    out.append(_completeness_section(report, colours))

    out.append("<h2>Peak and late posts</h2>")
    out.append(_peak_section(report))
    out.append(_footer())
    return "".join(out) + "</main></body></html>\n"


def _bucket_details(report: Report) -> str:
    platforms = [p.platform for p in report.platforms]
    rows = [[esc(fmt_time(b.start)[:16]), _n(b.posts), _n(b.impressions), _n(b.cum_posts), _n(b.cum_impressions),
             _n(b.cum_potential_reach)] + [_n(b.cum_impressions_by_platform.get(p, 0)) for p in platforms]
            for b in report.buckets if b.posts]
    table = _table(["bucket start (UTC)", "posts", "impressions", "cum. posts", "cum. impressions",
                    "cum. potential reach"] + [f"cum. impr. {p}" for p in platforms], rows)
    return f"<details><summary>the numbers behind the chart ({len(rows)} buckets)</summary>{table}</details>"


def _completeness_section(report: Report, colours: dict[str, str]) -> str:
    if not report.completeness:
        return ('<p class="note">No completeness figures for the sources of this tag in the period '
                "(tagpulse.completeness is empty there).</p>")
    out = ['<p class="note">Per source, from tagpulse.completeness: records received (duplicates and late ones '
           "included), duplicates (already seen: counted once in every figure above), late (arrived after their "
           "window had closed: in tagpulse.posts and the totals, not in the stream's window rows), invalid "
           "(unreadable, under source 'unknown', counted in the minute they were processed). Counted for every tag "
           "of the source, before posts are split by tag.</p>"]
    rows = []
    for c in report.completeness:
        name = esc(c.platform)
        if c.platform in colours:
            name = f'<i class="swatch" style="background:{colours[c.platform]}"></i>{name}'
        rows.append([name, _n(c.received), _n(c.duplicates), pct(c.duplicate_rate), _n(c.late), pct(c.late_rate),
                     _n(c.invalid), pct(c.invalid_rate)])
    out.append(_table(["source", "received", "duplicates", "duplicate rate", "late", "late rate", "invalid",
                       "invalid rate"], rows, total_last=True))
    chart = completeness_chart(report, colours)
    if chart:
        used = {c.platform for c in report.completeness_buckets}
        out.append(f'<p class="note">Duplicate rate (solid) and late rate (dashed) per '
                   f"{esc(fmt_duration(report.window))} bucket.</p>")
        out.append(_legend({p: c for p, c in colours.items() if p in used},
                           (("duplicate rate", False), ("late rate", True)), False))
        out.append(chart)
    return "".join(out)


def _peak_section(report: Report) -> str:
    size = fmt_duration(report.window)
    out = []
    if report.peak is not None:
        p = report.peak
        out.append(f"<p>Peak {esc(size)} window (tagpulse.reach_windows, all platforms): "
                   f"<b>{esc(fmt_time(p.start))} .. {esc(fmt_time(p.end))} UTC</b>: {_n(p.posts)} posts, "
                   f"{_n(p.impressions)} impressions, potential reach {_n(p.potential_reach)}.</p>")
    else:
        have = ", ".join(fmt_duration(s) for s in sorted(report.windows)) or "none"
        out.append(f'<p class="note">No final {esc(size)} windows in tagpulse.reach_windows for this tag '
                   f"(window sizes stored: {esc(have)}).</p>")
    if report.peak_bucket is not None:
        b = report.peak_bucket
        out.append(f"<p>Busiest {esc(size)} bucket (tagpulse.posts): {esc(fmt_time(b.start))} UTC: {_n(b.posts)} posts, "
                   f"{_n(b.impressions)} impressions.</p>")
    if report.late:
        late = ", ".join(f"{_n(n)} for {fmt_duration(s)} windows" for s, n in sorted(report.late.items()))
        out.append(f'<p class="warn">Late posts (arrived after their window closed; in the totals above, not in the '
                   f"window rows; tagpulse.late_events): {esc(late)}.</p>")
    return "".join(out)


def _footer() -> str:
    return ("<footer>potential reach = sum over unique authors of their largest follower count; impressions = sum over "
            "posts of the author's followers; totals over platforms are sums (author ids are platform-scoped). "
            "Neither is the number of distinct people who saw a post. Times are UTC. Made by tagpulse report.</footer>")
