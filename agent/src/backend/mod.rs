//! Backends: how one interface becomes files on the host, and back.
//!
//! Rendering is pure and deterministic; reading our own files back is its
//! exact inverse, so comparing rendered bytes with the bytes on disk detects
//! drift when, and only when, there is some.

pub mod netplan;
pub mod wicked;

#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, InterfaceSpec};

use crate::reconcile::ApplyMode;

/// Which network configuration system the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Ubuntu: `/etc/netplan/9N-multinicN.yaml`.
    Netplan,
    /// SUSE 15: `/etc/sysconfig/network/ifcfg-multinicN` plus a udev rule.
    Wicked,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netplan => "netplan",
            Self::Wicked => "wicked",
        }
    }

    /// The backend's renderer and parser.
    pub fn backend(self) -> &'static dyn Backend {
        match self {
            Self::Netplan => &netplan::Netplan,
            Self::Wicked => &wicked::Wicked,
        }
    }
}

/// A command run on the host to make the backend apply our files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    pub program: &'static str,
    pub args: Vec<String>,
}

impl BackendKind {
    /// What `--apply auto` means here. netplan: `netlink` (the file is
    /// written for boot, the runtime state set through netlink; no daemon is
    /// asked to do anything). wicked: `host` (`wicked ifreload` of exactly
    /// the changed interfaces).
    pub fn default_apply(self) -> ApplyMode {
        match self {
            Self::Netplan => ApplyMode::Netlink,
            Self::Wicked => ApplyMode::Host,
        }
    }

    /// Why `--apply host` is refused on this backend, if it is: the host's
    /// tool cannot apply one interface without disturbing the others.
    ///
    /// netplan has no per-interface apply. Measured against the real
    /// systemd-networkd (docs/node-daemons.md): `netplan apply` regenerates
    /// and reconfigures every link networkd manages, which drops every route
    /// through them that networkd did not add (a CNI's) and foreign addresses
    /// (a VIP); even handing networkd only our NIC's own units removes a
    /// CNI's blackhole routes and policy rules in networkd's default
    /// configuration.
    pub fn host_apply_refusal(self) -> Option<&'static str> {
        match self {
            Self::Netplan => Some(
                "netplan has no per-interface apply, and networkd reconfiguring links removes other state on the \
                 node (routes through a reconfigured NIC, a CNI's blackhole routes and policy rules)",
            ),
            Self::Wicked => None,
        }
    }

    /// What the host runs after our files of `names` changed, in host mode:
    /// a udev rule reload and `wicked ifreload` of exactly those interfaces.
    /// Nothing for netplan, where host mode is refused
    /// ([`Self::host_apply_refusal`]).
    pub fn apply_commands(self, names: &[InterfaceName]) -> Vec<HostCommand> {
        match self {
            Self::Netplan => Vec::new(),
            Self::Wicked => {
                let mut ifreload = vec!["ifreload".to_owned()];
                ifreload.extend(names.iter().map(ToString::to_string));
                vec![
                    HostCommand { program: "udevadm", args: vec!["control".into(), "--reload".into()] },
                    HostCommand { program: "wicked", args: ifreload },
                ]
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file as rendered: a path relative to the host root, and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub contents: String,
}

/// Why files of ours could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ParseFileError {
    pub path: String,
    pub reason: String,
}

impl ParseFileError {
    pub fn new(path: &Path, reason: impl Into<String>) -> Self {
        Self { path: path.display().to_string(), reason: reason.into() }
    }
}

/// Renders and parses the files of one interface. Implementations are pure.
pub trait Backend: fmt::Debug + Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Every path (relative to the host root) that belongs to interface `name`.
    /// A file is ours if and only if its path is one of these.
    fn paths(&self, name: InterfaceName) -> Vec<PathBuf>;

    /// The files of interface `name` configured as `spec`.
    fn render(&self, name: InterfaceName, spec: &InterfaceSpec) -> Vec<RenderedFile>;

    /// Reads back the files of `name` (those of `paths(name)` that exist).
    fn parse(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<InterfaceSpec, ParseFileError>;
}

/// `--backend`: a backend, or `auto` to read the host's `/etc/os-release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Netplan,
    Wicked,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "netplan" => Ok(Self::Netplan),
            "wicked" => Ok(Self::Wicked),
            other => Err(format!("unknown backend {other:?}: expected auto, netplan or wicked")),
        }
    }
}

/// Why no backend could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot choose a backend from {path} (set --backend)")]
    Read {
        path: String,
        #[source]
        source: crate::files::ReadError,
    },
    #[error("{os} uses {backend}, which this build does not support yet")]
    Unsupported { os: String, backend: &'static str },
    #[error("cannot choose a backend for {os} (ID={id}, ID_LIKE={id_like}); set --backend netplan or wicked")]
    Unknown { os: String, id: String, id_like: String },
}

/// Resolves `--backend` against the host's `/etc/os-release`.
pub fn detect_backend(choice: BackendChoice, host_root: &Path) -> Result<BackendKind, DetectError> {
    match choice {
        BackendChoice::Netplan => Ok(BackendKind::Netplan),
        BackendChoice::Wicked => Ok(BackendKind::Wicked),
        BackendChoice::Auto => {
            use crate::files::{Links, OTHER_FILE_LIMIT, ReadError, read_text};
            let path = host_root.join("etc/os-release");
            // Often a link (to ../usr/lib/os-release): followed, but only to
            // a regular file of a sane size.
            let text = read_text(&path, OTHER_FILE_LIMIT, Links::Follow)
                .and_then(|text| {
                    text.ok_or_else(|| ReadError::Io {
                        path: path.clone(),
                        source: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
                    })
                })
                .map_err(|source| DetectError::Read { path: path.display().to_string(), source })?;
            backend_for_os_release(&text)
        }
    }
}

/// The backend an `/etc/os-release` calls for: netplan for Ubuntu (and
/// Debian-likes that ship netplan), wicked for SUSE 15.
pub fn backend_for_os_release(text: &str) -> Result<BackendKind, DetectError> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_ascii_lowercase())
            .unwrap_or_default()
    };
    let (id, id_like, version) = (field("ID"), field("ID_LIKE"), field("VERSION_ID"));
    let os = field("PRETTY_NAME");
    let words: Vec<&str> = std::iter::once(id.as_str()).chain(id_like.split_whitespace()).collect();
    if words.iter().any(|w| matches!(*w, "ubuntu" | "debian")) {
        return Ok(BackendKind::Netplan);
    }
    if words.iter().any(|w| matches!(*w, "sles" | "suse" | "opensuse" | "opensuse-leap")) {
        let major = version.split('.').next().unwrap_or_default();
        if major == "15" {
            return Ok(BackendKind::Wicked);
        }
        return Err(DetectError::Unsupported { os, backend: "NetworkManager" });
    }
    Err(DetectError::Unknown { os, id, id_like })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_commands_name_the_interfaces_where_the_backend_can() {
        let names = [InterfaceName::new(0, 10).unwrap(), InterfaceName::new(3, 10).unwrap()];
        assert_eq!(BackendKind::Netplan.apply_commands(&names), Vec::new(), "no whole-host netplan apply");
        let wicked = BackendKind::Wicked.apply_commands(&names);
        assert_eq!(wicked[1].program, "wicked");
        assert_eq!(wicked[1].args, vec!["ifreload", "multinic0", "multinic3"]);
    }

    #[test]
    fn os_release_picks_the_backend() {
        let ubuntu =
            "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(backend_for_os_release(ubuntu).unwrap(), BackendKind::Netplan);
        let rhel = "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n";
        assert!(backend_for_os_release(rhel).unwrap_err().to_string().contains("--backend"));
        let sles = "NAME=\"SLES\"\nVERSION_ID=\"15.5\"\nID=\"sles\"\nID_LIKE=\"suse\"\nPRETTY_NAME=\"SUSE Linux Enterprise Server 15 SP5\"\n";
        assert_eq!(backend_for_os_release(sles).unwrap(), BackendKind::Wicked);
        let leap = "NAME=\"openSUSE Leap\"\nVERSION_ID=\"15.6\"\nID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n";
        assert_eq!(backend_for_os_release(leap).unwrap(), BackendKind::Wicked);
        let sles16 =
            "NAME=\"SLES\"\nVERSION_ID=\"16.0\"\nID=\"sles\"\nPRETTY_NAME=\"SUSE Linux Enterprise Server 16.0\"\n";
        assert!(backend_for_os_release(sles16).unwrap_err().to_string().contains("NetworkManager"));
    }

    #[test]
    fn os_release_may_be_a_link_to_a_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("usr/lib/os-release"), "ID=ubuntu\n").unwrap();
        let etc = dir.path().join("etc/os-release");
        std::os::unix::fs::symlink("../usr/lib/os-release", &etc).unwrap();
        assert_eq!(detect_backend(BackendChoice::Auto, dir.path()).unwrap(), BackendKind::Netplan);

        std::fs::remove_file(&etc).unwrap();
        let err = detect_backend(BackendChoice::Auto, dir.path()).unwrap_err();
        assert!(multinic_runtime::error_chain(&err).contains("No such file"), "{err:?}");
        assert!(std::process::Command::new("mkfifo").arg(&etc).status().unwrap().success());
        let err = multinic_runtime::error_chain(&detect_backend(BackendChoice::Auto, dir.path()).unwrap_err());
        assert!(err.contains("etc/os-release is a FIFO") && err.contains("set --backend"), "{err}");
    }
}
