//! Carries out a desired set on the node: read our files, plan, execute,
//! and say per interface how it went.
//!
//! One reconcile runs at a time (the session awaits it), so name assignment
//! is one serialised decision per node. Interfaces are independent: one
//! failing write never stops the others.

use std::collections::BTreeMap;

use multinic_proto::{DesiredSet, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus};
use tracing::{info, warn};

use crate::backend::{Backend, BackendKind};
use crate::files::{FileError, HostFiles};
use crate::plan::{Action, Current, NodeFacts, plan};

/// How the agent applies what it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Render files only (dry run): success means the files say what is desired.
    None,
}

impl ApplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "host" | "netlink" => Err(format!("--apply {s} is not available in this build; use --apply none")),
            other => Err(format!("unknown apply mode {other:?}: expected host, netlink or none")),
        }
    }
}

/// The outcome of one reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// One status per desired (not held) MAC, plus one per removed MAC.
    pub statuses: Vec<InterfaceStatus>,
    /// Files written or removed.
    pub changes: usize,
}

/// Reconciles desired sets against one host.
#[derive(Debug)]
pub struct Reconciler {
    backend: &'static dyn Backend,
    files: HostFiles,
    capacity: u8,
    apply: ApplyMode,
}

impl Reconciler {
    pub fn new(backend: BackendKind, files: HostFiles, capacity: u8, apply: ApplyMode) -> Self {
        Self { backend: backend.backend(), files, capacity, apply }
    }

    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn apply_mode(&self) -> ApplyMode {
        self.apply
    }

    pub fn files(&self) -> &HostFiles {
        &self.files
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
                Err(e) => Current::Corrupt { files, error: e.to_string() },
            };
            current.insert(name, entry);
        }
        Ok(current)
    }

    /// Makes the node match `desired` as far as it can.
    pub fn reconcile(&self, desired: &DesiredSet) -> Outcome {
        let current = match self.current() {
            Ok(current) => current,
            Err(e) => {
                // Without knowing our files we cannot name anything safely.
                warn!(error = %e, "cannot read our files; nothing changed");
                let statuses = desired
                    .iter()
                    .map(|s| {
                        InterfaceStatus::problem(
                            s.mac,
                            None,
                            InterfaceState::Failed,
                            ErrorCode::WriteFailed,
                            e.to_string(),
                        )
                    })
                    .collect();
                return Outcome { statuses, changes: 0 };
            }
        };
        let plan = plan(desired, &current, &NodeFacts::default(), self.capacity, self.backend);
        let mut outcome = Outcome::default();
        for action in plan.actions {
            match action {
                Action::Keep { name, spec } => outcome.statuses.push(InterfaceStatus::applied(spec.mac, name)),
                Action::Write { name, spec, files, previous } => {
                    let written = files.iter().try_for_each(|f| self.files.write_atomic(&f.path, &f.contents));
                    match written {
                        Ok(()) => {
                            outcome.changes += files.len();
                            info!(interface = %name, mac = %spec.mac, mtu = spec.mtu.get(), address = ?spec.address.map(|a| a.to_string()), previous = ?previous.map(|p| p.to_string()), "wrote interface files");
                            outcome.statuses.push(InterfaceStatus::applied(spec.mac, name));
                        }
                        Err(e) => {
                            warn!(interface = %name, mac = %spec.mac, error = %e, "cannot write interface files");
                            self.restore(name, &current);
                            outcome.statuses.push(InterfaceStatus::problem(
                                spec.mac,
                                Some(name),
                                InterfaceState::Failed,
                                ErrorCode::WriteFailed,
                                e.to_string(),
                            ));
                        }
                    }
                }
                Action::Remove { name, mac, paths, .. } => match paths.iter().try_for_each(|p| self.files.remove(p)) {
                    Ok(()) => {
                        outcome.changes += 1;
                        info!(interface = %name, mac = %mac, "removed interface files: MAC no longer desired");
                        outcome.statuses.push(InterfaceStatus::problem(
                            mac,
                            Some(name),
                            InterfaceState::Removed,
                            ErrorCode::None,
                            "",
                        ));
                    }
                    Err(e) => {
                        warn!(interface = %name, mac = %mac, error = %e, "cannot remove interface files");
                        outcome.statuses.push(InterfaceStatus::problem(
                            mac,
                            Some(name),
                            InterfaceState::Failed,
                            ErrorCode::WriteFailed,
                            e.to_string(),
                        ));
                    }
                },
                Action::Refuse { spec, name, code, message } => {
                    warn!(mac = %spec.mac, code = %code, "{message}");
                    outcome.statuses.push(InterfaceStatus::problem(
                        spec.mac,
                        name,
                        InterfaceState::Refused,
                        code,
                        message,
                    ));
                }
                Action::Hold { mac, name } => {
                    info!(mac = %mac, interface = ?name.map(|n| n.to_string()), "held by the controller; left as it is");
                }
                Action::Corrupt { name, error } => {
                    warn!(interface = %name, error = %error, "a file of ours does not parse; left untouched and its name reserved");
                }
            }
        }
        outcome
    }

    /// Puts back the files `name` had before a failed multi-file write.
    fn restore(&self, name: InterfaceName, current: &BTreeMap<InterfaceName, Current>) {
        let previous = match current.get(&name) {
            Some(Current::Parsed { files, .. } | Current::Corrupt { files, .. }) => files.clone(),
            None => BTreeMap::new(),
        };
        for path in self.backend.paths(name) {
            let result = match previous.get(&path) {
                Some(contents) => self.files.write_atomic(&path, contents),
                None => self.files.remove(&path),
            };
            if let Err(e) = result {
                warn!(interface = %name, error = %e, "cannot restore the previous file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinic_proto::{InterfaceSpec, MacAddress, Mtu};

    fn spec(i: u8, mtu: i64) -> InterfaceSpec {
        InterfaceSpec::new(MacAddress::from_octets([2, 0, 0, 0, 0, i]).unwrap(), None, Mtu::new(mtu).unwrap()).unwrap()
    }

    fn reconciler(root: &std::path::Path) -> Reconciler {
        Reconciler::new(BackendKind::Netplan, HostFiles::new(root), 10, ApplyMode::None)
    }

    #[test]
    fn writes_then_noop_then_removes() {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path());
        let set = DesiredSet::new([spec(1, 1500), spec(2, 1500)]).unwrap();
        let out = r.reconcile(&set);
        assert_eq!(out.changes, 2);
        assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied));
        assert!(dir.path().join("etc/netplan/90-multinic0.yaml").exists());
        assert!(dir.path().join("etc/netplan/91-multinic1.yaml").exists());

        let again = r.reconcile(&set);
        assert_eq!(again.changes, 0);
        assert_eq!(r.files().writes(), 2, "an identical set writes nothing");

        let out = r.reconcile(&DesiredSet::new([spec(2, 1500)]).unwrap());
        assert!(out.statuses.iter().any(|s| s.state == InterfaceState::Removed && s.mac == spec(1, 1500).mac));
        assert!(!dir.path().join("etc/netplan/90-multinic0.yaml").exists());
        assert!(dir.path().join("etc/netplan/91-multinic1.yaml").exists(), "the other interface keeps its name");
    }

    #[test]
    fn foreign_files_are_never_touched() {
        let dir = tempfile::tempdir().unwrap();
        let netplan = dir.path().join("etc/netplan");
        std::fs::create_dir_all(&netplan).unwrap();
        for foreign in ["50-cloud-init.yaml", "91-multinic1.txt", "invalid.yaml"] {
            std::fs::write(netplan.join(foreign), "network: {version: 2}\n").unwrap();
        }
        let r = reconciler(dir.path());
        r.reconcile(&DesiredSet::new([spec(1, 1500)]).unwrap());
        r.reconcile(&DesiredSet::empty());
        let mut left: Vec<_> =
            std::fs::read_dir(&netplan).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, vec!["50-cloud-init.yaml", "91-multinic1.txt", "invalid.yaml"]);
    }
}
