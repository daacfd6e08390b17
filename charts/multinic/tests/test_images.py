"""The two images (built by scripts/test.sh with buildah from the static
release binaries), and the chart's pods run from them.

Needs root, buildah, util-linux's unshare, iproute2 and MariaDB; on a
developer machine without them these tests skip loudly, under CI=true they
fail.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from chart import REPO, VALUE_SETS, binary, have, need, render

pytestmark = pytest.mark.images

IMAGES = {
    "multinic-controller": os.environ.get("MULTINIC_IMAGE_CONTROLLER", "localhost/multinic-controller:test"),
    "multinic-agent": os.environ.get("MULTINIC_IMAGE_AGENT", "localhost/multinic-agent:test"),
}
# Sane upper bounds: one static binary each (about 13-17 MB when this was written).
MAX_IMAGE_BYTES = 40 * 1024 * 1024


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], text=True, capture_output=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def images():
    need(os.geteuid() == 0, "root (buildah storage, namespaces)")
    need(have("buildah"), "buildah (apt-get install -y buildah)")
    for image in IMAGES.values():
        found = subprocess.run(["buildah", "inspect", "--type", "image", image], capture_output=True)
        need(found.returncode == 0, f"image {image} (scripts/test.sh builds it)")
    return IMAGES


def inspect(image: str) -> dict:
    return json.loads(buildah("inspect", "--type", "image", image))


class Container:
    """A working container of an image, its root filesystem mounted."""

    def __init__(self, image: str):
        self.id = buildah("from", "--pull-never", image)
        self.rootfs = Path(buildah("mount", self.id))

    def remove(self):
        subprocess.run(["buildah", "umount", self.id], capture_output=True)
        subprocess.run(["buildah", "rm", self.id], capture_output=True)


def cargo_version() -> str:
    cargo = (REPO / "Cargo.toml").read_text()
    return re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)


def is_static(path: Path) -> bool:
    """No PT_INTERP program header: the kernel runs it without a loader."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_config_and_labels(images, name):
    image = inspect(images[name])
    config = image["OCIv1"]["config"]
    assert config["Entrypoint"] == [f"/usr/local/bin/{name}"]
    assert config["User"] == ("65532:65532" if name == "multinic-controller" else "0:0")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == name
    assert labels["org.opencontainers.image.version"] == cargo_version()
    assert labels["org.opencontainers.image.source"] == "https://github.com/multinic/multinic"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    revision = os.environ.get("MULTINIC_IMAGE_REVISION")
    if revision:
        assert labels["org.opencontainers.image.revision"] == revision
    assert image["OCIv1"]["architecture"] == "amd64" and image["OCIv1"]["os"] == "linux"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_holds_one_static_binary_and_runs_it(images, name):
    container = Container(images[name])
    try:
        files = sorted(str(p.relative_to(container.rootfs)) for p in container.rootfs.rglob("*") if not p.is_dir())
        assert files == [f"usr/local/bin/{name}"], "nothing but the binary: no shell, no libc, no tools"
        path = container.rootfs / files[0]
        assert is_static(path), f"{name} needs a dynamic loader"
        assert path.stat().st_mode & 0o777 == 0o555
        size = sum(p.stat().st_size for p in container.rootfs.rglob("*") if p.is_file())
        assert size < MAX_IMAGE_BYTES, f"{name}: {size / 2**20:.1f} MiB"
        print(f"{name}: {size / 2**20:.1f} MiB")
        run = subprocess.run(["buildah", "run", "--isolation", "chroot", container.id, "--",
                              f"/usr/local/bin/{name}", "--version"], text=True, capture_output=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{name} {cargo_version()}"
    finally:
        container.remove()


def test_chart_pods_run_from_the_images(images):
    """The default rendering's controller and agent pods, run from the images
    the way a kubelet would (podsim.py): the controller becomes active and
    ready; the agent gets a node certificate from the issuer with its
    projected token, connects over mTLS, writes the node's netplan file under
    its narrowed host mounts and reports; an operator certificate made as
    NOTES.txt says works with multinicctl; both stop cleanly on SIGTERM."""
    for tool in ["unshare", "ip", "mariadbd", "mariadb-install-db", "mariadb"]:
        need(have(tool) or Path("/usr/sbin", tool).exists(), f"{tool} (scripts/test.sh installs it)")
    multinicctl = binary("multinicctl")
    out = render(VALUE_SETS["defaults"])
    containers = {name: Container(image) for name, image in images.items()}
    try:
        with tempfile.TemporaryDirectory(prefix="multinic-podsim-") as work:
            spec = {
                "work": work,
                "namespace": out.controller["metadata"]["namespace"],
                "objects": out.objects,
                "issuer_ca_secret": "multinic-issuer-ca",
                "images": {
                    short: {
                        "rootfs": str(containers[name].rootfs),
                        "entrypoint": inspect(images[name])["OCIv1"]["config"]["Entrypoint"],
                        "user": inspect(images[name])["OCIv1"]["config"]["User"],
                    }
                    for short, name in [("controller", "multinic-controller"), ("agent", "multinic-agent")]
                },
                "multinicctl": str(multinicctl),
                "schema": str(REPO / "testkit/sql/schema-mysql.sql"),
                "mariadbd": which("mariadbd"),
                "mariadb_install_db": which("mariadb-install-db"),
                "mariadb": which("mariadb"),
            }
            Path(work, "spec.json").write_text(json.dumps(spec))
            proc = subprocess.run(
                ["unshare", "--pid", "--mount", "--net", "--fork", "--mount-proc", "--propagation", "private",
                 os.sys.executable, str(Path(__file__).with_name("podsim.py")), "run", str(Path(work, "spec.json"))],
                text=True, capture_output=True, timeout=240)
            result_file = Path(work, "result.json")
            assert result_file.exists(), f"podsim did not finish:\n{proc.stdout}\n{proc.stderr}"
            result = json.loads(result_file.read_text())
    finally:
        for c in containers.values():
            c.remove()

    context = f"\nsteps: {result['steps']}\ncontroller log:\n{result['logs']['controller']}\nagent log:\n{result['logs']['agent']}"
    assert result["ok"], result.get("error", "") + context
    assert result["controller_readyz"] == 200 and result["agent_readyz"] == 200
    # The agent wrote exactly its own file, under the mounted host folders.
    netplan = result["netplan_file"]
    assert netplan["mode"] == "0o600"
    assert "02:00:5e:10:00:aa" in netplan["text"] and "multinic0" in netplan["text"], netplan["text"]
    assert result["node_cert"], "the issued node certificate is kept in the state folder"
    assert "etc/netplan/90-multinic0.yaml" in result["host_files"]
    assert all(f.startswith(("etc/netplan/", "etc/os-release", "var/lib/multinic/")) for f in result["host_files"]), result["host_files"]
    # The operator sees the node and its interface (the NIC is not on the node: waiting).
    node = result["operator"]["node"]
    assert node["name"] == "node-a" and node["connected"] is True, node
    assert [(i["mac_address"], i["name"], i["state"], i["error_code"]) for i in node["interfaces"]] == [
        ("02:00:5e:10:00:aa", "multinic0", "waiting", "MAC_NOT_PRESENT")], node
    assert node["apply_mode"] == "netlink" and node["backend"] == "netplan", "auto read the host's os-release: netplan applies by netlink"
    assert result["operator"]["status_exit"] == 2, result["operator"]["status"]  # not converged: waiting
    # What the processes may do is what the securityContexts say.
    ctl = result["controller_status"]
    assert ctl["Uid"].split()[:2] == ["65532", "65532"] and ctl["Groups"] == "65532"
    assert int(ctl["CapEff"], 16) == 0 and int(ctl["CapBnd"], 16) == 0
    assert ctl["NoNewPrivs"] == "1"
    agent = result["agent_status"]
    assert agent["Uid"].split()[0] == "0"
    caps = {12: "NET_ADMIN", 18: "SYS_CHROOT", 19: "SYS_PTRACE", 21: "SYS_ADMIN"}
    effective = {caps.get(bit, bit) for bit in range(64) if int(agent["CapEff"], 16) >> bit & 1}
    assert effective == {"NET_ADMIN", "SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"}
    assert result["controller_exit"] == 0 and result["agent_exit"] == 0


def which(tool: str) -> str:
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        if Path(d, tool).exists():
            return str(Path(d, tool))
    raise FileNotFoundError(tool)
