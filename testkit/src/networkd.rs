//! A node whose networking is done by the real systemd-networkd, driven by
//! netplan, as on Ubuntu: a cloud-init netplan file configures the primary
//! NIC, `netplan generate` turns it into networkd units, and networkd (run
//! confined, see [`crate::confined`]) configures the kernel.
//!
//! **The one deviation from a real node.** netplan matches NICs by
//! `PermanentMACAddress=`, which veth NICs do not have. Wherever this
//! harness runs `netplan generate`, it then rewrites that key to
//! `MACAddress=` — and only in the generated files that contain it: a file
//! rewritten needlessly gets a new timestamp, and networkd reconfigures the
//! link of any unit file that changed at its next reload, which would fake
//! exactly the damage these tests look for. Nothing else of netplan's or
//! networkd's output or behaviour is changed.

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::confined::{Bind, ConfinedHost, RunDir};
use crate::netns::{PRIMARY, PRIMARY_MAC, TestNode};

/// Where Debian installs networkd.
pub const NETWORKD: &str = "/lib/systemd/systemd-networkd";

/// The cloud-init file of the primary NIC, as a cloud image has it.
const CLOUD_INIT: &str = "network:
  version: 2
  ethernets:
    ens3:
      match:
        macaddress: \"fa:16:3e:77:77:02\"
      set-name: ens3
      addresses: [192.168.77.2/24, \"fd77::2/64\"]
      routes:
        - to: default
          via: 192.168.77.1
        - to: \"::/0\"
          via: \"fd77::1\"
";

/// Rewrites `PermanentMACAddress=` to `MACAddress=` in the generated units
/// that contain it, and in no other file (see the module docs).
const REWRITE_PERMANENT_MAC: &str = "for f in $(grep -l '^PermanentMACAddress=' /run/systemd/network/* 2>/dev/null); do \
     sed -i 's/^PermanentMACAddress=/MACAddress=/' \"$f\"; done";

/// Whether this machine can run the real networkd confined (skips loudly,
/// or fails under CI).
pub fn available() -> bool {
    crate::confined::available()
        && crate::require(Path::new(NETWORKD).exists(), "systemd-networkd", "apt-get install -y systemd")
        && crate::require_netplan()
}

/// A node with the real networkd and netplan. Dropped: networkd, the bus,
/// the host, then the namespace.
#[derive(Debug)]
pub struct NetworkdNode {
    pub host: ConfinedHost,
    root: TempDir,
    pub kernel: TestNode,
}

impl NetworkdNode {
    /// A node whose primary NIC `ens3` networkd has configured from the
    /// cloud-init netplan file (addresses, default routes); `None` when this
    /// machine cannot run it (see [`available`]).
    pub fn start() -> Option<Self> {
        if !available() {
            return None;
        }
        let kernel = TestNode::bare();
        kernel.add_nic(PRIMARY, PRIMARY_MAC);
        let root = tempfile::Builder::new().prefix("multinic-networkd-root-").tempdir().expect("host root");
        let netplan_dir = root.path().join("etc/netplan");
        let units_dir = root.path().join("etc/systemd/network");
        std::fs::create_dir_all(&netplan_dir).expect("etc/netplan");
        std::fs::create_dir_all(&units_dir).expect("etc/systemd/network");
        crate::write_0600(&netplan_dir.join("50-cloud-init.yaml"), CLOUD_INIT);
        let host = ConfinedHost::start(
            kernel.name(),
            &[
                Bind { source: netplan_dir, target: "/etc/netplan" },
                Bind { source: units_dir, target: "/etc/systemd/network" },
            ],
            &[
                RunDir { path: "/run/systemd/netif", owner: Some("systemd-network:systemd-network") },
                RunDir { path: "/run/systemd/network", owner: None },
            ],
        );
        let mut node = Self { host, root, kernel };
        node.generate();
        node.host.spawn("networkd", NETWORKD, &[], &[("SYSTEMD_LOG_LEVEL", "debug")]);
        node.host.wait_for_log("networkd", "Enumeration completed", Duration::from_secs(20));
        node.wait_for_primary();
        Some(node)
    }

    /// The host root to give the agent (`--host-root`): its `etc/netplan` is
    /// the host's `/etc/netplan`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// An admin's bare `networkctl reload` (no unit file changed by us).
    pub fn reload(&self) {
        self.host.must("networkctl", &["reload"]);
        std::thread::sleep(Duration::from_secs(1));
        self.kernel.settle();
    }

    /// What a boot does with the files on disk: `netplan generate`, then
    /// networkd (re)reads the units.
    pub fn boot_like_reload(&self) {
        self.generate();
        self.reload();
    }

    /// The whole-host path the agent used to take in host mode: the real
    /// `netplan apply`, run as a host would run it, but in a child mount
    /// namespace in which `/sys` is writable (netplan apply runs udevadm)
    /// and `systemctl` is a stand-in (no systemd here): `daemon-reload`
    /// runs netplan's generator, as systemd would; every other call
    /// succeeds and does nothing.
    pub fn netplan_apply(&self) -> Result<String, String> {
        let bin = self.host.dir().join("standin-bin");
        std::fs::create_dir_all(&bin).expect("stand-in folder");
        let systemctl = format!(
            "#!/bin/sh\ncase \"$*\" in *daemon-reload*) netplan generate && {REWRITE_PERMANENT_MAC} ;; \
             is-active*) exit 3 ;; esac\nexit 0\n"
        );
        std::fs::write(bin.join("systemctl"), systemctl).expect("systemctl stand-in");
        crate::netns::run("chmod", &["+x", &bin.join("systemctl").display().to_string()]);
        let script = format!("mount -o remount,bind,rw /sys && PATH={}:$PATH netplan apply", bin.display());
        let out = self.host.exec("unshare", &["--mount", "--propagation", "private", "sh", "-c", &script]);
        std::thread::sleep(Duration::from_secs(2));
        self.kernel.settle();
        out
    }

    /// networkd's own log so far.
    pub fn log(&self) -> String {
        self.host.log("networkd")
    }

    /// What anyone asked networkd to do so far: every D-Bus method call it
    /// received (`networkctl reload`, `reconfigure`, …; networkd logs each
    /// at debug level) and every link it (re)configured from a unit file.
    pub fn daemon_activity(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                (l.starts_with("Got message type=method_call") && l.contains("destination=org.freedesktop.network1"))
                    || l.contains(": Configuring with ")
                    || l.contains(": Reconfiguring with ")
            })
            .map(str::to_owned)
            .collect()
    }

    /// `netplan generate` in the host, then the one deviation (module docs).
    fn generate(&self) {
        self.host.must("netplan", &["generate"]);
        self.host.sh(REWRITE_PERMANENT_MAC);
    }

    fn wait_for_primary(&self) {
        self.host.wait_until(Duration::from_secs(20), "networkd to configure ens3", || {
            let routes = self.kernel.default_routes();
            let addresses = self.kernel.link(PRIMARY).map(|l| l.addresses).unwrap_or_default();
            routes.contains("192.168.77.1") && routes.contains("fd77::1") && addresses.len() == 2
        });
        self.kernel.settle();
    }
}
