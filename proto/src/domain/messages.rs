//! The domain form of the messages agents and the controller exchange.

use super::{DesiredSet, Digest, DriftFinding, InterfaceStatus, NodeName, Outcome};

/// One push of a node's desired set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPush {
    pub generation: u64,
    pub nonce: u64,
    pub set: DesiredSet,
}

/// The first message of an agent's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello {
    pub node: NodeName,
    pub agent_version: String,
    pub backend: String,
    pub apply_mode: String,
    pub applied_digest: Option<Digest>,
    pub interfaces: Vec<InterfaceStatus>,
}

/// An agent's answer to a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub generation: u64,
    pub nonce: u64,
    pub digest: Option<Digest>,
    pub outcome: Outcome,
    pub interfaces: Vec<InterfaceStatus>,
    /// Why the push was rejected as a whole; empty otherwise.
    pub error: String,
    /// What a drift check found and did; empty in the answer to a push.
    pub drift: Vec<DriftFinding>,
}
