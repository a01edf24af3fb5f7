"""Settings, read once from the environment.

Every knob has a documented default (docs/configuration.md) so that
`tagpulse demo` works on a fresh machine with no configuration at all.
Two processes with different TAGPULSE_HOME values share nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"tagpulse: {name}={raw!r} is not a whole number") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"tagpulse: {name}={raw!r} is not a number") from None


def parse_duration(text: str) -> int:
    """'90s', '5m', '1h', '7d' or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text))


def parse_window_specs(text: str) -> tuple[tuple[int, int], ...]:
    """'1m,1h/5m,24h/1h' -> ((60, 60), (3600, 300), (86400, 3600)).

    Each item is SIZE or SIZE/HOP; a missing hop means a tumbling window.
    """
    specs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        size_s, _, hop_s = item.partition("/")
        size = parse_duration(size_s)
        hop = parse_duration(hop_s) if hop_s else size
        if size <= 0 or hop <= 0 or size % hop:
            raise SystemExit(f"tagpulse: window {item!r}: size must be a positive multiple of the hop")
        specs.append((size, hop))
    if not specs:
        raise SystemExit("tagpulse: TAGPULSE_WINDOWS names no window")
    specs = sorted(set(specs))
    sizes = [size for size, _ in specs]
    if len(set(sizes)) != len(sizes):
        # A window row is named by its size and start: two hops of one size would collide.
        raise SystemExit(f"tagpulse: TAGPULSE_WINDOWS {text!r}: one hop per window size")
    return tuple(specs)


@dataclass(frozen=True)
class Topics:
    """Topic names; a namespace prefix lets several pipelines (tests) share one broker."""

    namespace: str = "tagpulse"

    def _name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @property
    def raw(self) -> str:
        return self._name("posts.raw")

    @property
    def dead_letters(self) -> str:
        return self._name("deadletters")

    @property
    def unique_posts(self) -> str:
        return self._name("posts.unique")

    @property
    def partial_windows(self) -> str:
        return self._name("windows.partial")

    @property
    def windows(self) -> str:
        return self._name("windows")

    @property
    def late(self) -> str:
        return self._name("late")

    @property
    def spikes(self) -> str:
        return self._name("spikes")

    @property
    def completeness(self) -> str:
        return self._name("completeness")

    @property
    def stage1_state(self) -> str:
        return self._name("state.dedup-window")

    @property
    def stage2_state(self) -> str:
        return self._name("state.merge")

    def all_pipeline_topics(self) -> list[str]:
        return [self.raw, self.dead_letters, self.unique_posts, self.partial_windows, self.windows,
                self.late, self.spikes, self.completeness, self.stage1_state, self.stage2_state]


@dataclass(frozen=True)
class Settings:
    home: Path
    kafka_bootstrap: str
    kafka_port: int
    kafka_controller_port: int
    kafka_version: str
    partitions: int
    clickhouse_url: str
    sink_sql_port: int
    worker_metrics_port: int
    sink_metrics_port: int
    prometheus_port: int
    alertmanager_port: int
    windows: tuple[tuple[int, int], ...]
    grace_s: int
    idle_timeout_s: float
    early_ship_s: float
    dedup_ttl_s: int
    snapshot_min_bytes: int
    app_id: str
    metrics_addr: str
    topics: Topics = field(default_factory=Topics)
    # Downloaded things (Kafka jars) live outside TAGPULSE_HOME so that a fresh home,
    # e.g. one per test session, does not fetch them again.
    cache_root: Path = field(default_factory=lambda: _default_cache_root())

    @property
    def cache_dir(self) -> Path:
        return self.cache_root

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"


def _default_cache_root() -> Path:
    base = _env("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(base).expanduser() / "tagpulse"


def load() -> Settings:
    home = Path(_env("TAGPULSE_HOME", str(Path.home() / ".tagpulse"))).expanduser().resolve()
    kafka_port = _env_int("TAGPULSE_KAFKA_PORT", 9092)
    return Settings(
        home=home,
        kafka_bootstrap=_env("TAGPULSE_KAFKA", f"127.0.0.1:{kafka_port}"),
        kafka_port=kafka_port,
        kafka_controller_port=_env_int("TAGPULSE_KAFKA_CONTROLLER_PORT", kafka_port + 1),
        kafka_version=_env("TAGPULSE_KAFKA_VERSION", "4.1.1"),
        partitions=_env_int("TAGPULSE_PARTITIONS", 4),
        clickhouse_url=_env("TAGPULSE_CLICKHOUSE", f"chdb://{home / 'clickhouse'}"),
        sink_sql_port=_env_int("TAGPULSE_SQL_PORT", 8124),
        worker_metrics_port=_env_int("TAGPULSE_WORKER_METRICS_PORT", 9464),
        sink_metrics_port=_env_int("TAGPULSE_SINK_METRICS_PORT", 9470),
        prometheus_port=_env_int("TAGPULSE_PROMETHEUS_PORT", 9090),
        alertmanager_port=_env_int("TAGPULSE_ALERTMANAGER_PORT", 9193),
        windows=parse_window_specs(_env("TAGPULSE_WINDOWS", "1m,1h/5m,24h/1h")),
        grace_s=parse_duration(_env("TAGPULSE_GRACE", "10s")),
        idle_timeout_s=_env_float("TAGPULSE_IDLE_TIMEOUT", 5.0),
        early_ship_s=_env_float("TAGPULSE_EARLY_SHIP", 2.0),
        dedup_ttl_s=parse_duration(_env("TAGPULSE_DEDUP_TTL", "7d")),
        snapshot_min_bytes=_env_int("TAGPULSE_SNAPSHOT_MIN_BYTES", 64 << 20),
        app_id=_env("TAGPULSE_NAMESPACE", "tagpulse"),
        metrics_addr=_env("TAGPULSE_METRICS_ADDR", "127.0.0.1"),
        topics=Topics(namespace=_env("TAGPULSE_NAMESPACE", "tagpulse")),
        cache_root=Path(_env("TAGPULSE_CACHE", str(_default_cache_root()))).expanduser().resolve(),
    )
