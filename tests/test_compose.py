"""docker-compose.yml without Docker: the Compose Specification's JSON schema, mounted files, cross-references.

The schema (tests/fixtures/compose-spec.json, see compose-spec.NOTICE) is the one `docker compose config`
validates against.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = json.loads((REPO / "tests" / "fixtures" / "compose-spec.json").read_text())
STACK = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the x-* anchors and `<<` merges like Compose
SERVICES = STACK["services"]


def _errors(document) -> list[str]:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_specification():
    assert _errors(STACK) == []


def test_the_schema_rejects_broken_files():
    """The validation can fail: a misspelt key and a wrongly typed value are errors."""
    assert _errors({"services": {"a": {"image": "x", "restart_policy": "always"}}})
    assert _errors({"services": {"a": {"image": "x", "ports": {"80": 80}}}})
    assert _errors({"servics": {}})


def test_the_full_stack_is_there():
    images = {name: s.get("image", "") for name, s in SERVICES.items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert images["clickhouse"].startswith("clickhouse/clickhouse-server:")
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["alertmanager"].startswith("prom/alertmanager:")
    assert images["grafana"].startswith("grafana/grafana:")
    assert "grafana-clickhouse-datasource" in SERVICES["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    for name in ("worker", "sink", "producer"):
        assert SERVICES[name]["build"]["dockerfile"] == "docker/Dockerfile", name
    assert SERVICES["producer"]["restart"] == "no"
    assert "tagpulse produce" in " ".join(SERVICES["producer"]["command"])
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def _host_paths():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                yield name, source
        build = service.get("build")
        if build:
            context = build["context"] if isinstance(build, dict) else build
            yield name, context
            if isinstance(build, dict) and "dockerfile" in build:
                yield name, str(Path(context) / build["dockerfile"])


def test_every_mounted_file_exists():
    paths = list(_host_paths())
    assert len(paths) >= 8
    for service, source in paths:
        assert (REPO / source).exists(), f"{service}: {source} does not exist"


def test_named_volumes_and_dependencies_are_declared():
    declared = set(STACK.get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
        for dep in service.get("depends_on", {}):
            assert dep in SERVICES, f"{name}: depends on unknown service {dep}"


def test_tagpulse_services_use_known_settings():
    """Every TAGPULSE_* variable the stack sets is one tagpulse.config reads (or one pending there)."""
    config_source = (REPO / "tagpulse" / "config.py").read_text()
    pending = {"TAGPULSE_METRICS_ADDR"}  # requested from tagpulse.config for containers (see docs/operations.md)
    for name in ("worker", "sink", "producer"):
        env = SERVICES[name]["environment"]
        assert env["TAGPULSE_KAFKA"] == "kafka:9092"
        assert env["TAGPULSE_CLICKHOUSE"].startswith("http://") and "@clickhouse:8123/tagpulse" in env["TAGPULSE_CLICKHOUSE"]
        for key in env:
            assert f'"{key}"' in config_source or key in pending, f"{name}: {key} is not a tagpulse setting"


def test_prometheus_alertmanager_and_grafana_point_at_the_compose_services():
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    hosts = set()
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            hosts |= {t.split(":")[0] for t in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            hosts |= set(dns["names"])
    hosts.discard("localhost")
    assert hosts <= set(SERVICES), hosts - set(SERVICES)
    worker_env = SERVICES["worker"]["environment"]
    ports = {t for job in prom["scrape_configs"] for d in job.get("dns_sd_configs", []) for t in [str(d["port"])]}
    assert worker_env["TAGPULSE_WORKER_METRICS_PORT"] in ports
    assert f"sink:{SERVICES['sink']['environment']['TAGPULSE_SINK_METRICS_PORT']}" in \
        [t for job in prom["scrape_configs"] for s in job.get("static_configs", []) for t in s["targets"]]
    am = [t for a in prom["alerting"]["alertmanagers"] for s in a["static_configs"] for t in s["targets"]]
    assert am == ["alertmanager:9093"]
    mounted = {v.split(":")[1] for v in SERVICES["prometheus"]["volumes"] if v.startswith(".")}
    for pattern in prom["rule_files"]:
        assert any(pattern.startswith(m) for m in mounted), f"rule files {pattern} not mounted"
    datasources = yaml.safe_load((REPO / "grafana" / "provisioning" / "datasources" / "tagpulse.yml").read_text())
    for ds in datasources["datasources"]:
        host = ds.get("url", "").split("//")[-1].split(":")[0] or ds["jsonData"]["host"]
        assert host in SERVICES, f"datasource {ds['name']} points at {host}"
        for value in re.findall(r"\$\{(\w+)\}", yaml.safe_dump(ds)):
            assert value in SERVICES["grafana"]["environment"], f"grafana needs {value}"


@pytest.mark.parametrize("service", ["alertmanager"])
def test_alertmanager_webhook_url_is_substituted(service):
    command = " ".join(SERVICES[service]["command"])
    default = "http://alert-webhook:9095/alerts"
    assert default in (REPO / "prometheus" / "alertmanager.yml").read_text()
    assert f"s#{default}#$${{ALERT_WEBHOOK_URL}}#" in command
