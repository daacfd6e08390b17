//! PEM in and out: parsing certificates, keys and CA bundles, and writing
//! them to disk atomically.
//!
//! Exists because every reader of TLS material (controller, agent, CLI,
//! tests) must fail the same clear way on a bad file. It never writes a
//! private key with a mode other than 0600, and never leaves a half-written
//! file under the final name.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// Every certificate of a PEM file (at least one).
pub fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem { what: what.to_owned(), reason: format!("bad PEM: {e}") })?;
    if chain.is_empty() {
        return Err(Error::Pem { what: what.to_owned(), reason: "no CERTIFICATE block".into() });
    }
    Ok(chain)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Error::Pem { what: what.to_owned(), reason: format!("no usable private key: {e}") })
}

/// A root store of every certificate in a CA bundle.
pub fn root_store(pem: &[u8], what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|source| Error::Rustls { what: format!("{what}: bad CA certificate"), source })?;
    }
    Ok(roots)
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with
/// `mode` (0600 for keys, 0644 for certificates).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let err = |source| Error::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // The mode given to open() is masked by the umask; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = certificates(b"hello", "client CA").unwrap_err().to_string();
        assert!(err.contains("client CA") && err.contains("no CERTIFICATE"), "{err}");
        let err = private_key(b"hello", "agent key").unwrap_err().to_string();
        assert!(err.contains("agent key"), "{err}");
    }

    #[test]
    fn atomic_writes_set_the_mode_and_replace_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.key");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}
