"""The local stack: the pure parts, then a real broker of its own through `tagpulse stack`."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from tagpulse import config, stack

REPO = Path(__file__).resolve().parents[1]


def settings_for(monkeypatch, home: Path, **env) -> config.Settings:
    # Only what the test says: not the session broker's TAGPULSE_* variables.
    for name in [n for n in os.environ if n.startswith("TAGPULSE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TAGPULSE_HOME", str(home))
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return config.load()


# ------------------------------------------------------------------------------ pure parts
def test_cluster_id_is_a_kafka_uuid():
    cluster_id = stack.kafka_cluster_id()
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_topic_plan_state_topics_keep_everything_others_a_week(monkeypatch, tmp_path):
    settings = settings_for(monkeypatch, tmp_path, TAGPULSE_NAMESPACE="x1")
    plan = stack.topic_configs(settings)
    assert sorted(plan) == sorted(settings.topics.all_pipeline_topics())
    for name in (settings.topics.stage1_state, settings.topics.stage2_state):
        assert plan[name] == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert plan[settings.topics.raw] == {"cleanup.policy": "delete", "retention.ms": str(7 * 86400 * 1000)}
    assert all(cfg["cleanup.policy"] != "compact" for cfg in plan.values())


def test_server_properties_use_this_homes_ports_and_dirs(monkeypatch, tmp_path):
    settings = settings_for(monkeypatch, tmp_path, TAGPULSE_KAFKA_PORT=12345, TAGPULSE_KAFKA_CONTROLLER_PORT=12399)
    props = dict(line.split("=", 1) for line in stack.server_properties(settings).splitlines()
                 if line and not line.startswith("#"))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:12345,CONTROLLER://127.0.0.1:12399"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:12399"
    assert props["log.dirs"] == str(tmp_path / "data" / "kafka")
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["transaction.state.log.replication.factor"] == "1"


def test_prometheus_config_scrapes_workers_and_sink_and_loads_rules(monkeypatch, tmp_path):
    settings = settings_for(monkeypatch, tmp_path, TAGPULSE_WORKER_METRICS_PORT=9600,
                            TAGPULSE_SINK_METRICS_PORT=9700, TAGPULSE_PROMETHEUS_PORT=9800)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "alerts.yml").write_text("groups:\n  - name: tagpulse\n    rules: []\n")
    (rules_dir / "alertmanager.yml").write_text("route:\n  receiver: x\n")
    rules = stack.rule_files(rules_dir)
    assert rules == [(rules_dir / "alerts.yml").resolve()]

    parsed = yaml.safe_load(stack.prometheus_config(settings, rules=rules))
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in parsed["scrape_configs"]}
    assert jobs["tagpulse-worker"] == [f"127.0.0.1:{p}" for p in (9600, 9601, 9602, 9603)]
    assert jobs["tagpulse-sink"] == ["127.0.0.1:9700"]
    assert parsed["rule_files"] == [str(rules[0])]
    assert yaml.safe_load(stack.prometheus_config(settings, rules=[]))["rule_files"] == []


def test_local_bootstrap_detection(monkeypatch, tmp_path):
    assert stack.is_local_bootstrap(settings_for(monkeypatch, tmp_path, TAGPULSE_KAFKA_PORT=11111))
    assert not stack.is_local_bootstrap(settings_for(monkeypatch, tmp_path, TAGPULSE_KAFKA="kafka.example:9092"))


# ------------------------------------------------------------------------------ the real thing
def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagpulse.cli", "stack", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


async def produce(bootstrap: str, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def read_values(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """Everything in the topic, from the beginning to the end offsets seen at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        values = []
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            for records in batch.values():
                values.extend(r.value for r in records)
        return values
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_up_produce_down_up_keeps_data_and_status_names_the_broker(tmp_path):
    """A broker of this test's own (the session broker must not be stopped under other tests)."""
    port, controller = free_port(), free_port()
    env = {**os.environ, "TAGPULSE_HOME": str(tmp_path / "home"), "TAGPULSE_KAFKA_PORT": str(port),
           "TAGPULSE_KAFKA_CONTROLLER_PORT": str(controller), "TAGPULSE_KAFKA": f"127.0.0.1:{port}",
           "TAGPULSE_NAMESPACE": "stacktest", "TAGPULSE_PARTITIONS": "2"}
    bootstrap = f"127.0.0.1:{port}"
    topic = "stacktest.posts.raw"
    message = f"kept across restarts {uuid.uuid4()}".encode()
    try:
        first = cli(env, "up", "--no-prometheus")
        assert first.returncode == 0, first.stderr
        assert "kafka: started" in first.stdout and "10 created" in first.stdout

        asyncio.run(produce(bootstrap, topic, message))
        assert message in asyncio.run(read_values(bootstrap, topic, 2))

        down = cli(env, "down")
        assert down.returncode == 0 and "kafka: stopped" in down.stdout
        assert not stack.port_open(port)
        stopped = cli(env, "status")
        assert "stopped" in next(line for line in stopped.stdout.splitlines() if line.startswith("kafka"))

        again = cli(env, "up", "--no-prometheus")
        assert again.returncode == 0, again.stderr
        assert "kafka: started" in again.stdout and "0 created, 10 present" in again.stdout
        assert message in asyncio.run(read_values(bootstrap, topic, 2)), "the message did not survive down/up"

        twice = cli(env, "up", "--no-prometheus")
        assert "already running" in twice.stdout

        status = cli(env, "status")
        assert status.returncode == 0
        kafka_line = next(line for line in status.stdout.splitlines() if line.startswith("kafka"))
        assert "running" in kafka_line and "reachable" in kafka_line and bootstrap in kafka_line
        report = json.loads(cli(env, "status", "--json").stdout)
        assert report["components"]["kafka"]["reachable"] is True
        assert report["components"]["kafka"]["formatted"] is True
    finally:
        cli(env, "down")
    assert not stack.port_open(port)


def test_missing_java_gives_one_clear_line(tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    port = free_port()
    env = {**os.environ, "PATH": str(empty_bin), "TAGPULSE_HOME": str(tmp_path / "home"),
           "TAGPULSE_KAFKA_PORT": str(port), "TAGPULSE_KAFKA_CONTROLLER_PORT": str(free_port()),
           "TAGPULSE_KAFKA": f"127.0.0.1:{port}"}
    result = cli(env, "up", "--no-prometheus")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "java" in result.stderr and "openjdk-17-jre-headless" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    status = cli(env, "status")
    assert "missing: java" in status.stdout and "openjdk-17-jre-headless" in status.stdout


def test_a_child_counts_as_alive_before_its_command_line_shows_the_marker(tmp_path, monkeypatch):
    # Right after exec a process's /proc cmdline can be empty; judged by it, a healthy
    # Prometheus start was taken for dead and a second one launched on the same port.
    # A child that execs its real command a moment later has the same window, made long.
    settings = settings_for(monkeypatch, tmp_path / "home")
    marker = str(tmp_path / "marker")
    env = dict(os.environ, MARKER=marker, PY=sys.executable)
    pid = stack.spawn(["sh", "-c", 'sleep 0.5; exec "$PY" -c "import time; time.sleep(30)" "$MARKER"'],
                      "probe", settings, env=env)
    try:
        assert stack.process_alive(pid, marker)
    finally:
        os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while stack.process_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not stack.process_alive(pid, marker)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus is not installed (scripts/bootstrap.sh)")
def test_prometheus_runs_on_our_port_with_our_targets(monkeypatch, tmp_path):
    settings = settings_for(monkeypatch, tmp_path / "home", TAGPULSE_PROMETHEUS_PORT=free_port(),
                            TAGPULSE_ALERTMANAGER_PORT=free_port())
    targets = {"worker": [f"127.0.0.1:{free_port()}"], "sink": [f"127.0.0.1:{free_port()}"]}
    try:
        info = stack.ensure_prometheus(settings, scrape_targets=targets)
        assert info["started"]
        url = f"http://127.0.0.1:{settings.prometheus_port}/api/v1/targets"
        wanted = set(targets["worker"]) | set(targets["sink"])
        scraped: set = set()
        for _ in range(100):  # target discovery runs just after the server is ready
            with urllib.request.urlopen(url, timeout=10) as response:
                scraped = {t["labels"]["instance"] for t in json.load(response)["data"]["activeTargets"]}
            if wanted <= scraped:
                break
            time.sleep(0.1)
        assert wanted <= scraped
        assert stack.status(settings)["components"]["prometheus"]["reachable"]
        running = stack.pids_with_argument(f"--config.file={settings.home / 'prometheus.yml'}")
        assert len(running) == 1, "one start, one Prometheus"
    finally:
        stack.stop(settings)
    assert not stack.port_open(settings.prometheus_port)
