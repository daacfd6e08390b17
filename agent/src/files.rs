//! Our files on the host, under `--host-root`.
//!
//! Writes are atomic (temporary file in the same folder, fsync, rename, fsync
//! of the folder) and mode 0600. The temporary name starts with a dot and
//! ends in `.multinic-tmp`, which neither netplan (`*.yaml`), wicked
//! (`ifcfg-*`), udev (`*.link`) nor NetworkManager (it skips hidden files)
//! reads. Nothing here touches a path it was not given.
//!
//! Reads are bounded ([`read_bounded`]): a path that holds anything but a
//! regular file of a sane size (a symbolic link, a FIFO, a device, a file
//! of gigabytes) is reported, never opened for reading or followed, so no
//! file can block the agent or fill its memory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most the agent reads of a file at one of its own paths: ours are
/// under 1 KiB, so anything near this is not ours.
pub const OUR_FILE_LIMIT: u64 = 64 * 1024;

/// The most the agent reads of any other file (journal entries, another
/// tool's netplan file, `/etc/os-release`, certificates).
pub const OTHER_FILE_LIMIT: u64 = 1024 * 1024;

/// The mode of every file the agent writes.
pub const PRIVATE_MODE: u32 = 0o600;

/// A file operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct FileError {
    pub operation: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Something other than a regular file sits at the path.
    #[error("{path} is {kind}, not a regular file; not read")]
    NotRegular { path: PathBuf, kind: String },
    /// A regular file larger than the limit.
    #[error("{path} has {size} bytes, more than the {limit} this file can have; not read")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ReadError {
    /// Whether the path holds something that is not a readable file of its
    /// kind (as opposed to an I/O failure, which says nothing about the file).
    pub fn is_damaged(&self) -> bool {
        matches!(self, Self::NotRegular { .. } | Self::TooLarge { .. })
    }
}

/// Whether [`read_bounded`] follows a symbolic link at the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Our own paths: the agent never writes a link, so a link there is not ours.
    Refuse,
    /// Files others own (`/etc/os-release` is often a link); the target must
    /// still be a regular file within the limit.
    Follow,
}

/// Reads the regular file at `path`, at most `limit` bytes; `Ok(None)` when
/// nothing is there. The type is checked before opening (so a device or a
/// FIFO is never opened), the file is opened without following a link at
/// the path and without blocking, and checked again on the open descriptor.
pub fn read_bounded(path: &Path, limit: u64, links: Links) -> Result<Option<Vec<u8>>, ReadError> {
    let io_error = |source| ReadError::Io { path: path.to_path_buf(), source };
    let metadata = match links {
        Links::Refuse => fs::symlink_metadata(path),
        Links::Follow => fs::metadata(path),
    };
    let metadata = match metadata {
        Ok(metadata) => metadata,
        Err(e) if absent(&e) => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    check_regular(path, &metadata, limit)?;
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => file,
        Err(e) if absent(&e) => return Ok(None),
        // Replaced by a link between the check and the open.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(ReadError::NotRegular { path: path.to_path_buf(), kind: kind_of(path) });
        }
        Err(e) => return Err(io_error(e)),
    };
    // Replaced by something else between the check and the open.
    check_regular(path, &file.metadata().map_err(io_error)?, limit)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > limit {
        // It grew while being read.
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size: bytes.len() as u64, limit });
    }
    Ok(Some(bytes))
}

/// [`read_bounded`] as text; non-UTF-8 content is kept lossily (it then
/// fails to parse, as it should).
pub fn read_text(path: &Path, limit: u64, links: Links) -> Result<Option<String>, ReadError> {
    Ok(read_bounded(path, limit, links)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

fn check_regular(path: &Path, metadata: &fs::Metadata, limit: u64) -> Result<(), ReadError> {
    if !metadata.file_type().is_file() {
        return Err(ReadError::NotRegular { path: path.to_path_buf(), kind: describe(path, metadata) });
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { path: path.to_path_buf(), size: metadata.len(), limit });
    }
    Ok(())
}

/// Nothing at the path: not there, or a parent is not a folder.
fn absent(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

fn kind_of(path: &Path) -> String {
    fs::symlink_metadata(path).map(|m| describe(path, &m)).unwrap_or_else(|_| "not a regular file".to_owned())
}

/// "a FIFO", "a symbolic link to /dev/zero", ...
fn describe(path: &Path, metadata: &fs::Metadata) -> String {
    let kind = metadata.file_type();
    if kind.is_symlink() {
        match fs::read_link(path) {
            Ok(target) => format!("a symbolic link to {}", target.display()),
            Err(_) => "a symbolic link".to_owned(),
        }
    } else if kind.is_dir() {
        "a directory".to_owned()
    } else if kind.is_fifo() {
        "a FIFO".to_owned()
    } else if kind.is_socket() {
        "a socket".to_owned()
    } else if kind.is_char_device() {
        "a character device".to_owned()
    } else if kind.is_block_device() {
        "a block device".to_owned()
    } else {
        "not a regular file".to_owned()
    }
}

/// The host's filesystem as the agent sees it.
#[derive(Debug)]
pub struct HostFiles {
    root: PathBuf,
    writes: AtomicU64,
    removals: AtomicU64,
    repairs: AtomicU64,
}

impl HostFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), writes: AtomicU64::new(0), removals: AtomicU64::new(0), repairs: AtomicU64::new(0) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel`.
    pub fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Reads those of `paths` that exist, each at most [`OUR_FILE_LIMIT`]
    /// bytes and only if it is a regular file (a link at our path is not
    /// followed). Non-UTF-8 content is kept lossily (it will fail to parse,
    /// as it should).
    pub fn read_existing(&self, paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, String>, ReadError> {
        let mut found = BTreeMap::new();
        for rel in paths {
            if let Some(text) = read_text(&self.abs(rel), OUR_FILE_LIMIT, Links::Refuse)? {
                found.insert(rel.clone(), text);
            }
        }
        Ok(found)
    }

    /// Whether `rel` exists (as anything).
    pub fn exists(&self, rel: &Path) -> bool {
        self.abs(rel).symlink_metadata().is_ok()
    }

    /// Writes `contents` to `rel` atomically with mode 0600.
    pub fn write_atomic(&self, rel: &Path, contents: &str) -> Result<(), FileError> {
        write_atomic(&self.abs(rel), contents)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes `rel`; a file already gone is fine.
    pub fn remove(&self, rel: &Path) -> Result<(), FileError> {
        let path = self.abs(rel);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.removals.fetch_add(1, Ordering::Relaxed);
                if let Some(dir) = path.parent() {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FileError { operation: "remove", path, source }),
        }
    }

    /// Files written so far (for tests and metrics).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Files removed so far.
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Relaxed)
    }

    /// Files of ours whose mode or owner was put right so far.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    /// Gives the regular file `rel` back mode 0600 and the agent's owner
    /// when it lost them, without touching its content. Returns what was
    /// wrong, or `None` when nothing was (or nothing is there).
    pub fn make_private(&self, rel: &Path) -> Result<Option<String>, FileError> {
        let path = self.abs(rel);
        let fail = |operation, source| FileError { operation, path: path.clone(), source };
        let flags = nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW | nix::libc::O_NOCTTY;
        let file = match OpenOptions::new().read(true).custom_flags(flags).open(&path) {
            Ok(file) => file,
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(fail("open", e)),
        };
        let metadata = file.metadata().map_err(|e| fail("stat", e))?;
        if !metadata.file_type().is_file() {
            // Not a file of ours; reading it says so.
            return Ok(None);
        }
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let mode = metadata.mode() & 0o7777;
        let mut wrong = Vec::new();
        if mode != PRIVATE_MODE {
            file.set_permissions(fs::Permissions::from_mode(PRIVATE_MODE)).map_err(|e| fail("chmod", e))?;
            wrong.push(format!("mode {mode:04o}"));
        }
        if (metadata.uid(), metadata.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
            wrong.push(format!("owner {}:{}", metadata.uid(), metadata.gid()));
        }
        if wrong.is_empty() {
            return Ok(None);
        }
        file.sync_all().map_err(|e| fail("fsync", e))?;
        self.repairs.fetch_add(1, Ordering::Relaxed);
        Ok(Some(wrong.join(", ")))
    }
}

/// Writes `contents` to the absolute `path` atomically with mode 0600:
/// a temporary file in the same folder, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), FileError> {
    let fail = |operation, source| FileError { operation, path: path.to_path_buf(), source };
    let dir = path.parent().ok_or_else(|| fail("write", io::Error::other("path has no parent")))?;
    fs::create_dir_all(dir).map_err(|e| fail("create folder of", e))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.multinic-tmp"));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(PRIVATE_MODE).open(&tmp)?;
        // The mode above only applies to a new file; a stale temp file keeps its own.
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_MODE))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(fail("write", source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::new(dir.path());
        let rel = Path::new("etc/netplan/90-multinic0.yaml");
        files.write_atomic(rel, "a: 1\n").unwrap();
        files.write_atomic(rel, "a: 2\n").unwrap();
        let abs = dir.path().join(rel);
        assert_eq!(fs::read_to_string(&abs).unwrap(), "a: 2\n");
        assert_eq!(fs::metadata(&abs).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(abs.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(files.writes(), 2);
        files.remove(rel).unwrap();
        files.remove(rel).unwrap();
        assert!(!abs.exists());
        assert_eq!(files.removals(), 1);
    }

    #[test]
    fn read_existing_skips_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::new(dir.path());
        files.write_atomic(Path::new("a"), "x").unwrap();
        let found = files.read_existing(&[PathBuf::from("a"), PathBuf::from("b")]).unwrap();
        assert_eq!(found.len(), 1);
    }

    /// What sits at `name` under `dir`: each is refused with its kind, at
    /// once, without reading it.
    fn refused(dir: &Path, name: &str, links: Links) -> String {
        match read_bounded(&dir.join(name), OUR_FILE_LIMIT, links) {
            Err(e @ (ReadError::NotRegular { .. } | ReadError::TooLarge { .. })) => {
                assert!(e.is_damaged());
                e.to_string()
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn special_and_huge_files_are_refused_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fifo = std::process::Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
        assert!(fifo.success());
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        std::os::unix::fs::symlink(d.join("fifo"), d.join("to-fifo")).unwrap();
        File::create(d.join("huge")).unwrap().set_len(2 << 30).unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(d.join("socket")).unwrap();

        assert!(refused(d, "fifo", Links::Refuse).contains("is a FIFO"));
        assert!(refused(d, "zero", Links::Refuse).contains("a symbolic link to /dev/zero"));
        assert!(refused(d, "zero", Links::Follow).contains("a character device"));
        assert!(refused(d, "to-fifo", Links::Follow).contains("a FIFO"));
        assert!(refused(d, "huge", Links::Refuse).contains("has 2147483648 bytes, more than the 65536"));
        assert!(refused(d, "dir", Links::Refuse).contains("a directory"));
        assert!(refused(d, "socket", Links::Refuse).contains("a socket"));
        assert!(read_bounded(&d.join("missing"), 10, Links::Refuse).unwrap().is_none());
        assert!(read_bounded(&d.join("huge/below"), 10, Links::Refuse).unwrap().is_none(), "a parent that is a file");

        fs::write(d.join("real"), "x").unwrap();
        std::os::unix::fs::symlink("real", d.join("link")).unwrap();
        assert_eq!(read_bounded(&d.join("link"), 10, Links::Follow).unwrap().unwrap(), b"x");
        assert!(refused(d, "link", Links::Refuse).contains("a symbolic link to real"));

        // The files of one name: one refused path fails the read, with its path.
        let files = HostFiles::new(d);
        let err = files.read_existing(&[PathBuf::from("real"), PathBuf::from("fifo")]).unwrap_err();
        assert!(err.is_damaged() && err.to_string().contains("/fifo is a FIFO"), "{err}");
    }

    #[test]
    fn a_file_of_ours_gets_its_mode_and_owner_back_and_keeps_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let files = HostFiles::new(dir.path());
        let rel = Path::new("etc/netplan/90-multinic0.yaml");
        files.write_atomic(rel, "a: 1\n").unwrap();
        assert_eq!(files.make_private(rel).unwrap(), None, "written right");
        let abs = dir.path().join(rel);
        let inode = fs::metadata(&abs).unwrap().ino();
        fs::set_permissions(&abs, fs::Permissions::from_mode(0o644)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(&abs, Some(1000), Some(1000)).unwrap();
        }
        let wrong = files.make_private(rel).unwrap().expect("repaired");
        assert!(wrong.contains("mode 0644"), "{wrong}");
        assert_eq!(wrong.contains("owner 1000:1000"), root, "{wrong}");
        let after = fs::metadata(&abs).unwrap();
        assert_eq!((after.mode() & 0o7777, after.ino()), (0o600, inode), "same file, not rewritten");
        assert_eq!((after.uid(), after.gid()), (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()));
        assert_eq!(fs::read_to_string(&abs).unwrap(), "a: 1\n");
        assert_eq!((files.repairs(), files.writes()), (1, 1));
        assert_eq!(files.make_private(rel).unwrap(), None);
        assert_eq!(files.make_private(Path::new("missing")).unwrap(), None);
    }
}
