"""values.schema.json and the chart's own checks stop a mistyped or
incomplete configuration at `helm install`, with a message naming it."""

from __future__ import annotations

import json
import re

import helm_python as helm
import pytest
import yaml

from chart import CHART, DATABASE, VALUE_SETS, load_chart, merge, render


def rejected(values) -> str:
    """The error `helm install` prints for `values` (fails if there is none)."""
    with pytest.raises(helm.HelmError) as err:
        render(values)
    return str(err.value)


@pytest.mark.parametrize(
    "override, where",
    [
        ({"controler": {"replicas": 2}}, "controler"),  # a mistyped key anywhere
        ({"agent": {"applymode": "host"}}, "applymode"),
        ({"agent": {"applyMode": "hots"}}, "/agent/applyMode"),
        ({"agent": {"backend": "NetworkManager"}}, "/agent/backend"),
        ({"agent": {"capacity": 11}}, "/agent/capacity"),
        ({"agent": {"drift": {"checkInterval": "1 minute"}}}, "/agent/drift/checkInterval"),
        ({"agent": {"drift": {"repair": "no"}}}, "/agent/drift/repair"),
        ({"agent": {"drift": {"interval": "60s"}}}, "interval"),
        ({"controller": {"replicas": "2"}}, "/controller/replicas"),
        ({"controller": {"pollInterval": "2 seconds"}}, "/controller/pollInterval"),
        ({"tls": {"nodeCertLifetime": "1d"}}, "/tls/nodeCertLifetime"),
        ({"tls": {"mode": "certmanager"}}, "/tls/mode"),
        ({"tls": {"caBundle": "not a certificate"}}, "/tls/caBundle"),
        ({"controller": {"removalGuard": {"maxShare": 1.5}}}, "/controller/removalGuard/maxShare"),
        ({"controller": {"rollout": {"maxUnavailable": 0}}}, "/controller/rollout/maxUnavailable"),
        ({"controller": {"rollout": {"maxUnavailable": "0%"}}}, "/controller/rollout/maxUnavailable"),
        ({"controller": {"rollout": {"threshold": -1}}}, "/controller/rollout/threshold"),
        ({"controller": {"rollout": {"waves": 3}}}, "waves"),
        ({"database": {"port": "3306"}}, "/database/port"),
        ({"database": {"url": "postgres://x"}}, "/database/url"),
        ({"logFormat": "yaml"}, "/logFormat"),
        ({"agent": {"maxUnavailable": "ten"}}, "/agent/maxUnavailable"),
        ({"networkPolicy": {"nodeCIDRs": ["10.0.0.0"]}}, "/networkPolicy/nodeCIDRs"),
        ({"tls": {"certManager": {"operators": ["Alice Smith"]}}}, "/tls/certManager/operators"),
    ],
)
def test_schema_rejects_mistakes(override, where):
    message = rejected(merge(VALUE_SETS["defaults"], override))
    assert "schema" in message and where in message, message


def test_every_value_set_and_the_defaults_pass_the_schema():
    chart = load_chart()
    for name, values in VALUE_SETS.items():
        chart.validate_schema(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "database: set database.host"),
        ({"database": {"host": "db"}}, "set database.password or database.existingSecret"),
        ({"database": {"url": "mysql://u:p@db/x", "existingSecret": "s"}}, "not both"),
        (
            {"database": DATABASE, "tls": {"mode": "certManager", "caBundle": "-----BEGIN CERTIFICATE-----\nx\n"}},
            "tls.certManager.issuerRef.name is required",
        ),
        (
            {"database": DATABASE, "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "ca"}}}},
            "tls.caBundle (PEM of the CA of the controller's server certificate) is required with tls.mode=certManager",
        ),
        (
            {"database": DATABASE, "tls": {"mode": "existingSecrets", "caBundle": "-----BEGIN CERTIFICATE-----\n"}},
            "tls.existingSecrets.controllerTLS is required",
        ),
        ({"database": DATABASE, "networkPolicy": {"enabled": True}}, "networkPolicy.nodeCIDRs is required"),
        ({"database": DATABASE, "agent": {"serviceAccount": {"create": False}}}, "agent.serviceAccount.name is required"),
        ({"database": DATABASE, "agent": {"serviceAccount": {"name": "default"}}}, 'must not be "default"'),
    ],
)
def test_incomplete_configurations_fail_with_a_clear_message(values, message):
    assert message in rejected(values)


def test_every_value_is_documented():
    """Each key of values.yaml has a comment on the line(s) above it, or
    belongs to a block whose comment covers it (probe and context objects)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    free_blocks = ("livenessProbe:", "readinessProbe:", "podSecurityContext:", "securityContext:", "resources:",
                   "strategy:", "nodeSelector:", "tolerations:", "capabilities:")
    undocumented = []
    inside_free = None
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        if inside_free is not None and indent > inside_free:
            continue
        inside_free = None
        key = line.strip()
        if key.startswith(free_blocks):
            inside_free = indent
        prev = lines[i - 1].strip() if i else ""
        if not prev.startswith("#"):
            # A mapping whose first child is documented is a section header.
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if key.endswith(":") and nxt.strip().startswith("#"):
                continue
            undocumented.append(f"line {i + 1}: {key}")
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def test_schema_covers_every_value():
    """additionalProperties: false everywhere values.yaml has a fixed shape,
    and every key of values.yaml is in the schema (no key the schema would
    refuse in the chart's own defaults)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: schema allows unknown keys"
            for key, child in value.items():
                assert key in node["properties"], f"{path}.{key} is not in the schema"
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")
    assert re.search(r'"additionalProperties": false', (CHART / "values.schema.json").read_text())
