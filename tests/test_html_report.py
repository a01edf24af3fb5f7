"""`tagpulse report TAG --html FILE`, seen as a person sees it: headless Chromium renders the page to a
PNG, and we check that every chart drew its data inside its plot area (not a blank page).

Each chart's plot area has its own background colour (sinks.html_report.PLOT_FILLS): we find that
rectangle in the screenshot, then count the pixels of each platform's colour and of the spike
marker inside it. The PNG is decoded here with zlib and numpy (no imaging library needed).
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest

import analyst_dataset
from sinks.html_report import PLATFORM_COLOURS, PLOT_FILLS, SPIKE_COLOUR, human, nice_ticks, render_html, time_ticks
from sinks.report import build_report

REPO = Path(__file__).resolve().parents[1]
T0 = 1432112400  # 2015-05-20 09:00:00 UTC


# ----------------------------------------------------------------------------- helpers
def decode_png(path: Path) -> np.ndarray:
    """Height × width × 3 uint8 RGB of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    assert depth == 8 and interlace == 0, "only 8-bit non-interlaced PNGs"
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for r in range(height):
        kind, line = raw[r, 0], raw[r, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:   # Sub: a running sum per channel
            cur = (np.cumsum(line.reshape(width, channels).astype(np.uint32), axis=0) % 256) \
                .astype(np.uint8).reshape(stride)
        elif kind == 2:   # Up
            cur = line + prev
        else:             # Average and Paeth depend on the pixel just decoded: byte by byte
            f, up, rec = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                left = rec[i - channels] if i >= channels else 0
                if kind == 3:
                    rec[i] = (f[i] + ((left + up[i]) >> 1)) & 255
                    continue
                corner = up[i - channels] if i >= channels else 0
                p = left + up[i] - corner
                pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else corner)
                rec[i] = (f[i] + pred) & 255
            cur = np.array(rec, dtype=np.uint8)
        out[r] = cur
        prev = cur
    image = out.reshape(height, width, channels)
    if channels in (1, 2):
        return np.repeat(image[:, :, :1], 3, axis=2)
    return image[:, :, :3]


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])


def matches(image: np.ndarray, colour: str, tolerance: int) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - rgb(colour)) <= tolerance, axis=2)


def longest_run(flags: np.ndarray, gap: int = 4) -> tuple[int, int] | None:
    """[start, end) of the longest stretch of True, bridging gaps of up to `gap` (grid lines cross the fill)."""
    hits = np.nonzero(flags)[0]
    if len(hits) == 0:
        return None
    best, start = None, hits[0]
    for previous, current in zip(list(hits), list(hits[1:]) + [None]):
        if current is None or current - previous > gap + 1:
            if best is None or previous + 1 - start > best[1] - best[0]:
                best = (int(start), int(previous) + 1)
            start = current
    return best


def plot_region(image: np.ndarray, fill: str) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the chart's plot rectangle: the largest block of its fill colour.

    Rows where the fill covers a good stretch; stray anti-aliased pixels elsewhere on the page
    do not count."""
    mask = matches(image, fill, 1)
    rows = longest_run(mask.sum(axis=1) >= 200)
    if rows is None:
        return None
    # Columns: the outermost ones where the fill shows in a fifth of those rows (spike bands and
    # bars may cover whole columns inside the plot, so no run-length here).
    cols = np.nonzero(mask[rows[0]:rows[1]].sum(axis=0) >= 0.2 * (rows[1] - rows[0]))[0]
    if len(cols) == 0:
        return None
    return rows[0], rows[1], int(cols[0]), int(cols[-1]) + 1


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to look at the HTML report: apt-get install -y chromium "
                "(scripts/bootstrap.sh installs it)", pytrace=False)


def screenshot(page: Path, png: Path, profile: Path, height: int = 4200) -> np.ndarray:
    result = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
                             f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size=1280,{height}",
                             page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert png.exists(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    return decode_png(png)


def run_report(url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TAGPULSE_CLICKHOUSE=url, TAGPULSE_SQL_PORT="1")  # port 1: no sink answers
    return subprocess.run([sys.executable, "-m", "tagpulse.cli", "report", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- pure
def model_rows(handle: str = "@kai") -> dict[str, list[dict]]:
    return {
        "platforms": [
            {"platform": "twitter", "posts": 3, "shares": 1, "unique_authors": 2, "potential_reach": 300,
             "impressions": 500, "engagement": 7, "first_seen": T0 + 10, "last_seen": T0 + 4000},
            {"platform": "facebook", "posts": 1, "shares": 1, "unique_authors": 1, "potential_reach": 5,
             "impressions": 5, "engagement": 0, "first_seen": T0 + 5, "last_seen": T0 + 5}],
        "buckets": [{"platform": "facebook", "bucket": T0, "posts": 1, "shares": 1, "impressions": 5},
                    {"platform": "twitter", "bucket": T0, "posts": 2, "shares": 0, "impressions": 300},
                    {"platform": "twitter", "bucket": T0 + 3600, "posts": 1, "shares": 1, "impressions": 200}],
        "reach_gains": [{"platform": "facebook", "bucket": T0, "gain": 5},
                        {"platform": "twitter", "bucket": T0, "gain": 200},
                        {"platform": "twitter", "bucket": T0 + 3600, "gain": 100}],
        "top": [{"platform": "twitter", "author_id": "7", "handle": handle, "followers": 200, "posts": 2,
                 "shares": 0}],
        "spikes": [{"platform": "twitter", "window_size": 3600, "start": T0, "detected_at": T0 + 3600,
                    "observed": 3, "expected": 0.5, "score": 2.0, "method": "poisson", "reason": "3 vs 0.5 <b>",
                    "received": 4, "duplicates": 1, "late": 0}],
        "completeness": [{"platform": "twitter", "received": 4, "duplicates": 1, "late": 0, "invalid": 0}],
        "completeness_buckets": [{"platform": "twitter", "bucket": T0, "received": 4, "duplicates": 1, "late": 0}],
    }


def test_page_is_self_contained_and_escapes_what_users_wrote():
    page = render_html(build_report("kai", "#Kai", None, None, 3600, model_rows("<script>alert(1)</script>")))
    assert page.startswith("<!DOCTYPE html>")
    lowered = page.lower()
    for needle in ("<script", "<link", " src=", "url(", "@import", "<iframe"):
        assert needle not in lowered, needle
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "3 vs 0.5 &lt;b&gt;" in page
    for chart in ("reach", "posts", "completeness"):
        assert f'id="chart-{chart}"' in page
    assert page.count('class="spike"') == 2          # marked on both time charts
    assert f'stroke="{PLATFORM_COLOURS["twitter"]}"' in page and f'fill="{PLATFORM_COLOURS["facebook"]}"' in page


def test_empty_report_is_a_page_without_charts():
    page = render_html(build_report("nothing", "nothing", None, None, 3600, {}))
    assert 'id="empty"' in page and "<svg class=\"chart\"" not in page


def test_axis_helpers():
    assert (human(14_800_000), human(12_801), human(40), human(0)) == ("14.8M", "12.8k", "40", "0")
    assert nice_ticks(14_800_000) == [0, 5e6, 10e6, 15e6]
    assert nice_ticks(0) == [0.0, 1.0]
    ticks = time_ticks(T0, T0 + 3 * 86400)
    assert all(t % 3600 == 0 for t in ticks) and 3 <= len(ticks) <= 9


# ----------------------------------------------------------------------------- rendered by Chromium
@pytest.fixture(scope="module")
def analyst_db(tmp_path_factory) -> str:
    return analyst_dataset.analyst_db_url(tmp_path_factory)


@pytest.fixture(scope="module")
def rendered(analyst_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    page = folder / "einbuchfuerkai.html"
    result = run_report(analyst_db, "#einBuchfürKai", "--html", str(page))
    assert result.returncode == 0, result.stderr
    image = screenshot(page, folder / "page.png", folder / "profile")
    return page, image


def test_html_report_shows_the_same_figures_as_the_json_report(analyst_db, rendered):
    page, _ = rendered
    text = page.read_text(encoding="utf-8")
    report = orjson.loads(run_report(analyst_db, "einbuchfuerkai", "--json").stdout)
    for p in report["platforms"] + [report["total"]]:
        assert f"<td>{p['posts']:,}</td>" in text and f"<td>{p['impressions']:,}</td>" in text, p["platform"]
    assert report["spikes"] and report["completeness"]


def test_charts_are_drawn(rendered):
    _, image = rendered
    white = matches(image, "#ffffff", 0)
    assert (~white).mean() > 0.03, "the page is (almost) blank"
    regions = {name: plot_region(image, fill) for name, fill in PLOT_FILLS.items()}
    for name, region in regions.items():
        assert region is not None, f"chart {name!r} not found on the page"
        top, bottom, left, right = region
        assert right - left > 800 and bottom - top > 150, (name, region)
    tops = [regions[n][0] for n in ("reach", "posts", "completeness")]
    assert tops == sorted(tops), "charts in page order"

    def inside(name: str, colour: str, tolerance: int = 12) -> int:
        top, bottom, left, right = regions[name]
        return int(matches(image[top:bottom, left:right], colour, tolerance).sum())

    for name in PLOT_FILLS:
        top, bottom, left, right = regions[name]
        area = image[top:bottom, left:right]
        ink = ~(matches(area, PLOT_FILLS[name], 2) | matches(area, "#dddddd", 6))
        assert ink.mean() > 0.005, f"nothing drawn in chart {name!r}"
    # Reach: one solid and one dashed line per platform (instagram's stays near 0, under the axis line).
    for platform in ("twitter", "facebook"):
        assert inside("reach", PLATFORM_COLOURS[platform]) > 800, platform
    # Spikes: the marker over the reach chart and a shaded band inside it.
    top, bottom, left, right = regions["reach"]
    above = image[max(top - 16, 0):top, left:right]
    assert int(matches(above, SPIKE_COLOUR, 20).sum()) > 30, "spike marker missing"
    # Posts: stacked bars of the two busy platforms.
    for platform in ("twitter", "facebook"):
        assert inside("posts", PLATFORM_COLOURS[platform]) > 2000, platform
    # Completeness: a rate line per platform that carries the tag.
    drawn = [p for p in ("twitter", "facebook", "instagram") if inside("completeness", PLATFORM_COLOURS[p]) > 200]
    assert len(drawn) >= 2, drawn


def test_a_tag_without_posts_renders_no_chart(analyst_db, tmp_path):
    # The detector above must be able to fail: an empty report has text but no plot area.
    page = tmp_path / "nothing.html"
    result = run_report(analyst_db, "#NoSuchTagAnywhere", "--html", str(page))
    assert result.returncode == 0, result.stderr
    image = screenshot(page, tmp_path / "nothing.png", tmp_path / "profile", height=800)
    assert all(plot_region(image, fill) is None for fill in PLOT_FILLS.values())
    assert (~matches(image, "#ffffff", 0)).sum() > 500, "the page has its text"


def test_unwritable_html_path_is_a_clear_error(analyst_db, tmp_path):
    result = run_report(analyst_db, "kai", "--html", str(tmp_path / "no" / "such" / "dir" / "r.html"))
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr
