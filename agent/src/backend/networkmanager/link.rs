//! The systemd `.link` file that names the NIC at boot:
//! `/etc/systemd/network/10-multinic{N}.link`.
//!
//! NetworkManager never renames a NIC; udev does, when the NIC is added,
//! from the first `.link` file (in lexical order) whose `[Match]` fits.
//! `10-` sorts ours before the distribution's `73-usb-net-by-mac.link` and
//! `99-default.link`. `Type=ether` keeps VLANs (and bonds, bridges) that
//! copy the NIC's MAC from matching. Parsing accepts exactly what
//! [`render`] writes.

use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, MacAddress};

use super::super::ParseFileError;

const HEADER: &str = "# Managed by multinic-agent: do not edit, changes are overwritten.\n";

/// The `.link` file of interface `name`, relative to the host root.
pub fn path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/systemd/network/10-{name}.link"))
}

/// Renders the `.link` file that names the NIC with `mac` as `name`.
pub fn render(name: InterfaceName, mac: MacAddress) -> String {
    format!("{HEADER}[Match]\nMACAddress={mac}\nType=ether\n\n[Link]\nName={name}\n")
}

/// Reads back a `.link` file written by [`render`]: the MAC it names.
pub fn parse(name: InterfaceName, path: &Path, text: &str) -> Result<MacAddress, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, reason);
    let value =
        text.lines().find_map(|l| l.strip_prefix("MACAddress=")).ok_or_else(|| err("no [Match] MACAddress=".into()))?;
    let mac: MacAddress = value.parse().map_err(|e| err(format!("MACAddress: {e}")))?;
    if render(name, mac) != text {
        return Err(err(format!("not the .link file multinic writes for {name}")));
    }
    Ok(mac)
}
