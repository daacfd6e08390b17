//! One node as the controller sees it: the set published to its agent, the
//! agent's session, and what the agent last reported about each interface.
//!
//! Exists to keep the per-node rules in one place: a set is published only
//! when its digest changes and fits in one message, and a node is converged
//! only when the agent processed exactly the published set and every
//! interface is applied. What the agent says it has is split into MACs the
//! database named for this node (believed) and MACs only the agent vouches
//! for (claimed: at most a node's capacity, counted by the guard only when
//! said during its warm-up). Nothing here does I/O or takes a lock, and
//! nothing here trusts an agent further than [`crate::claims`] allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use multinic_proto::{
    DesiredSet, Digest, DriftAction, DriftFinding, ErrorCode, InterfaceSpec, InterfaceState, InterfaceStatus,
    MacAddress,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::rollouts::{Gate, HelloSaid};
use crate::desired::NodeDesired;
use crate::guard::{self, Counts};
use crate::rollout::Outcome;

/// The largest push the controller sends (and agents accept): the wire's
/// one message limit, [`multinic_proto::MAX_MESSAGE_BYTES`].
pub const MAX_PUSH_BYTES: usize = multinic_proto::MAX_MESSAGE_BYTES;
/// A push unanswered for longer than this is shown as a node problem
/// (`--push-answer-timeout`).
pub const UNANSWERED_AFTER: Duration = Duration::from_secs(60);

/// A desired set as pushed to a node's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Increases by one each time the node's set changes (per controller run).
    pub generation: u64,
    pub set: DesiredSet,
    /// When the change was seen in the database.
    pub at: Instant,
}

impl Published {
    /// Time since the change was seen.
    pub fn age(&self) -> std::time::Duration {
        self.at.elapsed()
    }
}

/// Where a node stands, from the controller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Convergence {
    /// The agent processed the current set and every interface is applied.
    Converged,
    /// Not connected, not reported yet, or a push is outstanding.
    Pending,
    /// The agent reported failed or refused interfaces for the current set.
    Failed,
    /// The agent reported interfaces waiting for their MAC to appear.
    Waiting,
}

impl Convergence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Converged => "converged",
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
        }
    }
}

/// One interface as last reported, with the spec the report was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRecord {
    pub status: InterfaceStatus,
    /// The spec of the push the status answers; `None` for a held MAC.
    pub spec: Option<InterfaceSpec>,
    /// What the node has for this MAC as far as its reports tell: the spec
    /// last reported applied, kept while later attempts fail (the agent
    /// rolled them back), are refused or held (nothing was touched); `None`
    /// when none was, or the MAC waits for its NIC.
    pub applied: Option<InterfaceSpec>,
    /// When the state (or its error) last changed.
    pub since: SystemTime,
}

/// The agent connected for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub agent_version: String,
    pub backend: String,
    pub apply_mode: String,
    pub since: SystemTime,
}

/// What the agent last acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub digest: Digest,
    pub at: SystemTime,
}

/// What the node's agent last reported a drift check found, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDrift {
    /// When the report arrived.
    pub at: SystemTime,
    /// What it found and did (bounded by what a report may carry).
    pub findings: Vec<DriftFinding>,
    /// Findings repaired since this controller started.
    pub repairs: u64,
}

/// What the mass-deletion guard holds back now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Hold {
    #[default]
    Nothing,
    /// Every removal.
    All,
    /// Removals on nodes with no rows left (the end of the warm-up).
    Rowless,
}

/// What [`NodeEntry::refresh`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refreshed {
    Nothing,
    /// A new set was published.
    Published,
    /// No new set, but whether one can be delivered changed.
    ProblemChanged,
}

/// Something wrong with a node as a whole, for status views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProblem {
    pub code: ErrorCode,
    pub message: String,
}

/// A push sent on the node's current stream and not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unanswered {
    pub generation: u64,
    pub since: SystemTime,
}

#[derive(Debug)]
pub(super) struct NodeEntry {
    /// The node's rows from the last good read (empty if it has none).
    pub(super) desired: Arc<NodeDesired>,
    /// Whether the last good read had rows for this node.
    pub(super) in_db: bool,
    pub(super) generation: u64,
    pub(super) published: watch::Sender<Option<Arc<Published>>>,
    pub(super) session: Option<SessionInfo>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) applied: Option<Applied>,
    pub(super) interfaces: Records,
    /// MACs the agent says it has (from Hello and reports) that the
    /// database named for this node in this run: believed, also while the
    /// agent is away.
    pub(super) present: BTreeSet<MacAddress>,
    /// MACs only the agent vouches for (its Hello named them; no row for
    /// this node did), never more than a node's capacity (a Hello claiming
    /// more is refused). Held while the guard holds; forgotten when the
    /// stream ends, unless they count.
    pub(super) claimed: BTreeSet<MacAddress>,
    /// Whether `claimed` counts toward the guard's verdict (and outlives the
    /// stream): only claims made while the guard warms up after this replica
    /// became active, i.e. agents telling a restarted controller what they
    /// have. A node that turns up later with interfaces no row named cannot
    /// make the guard hold anyone's removals.
    pub(super) claims_count: bool,
    /// Whether `present` and `claimed` are all the agent has: it reported on
    /// a set since it connected (a fresh agent's Hello says nothing).
    pub(super) inventory_known: bool,
    /// Removals the mass-deletion guard holds back on this node now.
    pub(super) guarded: BTreeSet<MacAddress>,
    /// This node's share of the guard's counts, as last computed.
    pub(super) counts: Counts,
    /// Cancelled when a newer stream of the node replaces the current one.
    pub(super) session_end: Option<CancellationToken>,
    /// The push the current stream waits for a report on.
    pub(super) unanswered: Option<Unanswered>,
    /// Why the agent rejected the last push as a whole, until it accepts one.
    pub(super) rejected: Option<String>,
    /// Why the database's set cannot be pushed (too large), while it cannot.
    pub(super) undeliverable: Option<String>,
    /// The last drift the agent reported.
    pub(super) drift: Option<NodeDrift>,
    /// The activation of this replica in which the agent last said what it
    /// has (0: never); the warm-up waits for the current one.
    pub(super) reported_in: u64,
    /// Whether a rollout holds the node's new set back.
    pub(super) gate: Gate,
    /// What the agent said it had applied when it last connected.
    pub(super) hello: HelloSaid,
}

impl NodeEntry {
    pub(super) fn new() -> Self {
        let (published, _) = watch::channel(None);
        Self {
            desired: Arc::new(NodeDesired::empty()),
            in_db: false,
            generation: 0,
            published,
            session: None,
            last_seen: None,
            applied: None,
            interfaces: Records::default(),
            present: BTreeSet::new(),
            claimed: BTreeSet::new(),
            claims_count: false,
            inventory_known: false,
            guarded: BTreeSet::new(),
            counts: Counts::default(),
            session_end: None,
            unanswered: None,
            rejected: None,
            undeliverable: None,
            drift: None,
            reported_in: 0,
            gate: Gate::Open,
            hello: HelloSaid::Nothing,
        }
    }

    /// Keeps what a drift check found (`findings`, from a report believed).
    pub(super) fn record_drift(&mut self, findings: &[DriftFinding], at: SystemTime) {
        if findings.is_empty() {
            return;
        }
        let repaired = findings.iter().filter(|f| f.action == DriftAction::Repaired).count() as u64;
        let repairs = self.drift.as_ref().map_or(0, |d| d.repairs) + repaired;
        self.drift = Some(NodeDrift { at, findings: findings.to_vec(), repairs });
    }

    /// Everything the agent is taken to have: believed and claimed MACs.
    pub(super) fn inventory(&self) -> impl Iterator<Item = &MacAddress> {
        self.present.iter().chain(self.claimed.iter())
    }

    /// What the guard's verdict counts of this node.
    pub(super) fn guard_counts(&self) -> Counts {
        let claimed = if self.claims_count { &self.claimed } else { &BTreeSet::new() };
        Counts {
            present: self.present.len() + claimed.len(),
            removals: guard::removals(self.present.iter().chain(claimed), &self.desired.set).len(),
        }
    }

    /// Takes the MACs an agent says it has: those the database names for
    /// this node, or `pushed` names, or that were believed already, are
    /// believed; the rest are only claimed. `keep` are kept from before
    /// (held MACs a report did not mention).
    pub(super) fn take_inventory(&mut self, reported: BTreeSet<MacAddress>, pushed: Option<&DesiredSet>) {
        let (mut present, mut claimed) = (BTreeSet::new(), BTreeSet::new());
        for mac in reported {
            let named = self.desired.rows.contains_key(&mac)
                || pushed.is_some_and(|set| set.get(&mac).is_some())
                || self.present.contains(&mac);
            if named {
                present.insert(mac)
            } else {
                claimed.insert(mac)
            };
        }
        self.present = present;
        self.claimed = claimed;
    }

    /// Recomputes the set to push (the database's set, plus the removals the
    /// guard holds, within the message limit) and publishes it if it changed
    /// and the fleet was read.
    /// A node a rollout holds publishes nothing: it keeps its previous set.
    pub(super) fn refresh(&mut self, hold: Hold, synced: bool) -> Refreshed {
        self.set_guarded(hold);
        if !synced || self.gate != Gate::Open {
            return Refreshed::Nothing;
        }
        match self.set_to_push() {
            Ok(set) => {
                let was_undeliverable = self.undeliverable.take().is_some();
                match self.publish(&set) {
                    true => Refreshed::Published,
                    false if was_undeliverable => Refreshed::ProblemChanged,
                    false => Refreshed::Nothing,
                }
            }
            Err(why) => {
                if self.undeliverable.as_deref() == Some(why.as_str()) {
                    return Refreshed::Nothing;
                }
                tracing::warn!(problem = %why, "a desired set cannot be delivered; the node keeps what it has");
                self.undeliverable = Some(why);
                Refreshed::ProblemChanged
            }
        }
    }

    /// Recounts the node's share of the guard and the removals it holds.
    pub(super) fn set_guarded(&mut self, hold: Hold) {
        self.counts = self.guard_counts();
        let held = match hold {
            Hold::All => true,
            Hold::Rowless => !self.in_db,
            Hold::Nothing => false,
        };
        self.guarded = if held { guard::removals(self.inventory(), &self.desired.set) } else { BTreeSet::new() };
    }

    /// Whether [`NodeEntry::refresh`] would publish a new set over one
    /// published before (a node never published is new: not a change).
    pub(super) fn pending_change(&mut self, hold: Hold) -> bool {
        self.set_guarded(hold);
        let Some(current) = self.published.borrow().as_ref().map(|p| p.set.digest().clone()) else { return false };
        self.set_to_push().is_ok_and(|set| *set.digest() != current)
    }

    /// Whether the agent said it applied a set other than the one to push.
    pub(super) fn behind(&self) -> bool {
        match &self.hello {
            HelloSaid::Applied(digest) => self.set_to_push().is_ok_and(|set| set.digest() != digest),
            _ => false,
        }
    }

    /// What the agent's reports say of the published set, for a rollout:
    /// `None` until it reported on exactly that set.
    pub(super) fn rollout_outcome(&self) -> Option<Outcome> {
        if let Some(why) = &self.rejected {
            return Some(Outcome::Failed(format!("the agent rejected the push: {why}")));
        }
        match self.convergence() {
            Convergence::Converged | Convergence::Waiting => Some(Outcome::Done),
            Convergence::Pending => None,
            Convergence::Failed => Some(Outcome::Failed(self.failure())),
        }
    }

    /// The failed interfaces of the published set (at most three), or why
    /// the set cannot be pushed.
    fn failure(&self) -> String {
        if let Some(why) = &self.undeliverable {
            return format!("the desired set cannot be pushed: {why}");
        }
        let published = self.published.borrow();
        let failed: Vec<String> = published
            .iter()
            .flat_map(|p| p.set.iter())
            .filter_map(|spec| self.interfaces.get(&spec.mac))
            .filter(|r| matches!(r.status.state, InterfaceState::Failed | InterfaceState::Refused))
            .take(3)
            .map(|r| {
                let who = r.status.name.map_or_else(|| r.status.mac.to_string(), |n| n.to_string());
                format!("{who} {}: {}: {}", r.status.state.as_str(), r.status.code.as_str(), r.status.message)
            })
            .collect();
        failed.join("; ")
    }

    /// The database's set with the guard's holds, within [`MAX_PUSH_BYTES`].
    ///
    /// Held MACs tell the agent what to keep; it can only keep what it has,
    /// at most its capacity. So a set too large to send carries only the
    /// held MACs the agent has (it told us, since it connected); if that is
    /// not known, or the specs alone are too many, the set cannot be pushed.
    pub(super) fn set_to_push(&self) -> Result<DesiredSet, String> {
        let desired = &self.desired.set;
        let specs = || desired.iter().map(|s| (s.mac, *s)).collect::<BTreeMap<_, _>>();
        let full = if self.guarded.is_empty() {
            desired.clone()
        } else {
            DesiredSet::from_parts(specs(), desired.held().union(&self.guarded).copied().collect())
        };
        let bytes = wire_bound(&full);
        if bytes <= MAX_PUSH_BYTES {
            return Ok(full);
        }
        let too_large = format!(
            "its desired set ({} interfaces, {} held MACs) needs up to {} KiB, over the {} KiB message limit",
            desired.len(),
            full.held().len(),
            bytes / 1024,
            MAX_PUSH_BYTES / 1024
        );
        if !self.inventory_known {
            return Err(format!(
                "{too_large}; only the held MACs the agent has can be sent, and it has not said yet what it has \
                 (it will once it is connected and answers a push that fits): fix the rejected rows"
            ));
        }
        let have: BTreeSet<MacAddress> = self.inventory().copied().collect();
        let held = full.held().intersection(&have).copied().collect();
        let trimmed = DesiredSet::from_parts(specs(), held);
        let bytes = wire_bound(&trimmed);
        if bytes > MAX_PUSH_BYTES {
            return Err(format!("{too_large}, {} KiB even without the held MACs the node lacks", bytes / 1024));
        }
        Ok(trimmed)
    }

    /// What status shows as wrong with the node as a whole at `now`; a push
    /// counts as unanswered after `answer_within`.
    pub(super) fn problems(&self, now: SystemTime, answer_within: Duration) -> Vec<NodeProblem> {
        let mut problems = Vec::new();
        if let Some(why) = &self.undeliverable {
            let message = format!("the desired set cannot be pushed: {why}");
            problems.push(NodeProblem { code: ErrorCode::PushTooLarge, message });
        }
        if let Some(why) = &self.rejected {
            let message = format!("the agent rejected the last push: {why}");
            problems.push(NodeProblem { code: ErrorCode::PushRejected, message });
        }
        if let Some(u) = self.unanswered
            && let Ok(waited) = now.duration_since(u.since)
            && waited >= answer_within
        {
            let message = format!(
                "push of generation {} unanswered for {}: the agent may be stuck applying it",
                u.generation,
                human(waited)
            );
            problems.push(NodeProblem { code: ErrorCode::PushUnanswered, message });
        }
        problems
    }

    /// Publishes `set` if it differs from what is published; returns whether it did.
    fn publish(&mut self, set: &DesiredSet) -> bool {
        let current = self.published.borrow().as_ref().map(|p| p.set.digest().clone());
        if current.as_ref() == Some(set.digest()) {
            return false;
        }
        self.generation += 1;
        self.published.send_replace(Some(Arc::new(Published {
            generation: self.generation,
            set: set.clone(),
            at: Instant::now(),
        })));
        true
    }

    pub(super) fn convergence(&self) -> Convergence {
        if self.undeliverable.is_some() || self.rejected.is_some() {
            return Convergence::Failed;
        }
        let published = self.published.borrow();
        let Some(published) = published.as_ref() else { return Convergence::Pending };
        match &self.applied {
            Some(applied) if applied.digest == *published.set.digest() => {}
            _ => return Convergence::Pending,
        }
        let mut verdict = Convergence::Converged;
        for spec in published.set.iter() {
            match self.interfaces.get(&spec.mac).map(|r| r.status.state) {
                Some(InterfaceState::Failed | InterfaceState::Refused) => return Convergence::Failed,
                Some(InterfaceState::Waiting) => verdict = Convergence::Waiting,
                Some(InterfaceState::Applied) => {}
                _ => return Convergence::Pending,
            }
        }
        verdict
    }
}

/// What an agent reported, by MAC: a short sorted list. A node has a
/// handful of interfaces, and a map's node would reserve room for eleven
/// records (about 1 KB) for each of ten thousand nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Records(Vec<(MacAddress, InterfaceRecord)>);

impl Records {
    pub(super) fn get(&self, mac: &MacAddress) -> Option<&InterfaceRecord> {
        self.0.binary_search_by(|(m, _)| m.cmp(mac)).ok().map(|i| &self.0[i].1)
    }

    /// A copy for status views.
    pub(super) fn to_map(&self) -> BTreeMap<MacAddress, InterfaceRecord> {
        self.0.iter().cloned().collect()
    }
}

/// An upper bound of a set's size on the wire: a spec is at most 69 bytes (a
/// 17-character MAC, an IPv6 address with its prefix in at most 43
/// characters, an MTU, tags and lengths), a held MAC 19, the rest of the
/// message (generation, nonce, digest, envelope) under 128.
pub fn wire_bound(set: &DesiredSet) -> usize {
    128 + 72 * set.len() + 20 * set.held().len()
}

/// `2m13s`, `45s`, `1h2m`: how long, for people.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Stores per-interface statuses for `pushed`, keeping `since` for unchanged states.
pub(super) fn apply_report(entry: &mut NodeEntry, pushed: &Published, generation: u64, statuses: &[InterfaceStatus]) {
    let now = SystemTime::now();
    let mut interfaces = BTreeMap::new();
    for status in statuses {
        let spec = pushed.set.get(&status.mac).copied();
        let old = entry.interfaces.get(&status.mac);
        let kept_applied = old.and_then(|o| o.applied);
        let removal_failed = status.state == InterfaceState::Failed && kept_applied.is_some();
        if status.state == InterfaceState::Removed
            || (spec.is_none() && !pushed.set.is_held(&status.mac) && !removal_failed)
        {
            continue; // removed (a second file of a kept MAC, too), or not part of this set
        }
        let since = match old {
            Some(old) if old.status.state == status.state && old.status.code == status.code && old.spec == spec => {
                old.since
            }
            _ => now,
        };
        // A failed attempt was rolled back and a refused or held MAC left as
        // it was: the node keeps what it last applied.
        let applied = match status.state {
            InterfaceState::Applied => spec,
            InterfaceState::Waiting | InterfaceState::Removed => None,
            _ => kept_applied,
        };
        interfaces.insert(status.mac, InterfaceRecord { status: status.clone(), spec, applied, since });
    }
    entry.interfaces = Records(interfaces.into_iter().collect());
    // Held MACs the agent did not mention stay: it keeps them.
    let kept = entry.inventory().filter(|mac| pushed.set.is_held(mac)).copied();
    let reported =
        present_in(statuses).into_iter().filter(|mac| pushed.set.get(mac).is_some() || pushed.set.is_held(mac));
    let inventory = reported.chain(kept).collect();
    entry.take_inventory(inventory, Some(&pushed.set));
    entry.inventory_known = true;
    entry.applied = Some(Applied { generation, digest: pushed.set.digest().clone(), at: now });
    entry.last_seen = Some(now);
    entry.unanswered = None;
    entry.rejected = None;
}

/// The MACs a node's agent has configured (or keeps), from its statuses.
pub(super) fn present_in(statuses: &[InterfaceStatus]) -> BTreeSet<MacAddress> {
    statuses.iter().filter(|s| crate::claims::has_it(s)).map(|s| s.mac).collect()
}
