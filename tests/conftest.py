"""Shared fixtures: a real Kafka broker for the session, a fresh namespace per test, paths.

`stack_settings` starts one broker per test session through tagpulse.stack, in a temporary
TAGPULSE_HOME on free ports (never ~/.tagpulse, never the developer's running stack), and
stops it at the end. The Kafka jars come from the shared cache ($TAGPULSE_CACHE, default
~/.cache/tagpulse), so only the very first session on a machine fetches them.
Set TAGPULSE_TEST_KAFKA=host:port to use an existing broker instead.
"""
from __future__ import annotations

import os
import random
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(size: int) -> int:
    """The first of `size` consecutive free ports (worker metrics use port, port+1, …)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        if all(_bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no block of {size} free ports found")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data(repo_root) -> Path:
    path = repo_root.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"needs the shared data set at {path} (a checkout of shared/ beside the repo)")
    return path


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    """Settings for a running broker; env TAGPULSE_HOME/KAFKA/NAMESPACE/… point at it for the session."""
    from tagpulse import config, stack

    home = tmp_path_factory.mktemp("tagpulse-home")
    env = pytest.MonkeyPatch()
    external = os.environ.get("TAGPULSE_TEST_KAFKA", "").strip()
    env.setenv("TAGPULSE_HOME", str(home))
    env.setenv("TAGPULSE_NAMESPACE", f"s{uuid.uuid4().hex[:8]}")
    env.setenv("TAGPULSE_CLICKHOUSE", f"chdb://{home / 'clickhouse'}")
    # Our own ports for everything a test may start, clear of a developer's running stack.
    env.setenv("TAGPULSE_PROMETHEUS_PORT", str(free_port()))
    env.setenv("TAGPULSE_ALERTMANAGER_PORT", str(free_port()))
    env.setenv("TAGPULSE_SQL_PORT", str(free_port()))
    env.setenv("TAGPULSE_SINK_METRICS_PORT", str(free_port()))
    env.setenv("TAGPULSE_WORKER_METRICS_PORT", str(free_port_block(4)))
    if external:
        env.setenv("TAGPULSE_KAFKA", external)
    else:
        for key, value in stack.private_kafka_env().items():
            env.setenv(key, value)
    settings = config.load()
    try:
        try:
            if external:
                stack.wait_for_kafka(settings, timeout=30)
            else:
                stack.ensure_kafka(settings)
        except stack.StackError as exc:
            pytest.fail(f"no Kafka broker for the tests: {exc}", pytrace=False)
        yield settings
    finally:
        if not external:
            stack.stop(settings)
        env.undo()


@pytest.fixture
def namespace_settings(stack_settings, monkeypatch, tmp_path):
    """The session broker with a fresh namespace (topic prefix) whose pipeline topics exist,
    and a ClickHouse directory of the test's own."""
    from tagpulse import config, stack

    monkeypatch.setenv("TAGPULSE_NAMESPACE", f"t{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("TAGPULSE_CLICKHOUSE", f"chdb://{tmp_path / 'clickhouse'}")
    settings = config.load()
    stack.ensure_topics(settings)
    return settings


DEMO_RUNS: list[tuple[str, str, str]] = []  # (first stdout, second stdout, second stderr)


@pytest.fixture(scope="session")
def demo_namespace() -> str:
    """The namespace `tagpulse demo` runs in (demo_run): its topics stay on the session broker."""
    return f"demo{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def demo_run(stack_settings, tmp_path_factory, demo_namespace):
    """`tagpulse demo` for real, once per session, on the session broker: (chDB URL, its stdout).

    Runs in a namespace and ClickHouse directory of its own; the sink is stopped
    when the demo ends, so tests can open the chDB directory directly.
    """
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("demo")
    url = f"chdb://{home / 'clickhouse'}"
    env = dict(os.environ, TAGPULSE_NAMESPACE=demo_namespace, TAGPULSE_CLICKHOUSE=url,
               TAGPULSE_IDLE_TIMEOUT="2")
    result = subprocess.run([sys.executable, "-m", "tagpulse.cli", "demo", "--no-monitoring"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"tagpulse demo failed ({result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    # Run it again, as a user would: the second run must print the same report.
    again = subprocess.run([sys.executable, "-m", "tagpulse.cli", "demo", "--no-monitoring"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=900)
    if again.returncode != 0:
        pytest.fail(f"tagpulse demo (second run) failed ({again.returncode}):\n{again.stderr[-4000:]}", pytrace=False)
    DEMO_RUNS.append((result.stdout, again.stdout, again.stderr))
    return url, result.stdout


@pytest.fixture(scope="session")
def demo_db(demo_run) -> str:
    """chDB URL of the ClickHouse database `tagpulse demo` filled through the real pipeline."""
    return demo_run[0]
