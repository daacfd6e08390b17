//! wicked (SUSE 15): two files per interface.
//!
//! - `/etc/sysconfig/network/ifcfg-multinic{N}`: `STARTMODE`, `BOOTPROTO`,
//!   `IPADDR` (when known) and `MTU`.
//! - `/etc/udev/rules.d/70-multinic-multinic{N}.rules`: names the NIC by MAC
//!   when it appears. `LLADDR` is never written: in ifcfg it *sets* a MAC,
//!   it does not match one.
//!
//! Parsing accepts exactly what [`render`] writes: the values are read, the
//! files rendered again from them and compared byte for byte, so a file
//! edited by hand is reported as not ours instead of being half understood.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use multinic_proto::{IfaceAddr, InterfaceName, InterfaceSpec, MacAddress, Mtu};
use tracing::{info, warn};

use super::{
    Backend, HostApply, HostChange, HostCommand, HostSession, HostVerdict, OsRelease, ParseFileError, RenderedFile,
};
use crate::hostns::{HostError, HostNamespaces};
use crate::reconcile::ApplyMode;

const HEADER: &str = "# Managed by multinic-agent: do not edit, changes are overwritten.\n";

/// The wicked backend.
#[derive(Debug, Clone, Copy)]
pub struct Wicked;

/// The ifcfg file of interface `name`, relative to the host root.
pub fn ifcfg_path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/sysconfig/network/ifcfg-{name}"))
}

/// The udev rule of interface `name`, relative to the host root.
pub fn rule_path(name: InterfaceName) -> PathBuf {
    PathBuf::from(format!("etc/udev/rules.d/70-multinic-{name}.rules"))
}

impl Backend for Wicked {
    fn name(&self) -> &'static str {
        "wicked"
    }

    /// SUSE 15 (SLES, openSUSE Leap): SUSE 16 moved to NetworkManager.
    fn serves(&self, os: &OsRelease) -> bool {
        os.is_like(&["sles", "suse", "opensuse", "opensuse-leap"]) && os.major_version() == Some(15)
    }

    /// `host`: `wicked ifreload` of exactly the changed interfaces.
    fn default_apply(&self) -> ApplyMode {
        ApplyMode::Host
    }

    fn host(&self) -> Result<&dyn HostApply, &'static str> {
        Ok(&WickedHost)
    }

    fn paths(&self, name: InterfaceName) -> Vec<PathBuf> {
        vec![ifcfg_path(name), rule_path(name)]
    }

    fn render(&self, name: InterfaceName, spec: &InterfaceSpec) -> Vec<RenderedFile> {
        vec![
            RenderedFile { path: ifcfg_path(name), contents: render_ifcfg(spec) },
            RenderedFile { path: rule_path(name), contents: render_rule(name, spec.mac) },
        ]
    }

    fn parse(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<InterfaceSpec, ParseFileError> {
        let (ifcfg, rule) = (ifcfg_path(name), rule_path(name));
        let missing = |path: &Path| ParseFileError::new(path, "missing (the other file of this interface exists)");
        let ifcfg_text = files.get(&ifcfg).ok_or_else(|| missing(&ifcfg))?;
        let rule_text = files.get(&rule).ok_or_else(|| missing(&rule))?;
        let mac = parse_rule(name, &rule, rule_text)?;
        parse_ifcfg(mac, &ifcfg, ifcfg_text)
    }
}

/// Host mode on wicked: a udev rule reload and `wicked ifreload` of exactly
/// the changed interfaces, decided from wicked's source and documentation
/// (docs/node-daemons.md): it takes each named interface down to
/// `device-ready` and up again from its file, and nothing else.
#[derive(Debug, Clone, Copy)]
pub struct WickedHost;

impl HostApply for WickedHost {
    fn session(&self, host: HostNamespaces) -> Box<dyn HostSession> {
        Box::new(WickedSession { host })
    }
}

/// One reconcile's wicked calls.
#[derive(Debug)]
struct WickedSession {
    host: HostNamespaces,
}

impl WickedSession {
    fn ifreload(&self, changes: &[HostChange]) -> Result<(), HostError> {
        let mut names: Vec<InterfaceName> = changes.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        for command in ifreload_commands(&names) {
            let output = command.run(&self.host)?;
            info!(command = %command, output = %output.trim(), "host apply ran");
        }
        Ok(())
    }
}

impl HostSession for WickedSession {
    /// One `wicked ifreload` for every change: its verdict is each one's.
    fn apply(&mut self, changes: &[HostChange]) -> Vec<HostVerdict> {
        let verdict = self.ifreload(changes).map_err(|e| Arc::new(e.into()));
        changes.iter().map(|_| verdict.clone()).collect()
    }

    fn reread(&mut self, changes: &[HostChange]) {
        if let Err(e) = self.ifreload(changes) {
            warn!(error = %e, "wicked ifreload after a rollback failed; runtime state was restored through netlink");
        }
    }
}

/// What the host runs after our files of `names` changed: a udev rule
/// reload and `wicked ifreload` of exactly those interfaces.
pub fn ifreload_commands(names: &[InterfaceName]) -> Vec<HostCommand> {
    let ifreload = std::iter::once("ifreload".to_owned()).chain(names.iter().map(ToString::to_string));
    vec![HostCommand::new("udevadm", ["control", "--reload"]), HostCommand::new("wicked", ifreload)]
}

/// Renders the ifcfg file of one interface.
pub fn render_ifcfg(spec: &InterfaceSpec) -> String {
    let mut out = String::from(HEADER);
    out.push_str("STARTMODE='auto'\nBOOTPROTO='static'\n");
    if let Some(address) = spec.address {
        out.push_str(&format!("IPADDR='{address}'\n"));
    }
    out.push_str(&format!("MTU='{}'\n", spec.mtu));
    out
}

/// Renders the udev rule that names the NIC with `mac` as `name` when it is
/// added. `DRIVERS=="?*"` and `ATTR{type}=="1"` keep VLANs, bonds and other
/// virtual links that copy the MAC from matching (netplan's rule does the same).
pub fn render_rule(name: InterfaceName, mac: MacAddress) -> String {
    format!(
        "{HEADER}SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{{address}}==\"{mac}\", \
         ATTR{{type}}==\"1\", NAME=\"{name}\"\n"
    )
}

/// Reads back a rule written by [`render_rule`]: the MAC it names.
pub fn parse_rule(name: InterfaceName, path: &Path, text: &str) -> Result<MacAddress, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, reason);
    let start = text.find("ATTR{address}==\"").ok_or_else(|| err("no ATTR{address} match".into()))?;
    let rest = &text[start + "ATTR{address}==\"".len()..];
    let mac: MacAddress =
        rest.split('"').next().unwrap_or_default().parse().map_err(|e| err(format!("ATTR{{address}}: {e}")))?;
    if render_rule(name, mac) != text {
        return Err(err(format!("not the rule multinic writes for {name}")));
    }
    Ok(mac)
}

/// Reads back an ifcfg file written by [`render_ifcfg`] for `mac`.
pub fn parse_ifcfg(mac: MacAddress, path: &Path, text: &str) -> Result<InterfaceSpec, ParseFileError> {
    let err = |reason: String| ParseFileError::new(path, reason);
    let mut values = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| err(format!("not KEY='value': {line:?}")))?;
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| err(format!("{key} is not single-quoted")))?;
        if values.insert(key, value).is_some() {
            return Err(err(format!("{key} appears twice")));
        }
    }
    let mtu = values.get("MTU").ok_or_else(|| err("no MTU".into()))?;
    let mtu = mtu.parse::<i64>().map_err(|_| err(format!("MTU {mtu:?} is not a number")))?;
    let mtu = Mtu::new(mtu).map_err(|e| err(e.to_string()))?;
    let address = match values.get("IPADDR") {
        Some(a) => Some(a.parse::<IfaceAddr>().map_err(|e| err(format!("IPADDR: {e}")))?),
        None => None,
    };
    let spec = InterfaceSpec::new(mac, address, mtu).map_err(|e| err(e.to_string()))?;
    if render_ifcfg(&spec) != text {
        return Err(err("not the ifcfg file multinic writes".into()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::backend::test_support::{any_spec, name, spec};

    fn golden(file: &str, actual: &str) {
        crate::backend::test_support::golden("wicked", file, actual);
    }

    fn files_of(n: InterfaceName, s: &InterfaceSpec) -> BTreeMap<PathBuf, String> {
        Wicked.render(n, s).into_iter().map(|f| (f.path, f.contents)).collect()
    }

    #[test]
    fn golden_files() {
        let v4 = spec("fa:16:3e:00:00:01", Some("192.168.10.5/24"), 1500);
        golden("ifcfg-multinic0", &render_ifcfg(&v4));
        golden("70-multinic-multinic0.rules", &render_rule(name(0), v4.mac));
        let bare = spec("fa:16:3e:00:00:04", None, 9000);
        golden("ifcfg-multinic3", &render_ifcfg(&bare));
        golden("70-multinic-multinic3.rules", &render_rule(name(3), bare.mac));
        golden("ifcfg-multinic1", &render_ifcfg(&spec("fa:16:3e:00:00:02", Some("2001:db8::5/64"), 1500)));
    }

    #[test]
    fn ifreload_names_exactly_the_changed_interfaces() {
        let commands = ifreload_commands(&[name(0), name(3)]);
        assert_eq!(commands[0].to_string(), "udevadm control --reload");
        assert_eq!(commands[1].to_string(), "wicked ifreload multinic0 multinic3");
    }

    #[test]
    fn paths_and_no_lladdr() {
        assert_eq!(
            Wicked.paths(name(9)),
            vec![
                PathBuf::from("etc/sysconfig/network/ifcfg-multinic9"),
                PathBuf::from("etc/udev/rules.d/70-multinic-multinic9.rules"),
            ]
        );
        let files = files_of(name(0), &spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500));
        assert!(files.values().all(|f| !f.contains("LLADDR")));
    }

    #[test]
    fn foreign_or_edited_files_do_not_parse() {
        let n = name(0);
        let good = files_of(n, &spec("fa:16:3e:00:00:01", Some("10.0.0.5/24"), 1500));
        assert!(Wicked.parse(n, &good).is_ok());
        let edit = |path: PathBuf, f: &dyn Fn(&str) -> String| {
            let mut files = good.clone();
            let text = f(&files[&path]);
            files.insert(path, text);
            files
        };
        let cases = [
            ("dhcp", edit(ifcfg_path(n), &|t| t.replace("'static'", "'dhcp'"))),
            ("lladdr", edit(ifcfg_path(n), &|t| format!("{t}LLADDR='fa:16:3e:00:00:01'\n"))),
            ("unquoted", edit(ifcfg_path(n), &|t| t.replace("MTU='1500'", "MTU=1500"))),
            ("mtu 0", edit(ifcfg_path(n), &|t| t.replace("1500", "0"))),
            ("bad address", edit(ifcfg_path(n), &|t| t.replace("10.0.0.5/24", "10.0.0.0/24"))),
            ("other name", edit(rule_path(n), &|t| t.replace("multinic0", "multinic1"))),
            ("bad mac", edit(rule_path(n), &|t| t.replace("fa:16:3e:00:00:01", "fa-16-3e-00-00-01"))),
            ("truncated", edit(rule_path(n), &|t| t[..t.len() / 2].to_owned())),
        ];
        for (what, files) in cases {
            assert!(Wicked.parse(n, &files).is_err(), "{what} parsed");
        }
        let mut only_ifcfg = good.clone();
        only_ifcfg.remove(&rule_path(n));
        assert!(Wicked.parse(n, &only_ifcfg).unwrap_err().to_string().contains("missing"));
    }

    proptest! {
        #[test]
        fn render_parse_render_is_a_fixed_point(spec in any_spec(), index in 0u8..10) {
            let n = name(index);
            let files = files_of(n, &spec);
            let back = Wicked.parse(n, &files).unwrap();
            prop_assert_eq!(back, spec);
            prop_assert_eq!(files_of(n, &back), files);
        }

        #[test]
        fn parse_never_panics(ifcfg in "\\PC{0,200}", rule in "\\PC{0,200}") {
            let n = name(0);
            let files = [(ifcfg_path(n), ifcfg), (rule_path(n), rule)].into();
            let _ = Wicked.parse(n, &files);
        }
    }
}
