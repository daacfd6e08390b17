//! A test host whose own network daemon (systemd-networkd or
//! NetworkManager) runs for real, confined so that the machine's own
//! networking is never touched.
//!
//! The host is one process in a test node's network namespace with private
//! mount and UTS namespaces, set up the way a daemon expects a host to be:
//!
//! - a tmpfs on `/run` (daemon state, the D-Bus socket, generated units);
//! - the daemon's configuration folders bind-mounted from the test's own
//!   folders (the targets must exist on this machine: the daemons' packages
//!   create them; nothing on the machine is created or written);
//! - `/sys` as mounted for the namespace by `ip netns exec`, remounted
//!   read-only: both daemons then stop waiting for udev, which does not run
//!   here (with a writable `/sys` networkd waits for udev forever);
//! - a private `dbus-daemon --system` with an allow-all policy and no
//!   service activation (`networkctl` and `nmcli` need a bus).
//!
//! Commands and daemons run in the host's namespaces through `nsenter`; the
//! agent enters the same ones (`--host-pid`, [`ConfinedHost::pid`]).
//! Dropping the host kills its daemons and the host process; the network
//! namespace belongs to the [`crate::netns::TestNode`] and is deleted by it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A folder of the test's bind-mounted over a folder of the host.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    /// An absolute path that exists on this machine, e.g. `/etc/netplan`.
    pub target: &'static str,
}

/// A folder created on the host's `/run` tmpfs, with an owner (`user:group`).
#[derive(Debug, Clone, Copy)]
pub struct RunDir {
    pub path: &'static str,
    pub owner: Option<&'static str>,
}

/// The D-Bus system bus policy of the private bus: anyone may own and call
/// anything (the host is ours alone), no service activation.
const DBUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#;

/// Marks the end of the host's set-up, on its own `/run`.
const READY: &str = "/run/multinic-test-host-ready";

/// Whether this machine can run confined daemons: root, `ip`, `nsenter`,
/// `unshare` and `dbus-daemon` (skipped loudly, or a failure under CI).
pub fn available() -> bool {
    crate::netns::available()
        && crate::require(
            crate::have("nsenter") && crate::have("unshare"),
            "nsenter/unshare",
            "apt-get install -y util-linux",
        )
        && crate::require(crate::have("dbus-daemon"), "dbus-daemon", "apt-get install -y dbus")
}

/// A daemon started in the host, with its log.
#[derive(Debug)]
struct Daemon {
    name: String,
    child: Child,
}

/// A host process with a private `/run`, the test's configuration folders,
/// a read-only `/sys` and a private system bus.
#[derive(Debug)]
pub struct ConfinedHost {
    daemons: Vec<Daemon>,
    host: Child,
    dir: TempDir,
}

impl ConfinedHost {
    /// Starts the host in network namespace `namespace` with `binds` and
    /// `run_dirs`, then its private system bus.
    pub fn start(namespace: &str, binds: &[Bind], run_dirs: &[RunDir]) -> Self {
        let dir = tempfile::Builder::new().prefix("multinic-confined-").tempdir().expect("temp dir");
        let mut setup = String::from("set -e\nmount -t tmpfs multinic-test-run /run\nmkdir -p /run/dbus\n");
        for run_dir in run_dirs {
            setup.push_str(&format!("mkdir -p {}\n", run_dir.path));
            if let Some(owner) = run_dir.owner {
                setup.push_str(&format!("chown {owner} {}\n", run_dir.path));
            }
        }
        for bind in binds {
            assert!(
                Path::new(bind.target).is_dir(),
                "{} must exist on this machine (its package creates it)",
                bind.target
            );
            setup.push_str(&format!("mount --bind '{}' {}\n", bind.source.display(), bind.target));
        }
        // A host that outlives a killed test process still ends by itself.
        setup.push_str(&format!("mount -o remount,bind,ro /sys\necho ok > {READY}\nexec sleep 3600\n"));
        let log = File::create(dir.path().join("host.log")).expect("host log");
        let host = Command::new("ip")
            .args(["netns", "exec", namespace, "unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &setup])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("host log"))
            .stderr(log)
            .spawn()
            .expect("start the confined host");
        let mut host = Self { daemons: Vec::new(), host, dir };
        let ready = format!("/proc/{}/root{READY}", host.pid());
        host.wait_until(Duration::from_secs(10), "the confined host's set-up", || Path::new(&ready).exists());
        host.start_bus();
        host
    }

    /// The host process: what the agent's `--host-pid` names.
    pub fn pid(&self) -> u32 {
        self.host.id()
    }

    /// A folder of the test's, outside the host, for logs and scratch files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program args…` in the host's namespaces; its output, or the error.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self.command(program, args).stdin(Stdio::null()).output().map_err(|e| format!("nsenter: {e}"))?;
        output_or_error(program, args, &out)
    }

    /// [`Self::exec`] that panics with the command's output on failure.
    pub fn must(&self, program: &str, args: &[&str]) -> String {
        self.exec(program, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A shell script run in the host's namespaces ([`Self::must`]).
    pub fn sh(&self, script: &str) -> String {
        self.must("sh", &["-c", script])
    }

    /// A file of the host as it sees it (e.g. under its private `/run`).
    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{}/root{path}", self.pid())).ok()
    }

    /// Starts `program args…` in the host as daemon `name`, with `env`,
    /// its stdout and stderr in [`Self::log`] (appended to, when a daemon
    /// of that name ran before).
    pub fn spawn(&mut self, name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("daemon log");
        let child = self
            .command(program, args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("daemon log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        self.daemons.push(Daemon { name: name.to_owned(), child });
    }

    /// Stops daemon `name` as a shutdown would: SIGTERM, then SIGKILL if it
    /// has not exited within 10 s.
    pub fn stop(&mut self, name: &str) {
        let Some(at) = self.daemons.iter().position(|d| d.name == name) else { return };
        let mut daemon = self.daemons.remove(at);
        let _ = Command::new("kill").args(["-TERM", &daemon.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = daemon.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
    }

    /// What daemon `name` has logged so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until daemon `name` has logged `needle`; panics after `timeout`
    /// (or at once when the daemon exited) with its log.
    pub fn wait_for_log(&mut self, name: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(name);
            if log.contains(needle) {
                return;
            }
            let exited = self.daemons.iter_mut().find(|d| d.name == name).map(|d| d.child.try_wait());
            if let Some(Ok(Some(status))) = exited {
                panic!("{name} exited ({status}) before logging {needle:?}:\n{log}");
            }
            assert!(Instant::now() < deadline, "{name} did not log {needle:?} within {timeout:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `check` every 50 ms until it holds; panics after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; host log:\n{}",
                std::fs::read_to_string(self.dir.path().join("host.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `program args…` as a command that runs in the host's namespaces.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid().to_string(), "-m", "-n", "-u", "--", program]).args(args);
        cmd
    }

    /// Starts the host's private system bus (again, after [`Self::stop_bus`]).
    pub fn start_bus(&mut self) {
        let config = self.dir.path().join("dbus-system.conf");
        std::fs::write(&config, DBUS_CONFIG).expect("dbus config");
        let config = format!("--config-file={}", config.display());
        self.spawn("dbus", "dbus-daemon", &[&config, "--nofork", "--nopidfile", "--nosyslog"], &[]);
        let socket = self.bus_socket();
        self.wait_until(Duration::from_secs(10), "the private system bus", || socket.exists());
    }

    /// Stops the host's system bus, as when it crashes or is restarted:
    /// its clients lose their connections, its socket is gone.
    pub fn stop_bus(&mut self) {
        self.stop("dbus");
        let _ = std::fs::remove_file(self.bus_socket());
    }

    /// The bus socket as the agent reaches it: through the host's root.
    pub fn bus_socket(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/run/dbus/system_bus_socket", self.pid()))
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to daemon `name`, e.g. to freeze
    /// it: it then accepts connections (the kernel does) but answers nothing.
    pub fn signal(&self, name: &str, signal: &str) {
        let daemon = self.daemons.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("no daemon {name}"));
        let status = Command::new("kill").args([&format!("-{signal}"), &daemon.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {name}");
    }
}

impl Drop for ConfinedHost {
    fn drop(&mut self) {
        // Daemons first (last started first), the bus and the host last.
        for daemon in self.daemons.iter_mut().rev() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        let _ = self.host.kill();
        let _ = self.host.wait();
    }
}

fn output_or_error(program: &str, args: &[&str], out: &Output) -> Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(format!(
        "`{program} {}` in the confined host failed ({}): {}{stdout}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}
