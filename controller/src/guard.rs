//! The mass-deletion guard. Pure: counts in, verdict out.
//!
//! A database read that would remove more than a set share of all the
//! interfaces agents have, at once, looks like an accident (a truncated
//! table, a wrong node name, a restore gone wrong), not an intent. The
//! controller then holds those removals (the MACs stay *held* on their nodes)
//! while everything else goes on, and says so, until the removals shrink
//! below the threshold or an operator confirms exactly that set.
//!
//! Right after the controller becomes active it does not yet know what every
//! agent has (agents report on reconnect), so removals are held for a
//! warm-up period before they are judged. Once every node with rows (and
//! every agent connected) has reported, the warm-up holds only removals on
//! nodes with no rows left (a node deleted from the table whole, whose
//! agent may still be on its way to report; 30 s at most), and the rest is
//! judged at once.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use multinic_proto::{MacAddress, NodeName};
use sha2::{Digest as _, Sha256};

/// When the guard holds removals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Hold when more than this share (0..=1) of all present interfaces would go at once.
    pub max_share: f64,
    /// ... and at least this many would go (tiny fleets remove freely).
    pub min_removals: usize,
    /// Hold every removal for this long after becoming active.
    pub warmup: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self { max_share: 0.5, min_removals: 10, warmup: Duration::from_secs(30) }
    }
}

impl GuardConfig {
    /// A guard that never holds anything (tests of other behaviour).
    pub fn off() -> Self {
        Self { max_share: 1.0, min_removals: usize::MAX, warmup: Duration::ZERO }
    }
}

/// The guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Removals go ahead.
    Release,
    /// Removals are held, for this reason.
    Hold(String),
    /// Only removals on nodes with no rows left are held (the end of the
    /// warm-up, once every node with rows has reported), for this reason.
    HoldRowless(String),
}

/// The warm-up after this replica became active, while it lasts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warming {
    /// It ends after this long at most.
    pub left: Duration,
    /// Whether every node with rows (there is at least one) and every
    /// connected agent has reported what it has.
    pub all_reported: bool,
    /// How many have not, and the first of them by name.
    pub waiting: usize,
    pub first: Vec<NodeName>,
}

impl Warming {
    fn waiting_for(&self) -> String {
        if self.waiting == 0 {
            return String::new();
        }
        let names = self.first.iter().map(NodeName::as_str).collect::<Vec<_>>().join(", ");
        let more = self.waiting.saturating_sub(self.first.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!(" ({} not yet: {names}{more})", self.waiting)
    }
}

/// What the fleet looks like to the guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Interfaces the agents have (reported present).
    pub present: usize,
    /// Of those, how many the current desired sets would remove.
    pub removals: usize,
}

impl Counts {
    /// The totals with one node's share `old` replaced by `new`.
    pub fn replace(self, old: Counts, new: Counts) -> Counts {
        Counts {
            present: self.present.saturating_sub(old.present) + new.present,
            removals: self.removals.saturating_sub(old.removals) + new.removals,
        }
    }
}

/// Decides whether removals go ahead.
pub fn verdict(config: &GuardConfig, counts: Counts, warming: Option<&Warming>, confirmed: bool) -> Verdict {
    if counts.removals == 0 || confirmed {
        return Verdict::Release;
    }
    if let Some(w) = warming.filter(|w| !w.all_reported) {
        return Verdict::Hold(format!(
            "warming up: removals wait until every node with rows has reported what it has{}, at most {}s more",
            w.waiting_for(),
            w.left.as_secs().max(1)
        ));
    }
    let share = counts.removals as f64 / counts.present.max(1) as f64;
    if counts.removals >= config.min_removals && share > config.max_share {
        return Verdict::Hold(format!(
            "{} of {} interfaces ({:.0}%) would be removed at once, over the {:.0}% guard",
            counts.removals,
            counts.present,
            share * 100.0,
            config.max_share * 100.0
        ));
    }
    if let Some(w) = warming {
        return Verdict::HoldRowless(format!(
            "warming up: every node with rows has reported, so their removals go ahead; removals on nodes with no \
             rows left wait {}s more, for agents that have not reconnected yet",
            w.left.as_secs().max(1)
        ));
    }
    Verdict::Release
}

/// The MACs of `present` that the desired set no longer names.
pub fn removals<'a>(
    present: impl IntoIterator<Item = &'a MacAddress>,
    desired: &multinic_proto::DesiredSet,
) -> BTreeSet<MacAddress> {
    present.into_iter().filter(|mac| desired.get(mac).is_none() && !desired.is_held(mac)).copied().collect()
}

/// A short name for one exact set of held removals, for confirmation.
pub fn token<'a>(held: impl IntoIterator<Item = (&'a NodeName, &'a MacAddress)>) -> String {
    let mut hasher = Sha256::new();
    for (node, mac) in held {
        hasher.update(format!("{node} {mac}\n").as_bytes());
    }
    let mut out = String::new();
    for byte in &hasher.finalize()[..6] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinic_proto::{DesiredSet, InterfaceSpec, Mtu};

    fn mac(i: u8) -> MacAddress {
        MacAddress::from_octets([2, 0, 0, 0, 0, i]).unwrap()
    }

    #[test]
    fn holds_only_big_removals() {
        let c = GuardConfig { max_share: 0.5, min_removals: 3, warmup: Duration::ZERO };
        assert_eq!(verdict(&c, Counts { present: 10, removals: 5 }, None, false), Verdict::Release, "exactly half");
        assert!(
            matches!(verdict(&c, Counts { present: 10, removals: 6 }, None, false), Verdict::Hold(r) if r.contains("6 of 10"))
        );
        assert_eq!(verdict(&c, Counts { present: 2, removals: 2 }, None, false), Verdict::Release, "below the minimum");
        assert_eq!(verdict(&c, Counts { present: 10, removals: 9 }, None, true), Verdict::Release, "confirmed");
        assert_eq!(verdict(&c, Counts { present: 0, removals: 0 }, None, false), Verdict::Release);
    }

    #[test]
    fn warm_up_holds_every_removal_until_every_node_with_rows_reported() {
        let c = GuardConfig::default();
        let a: NodeName = "node-a".parse().unwrap();
        let warming = Warming { left: Duration::from_secs(12), all_reported: false, waiting: 5, first: vec![a] };
        let v = verdict(&c, Counts { present: 100, removals: 1 }, Some(&warming), false);
        let Verdict::Hold(reason) = v else { panic!("{v:?}") };
        assert!(reason.contains("(5 not yet: node-a and 4 more), at most 12s more"), "{reason}");

        let reported = Warming { all_reported: true, waiting: 0, first: vec![], ..warming };
        let v = verdict(&c, Counts { present: 100, removals: 1 }, Some(&reported), false);
        assert!(matches!(&v, Verdict::HoldRowless(r) if r.contains("no rows left wait 12s more")), "{v:?}");
        // The share rule still holds everything.
        let strict = GuardConfig { min_removals: 1, ..c };
        let v = verdict(&strict, Counts { present: 10, removals: 6 }, Some(&reported), false);
        assert!(matches!(&v, Verdict::Hold(r) if r.contains("6 of 10")), "{v:?}");
        assert_eq!(verdict(&c, Counts { present: 10, removals: 0 }, Some(&warming), false), Verdict::Release);
    }

    #[test]
    fn removals_are_present_macs_the_set_no_longer_names() {
        let spec = InterfaceSpec::new(mac(1), None, Mtu::DEFAULT).unwrap();
        let set = DesiredSet::with_held([spec], [mac(2)]).unwrap();
        let present: BTreeSet<_> = [mac(1), mac(2), mac(3)].into();
        assert_eq!(removals(&present, &set), BTreeSet::from([mac(3)]));
    }

    #[test]
    fn token_names_the_exact_set() {
        let a: NodeName = "a".parse().unwrap();
        let t1 = token([(&a, &mac(1)), (&a, &mac(2))]);
        let t2 = token([(&a, &mac(1))]);
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), 12);
        assert_eq!(t1, token([(&a, &mac(1)), (&a, &mac(2))]));
    }
}
