"""The chart cannot drift from the code: every variable (and flag) it passes
is one the real binaries accept, and every value it passes parses.

The binaries are the workspace's (MULTINIC_BIN_DIR, default target/debug);
scripts/test.sh builds them before running these tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest

from chart import VALUE_SETS, binary, container, render

# What a kubelet would put in the downward-API and Secret variables.
FIELD_VALUES = {"spec.nodeName": "node-a", "status.hostIPs": "127.0.0.1", "status.hostIP": "127.0.0.1"}
EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@cache
def accepted(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """The flags and environment variables `name --help` documents."""
    out = subprocess.run([str(binary(name)), "--help"], text=True, capture_output=True, check=True).stdout
    flags = frozenset(re.findall(r"^\s+(?:-\w, )?--([a-z0-9-]+)", out, re.M))
    env = frozenset(re.findall(r"\[env: ([A-Z0-9_]+)", out))
    assert len(flags) > 10 and len(env) > 10, out
    return flags, env


def workloads():
    for set_name, values in sorted(VALUE_SETS.items()):
        out = render(values)
        yield set_name, "multinic-controller", out.controller
        yield set_name, "multinic-agent", out.agent


WORKLOADS = list(workloads())
IDS = [f"{s}-{b}" for s, b, _ in WORKLOADS]


def resolve_env(workload) -> dict[str, str]:
    """The container's environment as a kubelet builds it: valueFrom filled
    in, $(VAR) expanded from variables defined earlier."""
    env: dict[str, str] = {}
    for entry in container(workload).get("env", []):
        if "value" in entry:
            env[entry["name"]] = EXPANSION.sub(lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = FIELD_VALUES[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = "mysql://u:p@db:3306/x" if entry["name"] == "DATABASE_URL" else "placeholder"
        else:
            pytest.fail(f"unexpected env source {entry}")
    return env


@pytest.mark.parametrize("set_name, name, workload", WORKLOADS, ids=IDS)
def test_every_variable_and_flag_is_one_the_binary_accepts(set_name, name, workload):
    flags, env_names = accepted(name)
    c = container(workload)
    assert "command" not in c, "the image's entrypoint is the binary"
    for arg in c.get("args", []):
        if arg.startswith("--"):
            assert arg[2:].split("=")[0] in flags, f"{set_name}: {name} has no flag {arg}"
    entries = c.get("env", [])
    expanded_only = {m for e in entries for m in EXPANSION.findall(e.get("value", ""))}
    for entry in entries:
        assert entry["name"] in env_names or entry["name"] in expanded_only, (
            f"{set_name}: {name} does not read {entry['name']} (and no other variable uses it)"
        )
    for used in expanded_only:
        assert used in {e["name"] for e in entries}, f"$({used}) is not defined in the container"


@pytest.mark.parametrize("set_name, name, workload", WORKLOADS, ids=IDS)
def test_every_value_parses(set_name, name, workload):
    """Runs the binary with the rendered environment (paths moved under a
    temporary folder that holds nothing): it must get past parsing every flag
    and stop at the first missing file, not at a usage error (exit 2)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: (tmp + v if v.startswith("/") else v) for k, v in resolve_env(workload).items()}
        if name == "multinic-agent":
            # Past OS detection, up to the CA file.
            os_release = Path(env["MULTINIC_HOST_ROOT"], "etc/os-release")
            os_release.parent.mkdir(parents=True)
            os_release.write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
            env["MULTINIC_HTTP_LISTEN"] = "127.0.0.1:0"
        proc = subprocess.run([str(binary(name))], env={"PATH": os.environ["PATH"], **env},
                              text=True, capture_output=True, timeout=30)
    assert proc.returncode == 1, f"{set_name}: {name} exited {proc.returncode}:\n{proc.stderr}"
    assert "Usage:" not in proc.stderr, proc.stderr
    expected = "controller TLS material" if name == "multinic-controller" else "ca.crt"
    assert expected in proc.stderr, f"{set_name}: {name} stopped earlier than the TLS files:\n{proc.stderr}"


def test_a_bad_value_would_be_caught():
    """The check above can fail: a value the binary refuses exits 2."""
    env = resolve_env(render(VALUE_SETS["defaults"]).agent)
    env["MULTINIC_APPLY"] = "hots"
    proc = subprocess.run([str(binary("multinic-agent"))], env={"PATH": os.environ["PATH"], **env},
                          text=True, capture_output=True, timeout=30)
    assert proc.returncode == 2 and "hots" in proc.stderr, proc.stderr


@pytest.mark.parametrize("mode", ["auto", "host", "netlink", "none"])
def test_schema_enums_are_values_the_agent_takes(mode):
    """applyMode and backend values of the schema parse in the agent."""
    for backend in ["auto", "netplan", "wicked", "networkmanager"]:
        env = resolve_env(render({**VALUE_SETS["defaults"], "agent": {"applyMode": mode, "backend": backend}}).agent)
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: (tmp + v if v.startswith("/") else v) for k, v in env.items()}
            Path(env["MULTINIC_HOST_ROOT"], "etc").mkdir(parents=True)
            Path(env["MULTINIC_HOST_ROOT"], "etc/os-release").write_text("ID=sles\nVERSION_ID=\"15.6\"\n")
            env["MULTINIC_HTTP_LISTEN"] = "127.0.0.1:0"
            proc = subprocess.run([str(binary("multinic-agent"))], env={"PATH": os.environ["PATH"], **env},
                                  text=True, capture_output=True, timeout=30)
        if (mode, backend) == ("host", "netplan"):
            # Parsed, then refused: netplan's only apply is whole-host.
            assert proc.returncode == 1 and "not offered with the netplan backend" in proc.stderr, proc.stderr
        else:
            assert proc.returncode == 1 and "ca.crt" in proc.stderr, f"{mode}/{backend}: {proc.stderr}"
