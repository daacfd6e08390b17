//! The change journal: what an interface looked like before the agent
//! changed it, kept until the change is verified or rolled back.
//!
//! One JSON file per interface, `<state-dir>/journal/multinicN.json`,
//! written atomically and fsynced *before* the first file write or netlink
//! request of a change, and removed once the change is verified (or undone).
//! An entry found at start-up means the agent died mid-change; it is rolled
//! back before anything else happens.
//!
//! The journal must never live where netplan, wicked, NetworkManager or udev
//! read configuration: [`Journal::check`] refuses such a state directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use multinic_proto::{InterfaceName, MacAddress};
use serde::{Deserialize, Serialize};

use crate::files::{FileError, Links, OTHER_FILE_LIMIT, ReadError, read_text, write_atomic};
use crate::kernel::{KernelAddr, LinkState, LinkTarget};

/// The journal format version written by this build.
const VERSION: u32 = 1;

/// Folders (under the host root) that configuration daemons read.
const FORBIDDEN: [&str; 6] = [
    "etc/netplan",
    "etc/sysconfig/network",
    "etc/sysconfig/network-scripts",
    "etc/udev/rules.d",
    "etc/NetworkManager",
    "etc/systemd/network",
];

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("--state-dir {state_dir} is inside {forbidden}, which the network configuration reads")]
    Forbidden { state_dir: PathBuf, forbidden: PathBuf },
    #[error(transparent)]
    Write(#[from] FileError),
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why an entry left behind cannot be used (it is then set aside).
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("removed while being read")]
    Removed,
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("journal version {found} is not {VERSION}")]
    Version { found: u32 },
    #[error("entry names {names} but is stored as {stored}")]
    Misnamed { names: String, stored: String },
}

/// One file as it was: its contents, or `None` when it did not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Relative to the host root.
    pub path: PathBuf,
    pub contents: Option<String>,
}

/// A link's runtime state as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// `a.b.c.d/len` or IPv6; link-local addresses are not recorded.
    pub addresses: Vec<String>,
}

impl SavedLink {
    pub fn of(link: &LinkState) -> Self {
        let target = LinkTarget::of(link);
        Self {
            index: link.index,
            name: target.name,
            mtu: target.mtu,
            up: target.up,
            addresses: target.addresses.iter().map(ToString::to_string).collect(),
        }
    }

    /// The state to roll back to. Addresses that no longer parse are dropped.
    pub fn target(&self) -> LinkTarget {
        LinkTarget {
            name: self.name.clone(),
            mtu: self.mtu,
            up: self.up,
            addresses: self.addresses.iter().filter_map(|a| a.parse::<KernelAddr>().ok()).collect(),
        }
    }
}

/// What one interface looked like before a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    pub interface: String,
    pub mac: String,
    /// `/proc/sys/kernel/random/boot_id` when written: runtime state from an
    /// earlier boot is gone and is not restored.
    pub boot_id: String,
    pub files: Vec<SavedFile>,
    /// `None` when the MAC had no link (only files were changed).
    pub link: Option<SavedLink>,
}

impl Entry {
    pub fn new(name: InterfaceName, mac: MacAddress, files: Vec<SavedFile>, link: Option<&LinkState>) -> Self {
        Self {
            version: VERSION,
            interface: name.to_string(),
            mac: mac.to_string(),
            boot_id: boot_id(),
            files,
            link: link.map(SavedLink::of),
        }
    }

    /// Whether the runtime state was recorded during this boot.
    pub fn same_boot(&self) -> bool {
        self.boot_id == boot_id()
    }
}

/// A journal entry left behind: the interface it is for, and the entry or
/// why it cannot be read.
pub type PendingEntry = (String, Result<Entry, EntryError>);

/// The journal folder.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal under `state_dir` (see [`Journal::check`]).
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("journal") }
    }

    /// Refuses a journal inside a folder that network configuration reads
    /// (under `host_root`).
    pub fn check(&self, host_root: &Path) -> Result<(), JournalError> {
        let dir = lexical(&self.dir);
        for forbidden in FORBIDDEN {
            let forbidden = lexical(&host_root.join(forbidden));
            if dir.starts_with(&forbidden) {
                let state_dir = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
                return Err(JournalError::Forbidden { state_dir, forbidden });
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("{interface}.json"))
    }

    /// Records `entry` durably before the change it describes starts. An
    /// entry already there (a rollback that failed) is older, so closer to
    /// the last good state: it is kept, and `false` is returned.
    pub fn record(&self, entry: &Entry) -> Result<bool, JournalError> {
        let path = self.path(&entry.interface);
        if path.exists() {
            return Ok(false);
        }
        // Serialising plain strings and numbers cannot fail.
        let text = serde_json::to_string_pretty(entry).unwrap_or_default();
        write_atomic(&path, &text)?;
        Ok(true)
    }

    /// Forgets the entry of `interface`: its change is verified or undone.
    pub fn clear(&self, interface: &str) -> Result<(), JournalError> {
        let path = self.path(interface);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io { operation: "remove", path, source }),
        }
    }

    /// Entries left behind, by interface; an unreadable entry comes back as
    /// the reason, so it can be reported and set aside.
    pub fn pending(&self) -> Result<Vec<PendingEntry>, JournalError> {
        let read_dir = match fs::read_dir(&self.dir) {
            Ok(read_dir) => read_dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(JournalError::Io { operation: "list", path: self.dir.clone(), source }),
        };
        let mut entries = Vec::new();
        for item in read_dir {
            let item = item.map_err(|source| JournalError::Io { operation: "list", path: self.dir.clone(), source })?;
            let file_name = item.file_name().to_string_lossy().into_owned();
            let Some(interface) = file_name.strip_suffix(".json").filter(|n| !n.starts_with('.')) else { continue };
            let entry = read_entry(&item.path(), interface);
            entries.push((interface.to_owned(), entry));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries)
    }

    /// Moves an unreadable entry aside (`.broken`), so it is reported once.
    pub fn set_aside(&self, interface: &str) -> Result<(), JournalError> {
        let from = self.path(interface);
        let to = self.dir.join(format!("{interface}.json.broken"));
        fs::rename(&from, &to).map_err(|source| JournalError::Io { operation: "rename", path: from, source })
    }
}

/// The entry stored at `path` as the one of `interface`.
fn read_entry(path: &Path, interface: &str) -> Result<Entry, EntryError> {
    let text = read_text(path, OTHER_FILE_LIMIT, Links::Refuse)?.ok_or(EntryError::Removed)?;
    let entry: Entry = serde_json::from_str(&text)?;
    if entry.version != VERSION {
        return Err(EntryError::Version { found: entry.version });
    }
    if entry.interface != interface {
        return Err(EntryError::Misnamed { names: entry.interface, stored: interface.to_owned() });
    }
    Ok(entry)
}

/// This boot's id, or "" when the kernel does not say.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `path` with `.` and `..` resolved without touching the filesystem.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            version: VERSION,
            interface: name.into(),
            mac: "02:00:00:00:00:01".into(),
            boot_id: boot_id(),
            files: vec![SavedFile { path: "etc/netplan/90-multinic0.yaml".into(), contents: None }],
            link: Some(SavedLink {
                index: 4,
                name: "eth1".into(),
                mtu: 1500,
                up: false,
                addresses: vec!["10.0.0.5/24".into()],
            }),
        }
    }

    #[test]
    fn entries_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(&dir.path().join("state"));
        journal.check(dir.path()).unwrap();
        assert!(journal.pending().unwrap().is_empty());
        assert!(journal.record(&entry("multinic0")).unwrap());
        let mut newer = entry("multinic0");
        newer.files.clear();
        assert!(!journal.record(&newer).unwrap(), "the older entry is kept");
        let pending = journal.pending().unwrap();
        let [(interface, Ok(found))] = &pending[..] else { panic!("{pending:?}") };
        assert_eq!((interface.as_str(), found), ("multinic0", &entry("multinic0")));
        assert!(pending[0].1.as_ref().unwrap().same_boot());
        let target = pending[0].1.as_ref().unwrap().link.as_ref().unwrap().target();
        assert_eq!(target.addresses.len(), 1);
        journal.clear("multinic0").unwrap();
        journal.clear("multinic0").unwrap();
        assert!(journal.pending().unwrap().is_empty());
    }

    #[test]
    fn unreadable_entries_are_reported_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        fs::create_dir_all(journal.dir()).unwrap();
        fs::write(journal.dir().join("multinic1.json"), "{ truncated").unwrap();
        let pending = journal.pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert!(pending[0].1.is_err());
        journal.set_aside("multinic1").unwrap();
        assert!(journal.pending().unwrap().is_empty());

        // Something that is not a file is reported without being opened.
        let fifo = std::process::Command::new("mkfifo").arg(journal.dir().join("multinic2.json")).status().unwrap();
        assert!(fifo.success());
        let pending = journal.pending().unwrap();
        assert!(pending[0].1.as_ref().unwrap_err().to_string().contains("is a FIFO"), "{pending:?}");
        journal.set_aside("multinic2").unwrap();
        assert!(journal.pending().unwrap().is_empty());
    }

    #[test]
    fn an_entry_of_another_version_or_name_is_refused_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(dir.path());
        fs::create_dir_all(journal.dir()).unwrap();
        let mut future = entry("multinic3");
        future.version = VERSION + 1;
        fs::write(journal.dir().join("multinic3.json"), serde_json::to_string(&future).unwrap()).unwrap();
        fs::write(journal.dir().join("multinic4.json"), serde_json::to_string(&entry("multinic5")).unwrap()).unwrap();
        let pending = journal.pending().unwrap();
        assert!(matches!(pending[0].1, Err(EntryError::Version { found }) if found == VERSION + 1), "{pending:?}");
        let Err(misnamed) = &pending[1].1 else { panic!("{pending:?}") };
        assert!(matches!(misnamed, EntryError::Misnamed { .. }), "{misnamed:?}");
        assert_eq!(misnamed.to_string(), "entry names multinic5 but is stored as multinic4");
    }

    #[test]
    fn state_dir_may_not_sit_where_configuration_is_read() {
        let root = Path::new("/host");
        for bad in
            ["/host/etc/netplan", "/host/etc/netplan/state", "/host/etc/sysconfig/network/x", "/host/etc/x/../netplan"]
        {
            assert!(Journal::new(Path::new(bad)).check(root).is_err(), "{bad}");
        }
        assert!(Journal::new(Path::new("/host/var/lib/multinic")).check(root).is_ok());
        assert!(Journal::new(Path::new("/var/lib/multinic")).check(Path::new("/")).is_ok());
        assert!(Journal::new(Path::new("/etc/netplan.d")).check(Path::new("/")).is_ok(), "a sibling is fine");
    }
}
