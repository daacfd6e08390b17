"""The real Prometheus tools for the chart's alerting rules and dashboard:
the rules the chart renders written out as a rule file, `promtool`, and a
private Prometheus server (loopback only, its own configuration and storage
folder) with its HTTP API.

Nothing here starts or touches the machine's own Prometheus service.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from chart import Rendered, need, terminate

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

# Metric names in PromQL: every name of ours starts with multinic_; `up` is
# the one series of Prometheus's own the rules read.
METRIC_NAME = re.compile(r"\b(multinic_[a-z0-9_]+|up)\b(?!\s*\()")


def need_promtool() -> str:
    need(Path(PROMTOOL).exists(), "promtool (apt-get install -y prometheus)")
    return PROMTOOL


def need_prometheus() -> str:
    need(Path(PROMETHEUS).exists(), "prometheus (apt-get install -y prometheus)")
    return PROMETHEUS


def rule_groups(out: Rendered) -> list[dict[str, Any]]:
    """The groups of the rendered PrometheusRule, as a rule file holds them."""
    return out.one("PrometheusRule")["spec"]["groups"]


def write_rules(out: Rendered, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups(out)}, sort_keys=False))
    return path


def alerts_of(out: Rendered) -> list[dict[str, Any]]:
    return [r for g in rule_groups(out) for r in g["rules"]]


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels (rows included)
    and, for its `label_values(<expr>, <label>)` variables, the <expr>."""
    exprs = []

    def panels(items):
        for p in items:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            panels(p.get("panels", []))

    panels(dashboard["panels"])
    exprs.extend(expr for expr, _ in dashboard_variables(dashboard))
    return exprs


LABEL_VALUES = re.compile(r"^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$")


def dashboard_variables(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(expr, label) of each query variable: Grafana's label_values(), which
    is not PromQL itself (every query variable must be one)."""
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            text = q["query"] if isinstance(q, dict) else q
            match = LABEL_VALUES.match(text)
            assert match, f"variable {var['name']}: {text!r} is not label_values(<expr>, <label>)"
            out.append((match.group(1), match.group(2)))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label values and function
    names excluded)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(METRIC_NAME.findall(without_strings))


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


class Prometheus:
    """A Prometheus server on 127.0.0.1 with `config` (a dict), its own data
    folder under `work`, stopped with `stop()`."""

    def __init__(self, work: Path, config: dict[str, Any], port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.config = work / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = work / "prometheus.log"
        self.process = subprocess.Popen(
            [need_prometheus(), f"--config.file={self.config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
             f"--web.console.templates={work}", f"--web.console.libraries={work}"],
            stdin=subprocess.DEVNULL, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )
        self.wait(lambda: self.get_status("/-/ready") == 200, "Prometheus ready", 60)

    def stop(self) -> None:
        terminate(self.process)

    def get_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success, else raises with the error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def alerts(self) -> dict[str, list[dict[str, Any]]]:
        """Active alerts (pending and firing) by name."""
        by_name: dict[str, list[dict[str, Any]]] = {}
        for alert in self.api("alerts")["alerts"]:
            by_name.setdefault(alert["labels"]["alertname"], []).append(alert)
        return by_name

    def firing(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [a for a in alerts if a["state"] == "firing"]
                for name, alerts in self.alerts().items() if any(a["state"] == "firing" for a in alerts)}

    def known_metric_names(self) -> set[str]:
        """Every metric name a scrape has shown: series names, and the
        families the targets declared (a family with no sample yet, such
        as a counter by reason that never counted, has metadata only)."""
        names = set(self.api("label/__name__/values"))
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""],
                    "summary": ["", "_sum", "_count"], "info": ["_info", ""], "unknown": [""]}
        for family, entries in self.api("metadata").items():
            for entry in entries:
                names.update(family + s for s in suffixes.get(entry["type"], [""]))
        return names

    def targets_up(self) -> dict[str, int]:
        """Scrape targets by job: how many are up."""
        up: dict[str, int] = {}
        for t in self.api("targets")["activeTargets"]:
            up.setdefault(t["labels"]["job"], 0)
            up[t["labels"]["job"]] += t["health"] == "up"
        return up

    def wait(self, check, what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                last = check()
            except (ValueError, OSError) as e:
                last = e
            if last:
                return last
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last})")
