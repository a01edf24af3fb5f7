"""The fault suite (issue 4): exact results through crashes, rebalances and outages.

Each scenario replays a synthetic campaign with duplicates and disorder (within
grace) into the raw topic of a fresh namespace, runs the real worker(s) and the
real sink (embedded chDB) through tagpulse.pipeline, injects its faults while
the replay is being processed, waits until every window is final and compares
ClickHouse with the oracle, row for row:

- `tagpulse.posts` must hold every unique post exactly once, every field equal;
- `tagpulse.reach_windows` must equal `oracle_windows` over the unique posts:
  no window missing, duplicated, extra or different.

The replay is written to Kafka completely *before* the pipeline starts. A
caught-up partition advances its watermark with the wall clock after
TAGPULSE_IDLE_TIMEOUT, so 2015 posts that trickled in while a broker was down
would rightly be late; a preloaded log keeps every partition busy until it is
done, and the oracle stays exact.

Pure parts first (replay, comparison, report), then the shell (broker,
processes, queries, scenarios). docs/reliability.md describes the scenarios and
the guarantee they check.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tagpulse import stack
from tagpulse.pipeline import peak_rss_mb
from tagpulse.stack import free_port

SCALES = {"small": 12_000, "full": 200_000}
SCENARIOS = ("worker-kill", "rebalance", "broker-restart", "sink-kill", "sink-outage")
SCENARIO_HELP = {
    "worker-kill": "kill -9 of the worker 5 times at random moments, restarted each time",
    "rebalance": "two workers; one stopped mid-replay and started again (two rebalances)",
    "broker-restart": "the Kafka broker stopped and started again mid-replay",
    "sink-kill": "kill -9 of the sink (the process that owns embedded chDB) 3 times mid-replay, restarted",
    "sink-outage": "every ClickHouse insert of the sink fails for --outage seconds (backoff, backpressure), "
                   "then succeeds again",
}
WORKER_KILLS = 5
SINK_KILLS = 3
# Small messages and small agent batches (TAGPULSE_TAKE_MESSAGES): many transactions per partition, so the
# faults land between and inside many of them, at any scale.
POSTS_PER_MESSAGE = 50
TAKE_MESSAGES = 4
T0 = 1432080000  # 2015-05-20T00:00:00Z, the seed campaign's first day

PLATFORMS = ("twitter", "mastodon", "facebook", "instagram")
TAGS = ("einbuchfuerkai", "buchtipp", "lesen", "kafka", "montag", "bluesky", "fediverse", "python",
        "streaming", "opensource", "zaehler", "berlin")


# ============================================================================ pure: the replay
def synthetic_replay(n: int, seed: int = 1, dup_rate: float = 0.04, disorder: float = 8.0,
                     mean_gap: float = 1.3, start: int = T0) -> tuple[list[dict], list[dict]]:
    """(unique canonical posts, arrival order with duplicates).

    Duplicates are exact re-deliveries (dup_rate of the posts). Every copy
    arrives up to `disorder` seconds after its event time, which shuffles
    arrival order by less than the default 10 s grace: nothing is late, so the
    oracle over the unique posts is the exact expected result.
    """
    from producers.simulate import iso

    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(TAGS))]  # a few busy tags, a long tail
    authors = max(50, n // 20)
    posts: list[dict] = []
    times: list[int] = []
    t = float(start)
    for i in range(n):
        t += rng.expovariate(1.0 / mean_gap)
        platform = rng.choice(PLATFORMS)
        author = rng.randint(1, authors)
        chosen: list[str] = []
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            tag = rng.choices(TAGS, weights)[0]
            if tag not in chosen:
                chosen.append(tag)
        share = rng.random() < 0.3
        times.append(int(t))
        posts.append({
            "platform": platform,
            "post_id": f"{seed}-{i}",
            "author_id": f"{platform}-a{author}",
            "author_handle": f"user{author}",
            # followers drift a little between posts of one author: potential reach takes the largest
            "author_followers": (author * 37) % 5000 + rng.randint(0, 40),
            "created_at": iso(int(t)),
            "lang": rng.choice(("de", "en", "fr")),
            "text": f"post {i} " + " ".join("#" + tag for tag in chosen),
            "hashtags": chosen,
            "is_share": share,
            "original_post_id": f"{seed}-orig-{author % 97}" if share else None,
            "likes": 0 if share else rng.randint(0, 20),
            "shares": 0 if share else rng.randint(0, 5),
            "replies": 0 if share else rng.randint(0, 3),
            "quotes": 0 if share else rng.randint(0, 2),
        })
    arrivals = [(t + rng.uniform(0, disorder), i) for i, t in enumerate(times)]
    arrivals += [(times[i] + rng.uniform(0, disorder), i) for i in range(n) if rng.random() < dup_rate]
    arrivals.sort()
    return posts, [posts[i] for _, i in arrivals]


def post_key(post: dict) -> tuple[str, str]:
    return (post["platform"], post["post_id"])


def post_values(post: dict) -> tuple:
    """Every stored field of a post; created_at as epoch seconds, absent optionals as ''
    (the sink stores NULL lang/text/original_post_id as empty strings)."""
    from tagpulse.core.stage1 import epoch_seconds

    created = post["created_at"]
    return (post["author_id"], post["author_handle"], int(post["author_followers"]),
            epoch_seconds(created) if isinstance(created, str) else int(created),
            post["lang"] or "", post["text"] or "", tuple(post["hashtags"]), bool(post["is_share"]),
            post["original_post_id"] or "", int(post["likes"]), int(post["shares"]), int(post["replies"]),
            int(post["quotes"]))


WINDOW_VALUES = ("window_end", "posts", "originals", "shares", "unique_authors", "potential_reach", "impressions",
                 "engagement")


def window_key(row: dict) -> tuple:
    return (row["tag"], row["platform"], int(row["window_size"]), int(row["window_start"]))


def window_values(row: dict) -> tuple:
    return tuple(int(row[name]) for name in WINDOW_VALUES)


@dataclass
class Diff:
    """How stored rows differ from what was expected (exact: nothing missing, duplicated or different)."""

    expected: int = 0
    stored: int = 0
    missing: int = 0       # expected, not stored
    duplicated: int = 0    # stored copies beyond the first
    different: int = 0     # stored once with other values, or not expected at all
    examples: list = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.missing == self.duplicated == self.different == 0


def compare(expected: dict, stored, max_examples: int = 5) -> Diff:
    """expected: key -> values; stored: (key, values) pairs as read back."""
    diff = Diff(expected=len(expected))
    seen: set = set()

    def example(*item) -> None:
        if len(diff.examples) < max_examples:
            diff.examples.append(item)

    for key, values in stored:
        diff.stored += 1
        if key in seen:
            diff.duplicated += 1
            example("duplicated", key)
            continue
        seen.add(key)
        want = expected.get(key)
        if want is None:
            diff.different += 1
            example("unexpected", key, values)
        elif want != values:
            diff.different += 1
            example("different", key, {"expected": want, "stored": values})
    for key in expected:
        if key not in seen:
            diff.missing += 1
            example("missing", key)
    return diff


def expected_posts(posts: list[dict]) -> dict:
    return {post_key(p): post_values(p) for p in posts}


def expected_windows(posts: list[dict], specs) -> dict:
    from tagpulse.core.stage1 import epoch_seconds
    from tagpulse.core.windows import oracle_windows

    rows = oracle_windows(((epoch_seconds(p["created_at"]), p) for p in posts), specs)
    return {window_key(r): window_values(r) for r in rows}


def kill_points(rng: random.Random, kills: int, lo: float = 0.05, hi: float = 0.9) -> list[float]:
    """Fractions of the replay at which to inject faults: random, increasing, one in each of `kills` slices."""
    span = (hi - lo) / kills
    return [lo + span * i + rng.uniform(0, span) for i in range(kills)]


@dataclass
class ScenarioReport:
    scenario: str
    arrivals: int = 0              # posts sent, duplicates included
    messages: int = 0              # raw Kafka messages they were sent in
    posts: Diff = field(default_factory=Diff)
    windows: Diff = field(default_factory=Diff)
    faults: list[str] = field(default_factory=list)
    restarts: int = 0              # process restarts: after our faults and after crashes
    crashes: list[str] = field(default_factory=list)  # exits we did not cause (the worker crashes on purpose)
    late_events: int = 0
    dead_letters: int = 0
    peak_rss_mb: dict = field(default_factory=dict)   # process kind -> largest VmHWM seen
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.posts.expected > 0 and self.posts.exact and self.windows.exact
                and self.late_events == 0 and self.dead_letters == 0)

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("posts", "windows"):
            out[name]["examples"] = [repr(e) for e in out[name]["examples"]]
        out["ok"] = self.ok
        return out


def format_reports(reports: list[ScenarioReport]) -> str:
    """The result table, then per scenario what was injected and anything that went wrong."""
    header = ("scenario", "posts exp/stored", "windows exp/stored", "missing p/w", "dup p/w", "different p/w",
              "faults", "restarts", "time s", "peak RSS MB w/s", "result")
    rows = []
    for r in reports:
        rows.append((r.scenario, f"{r.posts.expected}/{r.posts.stored}", f"{r.windows.expected}/{r.windows.stored}",
                     f"{r.posts.missing}/{r.windows.missing}", f"{r.posts.duplicated}/{r.windows.duplicated}",
                     f"{r.posts.different}/{r.windows.different}", str(len(r.faults)), str(r.restarts),
                     f"{r.seconds:.0f}",
                     f"{r.peak_rss_mb.get('worker', 0):.0f}/{r.peak_rss_mb.get('sink', 0):.0f}",
                     "EXACT" if r.ok else "FAILED"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    for r in reports:
        out.append(f"\n{r.scenario}: {SCENARIO_HELP.get(r.scenario, '')}")
        out.append(f"  {r.arrivals} posts sent in {r.messages} messages ({r.posts.expected} unique); "
                   f"late {r.late_events}, dead letters {r.dead_letters}")
        out += [f"  - {fault}" for fault in r.faults]
        out += [f"  ~ crashed and restarted: {crash}" for crash in r.crashes]
        if r.error:
            out.append(f"  ! error: {r.error}")
        for what, diff in (("posts", r.posts), ("windows", r.windows)):
            out += [f"  ! {what}: {example}" for example in diff.examples]
    return "\n".join(out)


# ============================================================================ shell: environment
def free_port_pair() -> int:
    """A free port whose successor is free too (worker metrics use port + worker index)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


# The caller's settings that still apply inside the suite: where the Kafka jars are cached and how
# to reach an external broker. Everything else (home, namespace, ports, ClickHouse, windows, grace)
# is the suite's own, or the oracle would not describe what the pipeline computes.
KEPT_SETTINGS = ("TAGPULSE_CACHE", "TAGPULSE_KAFKA_VERSION", "TAGPULSE_KAFKA_SECURITY_PROTOCOL",
                 "TAGPULSE_KAFKA_SASL_MECHANISM", "TAGPULSE_KAFKA_SASL_USERNAME", "TAGPULSE_KAFKA_SASL_PASSWORD",
                 "TAGPULSE_KAFKA_SASL_PASSWORD_FILE", "TAGPULSE_KAFKA_SSL_CAFILE", "TAGPULSE_KAFKA_SSL_CERTFILE",
                 "TAGPULSE_KAFKA_SSL_KEYFILE")


def suite_environ(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGPULSE_") or k in KEPT_SETTINGS}
    env.update({k: str(v) for k, v in settings.items()})
    return env


@contextmanager
def patched_environ(env: dict):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(env: dict):
    from tagpulse import config

    with patched_environ(env):
        return config.load()


# ============================================================================ shell: the broker
class Broker:
    """The suite's Kafka: a private single-node broker run by tagpulse.stack (which the
    broker-restart scenario stops and starts), or an external one from TAGPULSE_KAFKA."""

    def __init__(self, home: Path, external: str | None = None):
        self.external = external
        if external:
            self.env = suite_environ(TAGPULSE_HOME=home, TAGPULSE_KAFKA=external)
        else:
            self.env = suite_environ(TAGPULSE_HOME=home, **stack.private_kafka_env())
        self.settings = load_settings(self.env)

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def restartable(self) -> bool:
        return self.external is None

    def start(self) -> None:
        with patched_environ(self.env):  # Kafka client security settings are read from the environment
            if self.external:
                stack.wait_for_kafka(self.settings, timeout=30)
            else:
                stack.ensure_kafka(self.settings)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM; kill -9 after 30 s); the data stays."""
        if not self.external:
            stack.stop(self.settings)

    def running(self) -> bool:
        return self.external is not None or stack.kafka_pid(self.settings) is not None


# ============================================================================ shell: one scenario's pipeline
class Harness:
    """One namespace, one chDB directory, workers and a sink (tagpulse.pipeline.Pipeline);
    restarts a process that exits without us causing it, as `tagpulse worker` would."""

    def __init__(self, name: str, broker: Broker, workdir: Path, log=print, take_messages: int = TAKE_MESSAGES):
        from tagpulse.pipeline import Pipeline

        self.name = name
        self.broker = broker
        self.home = workdir / name
        if self.home.exists():
            shutil.rmtree(self.home)
        self.home.mkdir(parents=True)
        self.env = suite_environ(**{k: v for k, v in broker.env.items() if k.startswith("TAGPULSE_KAFKA")})
        self.env.update({
            "TAGPULSE_HOME": str(self.home),
            "TAGPULSE_NAMESPACE": f"faults-{name}-{uuid.uuid4().hex[:8]}",
            "TAGPULSE_CLICKHOUSE": f"chdb://{self.home / 'clickhouse'}",
            "TAGPULSE_SQL_PORT": str(free_port()),
            "TAGPULSE_SINK_METRICS_PORT": str(free_port()),
            "TAGPULSE_WORKER_METRICS_PORT": str(free_port_pair()),
            # A finished replay closes its last windows after idle timeout + grace: keep the wait short.
            "TAGPULSE_IDLE_TIMEOUT": "2",
            "TAGPULSE_TAKE_MESSAGES": str(take_messages),
            # Faust keeps a data directory (unused: our state lives in Kafka) relative to the cwd otherwise.
            "APP_DATADIR": str(self.home / "faust-data"),
        })
        self.settings = load_settings(self.env)
        self.pipeline = Pipeline(self.settings, self.home / "logs", env=self.env)
        self.log = log
        self.down: set[str] = set()     # names of processes we stopped on purpose
        self.started: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self.restart_at: dict[str, float] = {}
        self.restarts = 0
        self.crashes: list[str] = []
        self.peak: dict[str, float] = {}

    def processes(self):
        return [*self.pipeline.workers, *([self.pipeline.sink] if self.pipeline.sink else [])]

    def sample_memory(self) -> None:
        for proc in self.processes():
            if proc.alive():
                kind = "sink" if proc.name == "sink" else "worker"
                self.peak[kind] = max(self.peak.get(kind, 0.0), peak_rss_mb(proc.pid))

    def supervise(self) -> None:
        self.sample_memory()
        now = time.monotonic()
        for i, proc in enumerate(self.pipeline.workers):
            if proc.proc is not None and not proc.alive() and proc.name not in self.down and self.due(proc, now):
                self.pipeline.start_worker(i, loglevel="warn")
                self.started[proc.name] = now
        sink = self.pipeline.sink
        if sink is not None and not sink.alive() and "sink" not in self.down and self.due(sink, now):
            self.pipeline.start_sink()
            self.started["sink"] = now

    def due(self, proc, now: float) -> bool:
        """A crashed process is restarted with `tagpulse worker`'s backoff: 1 s, doubling up to
        30 s, back to 1 s after a minute of running. True when it is time to restart it now."""
        if proc.name not in self.restart_at:
            ran = now - self.started.get(proc.name, 0.0)
            backoff = 1.0 if ran > 60 else min(2 * self.backoff.get(proc.name, 0.5), 30.0)
            self.backoff[proc.name] = backoff
            self.restart_at[proc.name] = now + backoff
            self.crashes.append(f"{proc.name} (pid {proc.pid}) exited with {proc.proc.returncode}")
            self.log(f"  {self.crashes[-1]}; restarting it in {backoff:.0f}s")
        if now < self.restart_at[proc.name]:
            return False
        del self.restart_at[proc.name]
        self.restarts += 1
        return True

    def start_worker(self, index: int) -> None:
        self.pipeline.start_worker(index, loglevel="warn")
        self.started[f"worker-{index}"] = time.monotonic()

    def kill(self, proc) -> None:
        """kill -9, after reading its peak memory (gone with the process)."""
        self.sample_memory()
        self.down.add(proc.name)
        proc.kill()

    def stop(self, proc) -> None:
        self.sample_memory()
        self.down.add(proc.name)
        proc.stop()

    def restart_worker(self, index: int) -> None:
        self.down.discard(self.pipeline.workers[index].name)
        self.restarts += 1
        self.start_worker(index)

    def start_sink(self) -> None:
        self.pipeline.start_sink()
        self.started["sink"] = time.monotonic()

    def restart_sink(self) -> None:
        self.down.discard("sink")
        self.restarts += 1
        self.start_sink()

    async def done_fraction(self, total_messages: int) -> float:
        """Share of the raw messages the stream group has committed (through its transactions)."""
        from tagpulse.pipeline import _progress

        while True:
            self.supervise()
            try:
                backlog, _, _ = await _progress(self.settings)
                return 1.0 - backlog / total_messages
            except Exception:  # the broker is restarting, or the group coordinator is not there yet
                await asyncio.sleep(0.5)

    async def wait_fraction(self, fraction: float, total: int, fresh: bool = False) -> float:
        """Until `fraction` of the replay is committed (and, with fresh, at least one more message
        than now: the restarted worker is working again). Returns the fraction reached."""
        floor = await self.done_fraction(total) if fresh else -1.0
        while True:
            done = await self.done_fraction(total)
            if done >= 1.0 or (done >= fraction and done > floor):
                return done
            await asyncio.sleep(0.2)

    async def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervise()
            await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))

    async def wait_sink_ready(self, timeout: float = 300.0) -> None:
        """Until the sink answers SQL (it opens chDB and applies migrations first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.to_thread(self.query, "SELECT 1", 10)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the sink did not answer SQL within {timeout:.0f}s; "
                                       f"see {self.pipeline.log_dir / 'sink.log'}") from None
                await self.sleep(0.3)

    async def wait_final(self, timeout: float) -> float:
        from tagpulse.pipeline import wait_until_final

        return await wait_until_final(self.settings, timeout=timeout, on_progress=lambda *_: self.supervise())

    def query(self, sql: str, timeout: float = 600.0) -> list[dict]:
        """JSONEachRow rows through the running sink's read-only SQL endpoint."""
        import orjson

        from tagpulse.commands.sql import query_endpoint

        body = query_endpoint(self.settings.sink_sql_port, sql, "JSONEachRow", None, timeout=timeout)
        if body is None:
            raise ConnectionError(f"no sink answers on 127.0.0.1:{self.settings.sink_sql_port}")
        return [orjson.loads(line) for line in body.splitlines() if line.strip()]

    def scalar(self, sql: str) -> int:
        rows = self.query(sql)
        value = next(iter(rows[0].values())) if rows else 0
        return int(value or 0)

    def sink_metric(self, name: str) -> float:
        """Sum of one metric's samples on the sink's Prometheus endpoint (0 when it does not answer)."""
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.settings.sink_metrics_port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.split(" ")[0] == name or line.startswith(name + "{"))

    def shutdown(self) -> None:
        self.sample_memory()
        self.down.update(p.name for p in self.processes())
        self.pipeline.stop()


POSTS_SQL = ("SELECT platform, post_id, author_id, author_handle, author_followers, "
             "toUnixTimestamp(created_at) AS created_at, lang, text, hashtags, is_share, original_post_id, "
             "likes, shares, replies, quotes FROM tagpulse.posts")
STORED_SQL = "SELECT (SELECT count() FROM tagpulse.posts) + (SELECT count() FROM tagpulse.reach_windows)"
WINDOWS_SQL = ("SELECT tag, platform, window_size, toUnixTimestamp(window_start) AS window_start, "
               "toUnixTimestamp(window_end) AS window_end, posts, originals, shares, unique_authors, "
               "potential_reach, impressions, engagement FROM tagpulse.reach_windows")


# ============================================================================ scenarios
async def worker_kill(h: Harness, total: int, rng: random.Random, report: ScenarioReport, outage_s: float) -> None:
    h.start_worker(0)
    up_since = time.monotonic()
    for point in kill_points(rng, WORKER_KILLS):
        # Kill a worker that is working: past the random point and after it committed
        # something since its restart (a kill before it rejoined the group would test little).
        done = await h.wait_fraction(point, total, fresh=True)
        if done >= 1.0:
            # Everything is committed already: kill while the restarted worker restores its
            # state and closes the last windows instead.
            await h.sleep(rng.uniform(2.0, 12.0))
        else:
            await h.sleep(rng.uniform(0.0, 0.5))
        done = await h.done_fraction(total)
        worker = h.pipeline.workers[0]
        h.kill(worker)
        report.faults.append(f"kill -9 worker-0 (pid {worker.pid}) at {100 * done:.0f}% of the replay committed, "
                             f"{time.monotonic() - up_since:.0f}s after its start")
        h.log(f"  {report.faults[-1]}")
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        h.restart_worker(0)
        up_since = time.monotonic()


async def rebalance(h: Harness, total: int, rng: random.Random, report: ScenarioReport, outage_s: float) -> None:
    h.start_worker(0)
    h.start_worker(1)
    done = await h.wait_fraction(rng.uniform(0.15, 0.35), total)
    worker = h.pipeline.workers[1]
    h.stop(worker)
    report.faults.append(f"stopped worker-1 (SIGTERM) at {100 * done:.0f}%: its partitions move to worker-0")
    h.log(f"  {report.faults[-1]}")
    done = await h.wait_fraction(min(0.95, done + rng.uniform(0.15, 0.3)), total, fresh=True)
    h.restart_worker(1)
    report.faults.append(f"started worker-1 again at {100 * done:.0f}%: the partitions spread over two workers")
    h.log(f"  {report.faults[-1]}")


async def broker_restart(h: Harness, total: int, rng: random.Random, report: ScenarioReport,
                         outage_s: float) -> None:
    h.start_worker(0)
    done = await h.wait_fraction(rng.uniform(0.2, 0.5), total, fresh=True)
    started = time.monotonic()
    await asyncio.to_thread(h.broker.stop)
    stopped_in = time.monotonic() - started
    await h.sleep(outage_s)
    await asyncio.to_thread(h.broker.start)
    report.faults.append(f"Kafka broker stopped at {100 * done:.0f}% ({stopped_in:.0f}s to shut down), "
                         f"started again after {time.monotonic() - started:.0f}s")
    h.log(f"  {report.faults[-1]}")


async def sink_kill(h: Harness, total: int, rng: random.Random, report: ScenarioReport, outage_s: float) -> None:
    await h.wait_sink_ready()
    h.start_worker(0)
    rows = report.posts.expected + report.windows.expected
    stored_at_start = 0
    for point in kill_points(rng, SINK_KILLS, 0.1, 0.9):
        # Paced by what the sink stored, not by the worker: kill a sink that is writing, past
        # the random point and after its first insert since the restart.
        while True:
            stored = await asyncio.to_thread(h.scalar, STORED_SQL)
            if (stored > stored_at_start and stored >= point * rows) or stored >= rows:
                break
            await h.sleep(0.2)
        await h.sleep(rng.uniform(0.0, 0.5))
        sink = h.pipeline.sink
        h.kill(sink)
        report.faults.append(f"kill -9 sink (pid {sink.pid}, owner of chDB) with {stored} of {rows} rows stored "
                             f"({100 * await h.done_fraction(total):.0f}% of the replay committed)")
        h.log(f"  {report.faults[-1]}")
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        h.restart_sink()
        await h.wait_sink_ready()
        stored_at_start = await asyncio.to_thread(h.scalar, STORED_SQL)


async def sink_outage(h: Harness, total: int, rng: random.Random, report: ScenarioReport, outage_s: float) -> None:
    """Every insert fails while the sink's spool directory is a plain file.

    chDB reads each batch from a spool file, so this makes the embedded engine's
    inserts fail for real and drives the path an unreachable server takes:
    pause consuming, retry with backoff, drop what an ambiguous failure already
    stored, resume. (There is no ClickHouse server on this machine to cut off.)
    """
    await h.wait_sink_ready()
    h.start_worker(0)
    done = await h.wait_fraction(rng.uniform(0.1, 0.3), total)
    spool = h.settings.run_dir / "sink-spool"
    aside = spool.with_name("sink-spool.aside")
    errors_before = h.sink_metric("tagpulse_sink_errors_total")
    spool.rename(aside)
    spool.write_text("ClickHouse inserts fail while this is a file (tagpulse faults)\n")
    started = time.monotonic()
    retrying = 0.0
    try:
        while time.monotonic() - started < outage_s:
            retrying = max(retrying, h.sink_metric("tagpulse_sink_retrying"))
            await h.sleep(0.5)
        errors = h.sink_metric("tagpulse_sink_errors_total") - errors_before
    finally:
        spool.unlink()
        aside.rename(spool)
    report.faults.append(f"every sink insert failed for {outage_s:.0f}s from {100 * done:.0f}%: {int(errors)} "
                         f"failed inserts retried with backoff, consuming paused "
                         f"(tagpulse_sink_retrying={int(retrying)})")
    h.log(f"  {report.faults[-1]}")
    if errors <= 0:
        report.error = "no insert failed during the outage: the fault was not injected"


INJECTORS = {"worker-kill": worker_kill, "rebalance": rebalance, "broker-restart": broker_restart,
             "sink-kill": sink_kill, "sink-outage": sink_outage}


async def produce_replay(settings, arrivals: list[dict]) -> int:
    """The replay through the real producer (batches routed by post key); returns the messages sent."""
    from producers.kafka_producer import produce_posts

    counts = await produce_posts(settings, arrivals, batch_size=POSTS_PER_MESSAGE)
    if counts.posts != len(arrivals) or counts.invalid:
        raise RuntimeError(f"the producer took {counts.posts} of {len(arrivals)} posts ({counts.invalid} invalid)")
    return counts.messages


async def run_scenario(name: str, broker: Broker, workdir: Path, replay, expected, log=print,
                       seed: int = 7, outage_s: float = 30.0, final_timeout: float = 1800.0,
                       take_messages: int = TAKE_MESSAGES) -> ScenarioReport:
    """One scenario on a fresh namespace and chDB directory: preload, run, inject, wait, compare."""
    posts, arrivals = replay
    want_posts, want_windows = expected
    report = ScenarioReport(scenario=name, arrivals=len(arrivals), posts=Diff(expected=len(want_posts)),
                            windows=Diff(expected=len(want_windows)))
    started = time.monotonic()
    h = Harness(name, broker, workdir, log=log, take_messages=take_messages)
    try:
        report.messages = await produce_replay(h.settings, arrivals)
        log(f"[{name}] {len(arrivals)} posts ({len(posts)} unique) in {report.messages} messages; "
            f"{len(want_windows)} windows expected")
        h.start_sink()
        await INJECTORS[name](h, report.messages, random.Random(f"{seed}-{name}"), report, outage_s)
        waited = await h.wait_final(final_timeout)
        log(f"[{name}] every window final ({waited:.0f}s after the last fault); comparing with the oracle")
        await h.wait_sink_ready()
        report.posts = compare(want_posts, ((post_key(r), post_values(r))
                                            for r in await asyncio.to_thread(h.query, POSTS_SQL)))
        report.windows = compare(want_windows, ((window_key(r), window_values(r))
                                                for r in await asyncio.to_thread(h.query, WINDOWS_SQL)))
        report.late_events = await asyncio.to_thread(h.scalar, "SELECT sum(events) FROM tagpulse.late_events")
        report.dead_letters = await asyncio.to_thread(h.scalar, "SELECT count() FROM tagpulse.dead_letters")
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        h.shutdown()  # blocking on purpose: also on Ctrl-C (a cancelled task), no process may be left behind
        report.restarts, report.crashes, report.peak_rss_mb = h.restarts, h.crashes, h.peak
        report.seconds = time.monotonic() - started
        if not broker.running():  # a failed broker scenario must not take the next one down with it
            try:
                await asyncio.to_thread(broker.start)
            except Exception as exc:
                report.error = (report.error or "") + f"; restarting the broker failed: {exc}"
    log(f"[{name}] {'EXACT' if report.ok else 'FAILED'} in {report.seconds:.0f}s: posts missing "
        f"{report.posts.missing}, duplicated {report.posts.duplicated}, different {report.posts.different}; "
        f"windows missing {report.windows.missing}, duplicated {report.windows.duplicated}, different "
        f"{report.windows.different}" + (f"; error: {report.error}" if report.error else ""))
    return report


def run_suite(scenarios=SCENARIOS, n_posts: int = SCALES["small"], seed: int = 7, workdir: Path | None = None,
              log=print, outage_s: float = 30.0, keep: bool = False, external_kafka: str | None = None,
              take_messages: int = TAKE_MESSAGES) -> list[ScenarioReport]:
    """Run the scenarios one after the other on one broker; stop everything we started."""
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="tagpulse-faults-")) if own_dir else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir / "kafka-home", external_kafka)
    if "broker-restart" in scenarios and not broker.restartable:
        raise ValueError("broker-restart stops and starts the suite's own broker; unset TAGPULSE_KAFKA to run it")
    log(f"replay: {n_posts} posts, seed {seed}; oracle over the unique posts")
    replay = synthetic_replay(n_posts, seed=seed)
    windows = load_settings(suite_environ()).windows
    expected = (expected_posts(replay[0]), expected_windows(replay[0], windows))
    reports: list[ScenarioReport] = []
    try:
        log(f"Kafka: {'external ' + broker.bootstrap if external_kafka else 'own broker on ' + broker.bootstrap}"
            f"; work directory {workdir}")
        broker.start()
        for name in scenarios:
            reports.append(asyncio.run(run_scenario(name, broker, workdir, replay, expected, log=log, seed=seed,
                                                    outage_s=outage_s, take_messages=take_messages)))
    finally:
        broker.stop()
        if own_dir and not keep and reports and all(r.ok for r in reports):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs and data kept in {workdir}")
    return reports
