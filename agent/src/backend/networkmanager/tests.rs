//! The NetworkManager backend's files: golden, exact, and a fixed point.
//! (Every rendered keyfile is also read by NetworkManager's own keyfile
//! reader in `agent/tests/networkmanager.rs`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::backend::test_support::{any_spec, name, spec};
use crate::backend::{OsRelease, backend_for_os_release};

fn golden(file: &str, actual: &str) {
    crate::backend::test_support::golden("networkmanager", file, actual);
}

fn files_of(n: InterfaceName, s: &InterfaceSpec) -> BTreeMap<PathBuf, String> {
    NetworkManager.render(n, s).into_iter().map(|f| (f.path, f.contents)).collect()
}

/// The predecessor's file as it wrote it: 0644, no trailing newline.
const PREDECESSOR: &str = "DEVICE=multinic2\nNAME=multinic2\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\n\
                           IPADDR=10.66.0.5\nPREFIX=24\nMTU=1450\nHWADDR=FA:16:3E:00:0E:03";

#[test]
fn golden_files() {
    let v4 = spec("fa:16:3e:00:00:01", Some("192.168.10.5/24"), 1500);
    golden("multinic0.nmconnection", &keyfile::render(name(0), &v4));
    golden("10-multinic0.link", &link::render(name(0), v4.mac));
    golden(
        "multinic1.nmconnection",
        &keyfile::render(name(1), &spec("fa:16:3e:00:00:02", Some("2001:db8::5/64"), 1500)),
    );
    golden("multinic3.nmconnection", &keyfile::render(name(3), &spec("fa:16:3e:00:00:04", None, 9000)));
}

#[test]
fn paths_uuid_and_ownership() {
    assert_eq!(
        NetworkManager.paths(name(9)),
        vec![
            PathBuf::from("etc/NetworkManager/system-connections/multinic9.nmconnection"),
            PathBuf::from("etc/systemd/network/10-multinic9.link"),
            PathBuf::from("etc/sysconfig/network-scripts/ifcfg-multinic9"),
        ]
    );
    let mac = "fa:16:3e:00:0e:01".parse().unwrap();
    assert_eq!(keyfile::uuid(mac), "6d756c74-696e-8963-8000-fa163e000e01");
    let text = keyfile::render(name(0), &spec("fa:16:3e:00:0e:01", None, 1500));
    assert!(text.contains("uuid=6d756c74-696e-8963-8000-fa163e000e01\n"), "{text}");
    assert!(text.contains(&format!("[user]\n{}=multinic-agent\n", keyfile::OWNER_KEY)), "{text}");
    assert_eq!(NetworkManager.render(name(0), &spec("fa:16:3e:00:0e:01", None, 1500)).len(), 2, "never an ifcfg");
}

#[test]
fn foreign_or_edited_files_do_not_parse() {
    let n = name(0);
    let good = files_of(n, &spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500));
    assert!(NetworkManager.parse(n, &good).is_ok());
    let edit = |path: PathBuf, f: &dyn Fn(&str) -> String| {
        let mut files = good.clone();
        let text = f(&files[&path]);
        files.insert(path, text);
        files
    };
    let (profile, naming) = (keyfile::path(n), link::path(n));
    let cases = [
        ("dhcp", edit(profile.clone(), &|t| t.replace("method=manual\naddress1=10.0.0.5/24", "method=auto"))),
        ("rewritten by nmcli", edit(profile.clone(), &|t| t.replace("autoconnect=true\n", ""))),
        ("extra key", edit(profile.clone(), &|t| t.replace("mtu=1500\n", "mtu=1500\ncloned-mac-address=random\n"))),
        ("mtu 0", edit(profile.clone(), &|t| t.replace("mtu=1500", "mtu=0"))),
        ("other name", edit(profile.clone(), &|t| t.replace("multinic0", "multinic1"))),
        ("other uuid", edit(profile.clone(), &|t| t.replace("uuid=6d756c74", "uuid=00000000"))),
        ("bad address", edit(profile.clone(), &|t| t.replace("10.0.0.5/24", "10.0.0.0/24"))),
        ("link names another", edit(naming.clone(), &|t| t.replace("Name=multinic0", "Name=multinic1"))),
        ("link without Type", edit(naming.clone(), &|t| t.replace("Type=ether\n", ""))),
        ("link for another MAC", edit(naming.clone(), &|t| t.replace("00:00:01", "00:00:09"))),
        ("truncated", edit(profile.clone(), &|t| t[..t.len() / 2].to_owned())),
    ];
    for (what, files) in cases {
        assert!(NetworkManager.parse(n, &files).is_err(), "{what} parsed");
    }
    let mut only_profile = good.clone();
    only_profile.remove(&naming);
    assert!(NetworkManager.parse(n, &only_profile).unwrap_err().to_string().contains("missing"));
}

#[test]
fn the_predecessors_file_names_the_mac_and_is_never_written() {
    let n = name(2);
    let files: BTreeMap<PathBuf, String> = [(predecessor::path(n), PREDECESSOR.to_owned())].into();
    let parsed = NetworkManager.parse(n, &files).unwrap();
    assert_eq!(parsed, spec("fa:16:3e:00:0e:03", Some("10.66.0.5/24"), 1450));
    let quoted = "DEVICE=\"multinic2\"\nTYPE=Ethernet\nBOOTPROTO=static\nHWADDR='fa:16:3e:00:0e:03'\n";
    let files: BTreeMap<PathBuf, String> = [(predecessor::path(n), quoted.to_owned())].into();
    assert_eq!(NetworkManager.parse(n, &files).unwrap(), spec("fa:16:3e:00:0e:03", None, 1500));
    let path = Path::new("etc/sysconfig/network-scripts/ifcfg-multinic2");
    for (what, text) in [
        ("another device", PREDECESSOR.replace("DEVICE=multinic2", "DEVICE=eth1")),
        ("dhcp", PREDECESSOR.replace("BOOTPROTO=none", "BOOTPROTO=dhcp")),
        ("an admin's key", format!("{PREDECESSOR}\nGATEWAY=10.66.0.1")),
        ("no MAC", PREDECESSOR.replace("\nHWADDR=FA:16:3E:00:0E:03", "")),
        ("address without prefix", PREDECESSOR.replace("PREFIX=24\n", "")),
        ("a bond slave", PREDECESSOR.replace("TYPE=Ethernet", "TYPE=Bond")),
    ] {
        assert!(predecessor::parse(n, path, &text).is_err(), "{what} parsed");
    }
    // Ours wins when both exist: the predecessor's file is then only retired.
    let mut both = files_of(n, &spec("fa:16:3e:00:0e:03", None, 9000));
    both.insert(predecessor::path(n), PREDECESSOR.to_owned());
    assert_eq!(NetworkManager.parse(n, &both).unwrap().mtu.get(), 9000);
}

#[test]
fn rhel_family_and_suse_16_choose_networkmanager() {
    let os = |text: &str| backend_for_os_release(text).map(|b| b.name()).map_err(|e| e.to_string());
    let rhel = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n";
    assert_eq!(os(rhel), Ok("networkmanager"));
    for (id, like) in [("rocky", "rhel centos fedora"), ("almalinux", "rhel centos fedora"), ("centos", "rhel fedora")]
    {
        assert_eq!(os(&format!("ID=\"{id}\"\nID_LIKE=\"{like}\"\nVERSION_ID=\"9.4\"\n")), Ok("networkmanager"));
    }
    assert_eq!(os("ID=fedora\nVERSION_ID=40\n"), Ok("networkmanager"));
    assert_eq!(os("ID=\"ol\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n"), Ok("networkmanager"));
    assert_eq!(os("NAME=\"SLES\"\nVERSION_ID=\"16.0\"\nID=\"sles\"\nID_LIKE=\"suse\"\n"), Ok("networkmanager"));
    assert_eq!(os("NAME=\"SLES\"\nVERSION_ID=\"15.6\"\nID=\"sles\"\nID_LIKE=\"suse\"\n"), Ok("wicked"));
    assert_eq!(os("ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n"), Ok("netplan"));
    let err = os("ID=\"arch\"\n").unwrap_err();
    assert!(err.starts_with("cannot choose a backend for this host (ID=arch, ID_LIKE=);"), "{err}");
    assert!(err.contains("set --backend netplan, wicked or networkmanager"), "{err}");
    assert!(!err.contains("  "), "no gap where a name is missing: {err}");
    assert!(!NetworkManager.serves(&OsRelease::parse("ID=sles\nVERSION_ID=12.5\n")));
}

proptest! {
    #[test]
    fn render_parse_render_is_a_fixed_point(spec in any_spec(), index in 0u8..10) {
        let n = name(index);
        let files = files_of(n, &spec);
        let back = NetworkManager.parse(n, &files).unwrap();
        prop_assert_eq!(back, spec);
        prop_assert_eq!(files_of(n, &back), files);
    }

    #[test]
    fn parse_never_panics(profile in "\\PC{0,300}", naming in "\\PC{0,120}", old in "\\PC{0,200}") {
        let n = name(0);
        let all = [(keyfile::path(n), profile), (link::path(n), naming), (predecessor::path(n), old.clone())].into();
        let _ = NetworkManager.parse(n, &all);
        let _ = NetworkManager.parse(n, &[(predecessor::path(n), old)].into());
    }
}
