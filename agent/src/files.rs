//! Our files on the host, under `--host-root`.
//!
//! Writes are atomic (temporary file in the same folder, fsync, rename, fsync
//! of the folder) and mode 0600. The temporary name starts with a dot and
//! ends in `.multinic-tmp`, which neither netplan (`*.yaml`) nor wicked
//! (`ifcfg-*`) reads. Nothing here touches a path it was not given.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation that failed, with the path it was about.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct FileError {
    pub operation: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The host's filesystem as the agent sees it.
#[derive(Debug)]
pub struct HostFiles {
    root: PathBuf,
    writes: AtomicU64,
    removals: AtomicU64,
}

impl HostFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), writes: AtomicU64::new(0), removals: AtomicU64::new(0) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel`.
    pub fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Reads those of `paths` that exist. Non-UTF-8 content is kept lossily
    /// (it will fail to parse, as it should).
    pub fn read_existing(&self, paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, String>, FileError> {
        let mut found = BTreeMap::new();
        for rel in paths {
            let abs = self.abs(rel);
            match fs::read(&abs) {
                Ok(bytes) => {
                    found.insert(rel.clone(), String::from_utf8_lossy(&bytes).into_owned());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(FileError { operation: "read", path: abs, source }),
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
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // The mode above only applies to a new file; a stale temp file keeps its own.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
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
}
