"""Rendering the chart the way `helm install` does, and the value sets the
tests render it with.

Everything here uses Helm 4's own Go code (helm-python-sdk binds it), so a
template or schema error here is the error an operator would see.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parent.parent
REPO = CHART.parent.parent
RELEASE = "multinic"
NAMESPACE = "netops"

# Under CI=true nothing may be skipped: a missing requirement fails the test.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A syntactically valid CA certificate for the modes that take one in values
# (only its shape matters for rendering; the pod tests use real material).
PEM = """-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUJ2b0u2CqNHf8mI3x1iA1nA0gAwAwCgYIKoZIzj0EAwIw
-----END CERTIFICATE-----
"""

DATABASE = {"host": "mariadb.db.svc.cluster.local", "password": "s3cret"}

# name -> values (on top of the chart's defaults). Every test that walks the
# rendered objects runs on all of them.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {"database": DATABASE},
    "cert-manager": {
        "database": DATABASE,
        "tls": {
            "mode": "certManager",
            "caBundle": PEM,
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}, "operators": ["alice", "bob"]},
        },
    },
    "existing-secrets": {
        "database": {"host": "db.example.org", "existingSecret": "multinic-db", "existingSecretPasswordKey": "pw"},
        "tls": {
            "mode": "existingSecrets",
            "caBundle": PEM,
            "clientCABundle": PEM,
            "existingSecrets": {"issuerCA": "multinic-node-ca", "controllerTLS": "multinic-server"},
        },
    },
    "database-url": {"database": {"url": "mysql://multinic:pw@db.example.org:3306/multinic"}},
    "network-policy": {
        "database": DATABASE,
        "networkPolicy": {
            "enabled": True,
            "nodeCIDRs": ["10.0.0.0/16", "fd00::/64"],
            "grpcFrom": [{"podSelector": {"matchLabels": {"app": "ops-shell"}}}],
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "databaseTo": [{"ipBlock": {"cidr": "192.0.2.10/32"}}],
        },
    },
    "custom-tolerations": {
        "database": DATABASE,
        "agent": {
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}],
            "nodeSelector": {"node-role.example.org/network": "true"},
        },
        "controller": {"tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}]},
    },
    "netlink": {"database": DATABASE, "agent": {"applyMode": "netlink", "backend": "netplan"}},
    "dry-run": {"database": DATABASE, "agent": {"applyMode": "none", "backend": "wicked"}},
    "drift-report-only": {"database": DATABASE, "agent": {"drift": {"checkInterval": "0", "repair": False}}},
    "monitoring": {
        "database": DATABASE,
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
            "grafanaDashboard": {"enabled": True},
        },
        "controller": {"podDisruptionBudget": {"enabled": True}, "replicas": 3},
    },
}


@dataclass
class Rendered:
    """The objects of one rendering, and its NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    text: str = field(repr=False)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def controller(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def agent(self) -> dict[str, Any]:
        return self.one("DaemonSet")


def load_chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def parse(manifests: dict[str, str]) -> Rendered:
    objects: list[dict[str, Any]] = []
    notes = ""
    texts = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        texts.append(text)
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects=objects, notes=notes, text="\n---\n".join(texts))


def render(values: dict[str, Any], *, namespace: str = NAMESPACE, release: str = RELEASE) -> Rendered:
    """Renders like `helm install RELEASE charts/multinic -n NAMESPACE -f values`."""
    return parse(load_chart().render(copy.deepcopy(values), name=release, namespace=namespace))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, key by key (as Helm merges values)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod"
    return containers[0]


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's environment, by name (each entry as rendered)."""
    entries = container(workload).get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def env_value(workload: dict[str, Any], name: str) -> str:
    return env_of(workload)[name]["value"]


def volumes_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def mounts_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(workload).get("volumeMounts", [])}


def need(condition: bool, reason: str) -> None:
    """Skips with a loud message on a developer machine; fails under CI=true."""
    import pytest

    if condition:
        return
    if CI:
        pytest.fail(f"CI=true and a requirement is missing: {reason}")
    pytest.skip(f"SKIPPED (requirement missing): {reason}")


def bin_dir() -> Path:
    return Path(os.environ.get("MULTINIC_BIN_DIR", REPO / "target" / "debug"))


def binary(name: str) -> Path:
    path = bin_dir() / name
    need(path.exists(), f"{path} (build it: cargo build -p {name if name != 'multinicctl' else 'multinicctl'})")
    return path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kwargs)


def terminate(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
