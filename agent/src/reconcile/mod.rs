//! Carries out a desired set on the node: read the kernel and our files,
//! plan, journal, write, apply, verify, roll back what failed, and say per
//! interface how it went. Also checks, read only, whether the node is still
//! as the last apply left it (`check.rs`), with the same planner, so that a
//! drift repair is an ordinary reconcile of the drifted interfaces.
//!
//! One reconcile runs at a time (the session awaits it), so name assignment
//! is one serialised decision per node. Interfaces are independent: one
//! failing interface is rolled back alone and never stops the others. An
//! interface whose files and kernel state already match costs no write and
//! no netlink request. This module never touches a NIC the planner refused
//! (protected, foreign, over capacity) and never a file outside our paths.

mod apply;
mod check;
mod error;
mod interface;
mod mode;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::{DesiredSet, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{info, info_span, warn};

pub use self::check::{CheckError, Drift, DriftCheck, Verdict};
pub use self::error::{ApplyError, Rollback, RollbackError, RollbackProblem, VerifyError};
pub use self::mode::{ApplyChoice, ApplyMode, HostApplyRefused};
use crate::backend::{Backend, HostSession};
use crate::files::{FileError, HostFiles, ReadError};
use crate::hostns::HostNamespaces;
use crate::journal::Journal;
use crate::kernel::facts::{LinkMatch, find_link, node_facts};
use crate::kernel::{KernelError, KernelState, LinkOps};
use crate::plan::{Action, Current, NodeFacts, plan};

/// Which MACs a reconcile acts on.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The whole set, removals included.
    All,
    /// Only these MACs (a waiting NIC appeared, an interface drifted): their
    /// files and links, and the removal of files of theirs that are not
    /// wanted (a MAC no longer desired, a second file of a desired MAC);
    /// nothing else is touched.
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
    /// Files written or removed, and files of ours whose mode or owner was
    /// put right (journal files not counted).
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
    #[cfg(feature = "test-hooks")]
    pause_after_write: Option<crate::test_hooks::PauseAfterWrite>,
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
            #[cfg(feature = "test-hooks")]
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

    /// Test hook: after writing and applying, pause before verifying (so a
    /// test can stop or kill the agent right there).
    #[cfg(feature = "test-hooks")]
    pub fn with_pause_after_write(mut self, pause: Option<crate::test_hooks::PauseAfterWrite>) -> Self {
        self.pause_after_write = pause;
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

    /// Our files on the host, by name. A path of ours holding something
    /// that is not a file we could have written (a link, a FIFO, a device, a
    /// huge file) is left exactly as it is: its name stays reserved and is
    /// reported as damaged. Files of ours that do not parse are moved aside
    /// (see [`Self::quarantine`]).
    pub fn current(&self) -> Result<BTreeMap<InterfaceName, Current>, ReadError> {
        let Scan { mut current, unparsed } = self.scan()?;
        for (name, entry) in &current {
            if let Current::Corrupt { error, .. } = entry {
                warn!(interface = %name, error = %error, "a path of ours holds something multinic never writes: left untouched, its name reserved");
            }
        }
        for (name, Unparsed { files, error }) in unparsed {
            match self.quarantine(name, &files) {
                // Out of the way: a broken file would make the node's
                // daemon fail for every interface of the host.
                Ok(()) => {}
                Err(reason) => {
                    warn!(interface = %name, error = %error, reason = %reason, "cannot move a damaged file of ours aside");
                    current.insert(name, Current::Corrupt { files, error });
                }
            }
        }
        Ok(current)
    }

    /// Our files as they are, read only (bounded, links not followed):
    /// what parses and what is damaged in `current`, and apart from it what
    /// does not parse. Changes nothing and logs nothing.
    fn scan(&self) -> Result<Scan, ReadError> {
        let mut scan = Scan::default();
        for index in 0..self.capacity {
            let Some(name) = InterfaceName::new(index, self.capacity) else { continue };
            let files = match self.files.read_existing(&self.backend.paths(name)) {
                Ok(files) => files,
                Err(e) if e.is_damaged() => {
                    scan.current.insert(name, Current::Corrupt { files: BTreeMap::new(), error: e.to_string() });
                    continue;
                }
                Err(e) => return Err(e),
            };
            if files.is_empty() {
                continue;
            }
            match self.backend.parse(name, &files) {
                Ok(spec) => {
                    scan.current.insert(name, Current::Parsed { spec, files });
                }
                Err(e) => {
                    scan.unparsed.insert(name, Unparsed { files, error: e.to_string() });
                }
            }
        }
        Ok(scan)
    }

    /// What the planner knows of the node: the kernel's facts (protected
    /// and foreign links) plus MACs another tool's file defines.
    fn facts(&self, kernel: Option<&KernelState>) -> NodeFacts {
        let mut facts = kernel.map(|k| node_facts(k, &self.node_ips)).unwrap_or_default();
        for (mac, reason) in self.backend.foreign_definitions(&self.files) {
            facts.foreign.entry(mac).or_insert(reason);
        }
        facts
    }

    /// Moves damaged files of ours to `<state-dir>/quarantine/` (never where
    /// a network daemon reads), freeing their name.
    fn quarantine(&self, name: InterfaceName, files: &BTreeMap<PathBuf, String>) -> Result<(), FileError> {
        let dir = self.journal.dir().parent().unwrap_or(self.journal.dir()).join("quarantine");
        std::fs::create_dir_all(&dir).map_err(|source| FileError { operation: "create", path: dir.clone(), source })?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for (path, contents) in files {
            let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let kept = dir.join(format!("{file_name}.{stamp}"));
            // Atomic and 0600 like the original: it may hold addresses.
            crate::files::write_atomic(&kept, contents)?;
            self.files.remove(path)?;
            warn!(
                interface = %name,
                file = %self.files.abs(path).display(),
                kept = %kept.display(),
                "a file of ours did not parse (damaged or edited by hand): moved aside; its interface is rendered anew if desired"
            );
        }
        Ok(())
    }

    /// Gives the files of `name` (content already right) back their mode
    /// and owner if they lost them; files about to be `retired` (the
    /// predecessor's) are left as they are. A failure is logged, not
    /// reported: the interface works as its file says.
    fn make_private(&self, name: InterfaceName, retired: &[PathBuf]) {
        for path in self.backend.paths(name).into_iter().filter(|p| !retired.contains(p)) {
            match self.files.make_private(&path) {
                Ok(None) => {}
                Ok(Some(wrong)) => warn!(
                    file = %self.files.abs(&path).display(),
                    was = %wrong,
                    "a file of ours had lost its mode or owner: set back to 0600 and the agent's owner, content unchanged"
                ),
                Err(e) => warn!(error = %e, "cannot give a file of ours back its mode 0600 and owner"),
            }
        }
    }

    /// Which of `macs` have a link on the node now.
    pub fn present(&self, macs: &BTreeSet<MacAddress>) -> Result<BTreeSet<MacAddress>, KernelError> {
        let Some(kernel) = &self.kernel else { return Ok(BTreeSet::new()) };
        let state = kernel.read()?;
        Ok(macs.iter().filter(|mac| find_link(&state, **mac) != LinkMatch::Absent).copied().collect())
    }

    /// The kernel state to plan with: `None` when the agent does not touch
    /// the kernel and cannot read it (a dry run degrades, it does not fail).
    fn read_kernel(&self) -> Result<Option<KernelState>, ApplyError> {
        match (&self.kernel, self.apply) {
            (Some(kernel), ApplyMode::None) => match kernel.read() {
                Ok(state) => Ok(Some(state)),
                Err(e) => {
                    warn!(error = %e, "cannot read the kernel's links; planning without them (no protection check)");
                    Ok(None)
                }
            },
            (None, ApplyMode::None) => Ok(None),
            (Some(kernel), _) => kernel.read().map(Some).map_err(ApplyError::ReadKernel),
            (None, mode) => Err(ApplyError::NoNetlink(mode)),
        }
    }

    /// Makes the node match `desired` as far as it can.
    pub fn reconcile(&self, desired: &DesiredSet) -> Outcome {
        self.reconcile_in(desired, Scope::All)
    }

    /// [`Self::reconcile`] for the MACs in `scope` only.
    pub fn reconcile_in(&self, desired: &DesiredSet, scope: Scope<'_>) -> Outcome {
        let mut run = Run::new(self);
        let failed_all = |run: Run, error: ApplyError| {
            let statuses =
                desired.iter().filter(|s| scope.includes(&s.mac)).map(|s| error.status(s.mac, None)).collect();
            run.finish(statuses, self)
        };
        let kernel = match self.read_kernel() {
            Ok(kernel) => kernel,
            Err(e) => {
                warn!(error = %e, "nothing changed");
                return failed_all(run, e);
            }
        };
        let current = match self.current() {
            Ok(current) => current,
            Err(e) => {
                // Without knowing our files we cannot name anything safely.
                warn!(error = %e, "cannot read our files; nothing changed");
                return failed_all(run, ApplyError::ReadOurFiles(e));
            }
        };
        let facts = self.facts(kernel.as_ref());
        let plan = plan(desired, &current, &facts, self.capacity, self.backend);
        let mut statuses = Vec::new();
        for action in plan.actions {
            match action {
                Action::Keep { name, spec, link, retired } if scope.includes(&spec.mac) => {
                    let _span = info_span!("interface", interface = %name, mac = %spec.mac).entered();
                    self.make_private(name, &retired);
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    let prepared = self.prepare(&mut run, name, &spec, None, link, retired);
                    statuses.extend(prepared.unwrap_or_else(|e| Some(e.status(spec.mac, Some(name)))));
                }
                Action::Write { name, spec, files, previous, link, retired } if scope.includes(&spec.mac) => {
                    let _span = info_span!("interface", interface = %name, mac = %spec.mac).entered();
                    info!(mtu = spec.mtu.get(), address = ?spec.address.map(|a| a.to_string()), previous = ?previous.map(|p| p.to_string()), "configuring");
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    let prepared = self.prepare(&mut run, name, &spec, Some(&files), link, retired);
                    statuses.extend(prepared.unwrap_or_else(|e| Some(e.status(spec.mac, Some(name)))));
                }
                Action::Remove { name, mac, link, .. } if scope.includes(&mac) => {
                    let _span = info_span!("interface", interface = %name, mac = %mac).entered();
                    let link = link.and_then(|l| kernel.as_ref()?.link(l.index));
                    let removed = self.remove(&mut run, name, mac, link);
                    statuses.push(removed.unwrap_or_else(|e| e.status(mac, Some(name))));
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
}

/// Our files as read, before anything is moved aside.
#[derive(Debug, Default)]
struct Scan {
    /// Files that parse, and paths that hold something we never write.
    current: BTreeMap<InterfaceName, Current>,
    /// Files of ours that do not parse (edited or damaged).
    unparsed: BTreeMap<InterfaceName, Unparsed>,
}

/// The files of one name that do not parse, and why.
#[derive(Debug)]
struct Unparsed {
    files: BTreeMap<PathBuf, String>,
    error: String,
}

/// Counters and pending work of one reconcile.
#[derive(Debug)]
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
            writes_before: file_changes(&reconciler.files),
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
        let file_writes = file_changes(&reconciler.files) - self.writes_before;
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

/// Files written, removed or repaired so far.
fn file_changes(files: &HostFiles) -> u64 {
    files.writes() + files.removals() + files.repairs()
}
