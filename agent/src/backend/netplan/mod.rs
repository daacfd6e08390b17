//! netplan (Ubuntu): one file per interface, `/etc/netplan/9{N}-multinic{N}.yaml`.
//!
//! The file matches the NIC by MAC, names it `multinicN`, sets its MTU and
//! (when known) its one static address, and disables DHCPv4. Values with
//! colons are quoted: YAML 1.1 would read `00:11:22:33:44:55` as a number.
//! Other tools' netplan files that define one of our NICs are only read
//! ([`foreign`]).

mod foreign;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};
use serde::Deserialize;

use super::{Backend, HostApply, OsRelease, ParseFileError, RenderedFile};
use crate::files::HostFiles;
use crate::reconcile::ApplyMode;

/// The netplan backend.
#[derive(Debug, Clone, Copy)]
pub struct Netplan;

/// The file of interface `name`, relative to the host root.
pub fn path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/netplan/9{}-{name}.yaml", name.index()))
}

impl Backend for Netplan {
    fn name(&self) -> &'static str {
        "netplan"
    }

    /// Ubuntu, and Debian-likes that ship netplan.
    fn serves(&self, os: &OsRelease) -> bool {
        os.is_like(&["ubuntu", "debian"])
    }

    /// `netlink`: the file is written for boot, the runtime state set
    /// through netlink; networkd is asked nothing (docs/node-daemons.md).
    fn default_apply(&self) -> ApplyMode {
        ApplyMode::Netlink
    }

    /// Refused. netplan has no per-interface apply. Measured against the
    /// real systemd-networkd (docs/node-daemons.md): `netplan apply`
    /// regenerates and reconfigures every link networkd manages, which drops
    /// every route through them that networkd did not add (a CNI's) and
    /// foreign addresses (a VIP); even handing networkd only our NIC's own
    /// units removes a CNI's blackhole routes and policy rules in networkd's
    /// default configuration.
    fn host(&self) -> Result<&dyn HostApply, &'static str> {
        Err("netplan has no per-interface apply, and networkd reconfiguring links removes other state on the \
             node (routes through a reconfigured NIC, a CNI's blackhole routes and policy rules)")
    }

    fn paths(&self, name: InterfaceName) -> Vec<PathBuf> {
        vec![path(name)]
    }

    fn render(&self, name: InterfaceName, spec: &InterfaceSpec) -> Vec<RenderedFile> {
        vec![RenderedFile { path: path(name), contents: render(name, spec) }]
    }

    fn parse(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<InterfaceSpec, ParseFileError> {
        let path = path(name);
        let contents = files.get(&path).ok_or_else(|| ParseFileError::new(&path, "missing"))?;
        parse(name, &path, contents)
    }

    /// MACs another netplan file (cloud-init's, an admin's) also defines.
    fn foreign_definitions(&self, files: &HostFiles) -> BTreeMap<MacAddress, String> {
        foreign::definitions(files)
    }
}

/// Renders the netplan file of one interface.
pub fn render(name: InterfaceName, spec: &InterfaceSpec) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "# Managed by multinic-agent: do not edit, changes are overwritten.\n\
         network:\n  version: 2\n  ethernets:\n    {name}:\n      match:\n        macaddress: \"{mac}\"\n      \
         set-name: {name}\n      mtu: {mtu}\n      dhcp4: false\n",
        mac = spec.mac,
        mtu = spec.mtu,
    );
    if let Some(address) = spec.address {
        let _ = write!(out, "      addresses:\n        - \"{address}\"\n");
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    network: Network,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    version: u8,
    ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    set_name: String,
    mtu: i64,
    dhcp4: bool,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    macaddress: String,
}

/// Reads back a file written by [`render`]; anything else is an error.
pub fn parse(name: InterfaceName, path: &Path, contents: &str) -> Result<InterfaceSpec, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, reason);
    let doc: Document = serde_yaml::from_str(contents).map_err(|e| err(format!("not a multinic netplan file: {e}")))?;
    if doc.network.version != 2 {
        return Err(err(format!("network.version is {}, expected 2", doc.network.version)));
    }
    let mut ethernets = doc.network.ethernets.into_iter();
    let (key, eth) = match (ethernets.next(), ethernets.next()) {
        (Some(one), None) => one,
        _ => return Err(err("expected exactly one entry under network.ethernets".into())),
    };
    if key != name.to_string() || eth.set_name != key {
        return Err(err(format!("defines {key} (set-name {}), expected {name}", eth.set_name)));
    }
    if eth.dhcp4 {
        return Err(err("dhcp4 is true".into()));
    }
    let mac: MacAddress = eth.matches.macaddress.parse().map_err(|e| err(format!("match.macaddress: {e}")))?;
    let mtu = Mtu::new(eth.mtu).map_err(|e| err(e.to_string()))?;
    let address = match eth.addresses.as_slice() {
        [] => None,
        [one] => Some(one.parse::<IfaceAddr>().map_err(|e| err(format!("addresses: {e}")))?),
        _ => return Err(err("more than one address".into())),
    };
    InterfaceSpec::new(mac, address, mtu).map_err(|e| err(e.to_string()))
}

/// A definition in a netplan file that is not ours and matches a NIC by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub mac: MacAddress,
    /// Where it sits in the file, e.g. `ethernets.ens4`.
    pub id: String,
    /// What it sets that ours would too: `set-name ens4, mtu 1500, addresses [..]`.
    pub settings: String,
}

/// Every definition of `contents` (any netplan file) that matches a MAC
/// (`match: {macaddress: ..}`); an error when it is not YAML.
pub fn claims(contents: &str) -> Result<Vec<Claim>, String> {
    use serde_yaml::Value;
    let doc: Value = serde_yaml::from_str(contents).map_err(|e| e.to_string())?;
    let Some(network) = doc.get("network").and_then(Value::as_mapping) else { return Ok(Vec::new()) };
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut found = Vec::new();
    for (section, devices) in network {
        let (Some(section), Some(devices)) = (section.as_str(), devices.as_mapping()) else { continue };
        for (id, definition) in devices {
            let Some(mac) = definition.get("match").and_then(|m| m.get("macaddress")).and_then(Value::as_str) else {
                continue;
            };
            let Ok(mac) = mac.parse::<MacAddress>() else { continue };
            let mut settings = Vec::new();
            for key in ["set-name", "mtu"] {
                if let Some(value) = definition.get(key).and_then(text) {
                    settings.push(format!("{key} {value}"));
                }
            }
            if let Some(addresses) = definition.get("addresses").and_then(Value::as_sequence) {
                let addresses: Vec<String> = addresses.iter().filter_map(text).collect();
                settings.push(format!("addresses [{}]", addresses.join(", ")));
            }
            if definition.get("dhcp4").and_then(Value::as_bool) == Some(true) {
                settings.push("dhcp4".to_owned());
            }
            let id = text(id).unwrap_or_default();
            found.push(Claim { mac, id: format!("{section}.{id}"), settings: settings.join(", ") });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::backend::test_support::{any_spec, name, spec};

    fn golden(file: &str, actual: &str) {
        crate::backend::test_support::golden("netplan", file, actual);
    }

    #[test]
    fn golden_files() {
        golden("90-multinic0.yaml", &render(name(0), &spec("fa:16:3e:00:00:01", Some("192.168.10.5/24"), 1500)));
        golden("93-multinic3.yaml", &render(name(3), &spec("fa:16:3e:00:00:04", None, 9000)));
        golden("91-multinic1.yaml", &render(name(1), &spec("fa:16:3e:00:00:02", Some("2001:db8::5/64"), 1500)));
    }

    #[test]
    fn paths_follow_the_predecessor() {
        assert_eq!(path(name(0)), PathBuf::from("etc/netplan/90-multinic0.yaml"));
        assert_eq!(path(name(9)), PathBuf::from("etc/netplan/99-multinic9.yaml"));
    }

    #[test]
    fn foreign_or_damaged_files_do_not_parse() {
        let p = Path::new("etc/netplan/90-multinic0.yaml");
        let good = render(name(0), &spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500));
        assert!(parse(name(0), p, &good).is_ok());
        let cases = [
            ("truncated", good[..good.len() / 2].to_owned()),
            ("other name", good.replace("multinic0", "multinic1")),
            ("dhcp on", good.replace("dhcp4: false", "dhcp4: true")),
            ("extra key", good.replace("      dhcp4: false\n", "      dhcp4: false\n      dhcp6: true\n")),
            ("cloud-init", "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n".to_owned()),
            ("bad mac", good.replace("fa:16:3e:00:00:01", "fa-16-3e-00-00-01")),
            ("mtu 0", good.replace("mtu: 1500", "mtu: 0")),
            ("empty", String::new()),
        ];
        for (what, text) in cases {
            assert!(parse(name(0), p, &text).is_err(), "{what} parsed");
        }
    }

    #[test]
    fn claims_name_the_definitions_that_match_a_mac() {
        let cloud_init = "network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n      match:\n        \
                          macaddress: fa:16:3e:77:77:02\n      set-name: ens3\n    ens4:\n      match:\n        \
                          macaddress: \"FA:16:3E:00:01:01\"\n      set-name: ens4\n      mtu: 9000\n      \
                          addresses: [10.9.0.5/24]\n    ens5:\n      match: {name: ens5}\n";
        let found = claims(cloud_init).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].mac.to_string(), "fa:16:3e:00:01:01");
        assert_eq!(found[1].id, "ethernets.ens4");
        assert_eq!(found[1].settings, "set-name ens4, mtu 9000, addresses [10.9.0.5/24]");
        assert_eq!(found[0].settings, "set-name ens3, dhcp4");
        // Ours match by MAC too (the caller skips our own paths).
        let ours = render(name(0), &spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500));
        assert_eq!(claims(&ours).unwrap()[0].id, "ethernets.multinic0");
        assert!(claims("network: {version: 2}\n").unwrap().is_empty());
        assert!(claims("a: [").is_err());
    }

    proptest! {
        #[test]
        fn claims_never_panic(text in "\\PC{0,300}") {
            let _ = claims(&text);
        }

        #[test]
        fn render_parse_render_is_a_fixed_point(spec in any_spec(), index in 0u8..10) {
            let n = name(index);
            let text = render(n, &spec);
            let back = parse(n, &path(n), &text).unwrap();
            prop_assert_eq!(back, spec);
            prop_assert_eq!(render(n, &back), text);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            let _ = parse(name(0), &path(name(0)), &text);
        }
    }
}
