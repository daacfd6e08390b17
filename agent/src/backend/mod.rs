//! Backends: everything a host's network configuration system means to the
//! agent, one module each behind the [`Backend`] trait.
//!
//! A backend renders one interface's files (pure and deterministic), reads
//! its own files back exactly (so comparing rendered bytes with the bytes on
//! disk detects drift when, and only when, there is some), says which hosts
//! it serves (`--backend auto`), what `--apply auto` means there, what host
//! mode asks of the node's own daemon ([`HostApply`]) or why host mode is
//! refused, and which NICs another tool's files also define. Nothing
//! outside a backend's module knows more about it: adding a backend is its
//! module plus one entry in [`ALL`].
//!
//! Rendering and parsing never do I/O; only a [`HostSession`] runs commands,
//! and only for the interfaces it is given; reading other tools' files
//! never writes.

pub mod host;
pub mod netplan;
pub mod networkmanager;
pub mod os_release;
pub mod wicked;

#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, InterfaceSpec, MacAddress};

pub use host::{ChangeKind, HostApply, HostApplyError, HostChange, HostCommand, HostSession, HostVerdict, NotAdmitted};
pub use os_release::OsRelease;

use crate::files::HostFiles;
use crate::reconcile::ApplyMode;

/// Every backend of this build, in the order `--backend auto` asks them
/// whether they serve the host: the one registration.
pub static ALL: &[&dyn Backend] = &[&netplan::Netplan, &wicked::Wicked, &networkmanager::NetworkManager];

/// The backend called `name` (`--backend`).
pub fn named(name: &str) -> Option<&'static dyn Backend> {
    ALL.iter().copied().find(|b| b.name() == name)
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

/// A network configuration system: its files for one interface, the hosts
/// it serves, and how host mode applies. Rendering and parsing are pure.
pub trait Backend: fmt::Debug + Send + Sync {
    /// Its name for `--backend`, logs and the Hello (`netplan`).
    fn name(&self) -> &'static str;

    /// Whether hosts with this os-release configure their network with it.
    fn serves(&self, os: &OsRelease) -> bool;

    /// What `--apply auto` means here: the mode that applies one NIC
    /// without disturbing anything else on the node (docs/node-daemons.md).
    fn default_apply(&self) -> ApplyMode;

    /// What host mode asks of the node's daemon, or why host mode is
    /// refused: the daemon cannot apply one interface without disturbing
    /// the others.
    fn host(&self) -> Result<&dyn HostApply, &'static str>;

    /// Every path (relative to the host root) that belongs to interface `name`.
    /// A file is ours if and only if its path is one of these.
    fn paths(&self, name: InterfaceName) -> Vec<PathBuf>;

    /// The files of interface `name` configured as `spec`.
    fn render(&self, name: InterfaceName, spec: &InterfaceSpec) -> Vec<RenderedFile>;

    /// Reads back the files of `name` (those of `paths(name)` that exist).
    fn parse(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<InterfaceSpec, ParseFileError>;

    /// MACs that another tool's configuration on the host also defines, so
    /// that our files for them would not hold (each with the sentence to
    /// report): they are refused as foreign. Only reads other files,
    /// bounded; none by default.
    fn foreign_definitions(&self, files: &HostFiles) -> BTreeMap<MacAddress, String> {
        let _ = files;
        BTreeMap::new()
    }
}

/// `--backend`: a backend, or `auto` to read the host's `/etc/os-release`.
#[derive(Debug, Clone, Copy)]
pub enum BackendChoice {
    Auto,
    Named(&'static dyn Backend),
}

impl PartialEq for BackendChoice {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Auto, Self::Auto) => true,
            (Self::Named(a), Self::Named(b)) => a.name() == b.name(),
            _ => false,
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        named(s).map(Self::Named).ok_or_else(|| format!("unknown backend {s:?}: expected auto, {}", names()))
    }
}

/// The backends' names, for messages: `netplan, wicked or networkmanager`.
pub fn names() -> String {
    let all: Vec<&str> = ALL.iter().map(|b| b.name()).collect();
    match all.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
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
    #[error("cannot choose a backend for {os} (ID={id}, ID_LIKE={id_like}); set --backend {names}")]
    Unknown { os: String, id: String, id_like: String, names: String },
}

/// Resolves `--backend` against the host's `/etc/os-release`.
pub fn detect_backend(choice: BackendChoice, host_root: &Path) -> Result<&'static dyn Backend, DetectError> {
    match choice {
        BackendChoice::Named(backend) => Ok(backend),
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

/// The first backend of [`ALL`] that serves the host this os-release describes.
pub fn backend_for_os_release(text: &str) -> Result<&'static dyn Backend, DetectError> {
    let os = OsRelease::parse(text);
    ALL.iter().copied().find(|b| b.serves(&os)).ok_or_else(|| DetectError::Unknown {
        os: os.to_string(),
        id: os.id.clone(),
        id_like: os.id_like.join(" "),
        names: names(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str) -> Result<&'static str, String> {
        backend_for_os_release(text).map(|b| b.name()).map_err(|e| e.to_string())
    }

    #[test]
    fn os_release_picks_the_backend() {
        let ubuntu =
            "PRETTY_NAME=\"Ubuntu 22.04.4 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(detect(ubuntu), Ok("netplan"));
        let sles = "NAME=\"SLES\"\nVERSION_ID=\"15.5\"\nID=\"sles\"\nID_LIKE=\"suse\"\nPRETTY_NAME=\"SUSE Linux Enterprise Server 15 SP5\"\n";
        assert_eq!(detect(sles), Ok("wicked"));
        let leap = "NAME=\"openSUSE Leap\"\nVERSION_ID=\"15.6\"\nID=\"opensuse-leap\"\nID_LIKE=\"suse opensuse\"\n";
        assert_eq!(detect(leap), Ok("wicked"));
        let rhel = "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"9.4\"\n";
        assert_eq!(detect(rhel), Ok("networkmanager"));
        let err = detect("NAME=\"Arch Linux\"\nID=arch\n").unwrap_err();
        assert!(err.contains("set --backend") && err.contains("for Arch Linux (ID=arch"), "{err}");
    }

    #[test]
    fn backends_are_chosen_by_name() {
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert_eq!("wicked".parse::<BackendChoice>(), Ok(BackendChoice::Named(&wicked::Wicked)));
        let err = "nm".parse::<BackendChoice>().unwrap_err();
        assert!(err.contains("expected auto, netplan, wicked or networkmanager"), "{err}");
        assert!(ALL.iter().all(|b| named(b.name()).is_some()));
    }

    #[test]
    fn os_release_may_be_a_link_to_a_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("usr/lib/os-release"), "ID=ubuntu\n").unwrap();
        let etc = dir.path().join("etc/os-release");
        std::os::unix::fs::symlink("../usr/lib/os-release", &etc).unwrap();
        assert_eq!(detect_backend(BackendChoice::Auto, dir.path()).unwrap().name(), "netplan");

        std::fs::remove_file(&etc).unwrap();
        let err = detect_backend(BackendChoice::Auto, dir.path()).unwrap_err();
        assert!(multinic_runtime::error_chain(&err).contains("No such file"), "{err:?}");
        assert!(std::process::Command::new("mkfifo").arg(&etc).status().unwrap().success());
        let err = multinic_runtime::error_chain(&detect_backend(BackendChoice::Auto, dir.path()).unwrap_err());
        assert!(err.contains("etc/os-release is a FIFO") && err.contains("set --backend"), "{err}");
    }
}
