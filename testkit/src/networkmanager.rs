//! A node whose networking is done by the real NetworkManager, as on RHEL:
//! the primary NIC `ens3` is configured by NetworkManager from its own
//! keyfile profile (what cloud-init writes on RHEL 9), and every NIC that
//! has no profile gets NetworkManager's automatic DHCP profile ("Wired
//! connection N"), activated at once. NetworkManager runs confined (see
//! [`crate::confined`]): `/etc/NetworkManager`, `/var/lib/NetworkManager`
//! and `/etc/systemd/network` are the test's folders, `/run` is private,
//! `/sys` read-only (NetworkManager then does not wait for udev), and the
//! bus is private.
//!
//! Its configuration differs from a RHEL node's only where the harness
//! needs it: `plugins=keyfile` (Debian's NetworkManager has no ifcfg-rh),
//! `dns=none` and `hostname-mode=none` (the machine's resolver and host
//! name stay its own), `auth-polkit=false` (no polkit here), and
//! `unmanaged-devices` for the in-namespace peers of the test NICs
//! (`*p`), the CNI's veths (`cali*`, what Calico's docs ask of
//! NetworkManager) and [`UNMANAGED_NIC`] (the NIC an admin told
//! NetworkManager to leave alone).
//!
//! A `dbus-monitor` on the private bus logs every method call anyone makes
//! to NetworkManager: [`NmNode::calls`] counts them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::confined::{Bind, ConfinedHost, RunDir};
use crate::netns::{PRIMARY, PRIMARY_MAC, TestNode};

/// Where Debian installs NetworkManager.
pub const NETWORK_MANAGER: &str = "/usr/sbin/NetworkManager";

/// The NIC NetworkManager is told not to manage (`unmanaged-devices`, by
/// name: its `mac:` spec matches permanent MACs, which veth NICs lack), and
/// its MAC ([`NmNode::add_unmanaged_nic`]).
pub const UNMANAGED_NIC: &str = "ens8";
pub const UNMANAGED_MAC: &str = "fa:16:3e:00:0e:99";

/// The primary NIC's profile, as cloud-init writes it on RHEL 9.
pub const PRIMARY_PROFILE: &str = "cloud-init ens3";
const PRIMARY_UUID: &str = "1dd9a779-d327-56e1-8454-c65e2556c12c";

/// The Python with libnm's bindings (python3-gi, gir1.2-nm-1.0): Debian's own.
const PYTHON: &str = "/usr/bin/python3";

/// Reads a keyfile with libnm's own keyfile reader (`NM.keyfile_read`),
/// warnings included, then verifies the connection; prints what NetworkManager
/// reads, as JSON.
const KEYFILE_READER: &str = r#"
import json, sys
import gi
gi.require_version("NM", "1.0")
from gi.repository import GLib, NM

warnings = []
def handler(keyfile, connection, handler_type, data, user_data):
    if handler_type == NM.KeyfileHandlerType.WARN:
        warnings.append(str(data.warn_get()))
    return False

keyfile = GLib.KeyFile()
keyfile.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)
connection = NM.keyfile_read(keyfile, "/etc/NetworkManager/system-connections", NM.KeyfileHandlerFlags.NONE, handler, None)
connection.verify()
if warnings:
    sys.exit("libnm warned: " + "; ".join(warnings))
def ip(setting):
    return {"method": setting.get_method(),
            "addresses": ["%s/%d" % (a.get_address(), a.get_prefix()) for a in (setting.props.addresses or [])]}
c, wired, user = connection.get_setting_connection(), connection.get_setting_wired(), connection.get_setting(NM.SettingUser)
print(json.dumps({
    "id": c.get_id(), "uuid": c.get_uuid(), "type": c.get_connection_type(),
    "interface-name": c.get_interface_name(), "autoconnect": c.get_autoconnect(),
    "mac-address": wired.get_mac_address(), "mtu": wired.get_mtu(),
    "ipv4": ip(connection.get_setting_ip4_config()), "ipv6": ip(connection.get_setting_ip6_config()),
    "user": {k: user.get_data(k) for k in user.get_keys()} if user else {},
}))
"#;

/// Whether this machine can run the real NetworkManager confined (skips
/// loudly, or fails under CI).
pub fn available() -> bool {
    crate::confined::available()
        && crate::require(
            Path::new(NETWORK_MANAGER).exists() && crate::have("nmcli"),
            "NetworkManager",
            "apt-get install -y --no-install-recommends network-manager",
        )
        && crate::require(
            crate::have("busctl") && crate::have("udevadm"),
            "busctl, udevadm",
            "apt-get install -y systemd udev",
        )
        && crate::require(crate::have("dbus-monitor"), "dbus-monitor", "apt-get install -y dbus")
        && crate::require(libnm_available(), "libnm for Python", "apt-get install -y python3-gi gir1.2-nm-1.0")
}

fn libnm_available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import gi; gi.require_version('NM', '1.0'); from gi.repository import NM"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What libnm's keyfile reader makes of the keyfile at `path` (strict: a
/// warning is an error), or why it refuses it. Every keyfile a test renders
/// goes through this, the way netplan files go through `netplan generate`.
pub fn libnm_read(path: &Path) -> Result<Value, String> {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(KEYFILE_READER)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {PYTHON}: {e}"))?;
    if !out.status.success() {
        return Err(format!("libnm refused {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("libnm's reading of {}: {e}", path.display()))
}

/// A node run by the real NetworkManager. Dropped: NetworkManager, the bus
/// monitor, the bus, the host, then the namespace.
#[derive(Debug)]
pub struct NmNode {
    pub host: ConfinedHost,
    root: TempDir,
    pub kernel: TestNode,
}

impl NmNode {
    /// A node whose `ens3` NetworkManager has activated from its profile
    /// (addresses and default routes); `None` when this machine cannot run it.
    pub fn start() -> Option<Self> {
        if !available() {
            return None;
        }
        let kernel = TestNode::bare();
        kernel.add_nic(PRIMARY, PRIMARY_MAC);
        let root = tempfile::Builder::new().prefix("multinic-nm-root-").tempdir().expect("host root");
        let dir = |rel: &str| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
            path
        };
        let nm_etc = dir("etc/NetworkManager");
        let state = dir("var/lib/NetworkManager");
        let links = dir("etc/systemd/network");
        dir("etc/NetworkManager/system-connections");
        dir("etc/NetworkManager/conf.d");
        dir("etc/sysconfig/network-scripts");
        std::fs::write(nm_etc.join("NetworkManager.conf"), config()).expect("NetworkManager.conf");
        crate::write_0600(&nm_etc.join("system-connections/cloud-init-ens3.nmconnection"), &primary_profile());
        let host = ConfinedHost::start(
            kernel.name(),
            &[
                Bind { source: nm_etc, target: "/etc/NetworkManager" },
                Bind { source: state, target: "/var/lib/NetworkManager" },
                Bind { source: links, target: "/etc/systemd/network" },
            ],
            &[RunDir { path: "/run/NetworkManager", owner: None }],
        );
        let mut node = Self { host, root, kernel };
        node.start_monitor();
        node.start_daemon();
        node.wait_for_primary();
        Some(node)
    }

    /// A boot, as far as NetworkManager is concerned: it stops, `between`
    /// happens to the node (NICs plugged in and named by udev before
    /// NetworkManager sees them), and it starts again and reads its profiles.
    pub fn reboot_networkmanager(&mut self, between: impl FnOnce(&Self)) {
        self.host.stop("networkmanager");
        between(self);
        self.start_daemon();
    }

    /// The host's D-Bus goes away (NetworkManager exits with it, as on a
    /// host whose bus stops): NetworkManager, the bus monitor, the bus.
    pub fn stop_bus(&mut self) {
        self.host.stop("networkmanager");
        self.host.stop("monitor");
        self.host.stop_bus();
    }

    /// After [`Self::stop_bus`] (and the bus started again, see
    /// [`ConfinedHost::start_bus`]): the bus monitor and NetworkManager
    /// start again, and NetworkManager reads its profiles.
    pub fn start_networkmanager(&mut self) {
        self.start_monitor();
        self.start_daemon();
    }

    /// Logs every method call to NetworkManager on the bus ([`Self::calls`]).
    fn start_monitor(&mut self) {
        // Appends to the log of an earlier monitor: the count goes on.
        let seen = self.host.log("monitor").matches("NameAcquired").count();
        let filter = "type='method_call',destination='org.freedesktop.NetworkManager'";
        self.host.spawn("monitor", "dbus-monitor", &["--system", filter], &[]);
        self.host.wait_until(Duration::from_secs(10), "the bus monitor", || {
            self.host.log("monitor").matches("NameAcquired").count() > seen
        });
    }

    fn start_daemon(&mut self) {
        // --debug: in the foreground, logging to stderr (at [logging] level).
        self.host.spawn("networkmanager", NETWORK_MANAGER, &["--debug"], &[]);
        self.host.wait_until(Duration::from_secs(30), "NetworkManager to run", || {
            self.host.exec("nmcli", &["-t", "-f", "RUNNING", "general"]).is_ok_and(|o| o.trim() == "running")
        });
    }

    /// The host root to give the agent (`--host-root`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A file under the host root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// `nmcli -t args…` in the host (terse output); panics on failure.
    pub fn nmcli(&self, args: &[&str]) -> String {
        let mut all = vec!["-t"];
        all.extend_from_slice(args);
        self.host.must("nmcli", &all)
    }

    /// The device `name` as NetworkManager sees it: its state
    /// (`connected`, `unmanaged`, …) and the profile active on it.
    pub fn device(&self, name: &str) -> Option<(String, String)> {
        self.nmcli(&["-f", "DEVICE,STATE,CONNECTION", "device"]).lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            (fields.next() == Some(name))
                .then(|| (fields.next().unwrap_or_default().to_owned(), fields.next().unwrap_or_default().to_owned()))
        })
    }

    /// Every profile NetworkManager has: `(name, uuid, device, filename)`.
    pub fn profiles(&self) -> Vec<(String, String, String, String)> {
        self.nmcli(&["-f", "NAME,UUID,DEVICE,FILENAME", "connection", "show"])
            .lines()
            .map(|line| {
                // Terse output escapes ':' in values as '\:'.
                let fields: Vec<String> = split_terse(line);
                let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
                (field(0), field(1), field(2), field(3))
            })
            .collect()
    }

    /// Asserts that `ens3` is still activated from its own profile.
    pub fn assert_primary_active(&self, when: &str) {
        let device = self.device(PRIMARY);
        assert_eq!(
            device,
            Some(("connected".to_owned(), PRIMARY_PROFILE.to_owned())),
            "{when}: {PRIMARY} is not active from its profile; NetworkManager's log:\n{}",
            self.log()
        );
    }

    /// Plugs in [`UNMANAGED_NIC`] with [`UNMANAGED_MAC`].
    pub fn add_unmanaged_nic(&self) {
        self.kernel.add_nic(UNMANAGED_NIC, UNMANAGED_MAC);
    }

    /// How many checkpoints NetworkManager holds.
    pub fn checkpoints(&self) -> usize {
        let path = "/org/freedesktop/NetworkManager";
        let answer = self.host.must(
            "busctl",
            &["get-property", "org.freedesktop.NetworkManager", path, "org.freedesktop.NetworkManager", "Checkpoints"],
        );
        // "ao N path…"
        answer.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{answer}"))
    }

    /// Method calls anyone made to NetworkManager so far (tests included:
    /// take the count around what should make none).
    pub fn calls(&self) -> usize {
        self.host.log("monitor").lines().filter(|l| l.starts_with("method call ")).count()
    }

    /// The method calls after the first `from` ([`Self::calls`] taken
    /// earlier), as `interface.member` (e.g.
    /// `org.freedesktop.NetworkManager.Device.Reapply`), in order.
    pub fn calls_since(&self, from: usize) -> Vec<String> {
        let log = self.host.log("monitor");
        let field = |line: &str, key: &str| {
            line.split("; ").find_map(|f| f.strip_prefix(key)).map(str::to_owned).unwrap_or_default()
        };
        log.lines()
            .filter(|l| l.starts_with("method call "))
            .skip(from)
            .map(|l| format!("{}.{}", field(l, "interface="), field(l, "member=")))
            .collect()
    }

    /// NetworkManager's own log so far.
    pub fn log(&self) -> String {
        self.host.log("networkmanager")
    }

    /// What NetworkManager recorded in `no-auto-default.state` (the NICs it
    /// never gives an automatic profile again).
    pub fn no_auto_default(&self) -> String {
        std::fs::read_to_string(self.path("var/lib/NetworkManager/no-auto-default.state")).unwrap_or_default()
    }

    /// udev's own handling of NIC `name` being added (`udevadm test`, no
    /// udevd), as at boot: renames it by the first matching `.link` file.
    /// Returns udev's output.
    pub fn udev_add(&self, name: &str) -> String {
        let out = self
            .host
            .command("udevadm", &["test", "--action=add", &format!("/sys/class/net/{name}")])
            .output()
            .expect("udevadm test");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Waits until NetworkManager shows `name` in `state` (e.g. activated
    /// from its automatic profile: `connecting (getting IP configuration)`).
    pub fn wait_for_device(&self, name: &str, what: &str, check: impl Fn(&str, &str) -> bool) {
        self.host.wait_until(Duration::from_secs(30), what, || {
            self.device(name).is_some_and(|(state, profile)| check(&state, &profile))
        });
    }

    fn wait_for_primary(&self) {
        self.host.wait_until(Duration::from_secs(30), "NetworkManager to activate ens3", || {
            let routes = self.kernel.default_routes();
            let addresses = self.kernel.link(PRIMARY).map(|l| l.addresses).unwrap_or_default();
            routes.contains("192.168.77.1") && routes.contains("fd77::1") && addresses.len() == 2
        });
        self.kernel.settle();
    }
}

/// NetworkManager.conf of the harness (see the module docs).
fn config() -> String {
    format!(
        "[main]\nplugins=keyfile\nauth-polkit=false\ndns=none\nhostname-mode=none\n\n[logging]\nlevel=INFO\n\n\
         [keyfile]\nunmanaged-devices=interface-name:*p;interface-name:cali*;interface-name:{UNMANAGED_NIC}\n"
    )
}

/// The primary NIC's profile: static addresses and default routes.
fn primary_profile() -> String {
    format!(
        "[connection]\nid={PRIMARY_PROFILE}\nuuid={PRIMARY_UUID}\ntype=ethernet\ninterface-name={PRIMARY}\n\n\
         [ethernet]\nmac-address={PRIMARY_MAC}\n\n\
         [ipv4]\nmethod=manual\naddress1=192.168.77.2/24,192.168.77.1\n\n\
         [ipv6]\nmethod=manual\naddress1=fd77::2/64,fd77::1\n"
    )
}

/// Fields of one line of `nmcli -t` (':' separated, '\:' escaped).
fn split_terse(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().expect("a field").extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("a field").push(c),
        }
    }
    fields
}
