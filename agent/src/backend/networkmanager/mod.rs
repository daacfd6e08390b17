//! NetworkManager (RHEL 9/10 and their rebuilds, CentOS Stream, Fedora,
//! Oracle Linux, SUSE 16): one keyfile profile per interface plus a systemd
//! `.link` file that names the NIC by MAC at boot; the predecessor's ifcfg
//! file of the same name is taken over and retired.
//!
//! - [`keyfile`], `/etc/NetworkManager/system-connections/multinicN.nmconnection`;
//! - [`link`], `/etc/systemd/network/10-multinicN.link`;
//! - [`predecessor`], `/etc/sysconfig/network-scripts/ifcfg-multinicN` (read, never written);
//! - [`host`], what host mode (this backend's default) asks NetworkManager,
//!   one interface at a time, with a checkpoint per NIC, through
//!   [`api`] (NetworkManager's D-Bus API) over [`bus`] (the agent's own
//!   D-Bus client on the host's system bus).
//!
//! Rendering and parsing are pure and exact (render → parse → render is a
//! fixed point). This module never touches a profile that is not ours,
//! except NetworkManager's own automatic profile of a NIC we take over and
//! the predecessor's profile of it.

pub mod api;
pub mod bus;
pub mod host;
pub mod keyfile;
pub mod link;
pub mod predecessor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, InterfaceSpec};

use super::{Backend, HostApply, OsRelease, ParseFileError, RenderedFile};
use crate::reconcile::ApplyMode;

/// The NetworkManager backend.
#[derive(Debug, Clone, Copy)]
pub struct NetworkManager;

impl Backend for NetworkManager {
    fn name(&self) -> &'static str {
        "networkmanager"
    }

    /// The RHEL family (RHEL, CentOS, Rocky, AlmaLinux, Fedora, Oracle
    /// Linux) and SUSE from 16 on, which replaced wicked with NetworkManager.
    fn serves(&self, os: &OsRelease) -> bool {
        let rhel = os.is_like(&["rhel", "centos", "rocky", "almalinux", "fedora", "ol"]);
        let suse = os.is_like(&["sles", "suse", "opensuse", "opensuse-leap"]);
        rhel || (suse && os.major_version().is_some_and(|major| major >= 16))
    }

    /// `host`: NetworkManager loads and activates exactly our profile
    /// ([`host`]); measured to leave every other device, route, address and
    /// rule alone (docs/node-daemons.md).
    fn default_apply(&self) -> ApplyMode {
        ApplyMode::Host
    }

    fn host(&self) -> Result<&dyn HostApply, &'static str> {
        Ok(&host::NmHost)
    }

    fn paths(&self, name: InterfaceName) -> Vec<PathBuf> {
        vec![keyfile::path(name), link::path(name), predecessor::path(name)]
    }

    fn render(&self, name: InterfaceName, spec: &InterfaceSpec) -> Vec<RenderedFile> {
        vec![
            RenderedFile { path: keyfile::path(name), contents: keyfile::render(name, spec) },
            RenderedFile { path: link::path(name), contents: link::render(name, spec.mac) },
        ]
    }

    /// Our keyfile and `.link` file when either exists (both must, and
    /// agree); otherwise the predecessor's file.
    fn parse(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<InterfaceSpec, ParseFileError> {
        let (profile, naming) = (keyfile::path(name), link::path(name));
        if files.contains_key(&profile) || files.contains_key(&naming) {
            let missing = |path: &Path| ParseFileError::new(path, "missing (the other file of this interface exists)");
            let profile_text = files.get(&profile).ok_or_else(|| missing(&profile))?;
            let naming_text = files.get(&naming).ok_or_else(|| missing(&naming))?;
            let mac = link::parse(name, &naming, naming_text)?;
            let spec = keyfile::parse(name, &profile, profile_text)?;
            if spec.mac != mac {
                return Err(ParseFileError::new(&naming, format!("names MAC {mac}, the profile {}", spec.mac)));
            }
            return Ok(spec);
        }
        let old = predecessor::path(name);
        let text = files.get(&old).ok_or_else(|| ParseFileError::new(&old, "missing"))?;
        predecessor::parse(name, &old, text)
    }
}

#[cfg(test)]
mod tests;
