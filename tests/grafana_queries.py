"""Run every query of the Grafana dashboards the way Grafana would, without Grafana.

Extracts each panel's targets, the template variables and the annotation queries of grafana/dashboards/*.json,
resolves the variables by running their own queries (in order: later ones may use earlier ones), substitutes
Grafana's global variables and the grafana-clickhouse-datasource macros with concrete values, then runs PromQL
against a Prometheus HTTP API and SQL against ClickHouse (chDB or a server, through clickhouse-connect).

Used by tests/test_grafana.py; also a command for real data, e.g. after `tagpulse demo`:

    .venv/bin/python tests/grafana_queries.py --prometheus http://127.0.0.1:9090 \\
        --clickhouse chdb://$HOME/.tagpulse/clickhouse --from 2015-05-19T00:00:00Z --to 2015-05-24T00:00:00Z
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "grafana" / "dashboards"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources"


# ----------------------------------------------------------------------------- model
@dataclass
class Query:
    dashboard: str
    where: str          # "panel 'Title' A", "variable tag", "annotation Spikes"
    kind: str           # "promql" | "sql"
    text: str
    instant: bool = False


@dataclass
class Variable:
    name: str
    query: Query
    multi: bool
    include_all: bool


@dataclass
class Outcome:
    query: Query
    rendered: str
    rows: int = 0
    error: str | None = None
    sample: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.rows > 0


def load_datasources(directory: Path = DATASOURCES) -> dict[str, str]:
    """uid -> datasource type, from the provisioning files."""
    import yaml
    found = {}
    for path in sorted(directory.glob("*.yml")):
        for ds in yaml.safe_load(path.read_text()).get("datasources", []):
            found[ds["uid"]] = ds["type"]
    return found


def load_dashboards(directory: Path = DASHBOARDS) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def _kind(ds: dict | None, datasources: dict[str, str]) -> str:
    ds_type = datasources.get((ds or {}).get("uid", ""), (ds or {}).get("type", ""))
    if ds_type == "prometheus":
        return "promql"
    if ds_type == "grafana-clickhouse-datasource":
        return "sql"
    raise ValueError(f"unknown datasource {ds!r}")


def _target_text(target: dict, kind: str) -> str:
    return target["expr"] if kind == "promql" else target["rawSql"]


def extract(name: str, dashboard: dict, datasources: dict[str, str]) -> tuple[list[Variable], list[Query]]:
    variables = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        kind = _kind(var.get("datasource"), datasources)
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        variables.append(Variable(var["name"], Query(name, f"variable {var['name']}", kind, text),
                                  bool(var.get("multi")), bool(var.get("includeAll"))))
    queries = []

    def walk(panels):
        for panel in panels:
            walk(panel.get("panels", []))  # collapsed rows hold their panels
            for target in panel.get("targets", []):
                kind = _kind(target.get("datasource") or panel.get("datasource"), datasources)
                queries.append(Query(name, f"panel {panel.get('title')!r} {target.get('refId')}", kind,
                                     _target_text(target, kind), bool(target.get("instant"))))

    walk(dashboard.get("panels", []))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("builtIn") or "target" not in annotation:
            continue
        kind = _kind(annotation.get("datasource"), datasources)
        queries.append(Query(name, f"annotation {annotation['name']}", kind, _target_text(annotation["target"], kind)))
    return variables, queries


# ----------------------------------------------------------------------------- substitution (pure)
@dataclass(frozen=True)
class TimeRange:
    start: int      # epoch seconds
    end: int
    interval_s: int = 60
    rate_interval: str = "1m"

    @property
    def range_s(self) -> int:
        return max(1, self.end - self.start)


def _macro_calls(text: str, name: str):
    """(start, end, argument) of each `$name(...)` with balanced parentheses."""
    pattern = re.compile(re.escape("$" + name) + r"\(")
    pos = 0
    while (m := pattern.search(text, pos)) is not None:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        if depth:
            raise ValueError(f"unbalanced parentheses after ${name}")
        yield m.start(), i, text[m.end():i - 1].strip()
        pos = i


def _replace_macro(text: str, name: str, render) -> str:
    out, last = [], 0
    for start, end, arg in list(_macro_calls(text, name)):
        out += [text[last:start], render(arg)]
        last = end
    return "".join(out) + text[last:]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def substitute_variables(text: str, values: dict[str, list[str]], all_selected: set[str] = frozenset()) -> str:
    def render(name: str, fmt: str | None) -> str:
        if name not in values:
            return None
        vals = values[name]
        if fmt == "singlequote":
            return ",".join(_quote(v) for v in vals)
        if fmt in (None, "csv", "raw"):
            return ",".join(vals)
        if fmt == "regex":
            return "(" + "|".join(re.escape(v) for v in vals) + ")" if len(vals) > 1 else re.escape(vals[0])
        if fmt == "pipe":
            return "|".join(vals)
        raise ValueError(f"unsupported variable format :{fmt}")

    # $__conditionalAll(condition, $var): the condition, or 1=1 when "All" is selected.
    def conditional(arg: str) -> str:
        condition, _, var = arg.rpartition(",")
        return "1=1" if var.strip().lstrip("$").strip("{}") in all_selected else condition

    text = _replace_macro(text, "__conditionalAll", conditional)

    def braced(m):
        got = render(m.group(1), m.group(2))
        return m.group(0) if got is None else got

    text = re.sub(r"\$\{(\w+)(?::(\w+))?\}", braced, text)
    return re.sub(r"\$(?!__)(\w+)", lambda m: render(m.group(1), None) or m.group(0), text)


def substitute_sql(text: str, tr: TimeRange) -> str:
    """grafana-clickhouse-datasource macros (v4) with concrete times."""
    text = _replace_macro(text, "__timeFilter_ms", lambda c: (
        f"{c} >= fromUnixTimestamp64Milli({tr.start * 1000}) AND {c} <= fromUnixTimestamp64Milli({tr.end * 1000})"))
    text = _replace_macro(text, "__timeFilter", lambda c: (
        f"{c} >= toDateTime({tr.start}) AND {c} <= toDateTime({tr.end})"))
    text = _replace_macro(text, "__dateFilter", lambda c: f"{c} >= toDate({tr.start}) AND {c} <= toDate({tr.end})")
    text = _replace_macro(text, "__timeInterval", lambda c: (
        f"toStartOfInterval(toDateTime({c}), INTERVAL {tr.interval_s} second)"))
    text = _replace_macro(text, "__timeInterval_ms", lambda c: (
        f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {tr.interval_s * 1000} millisecond)"))
    for name, value in (("__fromTime_ms", f"fromUnixTimestamp64Milli({tr.start * 1000})"),
                        ("__toTime_ms", f"fromUnixTimestamp64Milli({tr.end * 1000})"),
                        ("__fromTime", f"toDateTime({tr.start})"), ("__toTime", f"toDateTime({tr.end})"),
                        ("__interval_s", str(tr.interval_s))):
        text = text.replace("$" + name, value)
    return _globals(text, tr)


def substitute_promql(text: str, tr: TimeRange) -> str:
    return _globals(text, tr)


def _globals(text: str, tr: TimeRange) -> str:
    for name, value in (("__rate_interval", tr.rate_interval), ("__interval_ms", str(tr.interval_s * 1000)),
                        ("__interval", f"{tr.interval_s}s"), ("__range_s", str(tr.range_s)),
                        ("__range_ms", str(tr.range_s * 1000)), ("__range", f"{tr.range_s}s"),
                        ("__from", str(tr.start * 1000)), ("__to", str(tr.end * 1000))):
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    left = re.findall(r"\$\{?\w+", text)
    if left:
        raise ValueError(f"unresolved variables or macros: {sorted(set(left))}")
    return text


def render(query: Query, values: dict[str, list[str]], all_selected: set[str], tr: TimeRange) -> str:
    text = substitute_variables(query.text, values, all_selected)
    return substitute_sql(text, tr) if query.kind == "sql" else substitute_promql(text, tr)


# ----------------------------------------------------------------------------- execution (shell)
class Runner:
    def __init__(self, prometheus_url: str | None, clickhouse, tr: TimeRange):
        self.prometheus_url = (prometheus_url or "").rstrip("/")
        self.clickhouse = clickhouse  # a clickhouse_connect client
        self.tr = tr

    def range_for(self, kind: str) -> TimeRange:
        return self.tr

    def _prom(self, path: str, params: dict) -> dict:
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            answer = json.loads(r.read())
        if answer.get("status") != "success":
            raise RuntimeError(answer.get("error", answer))
        return answer["data"]

    def run(self, query: Query, rendered: str) -> tuple[int, list]:
        if query.kind == "sql":
            result = self.clickhouse.query(rendered)
            return len(result.result_rows), [list(r) for r in result.result_rows[:3]]
        tr = self.range_for("promql")
        if query.instant:
            data = self._prom("/api/v1/query", {"query": rendered, "time": tr.end})
            values = [[s["value"]] for s in data["result"]]
        else:
            step = max(tr.interval_s, math.ceil(tr.range_s / 200))
            data = self._prom("/api/v1/query_range", {"query": rendered, "start": tr.start,
                                                      "end": tr.end, "step": step})
            values = [s["values"] for s in data["result"]]
        # Data means at least one finite number (histogram_quantile of nothing is NaN).
        finite = [v for series in values for _, v in series if math.isfinite(float(v))]
        return len(finite), [s["metric"] for s in data["result"][:3]]

    def variable_values(self, var: Variable, values: dict, all_selected: set) -> list[str]:
        q = var.query
        if q.kind == "sql":
            rows = self.clickhouse.query(render(q, values, all_selected, self.tr)).result_rows
            return [str(r[0]) for r in rows]
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", q.text)
        if not m:
            raise ValueError(f"unsupported Prometheus variable query {q.text!r}")
        tr = self.range_for("promql")
        params = {"start": tr.start, "end": tr.end}
        if m.group(1):
            params["match[]"] = substitute_variables(m.group(1), values, all_selected)
        return [str(v) for v in self._prom(f"/api/v1/label/{m.group(2)}/values", params)]


def run_dashboard(name: str, dashboard: dict, runner: Runner, datasources: dict[str, str]) -> list[Outcome]:
    variables, queries = extract(name, dashboard, datasources)
    values: dict[str, list[str]] = {}
    all_selected: set[str] = set()
    outcomes = []
    for var in variables:
        try:
            found = runner.variable_values(var, values, all_selected)
            outcomes.append(Outcome(var.query, var.query.text, len(found), sample=found[:3]))
            if not found:
                continue
            # Like a first visit: "All" for multi-value variables that offer it, else the first value.
            values[var.name] = found if var.multi and var.include_all else found[:1]
            if var.multi and var.include_all:
                all_selected.add(var.name)
        except Exception as exc:
            outcomes.append(Outcome(var.query, var.query.text, error=f"{type(exc).__name__}: {exc}"))
    for query in queries:
        try:
            rendered = render(query, values, all_selected, runner.range_for(query.kind))
        except Exception as exc:
            outcomes.append(Outcome(query, query.text, error=f"{type(exc).__name__}: {exc}"))
            continue
        try:
            rows, sample = runner.run(query, rendered)
            outcomes.append(Outcome(query, rendered, rows, sample=sample))
        except Exception as exc:
            outcomes.append(Outcome(query, rendered, error=f"{type(exc).__name__}: {str(exc)[:500]}"))
    return outcomes


def run_all(prometheus_url: str, clickhouse, tr: TimeRange, directory: Path = DASHBOARDS) -> list[Outcome]:
    datasources = load_datasources()
    runner = Runner(prometheus_url, clickhouse, tr)
    outcomes = []
    for name, dashboard in load_dashboards(directory).items():
        outcomes += run_dashboard(name, dashboard, runner, datasources)
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        status = "ok  " if o.ok else "FAIL"
        detail = o.error or f"{o.rows} rows/values"
        lines.append(f"{status} {o.query.dashboard}: {o.query.where} [{o.query.kind}] — {detail}")
    return "\n".join(lines)


def _epoch(text: str) -> int:
    if text.isdigit():
        return int(text)
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every Grafana panel query against Prometheus and ClickHouse")
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--clickhouse", required=True, help="TAGPULSE_CLICKHOUSE-style URL (chdb:///dir or http://…)")
    parser.add_argument("--from", dest="start", required=True, help="ISO time or epoch seconds (SQL time range)")
    parser.add_argument("--to", dest="end", required=True)
    parser.add_argument("--prom-window", type=int, default=3600,
                        help="seconds of Prometheus data to query, ending now (default 3600)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from sinks.clickhouse import connect
    import time
    client = connect(args.clickhouse, readonly=True)
    sql_tr = TimeRange(_epoch(args.start), _epoch(args.end))
    now = int(time.time())
    prom_tr = TimeRange(now - args.prom_window, now, interval_s=15, rate_interval="1m")
    datasources = load_datasources()
    outcomes = []
    for name, dashboard in load_dashboards().items():
        # One range for SQL (the data's time) and one for PromQL (now): a replay of 2015 is not "now".
        outcomes += run_dashboard(name, dashboard, SplitRunner(args.prometheus, client, sql_tr, prom_tr), datasources)
    print(report(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


class SplitRunner(Runner):
    """SQL over the data's time range, PromQL over the last hour."""

    def __init__(self, prometheus_url, clickhouse, sql_tr: TimeRange, prom_tr: TimeRange):
        super().__init__(prometheus_url, clickhouse, sql_tr)
        self.prom_tr = prom_tr

    def range_for(self, kind: str) -> TimeRange:
        return self.prom_tr if kind == "promql" else self.tr


if __name__ == "__main__":
    sys.exit(main())
