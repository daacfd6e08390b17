//! Running the host's own tools (`wicked ifreload`, `udevadm`) from inside
//! the agent's container, in the namespaces of a host process, with the
//! host's `PATH` and `LC_ALL=C` (the tools' messages end up in reports, in
//! English). NetworkManager is not called through here: the agent speaks
//! D-Bus to it itself (`backend::networkmanager::bus`).
//!
//! The child enters the target's network and mount namespaces with
//! `setns(2)` between fork and exec (`pre_exec`), so the program is looked
//! up, and runs, in the host's filesystem with the host's network: no
//! `nsenter` binary in the image. The namespace files are opened in the
//! parent, so a missing process or permission fails before anything runs.
//! In Kubernetes the target is PID 1 of the host (`hostPID: true`); entering
//! it needs CAP_SYS_ADMIN, CAP_SYS_CHROOT (mount namespace) and
//! CAP_SYS_PTRACE (to open `/proc/1/ns/*`).
//!
//! This module runs only the commands it is given; it never builds them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tracing::debug;

/// The PATH commands are looked up in, inside the host's filesystem.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host command that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot open the namespaces of PID {pid} ({path}): {source}")]
    Namespace {
        pid: u32,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot run `{command}` in the namespaces of PID {pid}: {source}")]
    Spawn {
        command: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}; killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {output}")]
    Failed { command: String, status: ExitStatus, output: String },
}

/// Where host commands run: the namespaces of `pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNamespaces {
    pub pid: u32,
    pub timeout: Duration,
}

impl HostNamespaces {
    /// PID 1: the host itself when the pod shares the host's PID namespace.
    pub const HOST_PID: u32 = 1;

    /// Runs `program args…` in the namespaces of `self.pid` and returns its
    /// combined output; a non-zero exit or a timeout is an error.
    pub fn run(&self, program: &str, args: &[String]) -> Result<String, HostError> {
        let started = Instant::now();
        let command = std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PATH", HOST_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        enter_namespaces(&mut cmd, self.pid)?;
        let child =
            cmd.spawn().map_err(|source| HostError::Spawn { command: command.clone(), pid: self.pid, source })?;
        let (status, output) = wait_with_timeout(child, self.timeout)
            .map_err(|source| HostError::Spawn { command: command.clone(), pid: self.pid, source })?
            .ok_or_else(|| HostError::Timeout { command: command.clone(), timeout: self.timeout })?;
        debug!(command = %command, took_ms = started.elapsed().as_millis(), ok = status.success(), "host command ran");
        if !status.success() {
            return Err(HostError::Failed { command, status, output: output.trim().to_owned() });
        }
        Ok(output)
    }
}

/// Makes `cmd` enter the network and mount namespaces of `pid` before exec.
pub fn enter_namespaces(cmd: &mut Command, pid: u32) -> Result<(), HostError> {
    let open = |kind: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        File::open(&path).map_err(|source| HostError::Namespace { pid, path, source })
    };
    // Opened here, in the parent: the child only calls setns.
    let net = open("net")?;
    let mnt = open("mnt")?;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // setns(2), which is async-signal-safe, on descriptors opened above, and
    // turns an errno into an io::Error without allocating. It takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            // Network first, mount last (as nsenter does): after the mount
            // namespace changes, root and cwd are the target's.
            setns(&net, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}

/// Waits for `child` at most `timeout`; kills it when late (`Ok(None)`).
/// The exit is noticed at once (a waiting thread, not a polling loop):
/// host mode runs several short commands per interface.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> io::Result<Option<(ExitStatus, String)>> {
    // Readers on their own threads, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        status
    });
    let late = exited.recv_timeout(timeout).is_err();
    if late {
        // The child is ours and not reaped yet (the waiter reaps it), so the pid is still its.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    let status = waiter.join().map_err(|_| io::Error::other("the waiting thread panicked"))??;
    let output = format!("{}{}", stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok((!late).then_some((status, output)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_process_fails_before_anything_runs() {
        let ns = HostNamespaces { pid: 999_999_999, timeout: Duration::from_secs(1) };
        let err = ns.run("true", &[]).unwrap_err();
        assert!(matches!(err, HostError::Namespace { .. }), "{err}");
        assert!(err.to_string().contains("/proc/999999999/ns/net"), "{err}");
    }
}
