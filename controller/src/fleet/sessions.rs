//! Agent sessions: a stream's Hello, pushes, reports and end, as the
//! stream's rules (`crate::grpc::stream_rules`) decide them.
//!
//! One session per node: a newer stream replaces the older, whose token is
//! cancelled. A report is recorded only for the node's current session and
//! only after [`crate::claims`] checked it; what an agent says it has may
//! change what the guard holds, and a report may release a rollout's next
//! wave. It never talks to the agent itself and
//! never believes a claim the stream did not check.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use multinic_proto::{AgentHello, AgentReport, NodeName, Outcome};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::node::{NodeEntry, SessionInfo, Unanswered, apply_report, present_in};
use super::rollouts::HelloSaid;
use super::{Fleet, Published};

/// Why a report was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("session {session} of node {node} was replaced by a newer connection")]
    SessionReplaced { node: NodeName, session: u64 },
    #[error("node {node} is unknown")]
    UnknownNode { node: NodeName },
}

impl Fleet {
    /// What the agent streams tell the fleet.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions { fleet: self }
    }
}

/// The agents' streams as the fleet records them; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'a> {
    fleet: &'a Fleet,
}

impl Sessions<'_> {
    /// Registers an agent's new stream (its Hello was checked by
    /// [`crate::claims::check_hello`]); a previous session of the node is
    /// replaced and its stream told to end. Returns the session id, the
    /// node's published set, and the token cancelled when a newer stream
    /// replaces this one.
    pub fn connect(&self, hello: &AgentHello) -> (u64, watch::Receiver<Option<Arc<Published>>>, CancellationToken) {
        let id = self.fleet.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let warming_up = self.fleet.warming_up();
        let mut entry = self.fleet.nodes.entry(hello.node.clone()).or_insert_with(NodeEntry::new);
        // Once made in the warm-up, a node's claims keep counting (its agent
        // reconnects at every connection age cap).
        entry.claims_count |= warming_up;
        // Hello lists what the agent has; a fresh agent (no digest, no
        // statuses) says nothing, and what was believed before still holds.
        if hello.applied_digest.is_some() || !hello.interfaces.is_empty() {
            entry.take_inventory(present_in(&hello.interfaces), None);
            entry.inventory_known = true;
            entry.reported_in = self.fleet.activation.load(Ordering::Relaxed);
        } else {
            entry.claimed.clear();
            entry.inventory_known = false;
        }
        let end = CancellationToken::new();
        if let Some(previous) = entry.session_end.replace(end.clone()) {
            previous.cancel();
        }
        entry.unanswered = None;
        let said = match &hello.applied_digest {
            Some(digest) => HelloSaid::Applied(digest.clone()),
            None => HelloSaid::Fresh,
        };
        self.fleet.hello_said(&mut entry, said);
        let now = SystemTime::now();
        entry.session = Some(SessionInfo {
            id,
            agent_version: hello.agent_version.clone(),
            backend: hello.backend.clone(),
            apply_mode: hello.apply_mode.clone(),
            since: now,
        });
        entry.last_seen = Some(now);
        let rx = entry.published.subscribe();
        drop(entry);
        // What the agent has may change what the guard holds, and a node the
        // database does not know gets the empty set.
        self.fleet.node_changed(&hello.node);
        let _ = self.fleet.changes.send(hello.node.clone());
        (id, rx, end)
    }

    /// Takes the agent's Hello as its report when it already processed the
    /// published set (e.g. after a controller restart): nothing is pushed.
    /// Returns the published set it adopted.
    pub fn adopt(&self, session: u64, hello: &AgentHello) -> Option<Arc<Published>> {
        let mut entry = self.fleet.nodes.get_mut(&hello.node)?;
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return None;
        }
        let published = entry.published.borrow().clone()?;
        if hello.applied_digest.as_ref() != Some(published.set.digest()) {
            return None;
        }
        // Statuses that do not fit the set are no report on it: push instead.
        if crate::claims::check_against_set(&published.set, &hello.interfaces).is_err() {
            return None;
        }
        let generation = published.generation;
        apply_report(&mut entry, &published, generation, &hello.interfaces);
        entry.reported_in = self.fleet.activation.load(Ordering::Relaxed);
        drop(entry);
        self.fleet.node_changed(&hello.node);
        self.fleet.rollout_reported(&hello.node);
        let _ = self.fleet.changes.send(hello.node.clone());
        Some(published)
    }

    /// Records an agent's report on `pushed` (the set its nonce names; the
    /// report was checked against it by [`crate::claims::check_report`]). A
    /// rejected push changed nothing on the node: only the reason is kept.
    pub fn record(
        &self,
        node: &NodeName,
        session: u64,
        pushed: &Published,
        report: &AgentReport,
    ) -> Result<(), RecordError> {
        let mut entry =
            self.fleet.nodes.get_mut(node).ok_or_else(|| RecordError::UnknownNode { node: node.clone() })?;
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return Err(RecordError::SessionReplaced { node: node.clone(), session });
        }
        if report.outcome == Outcome::Rejected {
            entry.rejected = Some(format!("generation {}: {}", pushed.generation, report.error));
            entry.unanswered = None;
            entry.last_seen = Some(SystemTime::now());
            drop(entry);
            self.fleet.rollout_reported(node);
            let _ = self.fleet.changes.send(node.clone());
            return Ok(());
        }
        apply_report(&mut entry, pushed, pushed.generation, &report.interfaces);
        entry.reported_in = self.fleet.activation.load(Ordering::Relaxed);
        entry.record_drift(&report.drift, SystemTime::now());
        drop(entry);
        self.fleet.node_changed(node);
        self.fleet.rollout_reported(node);
        let _ = self.fleet.changes.send(node.clone());
        Ok(())
    }

    /// Marks the session's stream as gone (unless a newer one replaced it).
    /// What only the agent vouched for is forgotten, unless it was said in
    /// the guard's warm-up (then it counts until the agent says otherwise).
    pub fn disconnect(&self, node: &NodeName, session: u64) {
        let mut claims_dropped = false;
        if let Some(mut entry) = self.fleet.nodes.get_mut(node)
            && entry.session.as_ref().map(|s| s.id) == Some(session)
        {
            entry.session = None;
            entry.session_end = None;
            entry.unanswered = None;
            entry.last_seen = Some(SystemTime::now());
            if !entry.claims_count {
                claims_dropped = !entry.claimed.is_empty();
                entry.claimed.clear();
            }
        }
        if claims_dropped {
            self.fleet.node_changed(node);
        }
        let _ = self.fleet.changes.send(node.clone());
    }

    /// Notes that the session's stream pushed `generation` and waits for a report.
    pub fn pushed(&self, node: &NodeName, session: u64, generation: u64) {
        if let Some(mut entry) = self.fleet.nodes.get_mut(node)
            && entry.session.as_ref().map(|s| s.id) == Some(session)
        {
            entry.unanswered = Some(Unanswered { generation, since: SystemTime::now() });
        }
    }

    /// Whether `session` is still the node's current session.
    pub fn is_current(&self, node: &NodeName, session: u64) -> bool {
        self.fleet.nodes.get(node).is_some_and(|e| e.session.as_ref().map(|s| s.id) == Some(session))
    }

    /// Notes traffic from the node's agent.
    pub fn seen(&self, node: &NodeName) {
        if let Some(mut entry) = self.fleet.nodes.get_mut(node) {
            entry.last_seen = Some(SystemTime::now());
        }
    }
}
