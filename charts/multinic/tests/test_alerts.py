"""The alerting rules as the chart renders them, checked with the tool
operators use: `promtool check rules` on the PrometheusRule's groups, and
`promtool test rules` unit tests (promtool/alerts.test.yaml) in which every
alert fires on some series and stays silent on others.

kubernetes-validate has no schema for PrometheusRule (a CRD): its shape is
asserted here, and promtool is the real check of what Prometheus would
load. test_monitoring_e2e.py runs the same rendered rules in a real
Prometheus against the real binaries.
"""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from chart import CHART, DATABASE, REPO, merge, render
from prom import alerts_of, need_promtool, rule_groups, run, write_rules

UNIT_TESTS = CHART / "tests" / "promtool" / "alerts.test.yaml"
RUNBOOK = REPO / "docs" / "runbook.md"
ENABLED = {"database": DATABASE, "metrics": {"prometheusRule": {"enabled": True}}}

ALERTS = [
    "MultinicControllerDown", "MultinicNoActiveController", "MultinicDatabaseUnreachable",
    "MultinicDatabaseWritesFailing", "MultinicAgentsDisconnected", "MultinicNodeNotConverged",
    "MultinicInterfacesFailed", "MultinicDriftUnrepaired", "MultinicRemovalsHeld", "MultinicRolloutStopped", "MultinicInvalidRows", "MultinicCertificateExpiresSoon",
    "MultinicTLSHandshakesRejected", "MultinicConvergenceSlow",
]


def test_no_prometheus_rule_unless_enabled():
    assert not render({"database": DATABASE}).all("PrometheusRule")


def test_prometheus_rule_shape():
    out = render(merge(ENABLED, {"metrics": {"prometheusRule": {"labels": {"release": "kube-prometheus-stack"}}}}))
    rule = out.one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    names = [r["alert"] for r in alerts_of(out)]
    assert names == ALERTS, "every alert of the issue, once each"
    for r in alerts_of(out):
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", r["for"]), r
        assert r["labels"]["severity"] in {"critical", "warning"}, r
        assert set(r["annotations"]) == {"summary", "description", "runbook_url"}, r["alert"]
        assert "{{" not in r["annotations"]["summary"], "summaries are static"
        # Helm expanded its own templates; Prometheus's are left for Prometheus.
        assert "<no value>" not in str(r) and "%!" not in str(r), r


def test_each_alert_has_a_runbook_section():
    out = render(ENABLED)
    headings = {line[3:].strip().lower() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")}
    for r in alerts_of(out):
        anchor = r["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == r["alert"].lower()
        assert anchor in headings, f"docs/runbook.md has no section '## {r['alert']}'"
    assert len(headings) == len(ALERTS), "one runbook section per alert, no stale ones"


def test_alerts_that_name_a_node_keep_the_node_label():
    by_name = {r["alert"]: r for r in alerts_of(render(ENABLED))}
    for name in ["MultinicNodeNotConverged", "MultinicInterfacesFailed", "MultinicDriftUnrepaired"]:
        rule = by_name[name]
        assert "by (namespace, node)" in rule["expr"], name
        assert "{{ $labels.node }}" in rule["annotations"]["description"], name


def test_selectors_match_what_the_monitors_scrape():
    """The default matchers are the labels the Prometheus Operator gives
    the chart's ServiceMonitor (job = the Service) and PodMonitor (job =
    namespace/name) targets."""
    out = render(merge(ENABLED, {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}))
    service = out.one("Service", "multinic-controller-metrics")["metadata"]["name"]
    pod_monitor = out.one("PodMonitor")["metadata"]
    exprs = " ".join(r["expr"] for r in alerts_of(out))
    assert f'job="{service}", namespace="netops"' in exprs
    assert f'job="{pod_monitor["namespace"]}/{pod_monitor["name"]}", namespace="netops"' in exprs
    custom = render(merge(ENABLED, {"metrics": {"prometheusRule": {
        "controllerSelector": 'job="ctl"', "agentSelector": 'job=~"agents-.*", cluster="a"'}}}))
    exprs = " ".join(r["expr"] for r in alerts_of(custom))
    assert "multinic_controller_db_up{job=\"ctl\"}" in exprs
    assert 'multinic_agent_connected{job=~"agents-.*", cluster="a"}' in exprs
    assert "netops" not in exprs.replace('namespace="netops"', "") and 'job="multinic' not in exprs


def test_thresholds_durations_labels_and_severity_come_from_values():
    values = merge(ENABLED, {"metrics": {"prometheusRule": {
        "alertLabels": {"team": "network"},
        "runbookUrl": "https://wiki.example.org/multinic",
        "alerts": {
            "databaseUnreachable": {"for": "90s", "severity": "page"},
            "agentsDisconnected": {"share": 0.25},
            "certificateExpiry": {"days": 3},
            "tlsHandshakesRejected": {"perSecond": 2},
            "convergenceSlow": {"p99Seconds": 12.5},
            "invalidRows": {"enabled": False},
        },
    }}})
    by_name = {r["alert"]: r for r in alerts_of(render(values))}
    assert "MultinicInvalidRows" not in by_name and len(by_name) == len(ALERTS) - 1
    db = by_name["MultinicDatabaseUnreachable"]
    assert (db["for"], db["labels"]) == ("90s", {"severity": "page", "team": "network"})
    assert "for 90s" in db["annotations"]["description"]
    assert db["annotations"]["runbook_url"] == "https://wiki.example.org/multinic#multinicdatabaseunreachable"
    assert by_name["MultinicAgentsDisconnected"]["expr"].endswith("> 0.25")
    assert "threshold 25%" in by_name["MultinicAgentsDisconnected"]["annotations"]["description"]
    assert by_name["MultinicCertificateExpiresSoon"]["expr"].endswith("- time() < 3 * 86400")
    assert by_name["MultinicTLSHandshakesRejected"]["expr"].endswith("> 2")
    assert by_name["MultinicConvergenceSlow"]["expr"].endswith("> 12.5")
    assert all(r["labels"]["team"] == "network" for r in by_name.values())


@pytest.mark.parametrize(
    "override, where",
    [
        ({"alerts": {"databaseUnreachable": {"for": "5 minutes"}}}, "/metrics/prometheusRule/alerts/databaseUnreachable/for"),
        ({"alerts": {"agentsDisconnected": {"share": 1.5}}}, "/metrics/prometheusRule/alerts/agentsDisconnected/share"),
        ({"alerts": {"convergenceSlow": {"p99Seconds": 120}}}, "/metrics/prometheusRule/alerts/convergenceSlow/p99Seconds"),
        ({"alerts": {"nodeNotConvergd": {"for": "1m"}}}, "nodeNotConvergd"),
        ({"controllerSelector": "job=ctl"}, "/metrics/prometheusRule/controllerSelector"),
        ({"runbookUrl": "docs/runbook.md"}, "/metrics/prometheusRule/runbookUrl"),
    ],
)
def test_schema_rejects_bad_rule_values(override, where):
    import helm_python as helm

    with pytest.raises(helm.HelmError) as err:
        render(merge(ENABLED, {"metrics": {"prometheusRule": override}}))
    assert "schema" in str(err.value) and where in str(err.value), str(err.value)


@pytest.mark.parametrize("name, values", [
    ("defaults", ENABLED),
    ("custom", merge(ENABLED, {"metrics": {"prometheusRule": {
        "controllerSelector": 'job="ctl", cluster=~"eu-.*"', "alertLabels": {"team": "network"},
        "alerts": {"nodeNotConverged": {"for": "1h30m"}, "certificateExpiry": {"days": 0.5}}}}})),
])
def test_promtool_check_rules(tmp_path, name, values):
    rules = write_rules(render(values), tmp_path / "rules.yaml")
    done = run([need_promtool(), "check", "rules", str(rules)])
    assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_fire_and_silence_every_alert(tmp_path):
    write_rules(render(ENABLED), tmp_path / "rules.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = run([need_promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_the_unit_tests_cover_every_alert_both_ways():
    """For each rendered alert: at least one case where it fires and one
    where it is expected silent (an empty exp_alerts)."""
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    fires, silent = set(), set()
    for group in spec["tests"]:
        for case in group["alert_rule_test"]:
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alerts_of(render(ENABLED))}
    assert names - fires == set(), f"never seen firing: {names - fires}"
    assert names - silent == set(), f"never seen silent: {names - silent}"


def test_a_unit_test_failure_is_reported(tmp_path):
    """The unit tests can fail: the same file against rules with other
    thresholds does."""
    values = merge(ENABLED, {"metrics": {"prometheusRule": {"alerts": {"removalsHeld": {"for": "30m"}}}}})
    write_rules(render(values), tmp_path / "rules.yaml")
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    done = run([need_promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path)
    assert done.returncode != 0
    assert "MultinicRemovalsHeld" in done.stdout + done.stderr


def test_rule_groups_are_a_valid_rule_file_layout():
    groups = rule_groups(render(ENABLED))
    assert [g["name"] for g in groups] == ["multinic"]
    assert all(set(g) == {"name", "rules"} for g in groups)
