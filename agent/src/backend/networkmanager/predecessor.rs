//! The predecessor's file on RHEL nodes, which this backend takes over:
//! `/etc/sysconfig/network-scripts/ifcfg-multinic{N}`.
//!
//! The predecessor named the NIC with `ip link set`, wrote this ifcfg-rh
//! file (mode 0644, no trailing newline) and restarted NetworkManager:
//!
//! ```text
//! DEVICE=multinic0
//! NAME=multinic0
//! TYPE=Ethernet
//! ONBOOT=yes
//! BOOTPROTO=none
//! IPADDR=10.0.0.5
//! PREFIX=24
//! MTU=1450
//! HWADDR=fa:16:3e:00:00:01
//! ```
//!
//! It is read only to learn which MAC has which `multinicN` name (and what
//! it was configured as), so a node it configured keeps its names. The
//! backend never writes one: the file is retired (removed, and
//! NetworkManager's profile of it unloaded) once our profile for that NIC is
//! verified. Anything but exactly these keys is not the predecessor's file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};

use super::super::ParseFileError;

/// The predecessor's file of interface `name`, relative to the host root.
pub fn path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/sysconfig/network-scripts/ifcfg-{name}"))
}

const KEYS: [&str; 9] = ["DEVICE", "NAME", "TYPE", "ONBOOT", "BOOTPROTO", "IPADDR", "PREFIX", "MTU", "HWADDR"];

/// Reads the predecessor's file of interface `name`: the interface it
/// configured.
pub fn parse(name: InterfaceName, path: &Path, text: &str) -> Result<InterfaceSpec, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, format!("not the predecessor's ifcfg file: {reason}"));
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').ok_or_else(|| err(format!("not KEY=value: {line:?}")))?;
        if !KEYS.contains(&key) {
            return Err(err(format!("unexpected key {key}")));
        }
        if values.insert(key, unquote(value)).is_some() {
            return Err(err(format!("{key} appears twice")));
        }
    }
    let get = |key: &str| values.get(key).map(String::as_str);
    let expect = |key: &str, want: &str| match get(key) {
        Some(v) if v.eq_ignore_ascii_case(want) => Ok(()),
        other => Err(err(format!("{key} is {other:?}, expected {want}"))),
    };
    expect("DEVICE", &name.to_string())?;
    expect("TYPE", "Ethernet")?;
    if !matches!(get("BOOTPROTO").map(str::to_ascii_lowercase).as_deref(), Some("none" | "static")) {
        return Err(err(format!("BOOTPROTO is {:?}, expected none or static", get("BOOTPROTO"))));
    }
    let mac: MacAddress =
        get("HWADDR").ok_or_else(|| err("no HWADDR".into()))?.parse().map_err(|e| err(format!("HWADDR: {e}")))?;
    let mtu = match get("MTU") {
        Some(mtu) => mtu.parse::<i64>().map_err(|_| err(format!("MTU {mtu:?} is not a number")))?,
        None => 1500,
    };
    let mtu = Mtu::new(mtu).map_err(|e| err(e.to_string()))?;
    let address = match (get("IPADDR"), get("PREFIX")) {
        (Some(ip), Some(prefix)) => {
            Some(format!("{ip}/{prefix}").parse::<IfaceAddr>().map_err(|e| err(format!("IPADDR/PREFIX: {e}")))?)
        }
        (None, None) => None,
        _ => return Err(err("IPADDR and PREFIX come together".into())),
    };
    InterfaceSpec::new(mac, address, mtu).map_err(|e| err(e.to_string()))
}

/// A value without the quotes ifcfg allows around it.
fn unquote(value: &str) -> String {
    let value = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner.to_owned();
        }
    }
    value.to_owned()
}
