"""The chart renders with every value set, lints strictly, and every object it
makes is valid for the Kubernetes versions it supports (Chart.yaml kubeVersion
>= 1.30) and the newest one whose schemas are bundled."""

from __future__ import annotations

import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from chart import CHART, NAMESPACE, RELEASE, VALUE_SETS, render

KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

# Kinds from CRDs (no bundled schema): checked by hand below, and only these.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    # Its shape and its rules are checked in test_alerts.py (promtool).
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param])


def test_chart_metadata():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["kubeVersion"] == ">=1.30.0-0"
    cargo = (CHART.parent.parent / "Cargo.toml").read_text()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    assert meta["appVersion"] == version, "appVersion (the default image tag) must be the workspace version"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == [], report
    # Severity 1 is INFO ("icon is recommended"); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered, version):
    name, out = rendered
    assert out.objects, name
    for obj in out.objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_KINDS:
            assert obj["spec"], f"{name}: {key} without spec"
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} is invalid on {version}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{name}: no schema for {key} on {version} (a CRD kind the test does not know?)")


def test_names_labels_and_namespace(rendered):
    name, out = rendered
    seen = set()
    for obj in out.objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta["name"])
        assert key not in seen, f"{name}: {key} rendered twice"
        seen.add(key)
        assert len(meta["name"]) <= 63, key
        labels = meta.get("labels", {})
        for label in ["helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]:
            assert label in labels, f"{name}: {key} lacks label {label}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta
            assert NAMESPACE in meta["name"], "cluster-scoped names carry the namespace (one release per namespace)"
        else:
            assert meta.get("namespace") == NAMESPACE, f"{name}: {key} not in the release namespace"


def test_no_hard_coded_namespace():
    out = render(VALUE_SETS["defaults"], namespace="elsewhere")
    assert "netops" not in out.text
    assert not re.search(r"namespace: (default|multinic)\b", out.text)
    assert ".elsewhere.svc" in out.text


def test_workload_selectors_match_their_pods(rendered):
    name, out = rendered
    for kind in ["Deployment", "DaemonSet"]:
        workload = out.one(kind)
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{name}: {kind} selector does not match its pods"
    controller = out.controller["spec"]["selector"]["matchLabels"]
    agent = out.agent["spec"]["selector"]["matchLabels"]
    assert controller != agent, "the two components must not select each other's pods"
    for service in out.all("Service"):
        assert service["spec"]["selector"] == controller, "Services reach the controller pods only"


def test_notes_explain_how_to_run_multinicctl_status(rendered):
    name, out = rendered
    assert "multinicctl --controller 127.0.0.1:50051" in out.notes
    assert f"--tls-server-name multinic-controller.{NAMESPACE}.svc" in out.notes
    assert "status" in out.notes
    assert f"port-forward service/multinic-controller" in out.notes
    if name == "cert-manager":
        assert "multinic-operator-alice" in out.notes
    else:
        assert "multinicctl certs --dir pki" in out.notes
