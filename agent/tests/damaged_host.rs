//! What a broken node can still do, with the real agent binary in a network
//! namespace: special files at our paths are reported on their interface
//! without being opened or followed (the others go on), another tool's
//! netplan definition of one of our MACs is refused, a file of ours that
//! lost its mode gets it back, and an apply that hangs makes the agent
//! unready without taking SIGTERM away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{Node, WAIT, assert_state, set, spec, status};
use multinic_proto::{ErrorCode, InterfaceState};
use multinic_testkit::netns::PRIMARY;
use multinic_testkit::{eventually, netplan_generate, require_netplan};

const A: &str = "fa:16:3e:00:14:01";
const B: &str = "fa:16:3e:00:14:02";
const C: &str = "fa:16:3e:00:14:03";

/// The agent's peak resident memory, in KiB.
fn peak_rss_kib(node: &Node) -> u64 {
    let pid = node.agent().pid().expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_else(|| panic!("{status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_at_our_paths_are_reported_without_being_read_and_the_others_go_on() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth2", B);
    let primary_before = node.kernel.link(PRIMARY).unwrap();
    node.start_agent();
    let report = node.push(1, &set(&[spec(A, Some("10.14.0.5/24"), 1500), spec(B, None, 1500)])).await;
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);
    let a_before = node.kernel.link("multinic0").expect("applied");
    let ours = node.root.path().join("etc/netplan/90-multinic0.yaml");

    // Each takes the place of multinic0's file; the next push changes both
    // interfaces. Before the fix: a FIFO blocked the agent in open()
    // forever, a link to /dev/zero or a 2 GiB file took gigabytes.
    let cases: [(&str, &dyn Fn()); 3] = [
        ("is a FIFO", &|| assert!(std::process::Command::new("mkfifo").arg(&ours).status().unwrap().success())),
        ("is a symbolic link to /dev/zero", &|| std::os::unix::fs::symlink("/dev/zero", &ours).unwrap()),
        ("has 2147483648 bytes", &|| {
            let ok = std::process::Command::new("truncate").args(["-s", "2G"]).arg(&ours).status().unwrap();
            assert!(ok.success());
        }),
    ];
    for (generation, (what, place)) in (2..).zip(cases) {
        let _ = std::fs::remove_file(&ours);
        place();
        let mtu = 1400 + generation as i64;
        let report = node.push(generation, &set(&[spec(A, Some("10.14.0.9/24"), mtu), spec(B, None, mtu)])).await;
        assert_state(&report, A, InterfaceState::Refused, ErrorCode::CorruptFile);
        let message = &status(&report, A).message;
        assert!(message.contains(&format!("90-multinic0.yaml {what}")), "{message}");
        assert_state(&report, B, InterfaceState::Applied, ErrorCode::None);
        assert_eq!(node.kernel.link("multinic1").unwrap().mtu, mtu as u64, "{what}: the other interface goes on");
        assert_eq!(node.kernel.link("multinic0").unwrap(), a_before, "{what}: its NIC is left as it was");
        assert!(std::fs::symlink_metadata(&ours).is_ok(), "{what}: left where it is");
    }
    assert_eq!(node.kernel.link(PRIMARY).unwrap(), primary_before);
    assert!(
        node.agent()
            .events("a path of ours holds something multinic never writes: left untouched, its name reserved")
            .len()
            >= 3
    );
    let peak = peak_rss_kib(&node);
    assert!(peak < 100 * 1024, "the agent read none of it: peak RSS {peak} KiB");
    eprintln!("agent peak RSS after a FIFO, a link to /dev/zero and a 2 GiB file at its path: {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_definition_of_our_mac_is_refused_and_a_lost_mode_is_given_back() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth3", C);
    // cloud-init's file defines C (attached at first boot) under its own name.
    let cloud_init = format!(
        "network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n    ens5:\n      match:\n        \
         macaddress: {C}\n      set-name: ens5\n      mtu: 1450\n"
    );
    let foreign = node.root.path().join("etc/netplan/50-cloud-init.yaml");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, &cloud_init).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c_before = node.kernel.link("eth3").unwrap();
    node.start_agent();

    let desired = set(&[spec(A, Some("10.14.1.5/24"), 1500), spec(C, Some("10.14.2.5/24"), 9000)]);
    let report = node.push(1, &desired).await;
    assert_state(&report, C, InterfaceState::Refused, ErrorCode::ForeignInterface);
    let message = &status(&report, C).message;
    assert!(
        message.contains("also defined in /etc/netplan/50-cloud-init.yaml as ethernets.ens5 (set-name ens5, mtu 1450)"),
        "{message}"
    );
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);
    assert_eq!(node.kernel.link("eth3").unwrap(), c_before, "nothing of the refused NIC touched");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), cloud_init, "the other file is only read");
    assert_eq!(node.netplan_files(), vec!["50-cloud-init.yaml", "90-multinic0.yaml"]);
    if require_netplan() {
        netplan_generate(node.root.path()).unwrap();
    }

    // Our file loses its mode and owner: the next identical push puts them
    // back, without rewriting the file, and counts it.
    let ours = node.root.path().join("etc/netplan/90-multinic0.yaml");
    let before = std::fs::metadata(&ours).unwrap();
    std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&ours, Some(1000), Some(1000)).unwrap();
    let report = node.push(2, &desired).await;
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);
    let after = std::fs::metadata(&ours).unwrap();
    assert_eq!((after.mode() & 0o7777, after.uid(), after.gid()), (0o600, 0, 0));
    assert_eq!((after.ino(), after.mtime_nsec()), (before.ino(), before.mtime_nsec()), "not rewritten");
    assert_eq!(node.applied_event(2)["file_writes"], 1, "a repair is a change");
    let repaired = node
        .agent()
        .events("a file of ours had lost its mode or owner: set back to 0600 and the agent's owner, content unchanged");
    assert_eq!(repaired.len(), 1, "{}", node.agent().log_text());
    assert_eq!(repaired[0]["was"], "mode 0644, owner 1000:1000");
    let report = node.push(3, &desired).await;
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);
    assert_eq!(node.applied_event(3)["file_writes"], 0, "then nothing to do");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_past_its_deadline_makes_the_agent_unready_and_sigterm_still_stops_it() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    let http: SocketAddr = "127.0.0.1:9737".parse().unwrap();
    let marker = node.state.path().join("paused");
    let mut options = node.options("netlink", "netplan");
    // The test hook stands for an apply that never returns (a host command
    // or a kernel call that hangs): it stops after writing, forever.
    options.env = vec![("MULTINIC_TEST_PAUSE_AFTER_WRITE".into(), marker.display().to_string())];
    options.extra_args = vec!["--apply-deadline".into(), "2s".into(), "--http-listen".into(), http.to_string()];
    node.start_with(&options);
    let _ = node.controller.push(1, &set(&[spec(A, Some("10.14.3.5/24"), 1500)])).await;
    eventually(WAIT, "the apply hangs", || async { marker.exists().then_some(()) }).await;

    let what = format!("/readyz turns 503 after the deadline; agent log:\n{}", node.agent().log_text());
    let body = eventually(WAIT, &what, || async {
        match node.kernel.http_get(http, "/readyz").await {
            Some((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.starts_with("not ready: the apply of generation 1 has been running for "), "{body}");
    assert!(body.contains("past its 2s deadline"), "{body}");
    let (code, health) = node.kernel.http_get(http, "/").await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!((code, health["status"].as_str()), (503, Some("unhealthy")), "{health}");
    assert!(health["database_connected"].as_bool().unwrap(), "the stream is still up: {health}");
    assert!(health["reason"].as_str().unwrap().contains("past its 2s deadline"), "{health}");
    assert_eq!(node.kernel.http_get(http, "/healthz").await.unwrap().0, 200, "liveness never depends on it");
    let (_, metrics) = node.kernel.http_get(http, "/metrics").await.unwrap();
    assert!(metrics.contains("multinic_agent_apply_overdue 1"), "{metrics}");
    assert_eq!(node.agent().events("the apply has not finished within its deadline; not ready until it does").len(), 1);

    // SIGTERM: the apply is past its deadline, so the agent stops at once,
    // says so, and leaves the journal for the next start.
    let agent = node.agent.as_mut().unwrap();
    agent.terminate();
    let asked = Instant::now();
    let exit =
        agent.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("SIGTERM ignored:\n{}", agent.log_text()));
    assert!(!exit.success(), "an apply was given up: {exit:?}");
    eprintln!("exited {:?} after SIGTERM with the apply hung", asked.elapsed());
    assert_eq!(
        agent
            .events("stopping without the apply in flight; the journal rolls back what it changed at the next start")
            .len(),
        1
    );
    let journal = node.state.path().join("journal");
    assert_eq!(std::fs::read_dir(&journal).unwrap().count(), 1, "the change in flight is journaled");

    // The next start rolls it back before connecting.
    let options = node.options("netlink", "netplan");
    node.start_with(&options);
    eventually(WAIT, "the journal rolled back at start", || async {
        (std::fs::read_dir(&journal).unwrap().count() == 0).then_some(())
    })
    .await;
    let link = node.kernel.link_by_mac(A).unwrap();
    assert_eq!((link.name.as_str(), link.up, link.addresses.len()), ("eth1", false, 0), "{link:?}");
}
