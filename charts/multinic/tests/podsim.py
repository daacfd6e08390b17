"""Runs the chart's rendered controller and agent pods from the built images,
as a kubelet would, with everything else a cluster provides stood in for.

`python podsim.py run SPEC.json` is started by test_pods.py as PID 1 of new
PID, mount and network namespaces (`unshare --pid --mount --net --fork`), so
nothing it mounts or binds reaches the machine, and every process it starts
dies with it. What it sets up:

- a "node" (10.96.0.10) and a cluster DNS server (10.96.0.53) that answers
  the Services' names, with the search path a kubelet writes;
- a MariaDB server (the DB_HOST of the rendered controller) with the schema,
  the rendered database user and password, and one row for node-a;
- an API server stand-in (10.96.0.1:443, TLS) that answers TokenReviews the
  way Kubernetes does for pod-bound projected tokens, after checking the
  caller's bearer token and the chart's RBAC (ClusterRole + binding);
- each pod's volumes, made from the rendered Secrets, ConfigMaps, projected
  token and hostPaths (a temporary "host" filesystem), mounted at their
  mountPaths over the image's root filesystem (read-only when
  readOnlyRootFilesystem), with /proc, /dev, /etc/hosts and /etc/resolv.conf;
- each container started with the rendered environment (downward API and
  Secret values filled in, $(VAR) expanded), user, groups, capability bounding
  set and no_new_privs from its securityContext.

Then it follows NOTES.txt to make an operator certificate and asks the
controller with multinicctl, and writes what it saw to WORK/result.json.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

NODE = "node-a"
NODE_IP = "10.96.0.10"
DNS_IP = "10.96.0.53"
API_IP = "10.96.0.1"
DB_IP = "10.96.0.20"
CONTROLLER_TOKEN = "controller-serviceaccount-token"
AGENT_TOKEN = "agent-projected-token-node-a"
MAC = "02:00:5e:10:00:aa"
EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

CAPS = {"NET_ADMIN": 12, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_ADMIN": 21}
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


def sh(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), text=True, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def wait_for(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - anything means "not yet"
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- cluster DNS -------------------------------------------------------------


def serve_dns(address: str, records_json: str) -> None:
    """A/AAAA for the given names (AAAA: none); NXDOMAIN for the rest."""
    records = json.loads(records_json)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        data, peer = sock.recvfrom(512)
        tid = struct.unpack(">H", data[:2])[0]
        i, labels = 12, []
        while data[i]:
            labels.append(data[i + 1:i + 1 + data[i]].decode())
            i += 1 + data[i]
        qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
        question = data[12:i + 5]
        ip = records.get(".".join(labels).lower())
        if ip and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
            sock.sendto(struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + answer, peer)
        else:
            rcode = 0 if ip else 3
            sock.sendto(struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question, peer)


# --- the API server's TokenReview ---------------------------------------------


def serve_api(address: str, cert: str, key: str, config_json: str) -> None:
    """POST /apis/authentication.k8s.io/v1/tokenreviews, as Kubernetes answers it."""
    import http.server

    config = json.loads(Path(config_json).read_text())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            caller = config["bearers"].get(self.headers.get("Authorization", "").removeprefix("Bearer "))
            if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                return self.reply(404, {"kind": "Status", "code": 404})
            if caller is None:
                return self.reply(401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
            if caller not in config["may_create_tokenreviews"]:
                return self.reply(403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                        "message": f"{caller} cannot create tokenreviews"})
            spec = body["spec"]
            token = config["tokens"].get(spec["token"])
            wanted = spec.get("audiences") or ["https://kubernetes.default.svc"]
            status = {"authenticated": False}
            if token and set(wanted) & set(token["audiences"]):
                status = {
                    "authenticated": True,
                    "audiences": [a for a in wanted if a in token["audiences"]],
                    "user": {
                        "username": token["username"],
                        "uid": "00000000-0000-0000-0000-000000000001",
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "extra": {
                            "authentication.kubernetes.io/node-name": [token["node"]],
                            "authentication.kubernetes.io/pod-name": [token["pod"]],
                        },
                    },
                }
            elif token:
                status["error"] = "token audiences do not intersect"
            self.reply(201, {**body, "status": status})

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer((address, 443), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


# --- pods ---------------------------------------------------------------------


class Pod:
    """One rendered pod's single container, run from an image's root filesystem."""

    def __init__(self, sim: "Simulation", name: str, workload: dict, image: dict, facts: dict):
        self.sim, self.name, self.image, self.facts = sim, name, image, facts
        self.spec = workload["spec"]["template"]["spec"]
        self.container = self.spec["containers"][0]
        self.root = sim.work / f"{name}-root"
        self.log = sim.work / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    # Volumes ------------------------------------------------------------------

    def volume_dir(self, volume: dict) -> Path:
        """Materializes `volume` and returns its source folder or file."""
        source = self.sim.work / "volumes" / self.name / volume["name"]
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        if "secret" in volume or "configMap" in volume:
            ref = volume.get("secret") or volume.get("configMap")
            kind = "Secret" if "secret" in volume else "ConfigMap"
            obj = self.sim.object(kind, ref.get("secretName") or ref.get("name"))
            data = ({k: base64.b64decode(v) for k, v in obj.get("data", {}).items()} if kind == "Secret"
                    else {k: v.encode() for k, v in obj.get("data", {}).items()})
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            mode = ref.get("defaultMode", 0o644)
            source.mkdir(parents=True)
            for item in items:
                path = source / item["path"]
                path.write_bytes(data[item["key"]])
                os.chown(path, 0, fs_group or 0)
                path.chmod(item.get("mode", mode))
            return source
        if "projected" in volume:
            source.mkdir(parents=True)
            for src in volume["projected"]["sources"]:
                token = src["serviceAccountToken"]
                self.facts["projected_audience"] = token["audience"]
                (source / token["path"]).write_text(self.facts["projected_token"])
                (source / token["path"]).chmod(0o600)
            return source
        if "hostPath" in volume:
            path = self.sim.host / volume["hostPath"]["path"].lstrip("/")
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not path.is_dir():
                raise RuntimeError(f"hostPath {path} is not a directory")
            elif kind == "File" and not path.is_file():
                raise RuntimeError(f"hostPath {path} is not a file")
            return path
        raise RuntimeError(f"volume kind not simulated: {volume}")

    # The container --------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOSTNAME": self.facts["hostname"]}
        # What the kubelet adds to every container (enableServiceLinks only adds more).
        env.update({"KUBERNETES_SERVICE_HOST": API_IP, "KUBERNETES_SERVICE_PORT": "443"})
        for entry in self.container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = EXPANSION.sub(lambda m: env.get(m.group(1), m.group(0)), entry["value"])
            elif "fieldRef" in entry["valueFrom"]:
                env[entry["name"]] = self.facts["fields"][entry["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                env[entry["name"]] = base64.b64decode(self.sim.object("Secret", ref["name"])["data"][ref["key"]]).decode()
        return env

    def start(self) -> None:
        mounts = self.container.get("volumeMounts", [])
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        sources = {m["mountPath"]: (self.volume_dir(volumes[m["name"]]), m.get("readOnly", False)) for m in mounts}
        if self.spec.get("automountServiceAccountToken"):
            sa = self.sim.work / "volumes" / self.name / "serviceaccount"
            sa.mkdir(parents=True)
            (sa / "token").write_text(self.facts["serviceaccount_token"])
            (sa / "ca.crt").write_bytes(self.sim.api_ca.read_bytes())
            (sa / "namespace").write_text(self.sim.namespace)
            sources["/var/run/secrets/kubernetes.io/serviceaccount"] = (sa, True)
        etc = self.sim.work / f"{self.name}-etc"
        etc.mkdir()
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{NODE_IP} {NODE}\n")
        ns = self.sim.namespace
        (etc / "resolv.conf").write_text(
            f"nameserver {DNS_IP}\nsearch {ns}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
        sources["/etc/hosts"] = (etc / "hosts", True)
        sources["/etc/resolv.conf"] = (etc / "resolv.conf", True)

        # The image's filesystem, with mount points, then read-only.
        self.root.mkdir()
        sh("mount", "--bind", self.image["rootfs"], str(self.root))
        for target, (source, _) in sources.items():
            point = self.root / target.lstrip("/")
            if source.is_dir():
                point.mkdir(parents=True, exist_ok=True)
            else:
                point.parent.mkdir(parents=True, exist_ok=True)
                point.touch(exist_ok=True)
        for d in ["proc", "dev"]:
            (self.root / d).mkdir(exist_ok=True)
        if self.container["securityContext"].get("readOnlyRootFilesystem"):
            sh("mount", "-o", "remount,bind,ro", str(self.root))
        sh("mount", "-t", "proc", "proc", str(self.root / "proc"))
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(self.root / "dev"))
        for dev in ["null", "zero", "random", "urandom"]:
            (self.root / "dev" / dev).touch()
            sh("mount", "--bind", f"/dev/{dev}", str(self.root / "dev" / dev))
        for target, (source, read_only) in sources.items():
            point = str(self.root / target.lstrip("/"))
            sh("mount", "--bind", str(source), point)
            if read_only:
                sh("mount", "-o", "remount,bind,ro", point)

        sc = self.container.get("securityContext", {})
        psc = self.spec.get("securityContext", {})
        image_user = (self.image.get("user") or "0:0").split(":")
        uid = sc.get("runAsUser", psc.get("runAsUser", int(image_user[0])))
        gid = sc.get("runAsGroup", psc.get("runAsGroup", int(image_user[1]) if len(image_user) > 1 else 0))
        groups = [psc["fsGroup"]] if "fsGroup" in psc else []
        caps = sc.get("capabilities", {})
        assert caps.get("drop") == ["ALL"], "the simulation knows drop: [ALL] only"
        keep = {CAPS[c] for c in caps.get("add", [])}
        no_new_privs = sc.get("allowPrivilegeEscalation") is False
        root = str(self.root)
        libc = ctypes.CDLL(None, use_errno=True)
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())

        def enter():
            os.chroot(root)
            os.chdir("/")
            for cap in range(last_cap + 1):
                if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), f"drop capability {cap}")
            if no_new_privs and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "no_new_privs")
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)

        command = self.image["entrypoint"] + self.container.get("args", [])
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=enter)

    def status(self) -> dict[str, str]:
        """Fields of /proc/PID/status that show what the process may do."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs"):
                fields[key] = value.strip()
        return fields

    def stop(self, timeout: float) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return None
        return self.proc.returncode


class Simulation:
    def __init__(self, spec: dict):
        self.spec = spec
        self.work = Path(spec["work"])
        self.host = self.work / "host"
        self.namespace = spec["namespace"]
        self.objects = spec["objects"]
        self.helpers: list[subprocess.Popen] = []
        self.result: dict = {"steps": []}

    def object(self, kind: str, name: str) -> dict:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"the chart rendered no {kind} {name}")
        return found[0]

    def workload(self, kind: str) -> dict:
        return next(o for o in self.objects if o["kind"] == kind)

    def step(self, what: str) -> None:
        self.result["steps"].append(what)
        print(f"podsim: {what}", flush=True)

    def helper(self, *args: str) -> None:
        log = open(self.work / f"helper-{len(self.helpers)}.log", "w")
        self.helpers.append(subprocess.Popen([sys.executable, __file__, *args], stdout=log, stderr=subprocess.STDOUT))

    # The cluster around the pods ----------------------------------------------

    def network(self, records: dict[str, str]) -> None:
        sh("ip", "link", "set", "lo", "up")
        for ip in [NODE_IP, DNS_IP, API_IP, DB_IP]:
            sh("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        self.helper("dns", DNS_IP, json.dumps(records))

    def api_server(self, controller: dict, agent: dict) -> None:
        ctl = self.spec["multinicctl"]
        pki = self.work / "api-pki"
        sh(ctl, "certs", "--dir", str(pki), "init")
        sh(ctl, "certs", "--dir", str(pki), "controller", "--dns", "kubernetes.default.svc", "--ip", API_IP)
        self.api_ca = pki / "ca.crt"
        ns = self.namespace
        controller_user = f"system:serviceaccount:{ns}:{controller['spec']['template']['spec']['serviceAccountName']}"
        agent_sa = agent["spec"]["template"]["spec"]["serviceAccountName"]
        audience = next(v["projected"]["sources"][0]["serviceAccountToken"]["audience"]
                        for v in agent["spec"]["template"]["spec"]["volumes"] if "projected" in v)
        config = {
            "bearers": {CONTROLLER_TOKEN: controller_user},
            "may_create_tokenreviews": self.rbac_tokenreview_users(),
            "tokens": {AGENT_TOKEN: {"audiences": [audience], "username": f"system:serviceaccount:{ns}:{agent_sa}",
                                     "node": NODE, "pod": f"{agent['metadata']['name']}-x7k2p"}},
        }
        (self.work / "api.json").write_text(json.dumps(config))
        self.helper("api", API_IP, str(pki / "controller.crt"), str(pki / "controller.key"), str(self.work / "api.json"))

    def rbac_tokenreview_users(self) -> list[str]:
        """ServiceAccounts the rendered RBAC lets create tokenreviews."""
        allowed = set()
        for binding in (o for o in self.objects if o["kind"] == "ClusterRoleBinding"):
            role = self.object("ClusterRole", binding["roleRef"]["name"])
            if any("authentication.k8s.io" in r["apiGroups"] and "tokenreviews" in r["resources"]
                   and "create" in r["verbs"] for r in role["rules"]):
                for s in binding["subjects"]:
                    if s["kind"] == "ServiceAccount":
                        allowed.add(f"system:serviceaccount:{s['namespace']}:{s['name']}")
        return sorted(allowed)

    def database(self, env: dict[str, str]) -> None:
        data = self.work / "db"
        install = [self.spec["mariadb_install_db"], "--no-defaults", f"--datadir={data}",
                   "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root",
                   # No host name lookup: inside the pod network it goes to the
                   # stand-in DNS and can time out under load.
                   "--skip-name-resolve"]
        sh(*install)
        self.db_socket = self.work / "db.sock"
        log = open(self.work / "mariadbd.log", "w")
        self.helpers.append(subprocess.Popen(
            [self.spec["mariadbd"], "--no-defaults", f"--datadir={data}", f"--socket={self.db_socket}",
             f"--bind-address={DB_IP}", "--port=3306", "--skip-name-resolve", "--skip-log-bin",
             "--innodb-buffer-pool-size=32M", "--user=root", f"--pid-file={self.work / 'mariadbd.pid'}"],
            stdout=log, stderr=subprocess.STDOUT))
        wait_for("mariadbd", lambda: self.db_socket.exists())
        name, user, password = env["DB_NAME"], env["DB_USER"], env["DB_PASSWORD"]
        schema = Path(self.spec["schema"]).read_text()
        self.sql(f"CREATE DATABASE `{name}`; CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';"
                 f"GRANT ALL ON `{name}`.* TO '{user}'@'%';")
        self.sql(schema, database=name)
        self.sql("INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu)"
                 f" VALUES ('port-1', 'subnet-1', '{MAC}', '{NODE}.novalocal', '192.0.2.50', '192.0.2.0/24', 1450);",
                 database=name)

    def sql(self, statements: str, database: str | None = None) -> str:
        cmd = [self.spec["mariadb"], "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-N", "-B"]
        if database:
            cmd.append(database)
        return sh(*cmd, input=statements).stdout

    # The scenario -------------------------------------------------------------

    def run(self) -> None:
        controller = self.workload("Deployment")
        agent = self.workload("DaemonSet")
        svc = self.object("Service", controller["metadata"]["name"])
        ns = self.namespace
        env = {e["name"]: e for e in controller["spec"]["template"]["spec"]["containers"][0]["env"]}
        db_host = env["DB_HOST"]["value"]
        self.network({f"{svc['metadata']['name']}.{ns}.svc": NODE_IP,
                      f"{svc['metadata']['name']}.{ns}.svc.cluster.local": NODE_IP,
                      db_host: DB_IP})
        self.step("network and cluster DNS up")
        self.api_server(controller, agent)
        self.step("API server stand-in up")
        facts = {"hostname": "multinic-controller-6d9f8-abcde", "fields": {}, "serviceaccount_token": CONTROLLER_TOKEN}
        pod = Pod(self, "controller", controller, self.spec["images"]["controller"], facts)
        self.database(pod.environment())
        self.step("database up with one row for node-a")
        pod.start()
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        http_port = next(p["containerPort"] for p in pod.container["ports"] if p["name"] == "http")
        ready = f"http://{NODE_IP}:{http_port}"
        self.result["controller_healthz"] = wait_for("controller /healthz", lambda: get(f"{ready}/healthz"))
        self.result["controller_readyz"] = wait_for("controller /readyz", lambda: get(f"{ready}/readyz"))
        self.step("controller ready")

        # The agent, on a simulated Ubuntu host.
        (self.host / "etc/netplan").mkdir(parents=True)
        (self.host / "etc/os-release").write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\n')
        agent_facts = {"hostname": NODE, "projected_token": AGENT_TOKEN,
                       "fields": {"spec.nodeName": NODE, "status.hostIPs": NODE_IP, "status.hostIP": NODE_IP}}
        apod = Pod(self, "agent", agent, self.spec["images"]["agent"], agent_facts)
        apod.start()
        agent_port = next(p["containerPort"] for p in apod.container["ports"] if p["name"] == "http")
        agent_url = f"http://{NODE_IP}:{agent_port}"
        self.result["agent_healthz"] = wait_for("agent /healthz", lambda: get(f"{agent_url}/healthz"))
        self.result["agent_readyz"] = wait_for("agent /readyz", lambda: get(f"{agent_url}/readyz"))
        self.step("agent ready (issued a node certificate, stream to the controller up)")
        netplan = self.host / "etc/netplan/90-multinic0.yaml"
        wait_for("the agent's netplan file", netplan.exists)
        self.result["netplan_file"] = {"text": netplan.read_text(), "mode": oct(netplan.stat().st_mode & 0o777)}
        node_cert = self.host / "var/lib/multinic/tls/node.crt"
        self.result["node_cert"] = node_cert.exists()
        self.result["host_files"] = sorted(str(p.relative_to(self.host)) for p in self.host.rglob("*") if p.is_file())
        self.step("agent wrote its file under the host mounts")

        # An operator, as NOTES.txt says.
        self.result["operator"] = self.operator(ports["grpc"])
        self.step("multinicctl answered")
        self.result["controller_status"] = pod.status()
        self.result["agent_status"] = apod.status()
        self.result["agent_exit"] = apod.stop(30)
        self.result["controller_exit"] = pod.stop(30)
        self.step("both stopped on SIGTERM")

    def operator(self, grpc_port: int) -> dict:
        ctl = self.spec["multinicctl"]
        ca = self.object("Secret", self.spec["issuer_ca_secret"])["data"]
        pki = self.work / "pki"
        pki.mkdir(mode=0o700)
        (pki / "ca.crt").write_bytes(base64.b64decode(ca["tls.crt"]))
        (pki / "ca.key").write_bytes(base64.b64decode(ca["tls.key"]))
        trust = next(e["value"] for e in self.workload("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
                     if e["name"] == "MULTINIC_TRUST_DOMAIN")
        sh(ctl, "certs", "--dir", str(pki), "--trust-domain", trust, "operator", "--name", "me")
        (pki / "ca.key").unlink()
        server_name = f"{self.workload('Deployment')['metadata']['name']}.{self.namespace}.svc"
        base = [ctl, "--controller", f"{NODE_IP}:{grpc_port}", "--tls-server-name", server_name,
                "--ca", str(pki / "ca.crt"), "--tls-cert", str(pki / "operator-me.crt"),
                "--tls-key", str(pki / "operator-me.key")]

        def node_reported():
            out = subprocess.run(base + ["-o", "json", "get", "node", NODE], text=True, capture_output=True)
            if out.returncode != 0:
                return None
            node = json.loads(out.stdout)
            return node if node.get("interfaces") else None

        node = wait_for("the agent's report", node_reported, timeout=30)
        status = subprocess.run(base + ["status"], text=True, capture_output=True)
        return {"node": node, "status_exit": status.returncode, "status": status.stdout + status.stderr}


def get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    command = sys.argv[1]
    if command == "dns":
        serve_dns(sys.argv[2], sys.argv[3])
    elif command == "api":
        serve_api(*sys.argv[2:6])
    elif command == "run":
        spec = json.loads(Path(sys.argv[2]).read_text())
        sim = Simulation(spec)
        try:
            sim.run()
            sim.result["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported to the test with the logs
            sim.result["ok"] = False
            sim.result["error"] = f"{type(e).__name__}: {e}"
        finally:
            logs = {}
            for name in ["controller", "agent"]:
                log = sim.work / f"{name}.log"
                logs[name] = log.read_text()[-6000:] if log.exists() else ""
            sim.result["logs"] = logs
            (sim.work / "result.json").write_text(json.dumps(sim.result, indent=1))
            for helper in sim.helpers:
                helper.kill()
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
