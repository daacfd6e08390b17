"""The chart's alerting rules and dashboard in a real Prometheus (Debian's
2.42) scraping the real binaries: a private MariaDB, the controller (mTLS,
with its issuer) and two agents (`--apply none`, files under temporary
roots, nothing on the machine touched), all on loopback.

The rules are the ones the chart renders, with `for` durations shortened
through values; Prometheus scrapes the targets with the job and namespace
labels the chart's ServiceMonitor and PodMonitor give them, so the rules'
default selectors are exercised as an operator would run them.

The story: the controller starts before the agents, so it names both
nodes (rows, no agent) and "node not converged" fires for each, from the
controller's view. The agents start: a healthy fleet raises no alert. An
impostor (node-a's certificate, another node's name) is refused and counted.
The database stops: "database unreachable" fires, and "node not converged"
does not (agents keep their state and their streams, by design). The
controller restarts during the outage (a rescheduled pod): it cannot take
the lock, so no agent gets a stream, and "node not converged" fires for each
node again, now from the agents' view. The database returns: every alert
resolves. Then every dashboard query and every rule expression must parse in
this Prometheus and name only metrics it has seen the binaries export.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from chart import DATABASE, NAMESPACE, binary, merge, need, render, terminate
from mariadb import MariaDB, available, free_port
from prom import (
    Prometheus,
    alerts_of,
    dashboard_queries,
    dashboard_variables,
    metric_names,
    need_prometheus,
    write_rules,
)

FAST = "3s"
NODES = ["node-a", "node-b"]
OURS = "Multinic"
VALUES = merge({"database": DATABASE}, {"metrics": {
    "serviceMonitor": {"enabled": True},
    "podMonitor": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "alerts": {
        "databaseUnreachable": {"for": FAST},
        "nodeNotConverged": {"for": FAST},
        "noActiveController": {"for": FAST},
        "agentsDisconnected": {"for": FAST},
    }},
}})


class Process:
    """A child process with its log file; stopped with SIGTERM."""

    def __init__(self, argv: list[str], log: Path):
        self.argv, self.log = argv, log
        self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log.open("a"),
                                      stderr=subprocess.STDOUT, env={"PATH": os.environ.get("PATH", "")})

    def stop(self) -> None:
        terminate(self.child)

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


def certificates(pki: Path) -> None:
    """A development PKI made the way the README says, with multinicctl."""
    ctl = str(binary("multinicctl"))
    for args in (["init"], ["controller", "--ip", "127.0.0.1"], *(["agent", "--node", n] for n in NODES)):
        done = subprocess.run([ctl, "certs", "--dir", str(pki), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def scrape_config(out, targets: dict[str, list[str]]) -> dict:
    """Scrape jobs labelled as the Prometheus Operator labels the chart's
    monitors: a ServiceMonitor's job is its Service, a PodMonitor's
    "<namespace>/<name>"; both add the target's namespace."""
    service = out.one("Service", "multinic-controller-metrics")["metadata"]["name"]
    pod_monitor = out.one("PodMonitor")["metadata"]
    assert out.one("ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    jobs = {service: targets["controller"], f"{pod_monitor['namespace']}/{pod_monitor['name']}": targets["agents"]}
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts, "labels": {"namespace": NAMESPACE}}]}
            for job, hosts in jobs.items()
        ],
    }


@pytest.fixture
def system(tmp_path):
    need(available(), "mariadbd, mariadb-install-db and mariadb (apt-get install -y mariadb-server)")
    need_prometheus()
    controller_bin, agent_bin = binary("multinic-controller"), binary("multinic-agent")
    pki = tmp_path / "pki"
    certificates(pki)
    db = MariaDB(tmp_path / "db")
    db.sql(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES "
        "('p-a', 's', 'fa:16:3e:00:19:0a', 'node-a.novalocal', '10.19.0.10', '10.19.0.0/24', 1450),"
        "('p-b', 's', 'fa:16:3e:00:19:0b', 'node-b', NULL, NULL, 1500);",
        database="multinic",
    )
    grpc, http, issuer = free_port(), free_port(), free_port()
    controller_argv = [
        str(controller_bin), "--database-url", db.url, "--listen", f"127.0.0.1:{grpc}",
        "--http-listen", f"127.0.0.1:{http}", "--poll-interval", "200ms", "--log-format", "text",
        "--tls-cert", str(pki / "controller.crt"), "--tls-key", str(pki / "controller.key"),
        "--client-ca", str(pki / "ca.crt"), "--tls-reload-interval", "1s",
        "--issuer-listen", f"127.0.0.1:{issuer}", "--issuer-ca-cert", str(pki / "ca.crt"),
        "--issuer-ca-key", str(pki / "ca.key"), "--token-review-url", "http://127.0.0.1:9/unused",
    ]
    processes: dict[str, Process] = {"controller": Process(controller_argv, tmp_path / "controller.log")}
    agent_ports = {node: free_port() for node in NODES}

    def start_agent(name: str, node: str, certificate: str, port: int) -> None:
        """An agent of `node` presenting `certificate`'s node certificate,
        serving HTTP on 127.0.0.1:`port` (only the nodes' are scraped)."""
        root = tmp_path / name
        (root / "state").mkdir(parents=True, exist_ok=True)
        processes[name] = Process([
            str(agent_bin), "--controller", f"https://127.0.0.1:{grpc}", "--node-name", node,
            "--apply", "none", "--backend", "netplan", "--host-root", str(root), "--state-dir", str(root / "state"),
            "--log-format", "text", "--ca", str(pki / "ca.crt"), "--tls-cert", str(pki / f"agent-{certificate}.crt"),
            "--tls-key", str(pki / f"agent-{certificate}.key"), "--http-listen", f"127.0.0.1:{port}",
            "--drift-check-interval", "1s",
        ], tmp_path / f"{name}.log")
    out = render(VALUES)
    work = tmp_path / "prometheus"
    work.mkdir()
    write_rules(out, work / "rules.yaml")
    config = scrape_config(out, {"controller": [f"127.0.0.1:{http}"],
                                 "agents": [f"127.0.0.1:{p}" for p in agent_ports.values()]})
    prom = None
    try:
        prom = Prometheus(work, config, free_port())
        yield {"db": db, "prom": prom, "out": out, "processes": processes, "controller_argv": controller_argv,
               "pki": pki, "tmp": tmp_path, "agent_ports": agent_ports, "start_agent": start_agent}
    except BaseException:
        for name, p in processes.items():
            print(f"--- {name} log ---\n{p.tail()}")
        if prom:
            print(f"--- prometheus log ---\n{prom.log.read_text()[-4000:]}")
        raise
    finally:
        for p in processes.values():
            p.stop()
        if prom:
            prom.stop()
        db.stop()


def ours(alerts: dict) -> dict:
    return {name: a for name, a in alerts.items() if name.startswith(OURS)}


def value(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def nodes_named(prom: Prometheus, alert: str) -> list[dict] | None:
    """The firing `alert`s when there is one for each node."""
    alerts = ours(prom.firing()).get(alert, [])
    return alerts if sorted(a["labels"]["node"] for a in alerts) == NODES else None


def test_alerts_fire_and_resolve_with_the_database_and_the_dashboard_queries_hold(system):
    prom, db, out, processes = system["prom"], system["db"], system["out"], system["processes"]

    # The controller is up before any agent: it names both nodes
    # (disconnected: rows, no agent stream), and the alert names them.
    prom.wait(lambda: prom.targets_up().get("multinic-controller-metrics") == 1, "controller scraped", 60)
    listed = prom.wait(lambda: len(prom.query("multinic_controller_node_not_converged")) == 2
                       and prom.query("multinic_controller_node_not_converged"), "both nodes listed", 60)
    assert sorted((r["metric"]["node"], r["metric"]["state"]) for r in listed) == [
        ("node-a", "disconnected"), ("node-b", "disconnected")]
    alerts = prom.wait(lambda: nodes_named(prom, "MultinicNodeNotConverged"), "not converged, per node", 60)
    for a in alerts:
        node = a["labels"]["node"]
        assert a["labels"] == {"alertname": "MultinicNodeNotConverged", "namespace": NAMESPACE, "node": node,
                               "severity": "warning"}
        assert f"multinicctl get node {node} says which" in a["annotations"]["description"]

    # The agents start: both connected, both nodes converged, and no alert
    # of ours pending or firing (for longer than any shortened `for`).
    for node in NODES:
        system["start_agent"](node, node, node, system["agent_ports"][node])
    prom.wait(lambda: sum(prom.targets_up().values()) == 3, "3 targets up", 60)
    prom.wait(lambda: value(prom, "sum(multinic_agent_connected)") == 2, "both agents connected", 60)
    prom.wait(lambda: value(prom, 'multinic_controller_nodes{state="converged"}') == 2, "both nodes converged", 60)
    prom.wait(lambda: not ours(prom.alerts()), "no alert of ours while healthy", 60)
    time.sleep(5)
    assert not ours(prom.alerts()), ours(prom.alerts())

    # An impostor: node-a's certificate, Hello naming node-x. Refused and
    # counted; nothing else changes.
    system["start_agent"]("impostor", "node-x", "node-a", free_port())
    prom.wait(lambda: value(prom, 'multinic_controller_rejected_messages_total{reason="wrong_node"}'),
              "the impostor's Hello counted as rejected", 60)
    processes["impostor"].stop()
    assert value(prom, 'multinic_controller_nodes{state="converged"}') == 2 and not ours(prom.alerts())

    # Drift: node-a's file deleted behind the agent's back is put back at its
    # next check and counted on both sides; no alert of ours.
    ours_file = system["tmp"] / "node-a" / "etc" / "netplan" / "90-multinic0.yaml"
    ours_file.unlink()
    prom.wait(lambda: value(prom, 'multinic_agent_drift_repairs_total{kind="file_deleted"}'), "repair counted", 60)
    prom.wait(lambda: value(prom, 'multinic_controller_drift_findings_total{kind="file_deleted", action="repaired"}'),
              "drift reported to the controller", 60)
    assert ours_file.exists() and value(prom, "sum(multinic_agent_drift_unrepaired)") == 0
    assert value(prom, 'multinic_controller_nodes{state="converged"}') == 2 and not ours(prom.alerts())

    # The certificate gauges say what the files say.
    for name, path in [("server", "controller.crt"), ("issuer_ca", "ca.crt")]:
        cert = x509.load_pem_x509_certificate((system["pki"] / path).read_bytes())
        got = value(prom, f'multinic_controller_certificate_expiration_timestamp_seconds{{certificate="{name}"}}')
        assert got == cert.not_valid_after_utc.timestamp(), name

    # The database stops: "database unreachable" fires; the nodes keep their
    # state and streams, so "node not converged" stays silent.
    db.stop()
    firing = prom.wait(lambda: ours(prom.firing()).get("MultinicDatabaseUnreachable"), "database unreachable firing", 60)
    assert [a["labels"] for a in firing] == [
        {"alertname": "MultinicDatabaseUnreachable", "namespace": NAMESPACE, "severity": "critical"}
    ]
    assert "has reached the database for 3s" in firing[0]["annotations"]["description"]
    time.sleep(5)
    active = ours(prom.alerts())
    assert set(active) == {"MultinicDatabaseUnreachable"}, active

    # The controller restarts during the outage: without the database it
    # cannot take the lock and serves no agent; each node is named again,
    # from its agent's view now (no controller knows the fleet).
    processes["controller"].stop()
    processes["controller"] = Process(system["controller_argv"], system["tmp"] / "controller.log")
    prom.wait(lambda: nodes_named(prom, "MultinicNodeNotConverged"), "not converged, per node, agents' view", 60)
    assert not prom.query("multinic_controller_node_not_converged"), "a replica without the lock lists nothing"
    expected = {"MultinicDatabaseUnreachable", "MultinicNoActiveController", "MultinicAgentsDisconnected",
                "MultinicNodeNotConverged"}
    firing = prom.wait(lambda: set(ours(prom.firing())) == expected and ours(prom.firing()),
                       "database, active replica, agents and nodes alerts firing", 60)
    assert firing["MultinicAgentsDisconnected"][0]["annotations"]["description"].startswith("100% of the running")

    # The database returns: the controller takes the lock, the agents
    # reconnect and are adopted, and every alert resolves.
    db.start()
    prom.wait(lambda: value(prom, 'multinic_controller_nodes{state="converged"}') == 2
              and value(prom, "sum(multinic_agent_connected)") == 2, "fleet converged again", 120)
    prom.wait(lambda: not ours(prom.alerts()), "every alert resolved", 60)
    assert value(prom, "max(multinic_controller_db_up)") == 1

    # Every query of the dashboard and every rule parses in this Prometheus
    # and names only metrics it has seen the binaries export.
    known = prom.known_metric_names()
    dashboard = json.loads(out.one("ConfigMap", "multinic-dashboard")["data"]["multinic.json"])
    queries = [q.replace("$namespace", NAMESPACE).replace("$__rate_interval", "1m") for q in dashboard_queries(dashboard)]
    assert len(queries) > 30
    for expr in queries + [r["expr"] for r in alerts_of(out)]:
        prom.query(expr)  # raises with Prometheus's parse error
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr}: names metrics nobody exports: {unknown}"
    for expr, label in dashboard_variables(dashboard):
        assert NAMESPACE in {r["metric"].get(label) for r in prom.query(expr)}, f"variable {expr}, {label}"
    # Not a vacuous check: a misspelt metric is caught, a bad query refused.
    assert metric_names('rate(multinic_controller_pushes{job="x"}[1m])') - known == {"multinic_controller_pushes"}
    with pytest.raises(ValueError, match="parse error"):
        prom.query("sum by (le (multinic_controller_pushes_total)")
