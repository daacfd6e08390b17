"""Security properties, object by object: what each pod may do, what it
mounts, which Secrets reach it, and what RBAC grants. A change that gives the
controller a privilege, or takes a host mount from the agent, fails here."""

from __future__ import annotations

import pytest

from chart import (
    NAMESPACE,
    VALUE_SETS,
    container,
    env_of,
    env_value,
    merge,
    mounts_of,
    render,
    volumes_of,
)

HOST_CAPS = {"NET_ADMIN", "SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"}
NM_HOST_DIRS = {"/etc/NetworkManager/system-connections", "/etc/systemd/network", "/etc/sysconfig/network-scripts"}
ALL_HOST_DIRS = {"/etc/netplan", "/etc/sysconfig/network", "/etc/udev/rules.d"} | NM_HOST_DIRS


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, render(VALUE_SETS[request.param])


def agent_with(**agent):
    return render(merge(VALUE_SETS["defaults"], {"agent": agent})).agent


def host_paths(workload):
    return {name: v["hostPath"] for name, v in volumes_of(workload).items() if "hostPath" in v}


# --- the controller --------------------------------------------------------


def test_controller_runs_unprivileged(rendered):
    name, out = rendered
    pod = out.controller["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for host in ["hostNetwork", "hostPID", "hostIPC"]:
        assert not pod.get(host), f"{name}: controller has {host}"
    sc = container(out.controller)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}, f"{name}: the controller must add no capability"
    assert not host_paths(out.controller), f"{name}: the controller mounts nothing from the host"


def test_controller_probes_and_resources(rendered):
    _, out = rendered
    c = container(out.controller)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 50051, "issuer": 50052, "http": 8080}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_controller_rollout_cannot_wait_for_standbys(rendered):
    """Standbys are never ready while the active replica lives: a rolling
    update that must keep a ready pod would never finish."""
    name, out = rendered
    spec = out.controller["spec"]
    replicas = spec["replicas"]
    assert VALUE_SETS[name].get("controller", {}).get("replicas", 2) == replicas
    rolling = spec["strategy"]["rollingUpdate"]
    unavailable = rolling["maxUnavailable"]
    if isinstance(unavailable, str):
        unavailable = replicas * int(unavailable.rstrip("%")) // 100  # Kubernetes rounds down
    assert unavailable >= replicas, f"{name}: maxUnavailable {rolling['maxUnavailable']} < {replicas} replicas"
    assert rolling["maxSurge"] == 1


def test_controller_spread_and_replicas():
    out = render(VALUE_SETS["defaults"])
    assert out.controller["spec"]["replicas"] == 2
    term = out.controller["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == out.controller["spec"]["selector"]["matchLabels"]


def test_pod_disruption_budget_is_opt_in():
    assert not render(VALUE_SETS["defaults"]).all("PodDisruptionBudget")
    pdb = render(VALUE_SETS["monitoring"]).one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- the agent -------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, backend, caps, host_pid",
    [
        ("host", "auto", HOST_CAPS, True),
        ("netlink", "auto", {"NET_ADMIN"}, False),
        ("none", "auto", set(), False),
        # auto gets the privileges of the mode the agent will resolve it to:
        # netlink on netplan nodes; host where a node may be wicked.
        ("auto", "netplan", {"NET_ADMIN"}, False),
        ("auto", "wicked", HOST_CAPS, True),
        ("auto", "networkmanager", HOST_CAPS, True),
        ("auto", "auto", HOST_CAPS, True),
    ],
)
def test_agent_privileges_follow_the_apply_mode(mode, backend, caps, host_pid):
    ds = agent_with(applyMode=mode, backend=backend)
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["hostPID"] is host_pid
    assert pod["hostIPC"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(ds)["securityContext"]
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"].get("add", [])) == caps
    if "SYS_ADMIN" in caps:
        # The API server refuses allowPrivilegeEscalation: false with SYS_ADMIN.
        assert "allowPrivilegeEscalation" not in sc
    else:
        assert sc["allowPrivilegeEscalation"] is False
    assert env_value(ds, "MULTINIC_APPLY") == mode


def test_no_container_breaks_the_api_servers_security_context_rules(rendered):
    """What kubernetes-validate's schemas cannot see: the API server refuses
    allowPrivilegeEscalation: false together with privileged or CAP_SYS_ADMIN."""
    name, out = rendered
    for workload in [out.controller, out.agent]:
        sc = container(workload)["securityContext"]
        if sc.get("allowPrivilegeEscalation") is False:
            assert not sc.get("privileged"), name
            added = {c.removeprefix("CAP_") for c in sc.get("capabilities", {}).get("add", [])}
            assert "SYS_ADMIN" not in added, name


def test_agent_runs_everywhere_by_default_and_tolerations_are_overridable(rendered):
    name, out = rendered
    pod = out.agent["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    if name == "custom-tolerations":
        assert pod["tolerations"] == VALUE_SETS[name]["agent"]["tolerations"]
        # Helm merges maps: the default kubernetes.io/os stays.
        assert VALUE_SETS[name]["agent"]["nodeSelector"].items() <= pod["nodeSelector"].items()
    else:
        assert pod["tolerations"] == [{"operator": "Exists"}], "tolerate every taint: control-plane nodes too"
    rolling = out.agent["spec"]["updateStrategy"]
    assert rolling == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert agent_with(maxUnavailable="10%")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"


def test_agent_probes(rendered):
    _, out = rendered
    c = container(out.agent)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "liveness never on the controller link"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 9737, "hostPort": 9737, "protocol": "TCP"}]
    assert env_value(out.agent, "MULTINIC_HTTP_LISTEN") == "$(HOST_IP):9737"


@pytest.mark.parametrize(
    "backend, dirs, dir_type, os_release",
    [
        ("auto", ALL_HOST_DIRS, "DirectoryOrCreate", True),
        ("netplan", {"/etc/netplan"}, "Directory", False),
        ("wicked", {"/etc/sysconfig/network", "/etc/udev/rules.d"}, "Directory", False),
        ("networkmanager", NM_HOST_DIRS, "Directory", False),
    ],
)
def test_agent_mounts_exactly_the_host_paths_its_backend_writes(backend, dirs, dir_type, os_release):
    ds = agent_with(backend=backend)
    paths = host_paths(ds)
    volumes = {hp["path"]: name for name, hp in paths.items()}
    mounts = mounts_of(ds)
    by_volume = {m["name"]: m for m in mounts.values()}
    expected = dirs | {"/var/lib/multinic"} | ({"/etc/os-release"} if os_release else set())
    assert set(volumes) == expected, "no other host path, and never / itself"
    for d in dirs:
        # The predecessor's folder is gone on RHEL 10 and SUSE 16: created empty there.
        want = "DirectoryOrCreate" if d == "/etc/sysconfig/network-scripts" else dir_type
        assert paths[volumes[d]]["type"] == want, d
        mount = by_volume[volumes[d]]
        assert mount["mountPath"] == "/host" + d, "host files live under --host-root /host"
        assert not mount.get("readOnly"), f"{d} must be writable"
    state = by_volume[volumes["/var/lib/multinic"]]
    assert state["mountPath"] == "/var/lib/multinic" and not state.get("readOnly")
    assert paths[volumes["/var/lib/multinic"]]["type"] == "DirectoryOrCreate"
    if os_release:
        assert paths[volumes["/etc/os-release"]]["type"] == "File"
        assert by_volume[volumes["/etc/os-release"]] == {
            "name": volumes["/etc/os-release"], "mountPath": "/host/etc/os-release", "readOnly": True}
    env = env_of(ds)
    assert env["MULTINIC_HOST_ROOT"]["value"] == "/host"
    assert env["MULTINIC_BACKEND"]["value"] == backend
    assert env["MULTINIC_STATE_DIR"]["value"] == "/var/lib/multinic"


def test_agent_never_mounts_the_host_root(rendered):
    name, out = rendered
    for hp in host_paths(out.agent).values():
        assert hp["path"] not in ("/", "/etc", "/var", "/proc", "/sys", "/run", "/var/run"), name
    for m in mounts_of(out.agent):
        assert m == "/host" or m.startswith(("/host/", "/etc/multinic/", "/var/run/secrets/multinic", "/var/lib/multinic")), m
        assert m != "/host"


def test_agent_identity_and_node_facts(rendered):
    _, out = rendered
    env = env_of(out.agent)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIPs"}}
    assert env["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    names = list(env)
    assert names.index("HOST_IP") < names.index("MULTINIC_HTTP_LISTEN"), "$(HOST_IP) expands only from earlier variables"


# --- TLS wiring and who sees which Secret ----------------------------------


def test_tls_wiring_between_the_agent_and_the_controller(rendered):
    """The agent's token audience, ServiceAccount, controller and issuer
    addresses are exactly what the controller and its Service expect."""
    name, out = rendered
    ds, deploy = out.agent, out.controller
    token = volumes_of(ds)["token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == env_value(deploy, "MULTINIC_TOKEN_AUDIENCE")
    assert token["path"] == "token"
    assert mounts_of(ds)["/var/run/secrets/multinic"]["name"] == "token"
    assert env_value(ds, "MULTINIC_BOOTSTRAP_TOKEN_FILE") == "/var/run/secrets/multinic/token"
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    assert env_value(deploy, "MULTINIC_AGENT_SERVICE_ACCOUNT") == f"system:serviceaccount:{NAMESPACE}:{sa}"
    assert sa != "default"
    assert out.one("ServiceAccount", sa)["automountServiceAccountToken"] is False
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    svc = out.one("Service", "multinic-controller")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert env_value(ds, "MULTINIC_CONTROLLER") == f"multinic-controller.{NAMESPACE}.svc:{ports['grpc']}"
    assert env_value(ds, "MULTINIC_ISSUER") == f"multinic-controller.{NAMESPACE}.svc:{ports['issuer']}"
    assert env_value(deploy, "MULTINIC_ISSUER_LISTEN") == "0.0.0.0:50052"
    assert env_value(deploy, "MULTINIC_LISTEN") == "0.0.0.0:50051"
    # The CA the agent trusts is public material from a ConfigMap.
    ca = volumes_of(ds)["ca-bundle"]
    assert ca["configMap"]["name"] == "multinic-ca-bundle"
    assert out.one("ConfigMap", "multinic-ca-bundle")["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")


def test_only_the_controller_sees_secrets(rendered):
    name, out = rendered
    # The agent: no Secret volume, no Secret env, no database setting.
    for v in volumes_of(out.agent).values():
        assert "secret" not in v, f"{name}: agent mounts Secret {v}"
        for source in v.get("projected", {}).get("sources", []):
            assert set(source) == {"serviceAccountToken"}, f"{name}: agent projects {source}"
    for e in env_of(out.agent).values():
        assert "secretKeyRef" not in e.get("valueFrom", {}), f"{name}: agent env {e['name']} from a Secret"
        assert not e["name"].startswith(("DB_", "DATABASE")), f"{name}: agent has {e['name']}"
    # The controller: the database credentials, from a Secret only.
    env = env_of(out.controller)
    db = VALUE_SETS[name]["database"]
    if "url" in db:
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "multinic-database", "key": "url"}
        assert "DB_HOST" not in env
        assert db["url"] not in str(out.controller), "the URL (with its password) stays out of the pod spec"
    else:
        assert env["DB_HOST"]["value"] == db["host"]
        secret = db.get("existingSecret", "multinic-database")
        key = db.get("existingSecretPasswordKey", "password")
        assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
        assert "DATABASE_URL" not in env
    made = out.named("Secret", "multinic-database")
    assert (made is None) == ("existingSecret" in db)
    assert "s3cret" not in str(out.controller) and "s3cret" not in str(out.agent)


def test_controller_tls_material(rendered):
    name, out = rendered
    mode = VALUE_SETS[name].get("tls", {}).get("mode", "helm")
    volumes = volumes_of(out.controller)
    mounts = mounts_of(out.controller)
    assert {m["name"] for m in mounts.values()} == {"tls", "client-ca", "issuer-ca"}
    assert all(m.get("readOnly") for m in mounts.values())
    server = {"helm": "multinic-controller-tls", "certManager": "multinic-controller-tls", "existingSecrets": "multinic-server"}[mode]
    issuer = {"helm": "multinic-issuer-ca", "certManager": "multinic-issuer-ca", "existingSecrets": "multinic-node-ca"}[mode]
    assert volumes["tls"]["secret"]["secretName"] == server
    assert volumes["issuer-ca"]["secret"]["secretName"] == issuer
    for v in ("tls", "issuer-ca"):
        assert volumes[v]["secret"]["defaultMode"] == 0o440, "keys readable by the controller's group only"
    env = env_of(out.controller)
    assert env["MULTINIC_TLS_CERT"]["value"] == "/etc/multinic/tls/tls.crt"
    assert env["MULTINIC_ISSUER_CA_KEY"]["value"] == "/etc/multinic/issuer/tls.key"
    assert env["MULTINIC_CLIENT_CA"]["value"] == "/etc/multinic/client-ca/ca.crt"
    assert "MULTINIC_INSECURE" not in env
    if mode == "certManager":
        certs = {c["metadata"]["name"]: c["spec"] for c in out.all("Certificate")}
        assert certs["multinic-issuer-ca"]["isCA"] is True
        assert certs["multinic-issuer-ca"]["privateKey"]["encoding"] == "PKCS8", "the issuer reads PKCS#8 keys only"
        assert certs["multinic-issuer-ca"]["privateKey"]["rotationPolicy"] == "Never", "renewal keeps node certs valid"
        assert f"multinic-controller.{NAMESPACE}.svc" in certs["multinic-controller-tls"]["dnsNames"]
        assert certs["multinic-operator-alice"]["uris"] == ["spiffe://multinic.local/multinic/operator/alice"]
        assert not out.all("Secret") or all(s["metadata"]["name"] == "multinic-database" for s in out.all("Secret"))
    if mode == "existingSecrets":
        assert volumes["client-ca"]["configMap"]["items"] == [{"key": "client-ca.crt", "path": "ca.crt"}]


def test_rbac_is_one_tokenreview_permission(rendered):
    name, out = rendered
    roles = out.all("ClusterRole") + out.all("Role")
    assert len(roles) == 1, f"{name}: {[r['metadata']['name'] for r in roles]}"
    assert roles[0]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]
    bindings = out.all("ClusterRoleBinding") + out.all("RoleBinding")
    assert len(bindings) == 1
    assert bindings[0]["roleRef"]["name"] == roles[0]["metadata"]["name"]
    controller_sa = out.controller["spec"]["template"]["spec"]["serviceAccountName"]
    assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": controller_sa, "namespace": NAMESPACE}]
    assert out.controller["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


def test_network_policy():
    assert not render(VALUE_SETS["defaults"]).all("NetworkPolicy")
    out = render(VALUE_SETS["network-policy"])
    np = out.one("NetworkPolicy")["spec"]
    assert np["podSelector"]["matchLabels"] == out.controller["spec"]["selector"]["matchLabels"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    from_nodes = np["ingress"][0]
    assert [p["ipBlock"]["cidr"] for p in from_nodes["from"]] == ["10.0.0.0/16", "fd00::/64"]
    assert {p["port"] for p in from_nodes["ports"]} == {"grpc", "issuer", "http"}
    assert np["ingress"][1]["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert np["ingress"][2]["from"][0]["namespaceSelector"]
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in np["egress"]]
    assert egress_ports == [{3306}, {443, 6443}, {53}]
    assert np["egress"][0]["to"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}]


def test_monitoring_objects():
    out = render(VALUE_SETS["monitoring"])
    sm = out.one("ServiceMonitor")["spec"]
    metrics = out.one("Service", "multinic-controller-metrics")
    assert sm["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert not sm["selector"]["matchLabels"].items() <= out.one("Service", "multinic-controller")["metadata"]["labels"].items()
    assert metrics["spec"]["publishNotReadyAddresses"] is True, "standbys are scraped too"
    pm = out.one("PodMonitor")["spec"]
    assert pm["selector"]["matchLabels"] == out.agent["spec"]["selector"]["matchLabels"]
    assert pm["podMetricsEndpoints"][0]["port"] == "http"


@pytest.mark.parametrize(
    "drift, interval, repair",
    [({}, "60s", "true"), ({"checkInterval": "5m"}, "5m", "true"), ({"checkInterval": "0", "repair": False}, "0", "false")],
)
def test_agent_drift_settings_reach_the_agent(drift, interval, repair):
    ds = render(merge(VALUE_SETS["defaults"], {"agent": {"drift": drift}})).agent
    assert env_value(ds, "MULTINIC_DRIFT_CHECK_INTERVAL") == interval
    assert env_value(ds, "MULTINIC_DRIFT_REPAIR") == repair
