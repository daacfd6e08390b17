//! Backends: how one interface becomes files on the host, and back.
//!
//! Rendering is pure and deterministic; reading our own files back is its
//! exact inverse, so comparing rendered bytes with the bytes on disk detects
//! drift when, and only when, there is some.

pub mod netplan;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, InterfaceSpec};

/// Which network configuration system the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Ubuntu: `/etc/netplan/9N-multinicN.yaml`.
    Netplan,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netplan => "netplan",
        }
    }

    /// The backend's renderer and parser.
    pub fn backend(self) -> &'static dyn Backend {
        match self {
            Self::Netplan => &netplan::Netplan,
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
    #[error("cannot read {path} to choose a backend (set --backend): {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
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
        BackendChoice::Wicked => Err(DetectError::Unsupported { os: "--backend wicked".into(), backend: "wicked" }),
        BackendChoice::Auto => {
            let path = host_root.join("etc/os-release");
            let text = std::fs::read_to_string(&path)
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
        let backend = if major == "15" { "wicked" } else { "NetworkManager" };
        return Err(DetectError::Unsupported { os, backend });
    }
    Err(DetectError::Unknown { os, id, id_like })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_picks_the_backend() {
        let ubuntu =
            "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(backend_for_os_release(ubuntu).unwrap(), BackendKind::Netplan);
        let rhel = "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n";
        assert!(backend_for_os_release(rhel).unwrap_err().to_string().contains("--backend"));
    }
}
