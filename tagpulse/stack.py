"""The local stack: a single-node Apache Kafka (KRaft) broker, Prometheus and Alertmanager.

Everything a stack owns lives under TAGPULSE_HOME (data/, run/*.pid, logs/), so two homes
with different ports are two independent stacks. Only the Kafka jars are shared: they are
fetched once from Maven Central (stack/pom.xml) into $TAGPULSE_CACHE/kafka-<version>/libs.

Python API (each takes a `tagpulse.config.Settings`):
    up(settings)                     Kafka + topics + Prometheus/Alertmanager when installed
    ensure_kafka(settings)           start the broker unless it runs; wait until it answers
    ensure_topics(settings)          create the pipeline topics that are missing (idempotent)
    ensure_prometheus(settings, scrape_targets=None)
    ensure_alertmanager(settings)
    stop(settings) / down(settings)  stop what this home started; data is kept
    status(settings) -> dict, format_status(dict) -> str
    kafka_libs_dir(settings)         where the jars are (fetch_kafka_jars fetches them)

Errors a user can fix (no Java, a taken port, a broker that will not start) raise
StackError with one clear line; callers print it without a traceback.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "stack"
RULES_DIR = REPO / "prometheus"

# Debian package that provides each external tool (what scripts/bootstrap.sh installs).
PACKAGES = {
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
}
KAFKA_HEAP = "-Xmx1g"
DAY_MS = 24 * 3600 * 1000
KAFKA_START_TIMEOUT = 120.0


class StackError(Exception):
    """A problem the user can act on; the message is one line, ready to print."""


# ============================================================================ pure parts
def kafka_cluster_id() -> str:
    """A KRaft cluster id the way Kafka's Uuid.randomUuid() prints it (URL-safe base64, no padding)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka re-draws ids that start with '-' (they look like options on a command line).
        if not text.startswith("-"):
            return text


def render(template_name: str, **values) -> str:
    return Template((TEMPLATES / template_name).read_text()).substitute(**values)


def server_properties(settings) -> str:
    return render("server.properties.in", port=settings.kafka_port,
                  controller_port=settings.kafka_controller_port,
                  log_dirs=kafka_data_dir(settings), partitions=settings.partitions)


def topic_configs(settings) -> dict[str, dict[str, str]]:
    """Every pipeline topic with its topic-level configs.

    State topics hold the stages' changelogs. They are not compacted: each partition truncates
    its own to its latest snapshot (DeleteRecords, streams/partition_tasks.py; a compacted log
    could drop a delta a restore still needs), so they keep everything until then. Everything
    else keeps 7 days.
    """
    topics = settings.topics
    state = {topics.stage1_state, topics.stage2_state}
    plan = {}
    for name in topics.all_pipeline_topics():
        if name in state:
            plan[name] = {"cleanup.policy": "delete", "retention.ms": "-1"}
        else:
            plan[name] = {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}
    return plan


def default_scrape_targets(settings, extra_workers: int = 3) -> dict[str, list[str]]:
    """Worker metrics on the worker port and the next `extra_workers` ports, and the sink's."""
    workers = [f"127.0.0.1:{settings.worker_metrics_port + i}" for i in range(extra_workers + 1)]
    return {"worker": workers, "sink": [f"127.0.0.1:{settings.sink_metrics_port}"]}


def is_rule_file(text: str) -> bool:
    """A Prometheus rule file has a top-level `groups:` key (alertmanager.yml and others do not)."""
    return re.search(r"(?m)^groups\s*:", text) is not None


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    if not rules_dir.is_dir():
        return []
    found = []
    for path in sorted(rules_dir.iterdir()):
        if path.suffix in (".yml", ".yaml", ".rules") and path.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if is_rule_file(path.read_text()):
                    found.append(path.resolve())
    return found


def prometheus_config(settings, scrape_targets: dict[str, list[str]] | None = None,
                      rules: list[Path] | None = None, alertmanager: bool = True) -> str:
    targets = scrape_targets or default_scrape_targets(settings)

    def quoted(items) -> str:
        return ", ".join(f'"{item}"' for item in items)

    rules = rule_files() if rules is None else rules
    rule_block = "rule_files:\n" + "\n".join(f'  - "{path}"' for path in rules) if rules else "rule_files: []"
    return render("prometheus.yml.in", home=settings.home, rule_files=rule_block,
                  worker_targets=quoted(targets.get("worker", [])),
                  sink_targets=quoted(targets.get("sink", [])),
                  alertmanager_targets=quoted([f"127.0.0.1:{settings.alertmanager_port}"] if alertmanager else []),
                  prometheus_port=settings.prometheus_port)


def is_local_bootstrap(settings) -> bool:
    """True when TAGPULSE_KAFKA names the broker this home runs (not an external cluster)."""
    return settings.kafka_bootstrap.strip() in (f"127.0.0.1:{settings.kafka_port}", f"localhost:{settings.kafka_port}")


# ============================================================================ paths
def kafka_dist_dir(settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}"


def kafka_libs_dir(settings) -> Path:
    return kafka_dist_dir(settings) / "libs"


def kafka_data_dir(settings) -> Path:
    return settings.data_dir / "kafka"


def kafka_config_path(settings) -> Path:
    return settings.run_dir / "kafka-server.properties"


def pid_path(settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_path(settings, name: str) -> Path:
    # Kafka's own log4j2 file is logs/kafka.log; this one holds the process's stdout/stderr.
    return settings.log_dir / (f"{name}.out" if name == "kafka" else f"{name}.log")


# ============================================================================ tools
def missing_tools(names=("java", "mvn", "prometheus", "prometheus-alertmanager")) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def _missing_message(tools: list[str], needed_for: str) -> str:
    packages = " ".join(PACKAGES[t] for t in tools)
    return (f"{needed_for} needs {', '.join(tools)}: install with `apt-get install -y {packages}` "
            f"(or run scripts/bootstrap.sh)")


@functools.lru_cache(maxsize=4)
def java_major_version(java: str = "java") -> int | None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(_missing_message(["java"], "Kafka"))
    major = java_major_version(java)
    if major is not None and major < 17:
        raise StackError(f"Kafka 4.x needs Java 17 or newer, found Java {major} at {java}: "
                         f"install with `apt-get install -y {PACKAGES['java']}`")
    return java


# ============================================================================ processes
_children: dict[int, subprocess.Popen] = {}  # keeps our Popen objects alive so they can be reaped


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int | None, marker: str | None = None) -> bool:
    """A live (not zombie) process whose command line contains `marker` (guards pid reuse)."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        # Our own child: its pid cannot be reused while we hold it unreaped, and its command
        # line is briefly empty while it execs (read then, the marker check failed a healthy
        # Prometheus start and a second one was launched on the same port).
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if marker is not None:
            return marker in " ".join(command_line(pid))
        return True
    except (OSError, IndexError):
        return False


def command_line(pid: int | str) -> list[str]:
    """The arguments of a process, [] when it is gone (or a kernel thread, or between fork and exec)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def pids_with_argument(argument: str) -> list[int]:
    """Live processes on this machine that were started with `argument` as one of their arguments."""
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and argument in command_line(entry)]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_kafka_env() -> dict[str, str]:
    """Settings for a broker of one's own on free ports (a suite or a test run beside a running stack)."""
    port, controller = free_port(), free_port()
    while controller == port:
        controller = free_port()
    return {"TAGPULSE_KAFKA_PORT": str(port), "TAGPULSE_KAFKA_CONTROLLER_PORT": str(controller),
            "TAGPULSE_KAFKA": f"127.0.0.1:{port}"}


def spawn(cmd: list[str], name: str, settings, env: dict | None = None, cwd: Path | None = None) -> int:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path(settings, name), "ab") as out:
        # A session of its own: Ctrl-C on `tagpulse demo` must not take the broker down with it.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    _children[proc.pid] = proc
    pid_path(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def terminate(pid: int, marker: str | None, timeout: float) -> bool:
    """SIGTERM, wait up to `timeout` s, then SIGKILL. True when something was stopped."""
    if not process_alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid, marker):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not process_alive(pid, marker):
                break
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(Exception):
            child.wait(timeout=5)
    return True


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (two `stack up` on one home, two test sessions fetching jars)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_async(coro_factory):
    """Run a coroutine to completion from sync code, also when the caller's thread has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro_factory())
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ============================================================================ Kafka
def kafka_jars_present(settings) -> bool:
    libs = kafka_libs_dir(settings)
    return libs.is_dir() and any(libs.glob(f"kafka_2.13-{settings.kafka_version}.jar"))


def fetch_kafka_jars(settings, say=None) -> Path:
    """Kafka's jars from Maven Central into the cache, once; a half-finished fetch is never used."""
    libs = kafka_libs_dir(settings)
    if kafka_jars_present(settings):
        return libs
    dist = kafka_dist_dir(settings)
    with file_lock(dist.parent / f".kafka-{settings.kafka_version}.lock"):
        if kafka_jars_present(settings):  # another process fetched them while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError(_missing_message(["mvn"], "fetching the Kafka jars"))
        if say:
            say(f"fetching Kafka {settings.kafka_version} jars from Maven Central into {libs} (once)")
        dist.mkdir(parents=True, exist_ok=True)
        staging = dist / f"libs.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copy(TEMPLATES / "pom.xml", dist / "pom.xml")
        cmd = [mvn, "-q", "-B", "-f", str(dist / "pom.xml"), "dependency:copy-dependencies",
               f"-Dkafka.version={settings.kafka_version}", f"-DoutputDirectory={staging}",
               "-DincludeScope=runtime"]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=dist)
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            detail = (result.stdout + result.stderr).strip().splitlines()[-12:]
            raise StackError(f"could not fetch the Kafka {settings.kafka_version} jars with Maven "
                             f"(exit {result.returncode}): " + " | ".join(detail))
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
    return libs


def _java_cmd(settings, main_class: str, *args: str, heap: str = KAFKA_HEAP) -> list[str]:
    java = require_java()
    return [java, heap, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={TEMPLATES / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={settings.log_dir}",
            "-cp", f"{kafka_libs_dir(settings)}/*", main_class, *args]


def kafka_formatted(settings) -> bool:
    return (kafka_data_dir(settings) / "meta.properties").is_file()


def format_kafka_storage(settings) -> None:
    """Format the log dir once; never again (that would be a new cluster and lose the data)."""
    config = kafka_config_path(settings)
    # With a static controller.quorum.voters list, StorageTool refuses --standalone.
    cmd = _java_cmd(settings, "kafka.tools.StorageTool", "format", "-t", kafka_cluster_id(),
                    "-c", str(config), "--ignore-formatted", heap="-Xmx256m")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not kafka_formatted(settings):
        detail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(f"formatting the Kafka log dir {kafka_data_dir(settings)} failed: " + " | ".join(detail))


def kafka_marker(settings) -> str:
    return str(kafka_config_path(settings))


def kafka_pid(settings) -> int | None:
    pid = read_pid(pid_path(settings, "kafka"))
    return pid if process_alive(pid, kafka_marker(settings)) else None


async def _broker_count(bootstrap: str, timeout_ms: int = 5000) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    from tagpulse.kafka_security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **client_kwargs())
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return len(cluster.get("brokers") or [])
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def broker_answers(settings, timeout_ms: int = 5000) -> bool:
    try:
        return run_async(lambda: _broker_count(settings.kafka_bootstrap, timeout_ms)) > 0
    except Exception:
        return False


def wait_for_kafka(settings, timeout: float = KAFKA_START_TIMEOUT, pid: int | None = None) -> None:
    """Until the broker answers a metadata request (with itself in it), or a clear error."""
    deadline = time.monotonic() + timeout
    host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    while True:
        if pid is not None and not process_alive(pid, kafka_marker(settings)):
            raise StackError(f"Kafka exited while starting; see {settings.log_dir / 'kafka.log'} and "
                             f"{log_path(settings, 'kafka')}:\n{_tail(log_path(settings, 'kafka')) or _tail(settings.log_dir / 'kafka.log')}")
        if port_open(int(port), host or "127.0.0.1") and broker_answers(settings):
            return
        if time.monotonic() > deadline:
            where = f"see {settings.log_dir / 'kafka.log'}" if pid else "is it running?"
            raise StackError(f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout:.0f}s; {where}")
        time.sleep(0.3)


def ensure_kafka(settings, say=None, timeout: float = KAFKA_START_TIMEOUT) -> dict:
    """Start this home's broker unless it runs; return {'pid', 'started', 'seconds'} once it answers.

    When TAGPULSE_KAFKA names another broker, nothing is started: we only wait for that one.
    """
    started_at = time.monotonic()
    if not is_local_bootstrap(settings):
        wait_for_kafka(settings, timeout=min(timeout, 30))
        return {"pid": None, "started": False, "external": True, "seconds": time.monotonic() - started_at}
    with file_lock(settings.run_dir / "kafka.lock"):
        pid = kafka_pid(settings)
        started = False
        if pid is None:
            for port in (settings.kafka_port, settings.kafka_controller_port):
                if port_open(port):
                    raise StackError(f"port {port} on 127.0.0.1 is taken by another process; choose other ports "
                                     "with TAGPULSE_KAFKA_PORT (and TAGPULSE_KAFKA_CONTROLLER_PORT)")
            require_java()
            fetch_kafka_jars(settings, say=say)
            kafka_data_dir(settings).mkdir(parents=True, exist_ok=True)
            kafka_config_path(settings).parent.mkdir(parents=True, exist_ok=True)
            kafka_config_path(settings).write_text(server_properties(settings))
            if not kafka_formatted(settings):
                if say:
                    say(f"formatting the Kafka log dir {kafka_data_dir(settings)} (first start of this home)")
                format_kafka_storage(settings)
            pid = spawn(_java_cmd(settings, "kafka.Kafka", str(kafka_config_path(settings))), "kafka", settings)
            started = True
        wait_for_kafka(settings, timeout=timeout, pid=pid)
    return {"pid": pid, "started": started, "external": False, "seconds": time.monotonic() - started_at}


async def _ensure_topics(settings, plan: dict[str, dict[str, str]]) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tagpulse.kafka_security import client_kwargs

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000,
                                **client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in plan if name not in existing]
        if not missing:
            return []
        brokers = len((await admin.describe_cluster()).get("brokers") or []) or 1
        replicas = min(3, brokers)
        response = await admin.create_topics(
            [NewTopic(name, settings.partitions, replicas, topic_configs=plan[name]) for name in missing])
        failures = []
        for item in getattr(response, "topic_errors", []):
            name, code = item[0], item[1]
            message = item[2] if len(item) > 2 else None
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another process was quicker)
                failures.append(f"{name}: error {code} {message or ''}".strip())
        if failures:
            raise StackError("could not create topics: " + "; ".join(failures))
        await _wait_for_leaders(admin, missing)
        return missing
    finally:
        await admin.close()


async def _wait_for_leaders(admin, names: list[str], timeout: float = 15.0) -> None:
    """Until every partition of the new topics has a leader, so a producer right after us does not
    start with NotLeaderForPartition retries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = await admin.describe_topics(names)
        if all(t.get("error_code", 0) == 0 and t.get("partitions") and
               all(p.get("leader", -1) >= 0 for p in t["partitions"]) for t in topics):
            return
        await asyncio.sleep(0.1)


def ensure_topics(settings, topics: dict[str, dict[str, str]] | None = None, attempts: int = 20) -> list[str]:
    """Create the missing pipeline topics (settings.partitions partitions); returns the names created.

    Existing topics are left as they are. Retries briefly: a broker that has just started may
    not accept CreateTopics for a moment.
    """
    plan = topics or topic_configs(settings)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return run_async(lambda: _ensure_topics(settings, plan))
        except StackError:
            raise
        except Exception as exc:  # not ready yet, a leader election: try again
            last = exc
            time.sleep(min(0.2 * (attempt + 1), 1.0))
    raise StackError(f"could not create topics on {settings.kafka_bootstrap}: {last!r}")


# ============================================================================ Prometheus / Alertmanager
def prometheus_marker(settings) -> str:
    return str(settings.home / "prometheus.yml")


def alertmanager_marker(settings) -> str:
    return str(settings.home / "alertmanager.yml")


def prometheus_pid(settings) -> int | None:
    pid = read_pid(pid_path(settings, "prometheus"))
    return pid if process_alive(pid, prometheus_marker(settings)) else None


def alertmanager_pid(settings) -> int | None:
    pid = read_pid(pid_path(settings, "alertmanager"))
    return pid if process_alive(pid, alertmanager_marker(settings)) else None


def _wait_http_ready(port: int, pid: int, marker: str, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid, marker):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def ensure_prometheus(settings, scrape_targets: dict[str, list[str]] | None = None,
                      timeout: float = 30.0) -> dict | None:
    """Write $TAGPULSE_HOME/prometheus.yml and run Prometheus on settings.prometheus_port.

    Returns None when Prometheus is not installed (the rest of the stack works without it).
    A running instance of this home gets the new config through a reload (SIGHUP).
    """
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    config = settings.home / "prometheus.yml"
    settings.home.mkdir(parents=True, exist_ok=True)
    config.write_text(prometheus_config(settings, scrape_targets, alertmanager=shutil.which("prometheus-alertmanager") is not None))
    pid = prometheus_pid(settings)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        return {"pid": pid, "started": False, "port": settings.prometheus_port, "config": config}
    if port_open(settings.prometheus_port):
        raise StackError(f"port {settings.prometheus_port} is taken by another process (a system Prometheus?); "
                         "choose another with TAGPULSE_PROMETHEUS_PORT")
    data = settings.home / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
           f"--web.listen-address=127.0.0.1:{settings.prometheus_port}", "--web.enable-lifecycle",
           "--storage.tsdb.retention.time=15d", "--log.level=warn"]
    # Debian's binary looks for its web assets in /usr/share/prometheus; pass them when present.
    for flag, path in (("--web.console.templates", "/etc/prometheus/consoles"),
                       ("--web.console.libraries", "/etc/prometheus/console_libraries")):
        if Path(path).is_dir():
            cmd.append(f"{flag}={path}")
    # One retry for a start that exits at once (it has happened on a loaded machine); a start that
    # is up but not ready in time is killed first, so two never race for the port.
    for attempt in (1, 2):
        pid = spawn(cmd, "prometheus", settings, cwd=settings.home)
        if _wait_http_ready(settings.prometheus_port, pid, prometheus_marker(settings), timeout):
            break
        if process_alive(pid, prometheus_marker(settings)):
            os.kill(pid, signal.SIGKILL)
        if attempt == 2 or port_open(settings.prometheus_port):
            raise StackError(f"Prometheus did not start; see {log_path(settings, 'prometheus')}: "
                             f"{_tail(log_path(settings, 'prometheus'), 3)}")
    return {"pid": pid, "started": True, "port": settings.prometheus_port, "config": config}


def ensure_alertmanager(settings, timeout: float = 30.0) -> dict | None:
    """Alertmanager on settings.alertmanager_port with the repo's prometheus/alertmanager.yml (or ours)."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        return None
    pid = alertmanager_pid(settings)
    config = settings.home / "alertmanager.yml"
    source = RULES_DIR / "alertmanager.yml"
    settings.home.mkdir(parents=True, exist_ok=True)
    shutil.copy(source if source.is_file() else TEMPLATES / "alertmanager.yml", config)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        return {"pid": pid, "started": False, "port": settings.alertmanager_port, "config": config}
    if port_open(settings.alertmanager_port):
        raise StackError(f"port {settings.alertmanager_port} is taken by another process; "
                         "choose another with TAGPULSE_ALERTMANAGER_PORT")
    data = settings.home / "alertmanager"
    data.mkdir(parents=True, exist_ok=True)
    # An empty cluster address switches off gossip (it would listen on :9094 and clash between homes).
    cmd = [binary, f"--config.file={config}", f"--storage.path={data}",
           f"--web.listen-address=127.0.0.1:{settings.alertmanager_port}", "--cluster.listen-address=",
           "--log.level=warn"]
    pid = spawn(cmd, "alertmanager", settings, cwd=settings.home)
    if not _wait_http_ready(settings.alertmanager_port, pid, alertmanager_marker(settings), timeout):
        raise StackError(f"Alertmanager did not start; see {log_path(settings, 'alertmanager')}: "
                         f"{_tail(log_path(settings, 'alertmanager'), 3)}")
    return {"pid": pid, "started": True, "port": settings.alertmanager_port, "config": config}


# ============================================================================ whole stack
def up(settings, prometheus: bool = True, say=None) -> list[str]:
    """Kafka, the pipeline topics, then Prometheus and Alertmanager when installed. Lines to print."""
    lines = []
    kafka = ensure_kafka(settings, say=say)
    if kafka["external"]:
        lines.append(f"kafka: using {settings.kafka_bootstrap} (not started here)")
    else:
        verb = f"started in {kafka['seconds']:.1f}s" if kafka["started"] else "already running"
        lines.append(f"kafka: {verb}, pid {kafka['pid']}, {settings.kafka_bootstrap}")
    created = ensure_topics(settings)
    lines.append(f"topics: {len(created)} created, {len(topic_configs(settings)) - len(created)} present "
                 f"(namespace {settings.topics.namespace}, {settings.partitions} partitions)")
    if prometheus:
        missing = missing_tools(("prometheus", "prometheus-alertmanager"))
        # Monitoring is optional: a taken port or a failed start is reported, the pipeline goes on.
        try:
            alert = ensure_alertmanager(settings)
            if alert:
                lines.append(f"alertmanager: {'started' if alert['started'] else 'running (reloaded)'}, "
                             f"pid {alert['pid']}, http://127.0.0.1:{alert['port']}")
        except StackError as exc:
            lines.append(f"alertmanager: not started: {exc}")
        try:
            prom = ensure_prometheus(settings)
            if prom:
                lines.append(f"prometheus: {'started' if prom['started'] else 'running (reloaded)'}, pid {prom['pid']}, "
                             f"http://127.0.0.1:{prom['port']} (config {prom['config']})")
        except StackError as exc:
            lines.append(f"prometheus: not started: {exc}")
        if missing:
            lines.append(_missing_message(missing, "monitoring") + "; Kafka and the pipeline work without it")
    return lines


def stop(settings, timeout: float = 30.0) -> list[str]:
    """Stop what this home started (monitoring first, the broker last); data is kept."""
    lines = []
    for name, marker, wait in (("prometheus", prometheus_marker(settings), 10.0),
                               ("alertmanager", alertmanager_marker(settings), 10.0),
                               ("kafka", kafka_marker(settings), timeout)):
        path = pid_path(settings, name)
        pid = read_pid(path)
        if pid is not None and terminate(pid, marker, wait):
            lines.append(f"{name}: stopped (pid {pid})")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not lines:
        lines.append("nothing was running for this home")
    return lines


down = stop


def reset(settings) -> list[str]:
    """Stop the stack and delete what this home stores: Kafka's log dir (every topic, offset and changelog),
    the embedded ClickHouse directory when it lies inside the home, Prometheus data and Faust's folder.
    Settings such as tag aliases stay."""
    from sinks.clickhouse import embedded_path

    lines = stop(settings)
    home = settings.home.resolve()
    targets = [settings.data_dir, settings.home / "faust-data"]
    chdb = embedded_path(settings.clickhouse_url)
    if chdb is not None:
        if chdb.resolve().is_relative_to(home):
            targets.append(chdb)
        else:
            lines.append(f"clickhouse: {chdb} is outside {home}; left as it is")
    for path in targets:
        if path.exists():
            shutil.rmtree(path)
            lines.append(f"deleted {path}")
    return lines


def status(settings) -> dict:
    """What runs for this home, where, and what is missing."""
    components = {}
    local = is_local_bootstrap(settings)
    kpid = kafka_pid(settings)
    components["kafka"] = {
        "pid": kpid, "address": settings.kafka_bootstrap,
        "reachable": broker_answers(settings, timeout_ms=3000) if (kpid or not local) else False,
        "external": not local,
        "log": str(settings.log_dir / "kafka.log"), "data": str(kafka_data_dir(settings)),
        "formatted": kafka_formatted(settings), "jars": str(kafka_libs_dir(settings)),
        "jars_present": kafka_jars_present(settings), "version": settings.kafka_version,
    }
    for name, pid, port in (("prometheus", prometheus_pid(settings), settings.prometheus_port),
                            ("alertmanager", alertmanager_pid(settings), settings.alertmanager_port)):
        components[name] = {"pid": pid, "address": f"http://127.0.0.1:{port}",
                            "reachable": bool(pid) and port_open(port), "log": str(log_path(settings, name))}
    return {"home": str(settings.home), "cache": str(settings.cache_dir), "components": components,
            "missing": missing_tools()}


def format_status(report: dict) -> str:
    lines = [f"home:  {report['home']}", f"cache: {report['cache']}"]
    for name, info in report["components"].items():
        if info.get("external"):
            state = "external broker, " + ("reachable" if info["reachable"] else "NOT reachable")
        elif info["pid"]:
            state = f"running, pid {info['pid']}, " + ("reachable" if info["reachable"] else "not answering yet")
        else:
            state = "stopped"
        lines.append(f"{name:<13} {state:<40} {info['address']}")
        lines.append(f"{'':<13} log {info['log']}")
        if name == "kafka":
            lines.append(f"{'':<13} data {info['data']} ({'formatted' if info['formatted'] else 'not formatted yet'})")
            lines.append(f"{'':<13} jars {info['jars']} "
                         f"({'Kafka ' + info['version'] + ' cached' if info['jars_present'] else 'not fetched yet'})")
    if report["missing"]:
        packages = " ".join(PACKAGES[t] for t in report["missing"])
        lines.append(f"missing: {', '.join(report['missing'])} (apt-get install -y {packages}, or scripts/bootstrap.sh)")
    else:
        lines.append("missing: nothing")
    return "\n".join(lines)
