//! Other tools' netplan files that define a NIC we are asked to manage.
//!
//! netplan reads every `*.yaml` in `/lib/netplan`, `/etc/netplan` and
//! `/run/netplan`. When another file (cloud-init's `50-cloud-init.yaml`, an
//! admin's) matches one of our MACs, netplan holds two definitions of one
//! NIC: two `.link` files name it (the first in lexical order wins at boot,
//! usually not ours) and two `.network` files configure it. Whatever we
//! apply then holds only until the next reboot or `netplan apply`. Such a
//! MAC is refused as foreign (`FOREIGN_INTERFACE`), naming the file and the
//! definition, and nothing of it is touched (see the README for why).
//!
//! This module only reads: regular files (a link is followed, but only to a
//! regular file), at most [`OTHER_FILE_LIMIT`] bytes each, never our own
//! paths. It never writes, moves or removes anything. A file it cannot read
//! or parse is skipped: netplan reports those itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, MAX_CAPACITY, MacAddress};
use tracing::{debug, warn};

use crate::backend::netplan;
use crate::files::{HostFiles, Links, OTHER_FILE_LIMIT, read_text};

/// The folders netplan reads, relative to the host root.
const FOLDERS: [&str; 3] = ["lib/netplan", "etc/netplan", "run/netplan"];

/// Desired-or-not MACs defined by a netplan file that is not ours, each
/// with the reason to show (the first file, in netplan's order, wins).
pub(super) fn definitions(files: &HostFiles) -> BTreeMap<MacAddress, String> {
    let mut found = BTreeMap::new();
    for rel in foreign_files(files.root()) {
        let path = files.abs(&rel);
        let text = match read_text(&path, OTHER_FILE_LIMIT, Links::Follow) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) if e.is_damaged() => {
                warn!(error = %e, "a netplan file that is not ours cannot be read safely; skipped (netplan will fail on it)");
                continue;
            }
            Err(e) => {
                debug!(error = %e, "cannot read a netplan file that is not ours; skipped");
                continue;
            }
        };
        let claims = match netplan::claims(&text) {
            Ok(claims) => claims,
            Err(e) => {
                debug!(file = %path.display(), error = %e, "a netplan file that is not ours does not parse; skipped");
                continue;
            }
        };
        for claim in claims {
            found.entry(claim.mac).or_insert_with(|| {
                let settings = if claim.settings.is_empty() { String::new() } else { format!(" ({})", claim.settings) };
                format!(
                    "also defined in /{} as {}{settings}: netplan would hold two definitions of this NIC; \
                     remove it from that file (multinic never edits files that are not its own)",
                    rel.display(),
                    claim.id
                )
            });
        }
    }
    found
}

/// The `*.yaml` files of netplan's folders that are not ours, in netplan's
/// order (by file name; for one name, the later folder wins in netplan, but
/// any definition there counts).
fn foreign_files(root: &Path) -> Vec<PathBuf> {
    let ours: Vec<PathBuf> =
        (0..MAX_CAPACITY).filter_map(|i| InterfaceName::new(i, MAX_CAPACITY)).map(netplan::path).collect();
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for folder in FOLDERS {
        let Ok(entries) = std::fs::read_dir(root.join(folder)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".yaml") {
                continue;
            }
            let rel = Path::new(folder).join(&name);
            if !ours.contains(&rel) {
                found.push((name, rel));
            }
        }
    }
    found.sort();
    found.into_iter().map(|(_, rel)| rel).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_definitions_of_a_mac_are_found_and_ours_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::new(dir.path());
        let etc = dir.path().join("etc/netplan");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(dir.path().join("run/netplan")).unwrap();
        let define = |name: &str, mtu: u32| {
            format!(
                "network:\n  version: 2\n  ethernets:\n    {name}:\n      match:\n        macaddress: \
                 \"02:00:00:00:00:01\"\n      set-name: {name}\n      mtu: {mtu}\n"
            )
        };
        std::fs::write(etc.join("90-multinic0.yaml"), define("multinic0", 1500)).unwrap();
        assert!(definitions(&files).is_empty(), "our own file is not foreign");

        std::fs::write(dir.path().join("run/netplan/60-admin.yaml"), define("data0", 1400)).unwrap();
        std::fs::write(etc.join("50-cloud-init.yaml"), define("ens4", 9000)).unwrap();
        std::fs::write(etc.join("40-broken.yaml"), "network: [").unwrap();
        std::fs::write(etc.join("50-cloud-init.yaml.bak"), define("old0", 1)).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(etc.join("45-fifo.yaml")).status().unwrap().success());
        let found = definitions(&files);
        let mac: MacAddress = "02:00:00:00:00:01".parse().unwrap();
        let reason = &found[&mac];
        assert!(
            reason.starts_with(
                "also defined in /etc/netplan/50-cloud-init.yaml as ethernets.ens4 (set-name ens4, mtu 9000)"
            ),
            "the first in netplan's order: {reason}"
        );
        assert_eq!(found.len(), 1);
        use crate::backend::Backend as _;
        assert_eq!(netplan::Netplan.foreign_definitions(&files), found);
        assert!(crate::backend::wicked::Wicked.foreign_definitions(&files).is_empty(), "only netplan reads these");
        // Read only: every file is still there, as it was.
        assert_eq!(std::fs::read_to_string(etc.join("50-cloud-init.yaml")).unwrap(), define("ens4", 9000));
        assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 5);
    }
}
