//! TLS material that follows its files.
//!
//! A [`Live`] value is built from a few small files and rebuilt by a
//! background task whenever their bytes change. Comparing bytes (not mtimes,
//! not inotify events) is what makes Kubernetes Secret updates work: the
//! kubelet swaps a `..data` symlink, so the watched path never changes, only
//! what it resolves to; a plain read follows the new link.
//!
//! A rebuild that fails (a half-written rotation: new certificate, old key)
//! keeps the previous value and is retried at the next check; it never
//! replaces good material with nothing. Readers on the handshake path only
//! clone an `Arc`: they never touch the disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{Error, Result};

/// The newest value; `borrow().clone()` is all a reader does.
pub type Live<T> = watch::Receiver<Arc<T>>;

/// Builds a value from `paths` now (an error here is fatal to the caller)
/// and rebuilds it every `every` when the files' bytes changed, for as long
/// as any receiver exists. Must run inside a Tokio runtime.
pub fn watch_files<T, F>(what: &str, paths: Vec<PathBuf>, every: Duration, build: F) -> Result<Live<T>>
where
    T: ?Sized + Send + Sync + 'static,
    F: Fn(&[Vec<u8>]) -> Result<Arc<T>> + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let mut applied = read_all(&paths)?;
    let (tx, rx) = watch::channel(build(&applied)?);
    let what = what.to_owned();
    runtime.spawn(async move {
        let mut last_error = None::<String>;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = tx.closed() => return,
            }
            let read = {
                let paths = paths.clone();
                tokio::task::spawn_blocking(move || read_all(&paths)).await
            };
            let contents = match read {
                Ok(Ok(contents)) if contents == applied => {
                    last_error = None;
                    continue;
                }
                Ok(Ok(contents)) => contents,
                Ok(Err(e)) => {
                    report(&what, &mut last_error, &e);
                    continue;
                }
                Err(_) => continue,
            };
            match build(&contents) {
                Ok(value) => {
                    tx.send_replace(value);
                    applied = contents;
                    last_error = None;
                    info!(what = %what, files = ?paths, "reloaded TLS material");
                }
                Err(e) => report(&what, &mut last_error, &e),
            }
        }
    });
    Ok(rx)
}

/// Logs a reload failure once per distinct error (files mid-rotation would
/// otherwise log at every check).
fn report(what: &str, last_error: &mut Option<String>, error: &Error) {
    let text = error.to_string();
    if last_error.as_deref() != Some(text.as_str()) {
        warn!(what, error = %text, "cannot reload TLS material; keeping the previous one");
        *last_error = Some(text);
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths.iter().map(|p| crate::pem::read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(files: &[Vec<u8>]) -> Result<Arc<String>> {
        let text: String = files.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        if text.contains("bad") {
            return Err(Error::Certificate { reason: "bad".into() });
        }
        Ok(Arc::new(text))
    }

    async fn wait_for(live: &Live<String>, want: &str) {
        for _ in 0..100 {
            if live.borrow().as_str() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never saw {want:?}, have {:?}", live.borrow());
    }

    #[tokio::test]
    async fn follows_kubernetes_style_symlink_swaps_and_keeps_good_values() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/tls.crt"), "one").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        let live = watch_files("test", vec![d.join("tls.crt")], Duration::from_millis(20), concat).unwrap();
        assert_eq!(live.borrow().as_str(), "one");

        for (version, content) in [("..v2", "two"), ("..v3", "bad"), ("..v4", "four")] {
            std::fs::create_dir(d.join(version)).unwrap();
            std::fs::write(d.join(version).join("tls.crt"), content).unwrap();
            std::os::unix::fs::symlink(version, d.join("..data_tmp")).unwrap();
            std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
            if content == "bad" {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(live.borrow().as_str(), "two", "a bad rebuild keeps the previous value");
            } else {
                wait_for(&live, content).await;
            }
        }
    }

    #[tokio::test]
    async fn the_first_load_must_succeed() {
        let err = watch_files("test", vec!["/nonexistent/tls.crt".into()], Duration::from_secs(1), concat)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }
}
