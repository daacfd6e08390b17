//! The drift check: is the node still as the last apply left it?
//!
//! It reads the kernel (one netlink dump) and our files (bounded reads that
//! never follow a link), plans the last applied set exactly as an apply
//! would, and says per interface whether an apply would change anything:
//! in line, drifted (each difference as a [`Drift`], from what to what), or
//! changed in a way that is not drift to repair (its NIC went away or
//! came back, or it became protected or foreign). Because the planner and
//! `kernel::diff` decide both, "in line" here means exactly "an apply would
//! make no write and no netlink request".
//!
//! This module only reads: it never writes, moves or removes a file (a file
//! of ours that does not parse is reported, not moved aside), never sends a
//! mutating netlink request and never calls a host tool. Deciding what to
//! do about drift is the worker's (`worker/drift.rs`); repairing it is an
//! ordinary scoped reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use multinic_proto::{DesiredSet, DriftKind, InterfaceName, InterfaceSpec, InterfaceState, MacAddress};

use super::{ApplyMode, Reconciler, Scan, Unparsed};
use crate::backend::RenderedFile;
use crate::files::ReadError;
use crate::kernel::diff::{LinkTarget, Mismatch, Mismatches, verify};
use crate::kernel::{KernelAddr, KernelError, KernelState};
use crate::plan::{Action, Current, KernelLink, plan};

/// One way an interface differs from what was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub name: InterfaceName,
    pub kind: DriftKind,
    /// What the check found, e.g. `MTU 1300`.
    pub found: String,
    /// What was applied, e.g. `MTU 1500`.
    pub wanted: String,
}

/// What the check says of one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What an apply would set back (empty: nothing).
    pub drifts: Vec<Drift>,
    /// No drift to repair, but no longer in the state last reported (its
    /// NIC went away or appeared, it became protected or foreign): a
    /// scoped reconcile says what it is now and touches nothing of it.
    pub changed: Option<String>,
}

impl Verdict {
    /// As applied: an apply would change nothing.
    pub fn in_line(&self) -> bool {
        self.drifts.is_empty() && self.changed.is_none()
    }
}

/// The check's result: a verdict per checked interface (and per MAC with
/// a file of ours that should not be there), in MAC order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriftCheck {
    pub interfaces: BTreeMap<MacAddress, Verdict>,
}

impl DriftCheck {
    /// Whether the node is as applied.
    pub fn in_line(&self) -> bool {
        self.interfaces.values().all(Verdict::in_line)
    }
}

/// Why a check could not look.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read the kernel's links: {0}")]
    ReadKernel(#[source] KernelError),
    #[error("--apply {} needs netlink, which could not be opened", .0.as_str())]
    NoNetlink(ApplyMode),
    #[error("cannot read our files: {0}")]
    ReadOurFiles(String),
}

impl From<ReadError> for CheckError {
    fn from(e: ReadError) -> Self {
        Self::ReadOurFiles(e.to_string())
    }
}

impl Reconciler {
    /// Checks the interfaces of `desired` in `applied` (each with the state
    /// it was last reported in: applied, or waiting for its NIC) against
    /// the node, read only. Files of ours for MACs not desired (or a second
    /// file of a desired MAC) are drift of that MAC whatever `applied` says.
    pub fn check(
        &self,
        desired: &DesiredSet,
        applied: &BTreeMap<MacAddress, InterfaceState>,
    ) -> Result<DriftCheck, CheckError> {
        let kernel = match (&self.kernel, self.apply) {
            (_, ApplyMode::None) => None,
            (Some(kernel), _) => Some(kernel.read().map_err(CheckError::ReadKernel)?),
            (None, mode) => return Err(CheckError::NoNetlink(mode)),
        };
        let Scan { mut current, unparsed } = self.scan()?;
        // What an apply would do with a file that does not parse: move it
        // aside and plan without it.
        for name in unparsed.keys() {
            current.remove(name);
        }
        let facts = self.facts(kernel.as_ref());
        let mut check = DriftCheck::default();
        for action in plan(desired, &current, &facts, self.capacity, self.backend).actions {
            match action {
                Action::Keep { name, spec, link, .. } => {
                    if let Some(state) = applied.get(&spec.mac) {
                        let verdict = check.interfaces.entry(spec.mac).or_default();
                        check_link(verdict, kernel.as_ref(), link.as_ref(), name, &spec, *state);
                    }
                }
                Action::Write { name, spec, files, link, .. } => {
                    if let Some(state) = applied.get(&spec.mac) {
                        let on_disk = on_disk(&current, &unparsed, name);
                        let verdict = check.interfaces.entry(spec.mac).or_default();
                        verdict.drifts.extend(files.iter().map(|f| file_drift(name, f, on_disk.as_ref())));
                        check_link(verdict, kernel.as_ref(), link.as_ref(), name, &spec, *state);
                    }
                }
                Action::Remove { name, mac, paths, .. } => {
                    let found = paths.iter().map(|p| shown(p)).collect::<Vec<_>>().join(", ");
                    check.interfaces.entry(mac).or_default().drifts.push(Drift {
                        name,
                        kind: DriftKind::FileUnwanted,
                        found: format!("{found} for MAC {mac}"),
                        wanted: no_file(desired, mac),
                    });
                }
                Action::Refuse { spec, message, .. } => {
                    if applied.contains_key(&spec.mac) {
                        check.interfaces.entry(spec.mac).or_default().changed = Some(message);
                    }
                }
                Action::Hold { .. } | Action::Corrupt { .. } => {}
            }
        }
        Ok(check)
    }
}

/// Adds to `verdict` how the link the planner found for `spec` (`link`, in
/// `kernel`; `None` when the MAC has no NIC, or none we may configure: the
/// planner refuses those) compares with what `name` should be, given the
/// state it was reported in. Without a kernel (`--apply none`) links are not
/// checked.
fn check_link(
    verdict: &mut Verdict,
    kernel: Option<&KernelState>,
    link: Option<&KernelLink>,
    name: InterfaceName,
    spec: &InterfaceSpec,
    state: InterfaceState,
) {
    let Some(kernel) = kernel else { return };
    match (link.and_then(|l| kernel.link(l.index)), state) {
        (Some(_), InterfaceState::Waiting) => {
            verdict.changed = Some(format!("MAC {} appeared on the node", spec.mac));
        }
        (Some(link), _) => {
            if let Err(Mismatches(found)) = verify(link, &LinkTarget::desired(name, spec)) {
                verdict.drifts.extend(found.into_iter().flat_map(|m| link_drift(name, m)));
            }
        }
        (None, InterfaceState::Waiting) => {}
        (None, _) => verdict.changed = Some(format!("MAC {} is no longer on the node", spec.mac)),
    }
}

/// The files of `name` as they are on disk, parsed or not.
fn on_disk<'a>(
    current: &'a BTreeMap<InterfaceName, Current>,
    unparsed: &'a BTreeMap<InterfaceName, Unparsed>,
    name: InterfaceName,
) -> Option<OnDisk<'a>> {
    match (current.get(&name), unparsed.get(&name)) {
        (Some(Current::Parsed { spec, files }), _) => Some(OnDisk { files, says: Ok(*spec) }),
        (_, Some(Unparsed { files, error })) => Some(OnDisk { files, says: Err(error) }),
        _ => None,
    }
}

/// One name's files on disk and what they say.
#[derive(Debug)]
struct OnDisk<'a> {
    files: &'a BTreeMap<std::path::PathBuf, String>,
    says: Result<InterfaceSpec, &'a String>,
}

/// How the file `want` of `name` differs on disk.
fn file_drift(name: InterfaceName, want: &RenderedFile, on_disk: Option<&OnDisk<'_>>) -> Drift {
    let path = shown(&want.path);
    let wanted = format!("{path} as rendered");
    match on_disk.and_then(|d| d.files.get(&want.path).map(|text| (text, &d.says))) {
        None => Drift { name, kind: DriftKind::FileDeleted, found: format!("no {path}"), wanted },
        Some((_, Ok(spec))) => {
            Drift { name, kind: DriftKind::FileEdited, found: format!("{path} edited ({})", describe(spec)), wanted }
        }
        Some((_, Err(error))) => Drift {
            name,
            kind: DriftKind::FileEdited,
            found: format!("{path} edited (does not parse: {error})"),
            wanted,
        },
    }
}

/// A kernel difference as drift findings (addresses: one per direction).
fn link_drift(name: InterfaceName, mismatch: Mismatch) -> Vec<Drift> {
    let drift = |kind, found: String, wanted: String| Drift { name, kind, found, wanted };
    match mismatch {
        Mismatch::Name { have, want } => {
            vec![drift(DriftKind::NameLost, format!("named {have}"), format!("named {want}"))]
        }
        Mismatch::Mtu { have, want } => vec![drift(DriftKind::Mtu, format!("MTU {have}"), format!("MTU {want}"))],
        Mismatch::AdminState { want } => {
            let (found, wanted) = if want { ("down", "up") } else { ("up", "down") };
            vec![drift(DriftKind::LinkDown, found.to_owned(), wanted.to_owned())]
        }
        Mismatch::Addresses { have, want } => {
            let (found, wanted) = (addresses(&have), addresses(&want));
            let mut out = Vec::new();
            if want.difference(&have).next().is_some() {
                out.push(drift(DriftKind::AddressMissing, found.clone(), wanted.clone()));
            }
            if have.difference(&want).next().is_some() {
                out.push(drift(DriftKind::AddressExtra, found, wanted));
            }
            out
        }
    }
}

/// `addresses 10.0.0.5/24, 10.9.9.9/8`, or `no addresses`.
fn addresses(set: &BTreeSet<KernelAddr>) -> String {
    if set.is_empty() {
        return "no addresses".to_owned();
    }
    format!("addresses {}", set.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
}

/// What a file of ours says, in a few words.
fn describe(spec: &InterfaceSpec) -> String {
    let address = spec.address.map_or_else(|| "no address".to_owned(), |a| format!("address {a}"));
    format!("says MAC {}, MTU {}, {address}", spec.mac, spec.mtu.get())
}

/// What should be at a path of `mac` that is not wanted.
fn no_file(desired: &DesiredSet, mac: MacAddress) -> String {
    if desired.get(&mac).is_some() { "one file set for the MAC".to_owned() } else { "no file: not desired".to_owned() }
}

/// `/etc/netplan/90-multinic0.yaml` (paths of ours are relative to the host root).
fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

#[cfg(test)]
mod tests;
