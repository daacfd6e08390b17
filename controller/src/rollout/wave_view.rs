//! One wave of a rollout as status shows it: a borrowed view, never a copy
//! of the rollout's nodes.

use std::time::SystemTime;

use super::{NodeState, Rollout, RolloutNode, Wave};

/// One wave as status shows it.
#[derive(Debug, Clone, Copy)]
pub struct WaveView<'a> {
    pub(super) rollout: &'a Rollout,
    /// 0 is the canary.
    pub number: usize,
    pub(super) wave: &'a Wave,
}

impl<'a> WaveView<'a> {
    pub fn released_at(&self) -> Option<SystemTime> {
        self.wave.released_at
    }

    pub fn len(&self) -> usize {
        self.wave.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wave.nodes.is_empty()
    }

    /// Its nodes in release order.
    pub fn nodes(&self) -> impl Iterator<Item = &'a RolloutNode> + 'a {
        let rollout = self.rollout;
        self.wave.nodes.iter().map(move |&i| &rollout.nodes[i])
    }

    /// Pending until released; released until every node reported; failed
    /// when a node failed; done.
    pub fn state(&self) -> NodeState {
        if self.wave.released_at.is_none() {
            return NodeState::Pending;
        }
        let mut state = NodeState::Done;
        for node in self.nodes() {
            match node.state {
                NodeState::Failed => return NodeState::Failed,
                NodeState::Released | NodeState::Pending => state = NodeState::Released,
                NodeState::Done => {}
            }
        }
        state
    }
}
