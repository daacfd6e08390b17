//! A test "node": a network namespace of its own, with a primary NIC that
//! carries the default routes and secondary NICs of chosen MACs.
//!
//! Every link lives inside the namespace (both ends of each veth pair), so
//! nothing is created in the machine's own namespace and tests running in
//! parallel processes never collide: the namespace name holds the pid and a
//! counter. Dropping the node deletes the namespace, also when the test
//! panics. The kernel is inspected with the real `ip -j`, independently of
//! the agent's own netlink code.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};
use serde_json::Value;

/// The primary NIC: default routes go through it.
pub const PRIMARY: &str = "ens3";
pub const PRIMARY_MAC: &str = "fa:16:3e:77:77:02";
pub const PRIMARY_V4: &str = "192.168.77.2/24";
pub const PRIMARY_V6: &str = "fd77::2/64";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this machine can run namespace tests (root and `ip`).
pub fn available() -> bool {
    crate::require(crate::is_root(), "root (network namespaces)", "run the tests as root, e.g. sudo -E")
        && crate::require(crate::have("ip"), "ip", "apt-get install -y iproute2")
}

/// A link as `ip -j addr show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: u64,
    /// Administratively up.
    pub up: bool,
    /// Addresses as `ip/prefix`, IPv6 link-local left out, sorted.
    pub addresses: Vec<String>,
}

/// A network namespace set up as a node.
#[derive(Debug)]
pub struct TestNode {
    name: String,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// A namespace with `lo` up and `ens3` (MAC [`PRIMARY_MAC`]) holding
    /// [`PRIMARY_V4`] and [`PRIMARY_V6`] with IPv4 and IPv6 default routes.
    pub fn new() -> Self {
        let node = Self::bare();
        node.add_nic(PRIMARY, PRIMARY_MAC);
        node.ip(&["link", "set", PRIMARY, "up"]);
        node.ip(&["addr", "add", PRIMARY_V4, "dev", PRIMARY]);
        node.ip(&["-6", "addr", "add", PRIMARY_V6, "dev", PRIMARY, "nodad"]);
        node.ip(&["route", "add", "default", "via", "192.168.77.1", "dev", PRIMARY]);
        node.ip(&["-6", "route", "add", "default", "via", "fd77::1", "dev", PRIMARY]);
        node
    }

    /// A namespace with only `lo` up: for nodes whose primary NIC a real
    /// network daemon configures (see [`crate::networkd`]).
    pub fn bare() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("mnt-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let node = Self { name, forwarders: Vec::new() };
        node.ip(&["link", "set", "lo", "up"]);
        node
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A NIC `name` with `mac`, left down like a freshly plugged one: one end
    /// of a veth pair whose other end (`name` + `p`, or a short form) also
    /// stays in the namespace, up, so the NIC has a carrier.
    pub fn add_nic(&self, name: &str, mac: &str) {
        let peer = peer_name(name);
        self.ip(&["link", "add", name, "address", mac, "type", "veth", "peer", "name", &peer]);
        self.ip(&["link", "set", &peer, "up"]);
    }

    /// A macvlan `name` with `mac` on top of a new veth `lower` (MTU 1500).
    /// The kernel refuses an MTU above the lower device's MTU on it, while
    /// its advertised maximum stays 65535: a refusal only an apply can meet.
    pub fn add_macvlan(&self, name: &str, mac: &str, lower: &str, lower_mac: &str) {
        self.add_nic(lower, lower_mac);
        self.ip(&["link", "set", lower, "up"]);
        self.ip(&["link", "add", "link", lower, "name", name, "address", mac, "type", "macvlan", "mode", "bridge"]);
    }

    /// `ip -n <ns> args…`; panics with `ip`'s message on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Vec<Link> {
        let json = self.ip(&["-j", "addr", "show"]);
        let parsed: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j addr: {e}: {json}"));
        parsed.as_array().into_iter().flatten().map(parse_link).collect()
    }

    /// The link called `name`, if any.
    pub fn link(&self, name: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.name == name)
    }

    /// The link with `mac`, if any.
    pub fn link_by_mac(&self, mac: &str) -> Option<Link> {
        self.links().into_iter().find(|l| l.mac.eq_ignore_ascii_case(mac))
    }

    /// Waits (up to 10 s) until no address in the namespace is tentative:
    /// the kernel finishes IPv6 duplicate address detection on its own
    /// schedule and announces it, which would look like a change.
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let json = self.ip(&["-j", "addr", "show"]);
            if !json.contains("\"tentative\":true") || std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The default routes (`ip route` and `ip -6 route`), as text.
    pub fn default_routes(&self) -> String {
        format!("{}{}", self.ip(&["route", "show", "default"]), self.ip(&["-6", "route", "show", "default"]))
    }

    /// A listening socket on 127.0.0.1 *inside* the namespace (a socket
    /// belongs to the namespace of the thread that creates it).
    pub fn listen_inside(&self) -> TcpListener {
        self.inside(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind inside the namespace");
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        })
    }

    /// Runs `f` on a thread that entered the namespace (sockets it makes
    /// belong to the namespace, whichever thread uses them later).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// `GET path` from inside the namespace (e.g. an agent's HTTP port on
    /// its loopback); `None` when nothing answers there. Needs a tokio runtime.
    pub async fn http_get(&self, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        let stream = self.inside(move || {
            let stream = std::net::TcpStream::connect(addr).ok()?;
            stream.set_nonblocking(true).expect("nonblocking");
            Some(stream)
        })?;
        let stream = tokio::net::TcpStream::from_std(stream).expect("tokio stream");
        Some(crate::http_get_over(stream, path).await)
    }

    /// A port on 127.0.0.1 inside the namespace forwarding every connection
    /// to `target` outside it (so an agent in the namespace reaches a
    /// controller on the machine's loopback). Needs a tokio runtime.
    pub fn forward_to(&mut self, target: SocketAddr) -> u16 {
        let listener = tokio::net::TcpListener::from_std(self.listen_inside()).expect("tokio listener");
        let port = listener.local_addr().expect("local addr").port();
        self.forwarders.push(tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outside) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        }));
        port
    }
}

impl Default for TestNode {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        for forwarder in &self.forwarders {
            forwarder.abort();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The in-namespace peer of a test NIC (at most 15 bytes).
fn peer_name(name: &str) -> String {
    let mut peer = format!("{name}p");
    peer.truncate(15);
    peer
}

fn parse_link(v: &Value) -> Link {
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let flags: Vec<&str> =
        v.get("flags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut addresses: Vec<String> = v
        .get("addr_info")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| {
            !(a.get("family").and_then(Value::as_str) == Some("inet6")
                && a.get("scope").and_then(Value::as_str) == Some("link"))
        })
        .map(|a| {
            let local = a.get("local").and_then(Value::as_str).unwrap_or_default();
            let prefix = a.get("prefixlen").and_then(Value::as_u64).unwrap_or_default();
            format!("{local}/{prefix}")
        })
        .collect();
    addresses.sort();
    Link {
        name: text("ifname"),
        mac: text("address"),
        mtu: v.get("mtu").and_then(Value::as_u64).unwrap_or_default(),
        up: flags.contains(&"UP"),
        addresses,
    }
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
