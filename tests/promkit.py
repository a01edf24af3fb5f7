"""Real Prometheus and Alertmanager processes for tests (Debian packages `prometheus`, `prometheus-alertmanager`).

Both start from the repository's own configuration (prometheus/prometheus.yml, prometheus/alertmanager.yml),
rewritten only where a test must differ: loopback targets, free ports, 1 s intervals, a temporary data dir.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = sorted((REPO / "prometheus" / "rules").glob("*.yml"))
DEFAULT_WEBHOOK = "http://alert-webhook:9095/alerts"
WAIT_S = 60.0

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus binary not installed (apt-get install prometheus; CI installs it)")
needs_alertmanager = pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="alertmanager binary not installed (apt-get install prometheus-alertmanager; CI installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = WAIT_S, every: float = 0.25):
    """Poll check() until it returns something truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_error = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" +
                         (f" (last error: {last_error!r})" if last_error else ""))


def http_json(url: str, data: dict | None = None, timeout: float = 10):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with urllib.request.urlopen(url, data=body, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Service:
    name: str
    argv: list[str]
    log_path: Path
    base_url: str
    proc: subprocess.Popen | None = None

    def start(self, ready_path: str = "/-/ready") -> "Service":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with urllib.request.urlopen(self.base_url + ready_path, timeout=2) as r:
                return r.status == 200

        try:
            wait_until(ready, f"{self.name} to be ready on {self.base_url}")
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


def prometheus_config(targets: dict[str, list[str]], alertmanager: str | None, interval: str = "1s") -> dict:
    """prometheus/prometheus.yml with the given job -> targets, our rule files, and short intervals."""
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
    config["rule_files"] = [str(p) for p in RULES]
    if alertmanager:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    else:
        config.pop("alerting", None)
    config["scrape_configs"] = [{"job_name": job, "static_configs": [{"targets": hosts}]}
                                for job, hosts in targets.items()]
    return config


def start_prometheus(tmp: Path, targets: dict[str, list[str]], alertmanager: str | None = None) -> Service:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, alertmanager)))
    argv = [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    return Service("prometheus", argv, tmp / "prometheus.log", f"http://127.0.0.1:{port}").start()


def alertmanager_config(webhook_url: str, group_wait: str = "1s") -> dict:
    """prometheus/alertmanager.yml with the webhook URL templated in and short grouping delays."""
    text = (REPO / "prometheus" / "alertmanager.yml").read_text()
    assert DEFAULT_WEBHOOK in text, "alertmanager.yml no longer holds the default webhook URL to template"
    config = yaml.safe_load(text.replace(DEFAULT_WEBHOOK, webhook_url))
    config["route"].update(group_wait=group_wait, group_interval="1s")
    for route in config["route"].get("routes", []):
        route["group_wait"] = group_wait
    return config


def start_alertmanager(tmp: Path, webhook_url: str) -> Service:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    argv = [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
    return Service("alertmanager", argv, tmp / "alertmanager.log", f"http://127.0.0.1:{port}").start()


def query(prometheus: Service, promql: str, at: float | None = None) -> list[dict]:
    params = {"query": promql}
    if at is not None:
        params["time"] = str(at)
    answer = http_json(prometheus.base_url + "/api/v1/query?" + urllib.parse.urlencode(params))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def query_range(prometheus: Service, promql: str, start: float, end: float, step: float) -> list[dict]:
    params = {"query": promql, "start": str(start), "end": str(end), "step": str(step)}
    answer = http_json(prometheus.base_url + "/api/v1/query_range?" + urllib.parse.urlencode(params))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for_scrape(prometheus: Service, job: str) -> None:
    def up():
        targets = http_json(prometheus.base_url + "/api/v1/targets")["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == job and t["health"] == "up"]
    wait_until(up, f"Prometheus to scrape job {job}")


@dataclass
class Webhook:
    """A loopback HTTP server that records every JSON body POSTed to it."""

    received: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def start(self) -> "Webhook":
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def alerts(self) -> list[dict]:
        return [alert for body in list(self.received) for alert in body.get("alerts", [])]


# A separate process that exports tagpulse's real metrics (tagpulse.metrics) with known values, standing in for
# a running pipeline. "live" keeps counters and histograms moving so rate() and histogram_quantile() have data.
EXPORTER = r'''
import sys, time
from tagpulse import metrics as m
port_file, mode = sys.argv[1], sys.argv[2]
tags = m.TagGauges(watch={"einbuchfuerkai"}, top_n=2)
rows = [("einbuchfuerkai", "twitter", 420, 150000, 900000), ("einbuchfuerkai", "facebook", 1200, 300000, 310000),
        ("bookstagram", "instagram", 40, 8000, 9000), ("kaffee", "mastodon", 7, 700, 900),
        ("montag", "mastodon", 3, 300, 300)]
for tag, platform, posts, reach, impressions in rows:
    for size in (60, 3600):
        tags.add_window({"tag": tag, "platform": platform, "window_size": size, "window_start": 7200 - size,
                         "window_end": 7200, "posts": posts // (60 if size == 60 else 1) + 1,
                         "potential_reach": reach, "impressions": impressions})
tags.add_spike("einbuchfuerkai", "facebook", 4.2, detected_at=7200)
tags.export()
for platform, n in (("twitter", 5000), ("facebook", 12800), ("instagram", 40)):
    m.POSTS_IN.labels(platform=platform).inc(n)
    m.DUPLICATES.labels(platform=platform).inc(n // 100)
m.LATE_EVENTS.labels(window_size="60").inc(12)
m.count_invalid("bad json: line 3")
m.DEAD_LETTERS.labels(stage="worker").inc(3)
for p in range(4):
    m.WATERMARK_LAG.labels(partition=str(p)).set(10.5 + p)
    m.CONSUMER_LAG.labels(topic="tagpulse.posts.raw", partition=str(p)).set(p)
    m.CONSUMER_LAG.labels(topic="tagpulse.windows", partition=str(p)).set(0)
m.STATE_ENTRIES.labels(kind="dedup_keys").set(17840)
m.STATE_ENTRIES.labels(kind="open_panes").set(120)
m.TRANSACTIONS.inc(250)
for table in ("posts", "reach_windows", "late_events", "dead_letters", "spikes"):
    m.SINK_BATCH_ROWS.labels(table=table).observe(500)
    m.SINK_BATCH_SECONDS.labels(table=table).observe(0.02)
    m.SINK_ROWS.labels(table=table).inc(500)
    m.SINK_ERRORS.labels(table=table).inc(0)
    m.SINK_LAST_INSERT.labels(table=table).set(1_700_000_000)
m.SINK_RETRYING.set(0)
m.WINDOW_CLOSE_LATENCY.observe(1.5)
port = m.start_metrics_server(0, addr="127.0.0.1")
with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
import os; os.replace(port_file + ".tmp", port_file)
while True:
    time.sleep(0.5)
    if mode == "live":
        m.POSTS_IN.labels(platform="twitter").inc(50)
        m.POSTS_IN.labels(platform="facebook").inc(120)
        m.DUPLICATES.labels(platform="twitter").inc(1)
        m.LATE_EVENTS.labels(window_size="60").inc(1)
        m.DEAD_LETTERS.labels(stage="worker").inc(1)
        m.TRANSACTIONS.inc(2)
        m.WINDOW_CLOSE_LATENCY.observe(2.0)
        m.SPIKES.labels(platform="facebook").inc(0)
        for table in ("posts", "reach_windows"):
            m.SINK_BATCH_ROWS.labels(table=table).observe(800)
            m.SINK_BATCH_SECONDS.labels(table=table).observe(0.03)
            m.SINK_ROWS.labels(table=table).inc(800)
'''


def start_exporter(tmp: Path, mode: str = "static") -> tuple[subprocess.Popen, str]:
    """Start the exporter process; returns (process, "127.0.0.1:port")."""
    import sys
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "exporter.port"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp / "exporter.log", "ab")
    proc = subprocess.Popen([sys.executable, "-c", EXPORTER, str(port_file), mode], cwd=REPO, env=env,
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()

    def port():
        if proc.poll() is not None:
            raise AssertionError("exporter exited: " + (tmp / "exporter.log").read_text(errors="replace")[-2000:])
        return port_file.exists() and port_file.read_text().strip()

    try:
        return proc, f"127.0.0.1:{wait_until(port, 'the metrics exporter to listen')}"
    except BaseException:
        stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
