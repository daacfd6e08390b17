//! Carries out a desired set on the node: read the kernel and our files,
//! plan, journal, write, apply, verify, roll back what failed, and say per
//! interface how it went.
//!
//! One reconcile runs at a time (the session awaits it), so name assignment
//! is one serialised decision per node. Interfaces are independent: one
//! failing interface is rolled back alone and never stops the others. An
//! interface whose files and kernel state already match costs no write and
//! no netlink request. This module never touches a NIC the planner refused
//! (protected, foreign, over capacity) and never a file outside our paths.

mod apply;
mod interface;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::{DesiredSet, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{info, info_span, warn};

use crate::backend::{Backend, ChangeKind, HostChange, HostSession};
use crate::files::{FileError, HostFiles};
use crate::hostns::HostNamespaces;
use crate::journal::Journal;
use crate::kernel::facts::{LinkMatch, find_link, node_facts};
use crate::kernel::{KernelError, KernelState, LinkOps};
use crate::plan::{Action, Current, plan};

/// How the agent applies what it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Files, then the host's own tool for exactly the changed interfaces
    /// (`wicked ifreload <names>`) run in the host's namespaces; renames by
    /// netlink first. Not offered where the backend refuses it
    /// ([`Backend::host`]).
    Host,
    /// Files, then the runtime state set directly through netlink.
    Netlink,
    /// Render files only (dry run): success means the files say what is desired.
    None,
}

impl ApplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Netlink => "netlink",
            Self::None => "none",
        }
    }

    /// How long verification waits for the kernel to settle after an apply.
    pub fn settle_time(self) -> Duration {
        match self {
            // networkd and wicked apply asynchronously after their command returns.
            Self::Host => Duration::from_secs(30),
            Self::Netlink => Duration::from_secs(1),
            Self::None => Duration::ZERO,
        }
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "netlink" => Ok(Self::Netlink),
            "none" => Ok(Self::None),
            other => Err(format!("unknown apply mode {other:?}: expected host, netlink or none")),
        }
    }
}

/// `--apply`: a mode, or `auto` for the backend's own default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyChoice {
    Auto,
    Mode(ApplyMode),
}

impl ApplyChoice {
    /// The mode to run with on `backend`: `auto` is the backend's default
    /// ([`Backend::default_apply`]); a mode the backend cannot run without
    /// disturbing the rest of the node is refused, saying why.
    pub fn resolve(self, backend: &dyn Backend) -> Result<ApplyMode, String> {
        let mode = match self {
            Self::Auto => return Ok(backend.default_apply()),
            Self::Mode(mode) => mode,
        };
        match (mode, backend.host()) {
            (ApplyMode::Host, Err(why)) => Err(format!(
                "--apply host is not offered with the {} backend: {why}; use --apply {} (what auto chooses there)",
                backend.name(),
                backend.default_apply().as_str()
            )),
            _ => Ok(mode),
        }
    }
}

impl std::str::FromStr for ApplyChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            other => other
                .parse()
                .map(Self::Mode)
                .map_err(|_| format!("unknown apply mode {other:?}: expected auto, host, netlink or none")),
        }
    }
}

/// Which desired MACs a reconcile acts on.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The whole set, removals included.
    All,
    /// Only these MACs (a waiting NIC appeared); nothing else is touched.
    Only(&'a BTreeSet<MacAddress>),
}

impl Scope<'_> {
    fn includes(&self, mac: &MacAddress) -> bool {
        match self {
            Self::All => true,
            Self::Only(macs) => macs.contains(mac),
        }
    }
}

/// The outcome of one reconcile, with the facts metrics are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One status per desired (not held) MAC in scope, plus one per removed
    /// MAC, in MAC order.
    pub statuses: Vec<InterfaceStatus>,
    /// File writes plus netlink changes: zero for a push that changed nothing.
    pub changes: usize,
    /// Files written or removed (journal files not counted).
    pub file_writes: u64,
    /// Mutating netlink requests sent (failed ones included).
    pub netlink_changes: u64,
    /// Interfaces rolled back to their journaled state.
    pub rollbacks: u32,
    /// From the first change to the start of verification.
    pub apply_duration: Duration,
    /// Time spent verifying through netlink.
    pub verify_duration: Duration,
}

/// Reconciles desired sets against one host.
#[derive(Debug)]
pub struct Reconciler {
    backend: &'static dyn Backend,
    files: HostFiles,
    capacity: u8,
    apply: ApplyMode,
    kernel: Option<Arc<dyn LinkOps>>,
    journal: Journal,
    host: HostNamespaces,
    node_ips: Vec<IpAddr>,
    settle_time: Duration,
    pause_after_write: Option<PathBuf>,
}

impl Reconciler {
    /// A reconciler without kernel access (add it with [`Self::with_kernel`]).
    pub fn new(
        backend: &'static dyn Backend,
        files: HostFiles,
        capacity: u8,
        apply: ApplyMode,
        journal: Journal,
    ) -> Self {
        Self {
            backend,
            files,
            capacity,
            apply,
            kernel: None,
            journal,
            host: HostNamespaces { pid: HostNamespaces::HOST_PID, timeout: Duration::from_secs(120) },
            node_ips: Vec::new(),
            settle_time: apply.settle_time(),
            pause_after_write: None,
        }
    }

    /// Reads and changes the kernel through `kernel`.
    pub fn with_kernel(mut self, kernel: Arc<dyn LinkOps>) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// Protects the links that hold any of `ips` (the node's own addresses).
    pub fn with_node_ips(mut self, ips: Vec<IpAddr>) -> Self {
        self.node_ips = ips;
        self
    }

    /// Runs host commands in the namespaces of `host.pid`.
    pub fn with_host(mut self, host: HostNamespaces) -> Self {
        self.host = host;
        self
    }

    /// Test hook: after writing and applying, create `marker` and stop
    /// forever before verifying (so a test can kill the agent right there).
    pub fn with_pause_after_write(mut self, marker: Option<PathBuf>) -> Self {
        self.pause_after_write = marker;
        self
    }

    pub fn backend(&self) -> &'static dyn Backend {
        self.backend
    }

    pub fn apply_mode(&self) -> ApplyMode {
        self.apply
    }

    pub fn files(&self) -> &HostFiles {
        &self.files
    }

    /// Mutating netlink requests since start.
    pub fn netlink_changes(&self) -> u64 {
        self.kernel.as_ref().map_or(0, |k| k.changes())
    }

    /// Our files on the host, by name.
    pub fn current(&self) -> Result<BTreeMap<InterfaceName, Current>, FileError> {
        let mut current = BTreeMap::new();
        for index in 0..self.capacity {
            let Some(name) = InterfaceName::new(index, self.capacity) else { continue };
            let files = self.files.read_existing(&self.backend.paths(name))?;
            if files.is_empty() {
                continue;
            }
            let entry = match self.backend.parse(name, &files) {
                Ok(spec) => Current::Parsed { spec, files },
                Err(e) => match self.quarantine(name, &files) {
                    // Out of the way: a broken file would make netplan or
                    // wicked fail for every interface of the host.
                    Ok(()) => continue,
                    Err(reason) => {
                        warn!(interface = %name, error = %e, reason = %reason, "cannot move a damaged file of ours aside");
                        Current::Corrupt { files, error: e.to_string() }
                    }
                },
            };
            current.insert(name, entry);
        }
        Ok(current)
    }

    /// Moves damaged files of ours to `<state-dir>/quarantine/` (never where
    /// a network daemon reads), freeing their name.
    fn quarantine(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<(), String> {
        let dir = self.journal.dir().parent().unwrap_or(self.journal.dir()).join("quarantine");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for (path, contents) in files {
            let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let kept = dir.join(format!("{file_name}.{stamp}"));
            std::fs::write(&kept, contents).map_err(|e| format!("write {}: {e}", kept.display()))?;
            self.files.remove(path).map_err(|e| e.to_string())?;
            warn!(
                interface = %name,
                file = %self.files.abs(path).display(),
                kept = %kept.display(),
                "a file of ours did not parse (damaged or edited by hand): moved aside; its interface is rendered anew if desired"
            );
        }
        Ok(())
    }

    /// Which of `macs` have a link on the node now.
    pub fn present(&self, macs: &BTreeSet<MacAddress>) -> Result<BTreeSet<MacAddress>, KernelError> {
        let Some(kernel) = &self.kernel else { return Ok(BTreeSet::new()) };
        let state = kernel.read()?;
        Ok(macs.iter().filter(|mac| find_link(&state, **mac) != LinkMatch::Absent).copied().collect())
    }

    /// The kernel state to plan with: `None` when the agent does not touch
    /// the kernel and cannot read it (a dry run degrades, it does not fail).
    fn read_kernel(&self) -> Result<Option<KernelState>, String> {
        match (&self.kernel, self.apply) {
            (Some(kernel), ApplyMode::None) => match kernel.read() {
                Ok(state) => Ok(Some(state)),
                Err(e) => {
                    warn!(error = %e, "cannot read the kernel's links; planning without them (no protection check)");
                    Ok(None)
                }
            },
            (None, ApplyMode::None) => Ok(None),
            (Some(kernel), _) => kernel.read().map(Some).map_err(|e| format!("cannot read the kernel's links: {e}")),
            (None, mode) => Err(format!("--apply {} needs netlink, which could not be opened", mode.as_str())),
        }
    }

    /// Makes the node match `desired` as far as it can.
    pub fn reconcile(&self, desired: &DesiredSet) -> Outcome {
        self.reconcile_in(desired, Scope::All)
    }

    /// [`Self::reconcile`] for the MACs in `scope` only.
    pub fn reconcile_in(&self, desired: &DesiredSet, scope: Scope<'_>) -> Outcome {
        let mut run = Run::new(self);
        let failed_all = |run: Run, code: ErrorCode, message: &str| {
            let statuses = desired
                .iter()
                .filter(|s| scope.includes(&s.mac))
                .map(|s| InterfaceStatus::problem(s.mac, None, InterfaceState::Failed, code, message))
                .collect();
            run.finish(statuses, self)
        };
        let kernel = match self.read_kernel() {
            Ok(kernel) => kernel,
            Err(message) => {
                warn!(error = %message, "nothing changed");
                return failed_all(run, ErrorCode::ApplyFailed, &message);
            }
        };
        let current = match self.current() {
            Ok(current) => current,
            Err(e) => {
                // Without knowing our files we cannot name anything safely.
                warn!(error = %e, "cannot read our files; nothing changed");
                return failed_all(run, ErrorCode::WriteFailed, &e.to_string());
            }
        };
        let facts = kernel.as_ref().map(|k| node_facts(k, &self.node_ips)).unwrap_or_default();
        let plan = plan(desired, &current, &facts, self.capacity, self.backend);
        let mut statuses = Vec::new();
        for action in plan.actions {
            match action {
                Action::Keep { name, spec, link, retired } if scope.includes(&spec.mac) => {
                    let _span = info_span!("interface", interface = %name, mac = %spec.mac).entered();
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    statuses.extend(self.prepare(&mut run, name, &spec, None, link, retired));
                }
                Action::Write { name, spec, files, previous, link, retired } if scope.includes(&spec.mac) => {
                    let _span = info_span!("interface", interface = %name, mac = %spec.mac).entered();
                    info!(mtu = spec.mtu.get(), address = ?spec.address.map(|a| a.to_string()), previous = ?previous.map(|p| p.to_string()), "configuring");
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    statuses.extend(self.prepare(&mut run, name, &spec, Some(&files), link, retired));
                }
                Action::Remove { name, mac, link, .. } if matches!(scope, Scope::All) => {
                    let _span = info_span!("interface", interface = %name, mac = %mac).entered();
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    statuses.push(self.remove(&mut run, name, mac, link));
                }
                Action::Refuse { spec, name, code, message } if scope.includes(&spec.mac) => {
                    warn!(mac = %spec.mac, code = %code, "{message}");
                    statuses.push(InterfaceStatus::problem(spec.mac, name, InterfaceState::Refused, code, message));
                }
                Action::Hold { mac, name } if matches!(scope, Scope::All) => {
                    info!(mac = %mac, interface = ?name.map(|n| n.to_string()), "held by the controller; left as it is");
                    // Say we keep it, so the controller still counts it as
                    // present (its mass-deletion guard relies on that).
                    if let Some(name) = name {
                        statuses.push(InterfaceStatus::problem(
                            mac,
                            Some(name),
                            InterfaceState::Held,
                            ErrorCode::None,
                            "held by the controller; left as it is",
                        ));
                    }
                }
                Action::Corrupt { name, error } if matches!(scope, Scope::All) => {
                    warn!(interface = %name, error = %error, "a file of ours does not parse; left untouched and its name reserved");
                }
                _ => {}
            }
        }
        statuses.extend(self.apply_and_verify(&mut run));
        run.finish(statuses, self)
    }

    /// Rolls back every journal entry left by an agent that died mid-change.
    /// Runs at start-up, before the agent connects. Returns how many
    /// interfaces were rolled back.
    pub fn recover(&self) -> usize {
        let pending = match self.journal.pending() {
            Ok(pending) => pending,
            Err(e) => {
                warn!(error = %e, "cannot read the journal; nothing rolled back");
                return 0;
            }
        };
        let mut rolled_back = 0;
        let mut host = Run::new(self).host;
        for (interface, entry) in pending {
            match entry {
                Ok(entry) => {
                    let _span = info_span!("interface", interface = %interface, mac = %entry.mac).entered();
                    // Host mode: the daemon goes back first (a checkpoint the
                    // crash left), and reads the restored files after.
                    let change = interrupted_change(&entry);
                    if let (Some(session), Some(change)) = (host.as_mut(), &change) {
                        session.undo(change);
                    }
                    match self.rollback(&entry) {
                        Ok(()) => {
                            rolled_back += 1;
                            info!(same_boot = entry.same_boot(), "rolled back a change interrupted by a crash");
                        }
                        Err(e) => warn!(error = %e, "cannot roll back an interrupted change; kept for the next start"),
                    }
                    if let (Some(session), Some(change)) = (host.as_mut(), change) {
                        session.reread(&[change]);
                    }
                }
                Err(reason) => {
                    warn!(interface = %interface, reason = %reason, "unreadable journal entry set aside");
                    if let Err(e) = self.journal.set_aside(&interface) {
                        warn!(interface = %interface, error = %e, "cannot set the journal entry aside");
                    }
                }
            }
        }
        rolled_back
    }
}

/// What host mode is told about a change a crash interrupted.
fn interrupted_change(entry: &crate::journal::Entry) -> Option<HostChange> {
    let name = InterfaceName::parse(&entry.interface, multinic_proto::MAX_CAPACITY)?;
    Some(HostChange {
        name,
        mac: entry.mac.parse().ok()?,
        link: entry.link.as_ref().map_or_else(|| entry.interface.clone(), |l| l.name.clone()),
        kind: ChangeKind::Configure,
        retired: Vec::new(),
    })
}

/// Counters and pending work of one reconcile.
struct Run {
    writes_before: u64,
    changes_before: u64,
    first_change: Option<Instant>,
    verify_duration: Duration,
    rollbacks: u32,
    /// Interfaces changed and waiting for the host apply and verification.
    pending: Vec<interface::Pending>,
    /// Host mode: the backend's session with the node's daemon (opening it
    /// asks the daemon nothing).
    host: Option<Box<dyn HostSession>>,
}

impl Run {
    fn new(reconciler: &Reconciler) -> Self {
        let host = match (reconciler.apply, reconciler.backend.host()) {
            (ApplyMode::Host, Ok(tool)) => Some(tool.session(reconciler.host)),
            _ => None,
        };
        Self {
            writes_before: reconciler.files.writes() + reconciler.files.removals(),
            changes_before: reconciler.netlink_changes(),
            first_change: None,
            verify_duration: Duration::ZERO,
            rollbacks: 0,
            pending: Vec::new(),
            host,
        }
    }

    /// Notes that a change starts now (for the apply duration).
    fn changing(&mut self) {
        self.first_change.get_or_insert_with(Instant::now);
    }

    fn finish(self, mut statuses: Vec<InterfaceStatus>, reconciler: &Reconciler) -> Outcome {
        statuses.sort_by_key(|s| s.mac);
        let apply_duration =
            self.first_change.map_or(Duration::ZERO, |t| t.elapsed().saturating_sub(self.verify_duration));
        let file_writes = reconciler.files.writes() + reconciler.files.removals() - self.writes_before;
        let netlink_changes = reconciler.netlink_changes() - self.changes_before;
        Outcome {
            statuses,
            changes: usize::try_from(file_writes + netlink_changes).unwrap_or(usize::MAX),
            file_writes,
            netlink_changes,
            rollbacks: self.rollbacks,
            apply_duration,
            verify_duration: self.verify_duration,
        }
    }
}
