//! `--apply host` (wicked's default): the agent runs the host's own tool in
//! the namespaces of a host process. PID 1 cannot be entered here, so the
//! "host" is a process the test starts inside the node's network namespace
//! with a private mount namespace, where `/usr/local/sbin/wicked` and
//! `udevadm` are stand-ins (SUSE's wicked cannot run here): they record their
//! arguments and `wicked` applies the runtime state with `ip`, or fails on
//! demand. The kernel is real. (netplan nodes never run a host tool: their
//! default is netlink, proved against the real networkd in
//! `testkit/tests/networkd.rs`, and host mode is refused there.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{HTTP, Node, WAIT, assert_state, set, spec, status};
use multinic_agent::hostns::HostNamespaces;
use multinic_proto::{DriftAction, DriftKind, ErrorCode, InterfaceState, Outcome};
use multinic_testkit::eventually;
use multinic_testkit::netns::{self, TestNode};

const A: &str = "fa:16:3e:00:04:01";

/// A process in `namespace` with its own mount namespace, in which each
/// `/usr/local/sbin/<name>` runs its script. Killed on drop.
struct HostStandIn(Child);

impl HostStandIn {
    fn start(namespace: &str, tools: &[(&str, &str)]) -> Self {
        let mut setup = String::from("mount -t tmpfs multinic-test /usr/local/sbin\n");
        for (name, script) in tools {
            setup.push_str(&format!(
                "cat > /usr/local/sbin/{name} <<'EOF'\n{script}\nEOF\nchmod +x /usr/local/sbin/{name}\n"
            ));
        }
        setup.push_str("touch /usr/local/sbin/READY && exec sleep 600");
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "unshare", "--mount", "--propagation", "private", "sh", "-c", &setup])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let host = Self(child);
        let ready = format!("/proc/{}/root/usr/local/sbin/READY", host.pid());
        let started = Instant::now();
        while !Path::new(&ready).exists() {
            assert!(started.elapsed() < Duration::from_secs(10), "the stand-in host did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// A file in the stand-in's private /usr/local/sbin.
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/root/usr/local/sbin/{name}", self.pid())).unwrap_or_default()
    }
}

impl Drop for HostStandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn host_commands_run_in_the_network_and_mount_namespaces_of_the_target() {
    if !netns::available() {
        return;
    }
    let node = TestNode::new();
    let host = HostStandIn::start(node.name(), &[("netplan", "#!/bin/sh\necho \"stand-in netplan: $*\"")]);
    let target = HostNamespaces { pid: host.pid(), timeout: Duration::from_secs(10) };

    // Looked up and run in the target's filesystem: ours has the real netplan.
    let out = target.run("netplan", &["apply".into()]).unwrap();
    assert_eq!(out.trim(), "stand-in netplan: apply");
    let out = target.run("sh", &["-c".into(), "ip -o link show; readlink /proc/self/ns/net".into()]).unwrap();
    assert!(out.contains(": ens3@"), "the node's links are visible: {out}");
    let net = std::fs::read_link(format!("/proc/{}/ns/net", host.pid())).unwrap();
    assert!(out.contains(&net.display().to_string()), "{out}");
    assert!(!Path::new("/usr/local/sbin/READY").exists(), "the stand-in's mount stays its own");

    let err = target.run("sh", &["-c".into(), "echo broken >&2; exit 3".into()]).unwrap_err();
    assert!(err.to_string().contains("exit status: 3") && err.to_string().contains("broken"), "{err}");
    let quick = HostNamespaces { timeout: Duration::from_millis(300), ..target };
    let err = quick.run("sleep", &["5".into()]).unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_renames_runs_the_host_tool_verifies_and_rolls_back_when_it_fails() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    let fail_flag = node.state.path().join("fail-next-apply");
    let script = format!(
        "#!/bin/sh\necho \"wicked $*\" >> /usr/local/sbin/calls\n\
         if [ -e {flag} ]; then echo 'wicked: simulated failure' >&2; exit 1; fi\n\
         ip link set multinic0 mtu 9000 up && ip addr replace 10.50.0.5/24 dev multinic0",
        flag = fail_flag.display()
    );
    let udevadm = "#!/bin/sh\necho \"udevadm $*\" >> /usr/local/sbin/calls";
    let host = HostStandIn::start(node.kernel.name(), &[("wicked", &script), ("udevadm", udevadm)]);
    let mut options = node.options("auto", "wicked");
    options.extra_args = vec!["--host-pid".into(), host.pid().to_string()];
    node.start_with(&options);

    let report = node.push(1, &set(&[spec(A, Some("10.50.0.5/24"), 9000)])).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}\n{}", node.agent().log_text());
    let once = "udevadm control --reload\nwicked ifreload multinic0\n";
    assert_eq!(host.read("calls"), once, "auto is host mode on wicked: one ifreload of our NIC only");
    let link = node.kernel.link("multinic0").expect("renamed by netlink before the host tool ran");
    assert_eq!((link.mtu, link.up, link.addresses.clone()), (9000, true, vec!["10.50.0.5/24".to_owned()]));
    let file = node.file("etc/sysconfig/network/ifcfg-multinic0").unwrap();

    std::fs::write(&fail_flag, "").unwrap();
    let report = node.push(2, &set(&[spec(A, Some("10.50.0.9/24"), 9000)])).await;
    assert_state(&report, A, InterfaceState::Failed, ErrorCode::ApplyFailed);
    assert!(status(&report, A).message.contains("simulated failure"), "{report:?}");
    assert_eq!(node.file("etc/sysconfig/network/ifcfg-multinic0").unwrap(), file, "previous file restored");
    assert_eq!(node.kernel.link("multinic0").unwrap(), link, "runtime state as before");
    assert_eq!(host.read("calls"), once.repeat(3), "applied, failed, and tried again after the rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_checks_a_steady_node_without_a_host_call_and_repairs_drift_with_one_ifreload_of_that_nic() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    let script = "#!/bin/sh\necho \"wicked $*\" >> /usr/local/sbin/calls\n\
                  ip link set multinic0 mtu 9000 up && ip addr replace 10.50.0.5/24 dev multinic0";
    let udevadm = "#!/bin/sh\necho \"udevadm $*\" >> /usr/local/sbin/calls";
    let host = HostStandIn::start(node.kernel.name(), &[("wicked", script), ("udevadm", udevadm)]);
    let mut options = node.options("auto", "wicked");
    options.extra_args =
        ["--host-pid", &host.pid().to_string(), "--drift-check-interval", "300ms", "--http-listen", HTTP]
            .into_iter()
            .map(str::to_owned)
            .collect();
    node.start_with(&options);
    let nonce = node.controller.push(1, &set(&[spec(A, Some("10.50.0.5/24"), 9000)])).await;
    let report = node.controller.report(nonce, WAIT, "the first apply", |_| true).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}\n{}", node.agent().log_text());
    let once = "udevadm control --reload\nwicked ifreload multinic0\n";
    assert_eq!(host.read("calls"), once);

    // Ten checks of a node as applied: the host's tool is not called.
    let checks = node.metrics().await.get("multinic_agent_drift_checks_total", &[]);
    eventually(WAIT, "ten drift checks", || async {
        (node.metrics().await.get("multinic_agent_drift_checks_total", &[]) >= checks + 10.0).then_some(())
    })
    .await;
    assert_eq!(host.read("calls"), once, "no daemon call while nothing drifted");

    // The MTU set by hand: repaired the way wicked applies one NIC.
    node.kernel.ip(&["link", "set", "multinic0", "mtu", "1500"]);
    let report = node
        .controller
        .report(nonce, WAIT, "the drift report", |r| r.drift.iter().any(|f| f.kind == DriftKind::Mtu))
        .await;
    assert_eq!(report.drift[0].action, DriftAction::Repaired, "{report:?}");
    assert_eq!(node.kernel.link("multinic0").unwrap().mtu, 9000);
    assert_eq!(host.read("calls"), once.repeat(2), "one more ifreload of exactly that NIC");
}

#[test]
fn host_mode_is_refused_on_netplan_nodes_before_anything_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_multinic-agent"))
        .args(["--controller", "127.0.0.1:1", "--insecure", "--node-name", "n1", "--backend", "netplan"])
        .args(["--apply", "host", "--http-listen", "127.0.0.1:0", "--log-format", "text"])
        .arg("--host-root")
        .arg(root.path())
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--apply host is not offered with the netplan backend"), "{stderr}");
    assert!(stderr.contains("use --apply netlink"), "{stderr}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "nothing written on the host");
}
