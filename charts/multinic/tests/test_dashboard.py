"""The Grafana dashboard as the chart ships it: a ConfigMap the dashboard
sidecar picks up, holding dashboards/multinic.json. That its queries parse
and name only metrics the binaries export is checked against a real
Prometheus in test_monitoring_e2e.py."""

from __future__ import annotations

import json

from chart import CHART, DATABASE, merge, render
from prom import dashboard_queries, metric_names

ENABLED = {"database": DATABASE, "metrics": {"grafanaDashboard": {"enabled": True}}}


def dashboard_of(values) -> tuple[dict, dict]:
    cm = render(values).one("ConfigMap", "multinic-dashboard")
    return cm, json.loads(cm["data"]["multinic.json"])


def test_no_dashboard_unless_enabled():
    assert render({"database": DATABASE}).named("ConfigMap", "multinic-dashboard") is None


def test_the_configmap_carries_the_file_and_the_sidecar_label():
    cm, dashboard = dashboard_of(ENABLED)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in cm["metadata"]
    assert dashboard == json.loads((CHART / "dashboards" / "multinic.json").read_text()), "shipped as is"
    cm, _ = dashboard_of(merge(ENABLED, {"metrics": {"grafanaDashboard": {
        "labels": {"grafana_dashboard": "multinic", "team": "net"}, "annotations": {"grafana_folder": "Networking"}}}}))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "multinic" and cm["metadata"]["labels"]["team"] == "net"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Networking"}


def test_dashboard_is_self_contained():
    _, d = dashboard_of(ENABLED)
    assert d["uid"] == "multinic" and d["title"] == "multinic"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["type"] == "query"
    ids = set()
    for panel in d["panels"]:
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every series is of the chosen release's namespace.
            for name in metric_names(target["expr"]):
                assert f'{name}{{namespace="$namespace"' in target["expr"], (panel["title"], name, target["expr"])
    # Panels do not overlap on Grafana's 24-column grid.
    cells = set()
    for panel in d["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_the_dashboard_shows_what_the_issue_asks_for():
    """Fleet convergence, connected agents, DB poll latency and errors,
    change-to-applied latency, per-state interface counts, guard and invalid
    rows, agent applies/rollbacks."""
    _, d = dashboard_of(ENABLED)
    used = set().union(*(metric_names(q) for q in dashboard_queries(d)))
    for metric in [
        "multinic_controller_nodes", "multinic_controller_agents_connected", "multinic_agent_connected",
        "multinic_controller_db_poll_duration_seconds_bucket", "multinic_controller_db_poll_errors_total",
        "multinic_controller_convergence_seconds_bucket", "multinic_agent_interfaces",
        "multinic_controller_removals_held", "multinic_controller_invalid_rows", "multinic_agent_applies_total",
        "multinic_agent_rollbacks_total", "multinic_controller_node_not_converged",
        "multinic_controller_certificate_expiration_timestamp_seconds",
        "multinic_agent_drift_repairs_total", "multinic_agent_drift_unrepaired",
    ]:
        assert metric in used, f"no panel shows {metric}"
