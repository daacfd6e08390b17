//! Fixtures and rendered files checked against the real tools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use multinic_agent::backend::{Backend, netplan::Netplan};
use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};
use multinic_testkit::{netplan_generate, require_netplan};

/// The testkit's schema is the shared fixture, byte for byte.
#[test]
fn schema_copy_matches_the_shared_fixture() {
    // `shared/` sits beside the main checkout; git worktrees live deeper
    // (e.g. wt/<branch>/), so look in every ancestor folder.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = manifest.ancestors().map(|dir| dir.join("shared/fixtures/schema-mysql.sql")).find(|p| p.is_file());
    let Some(Ok(shared)) = found.map(std::fs::read_to_string) else {
        assert!(!multinic_testkit::in_ci(), "CI=true: ../shared/fixtures/schema-mysql.sql is missing");
        eprintln!("!!!!!!!! SKIPPED: ../shared is not beside the checkout !!!!!!!!");
        return;
    };
    assert_eq!(multinic_testkit::mariadb::SCHEMA, shared);
}

/// Every shape of file the netplan backend renders passes `netplan generate`,
/// all ten names at once (as on a full node).
#[test]
fn every_rendered_netplan_file_passes_netplan_generate() {
    if !require_netplan() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let addresses = [
        Some("192.168.10.5/24"),
        None,
        Some("2001:db8::5/64"),
        Some("10.0.0.1/31"),
        Some("172.16.4.9/12"),
        Some("10.9.8.7/32"),
        None,
        Some("fd00::1/128"),
        Some("192.168.200.254/24"),
        Some("100.64.0.2/10"),
    ];
    for (i, address) in addresses.into_iter().enumerate() {
        let index = u8::try_from(i).unwrap();
        let mac = MacAddress::from_octets([0xfa, 0x16, 0x3e, 0, 1, index]).unwrap();
        let mtu = Mtu::new([1500, 9000, 1280, 68 + 1212, 9216][i % 5]).unwrap();
        let spec = InterfaceSpec::new(mac, address.map(|a| a.parse::<IfaceAddr>().unwrap()), mtu).unwrap();
        for file in Netplan.render(InterfaceName::new(index, 10).unwrap(), &spec) {
            let path = root.path().join(&file.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &file.contents).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    netplan_generate(root.path()).unwrap();
    let generated = std::fs::read_dir(root.path().join("run/systemd/network")).unwrap().count();
    assert_eq!(generated, 20, "one .link and one .network per interface");
}

/// `netplan generate` really rejects a broken file (the check above can fail).
#[test]
fn netplan_generate_rejects_a_broken_file() {
    if !require_netplan() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/netplan");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("90-multinic0.yaml"),
        "network:\n  version: 2\n  ethernets:\n    multinic0:\n      match:\n        macaddress: \"zz\"\n",
    )
    .unwrap();
    assert!(netplan_generate(root.path()).is_err());
}
