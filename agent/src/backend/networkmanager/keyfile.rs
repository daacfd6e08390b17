//! Our NetworkManager profile of one interface: a keyfile,
//! `/etc/NetworkManager/system-connections/multinic{N}.nmconnection`.
//!
//! The profile is bound to the NIC twice, as NetworkManager wants it for a
//! NIC named at boot by our `.link` file: `interface-name=multinicN` and
//! `mac-address=` (NetworkManager matches the permanent MAC). Its `uuid` is
//! derived from the MAC, so the same NIC always has the same profile and
//! host commands can name it exactly (an `id` may be shared with profiles
//! NetworkManager generates itself). `[user] multinic.managed-by` marks it
//! as ours; NetworkManager keeps that key when it rewrites a profile.
//!
//! Parsing accepts exactly what [`render`] writes: the values are read, the
//! file rendered again from them and compared byte for byte, so a profile
//! edited by hand (or rewritten by `nmcli connection modify`) is reported as
//! not ours instead of being half understood.

use std::path::{Path, PathBuf};

use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};

use super::super::ParseFileError;

const HEADER: &str = "# Managed by multinic-agent: do not edit, changes are overwritten.\n";

/// The `[user]` key that marks a profile as ours.
pub const OWNER_KEY: &str = "multinic.managed-by";

/// The keyfile of interface `name`, relative to the host root.
pub fn path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/NetworkManager/system-connections/{name}.nmconnection"))
}

/// The profile's UUID for the NIC with `mac`: the bytes of "multinic" then
/// the MAC, marked as an RFC 9562 version 8 (custom) UUID. Stable, unique
/// per MAC, and readable: `6d756c74-696e-8963-8000-fa163e000e01`.
pub fn uuid(mac: MacAddress) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(b"multinic");
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = 0x80;
    bytes[10..].copy_from_slice(&mac.octets());
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Renders the keyfile of interface `name` configured as `spec`.
pub fn render(name: InterfaceName, spec: &InterfaceSpec) -> String {
    let (v4, v6) = match spec.address {
        Some(address) if address.addr().is_ipv4() => (manual(address), "method=disabled\n".to_owned()),
        Some(address) => ("method=disabled\n".to_owned(), manual(address)),
        None => ("method=disabled\n".to_owned(), "method=disabled\n".to_owned()),
    };
    format!(
        "{HEADER}[connection]\nid={name}\nuuid={uuid}\ntype=ethernet\ninterface-name={name}\nautoconnect=true\n\n\
         [ethernet]\nmac-address={mac}\nmtu={mtu}\n\n[ipv4]\n{v4}\n[ipv6]\n{v6}\n[user]\n{OWNER_KEY}=multinic-agent\n",
        uuid = uuid(spec.mac),
        mac = spec.mac,
        mtu = spec.mtu,
    )
}

fn manual(address: IfaceAddr) -> String {
    format!("method=manual\naddress1={address}\n")
}

/// Reads back a keyfile written by [`render`] for interface `name`.
pub fn parse(name: InterfaceName, path: &Path, text: &str) -> Result<InterfaceSpec, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, reason);
    let mut section = "";
    let (mut mac, mut mtu, mut address) = (None, None, None);
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| err(format!("not key=value: {line:?}")))?;
        match (section, key) {
            ("ethernet", "mac-address") => {
                mac = Some(value.parse::<MacAddress>().map_err(|e| err(format!("mac-address: {e}")))?);
            }
            ("ethernet", "mtu") => {
                let value = value.parse::<i64>().map_err(|_| err(format!("mtu {value:?} is not a number")))?;
                mtu = Some(Mtu::new(value).map_err(|e| err(e.to_string()))?);
            }
            ("ipv4" | "ipv6", "address1") => {
                address = Some(value.parse::<IfaceAddr>().map_err(|e| err(format!("{section}.address1: {e}")))?);
            }
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| err("no [ethernet] mac-address".into()))?;
    let mtu = mtu.ok_or_else(|| err("no [ethernet] mtu".into()))?;
    let spec = InterfaceSpec::new(mac, address, mtu).map_err(|e| err(e.to_string()))?;
    if render(name, &spec) != text {
        return Err(err(format!("not the profile multinic writes for {name}")));
    }
    Ok(spec)
}
