//! How many streams one identity may hold open at once.
//!
//! A node needs one agent stream (two for a moment while it reconnects) and
//! an operator a few watches; one certificate holding thousands of streams
//! costs the controller memory and tasks for nothing. Streams beyond the
//! limit are refused with `RESOURCE_EXHAUSTED` naming the identity and the
//! limit. Peers without an identity (`--insecure`, development only) are not
//! limited: there is nothing to count them by.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

/// Open agent streams one node certificate may hold.
pub const AGENT_STREAMS_PER_NODE: usize = 4;
/// Open watches one operator certificate may hold.
pub const WATCHES_PER_OPERATOR: usize = 16;

/// Open streams per identity.
#[derive(Debug)]
pub struct StreamLimits {
    what: &'static str,
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    key: String,
}

impl StreamLimits {
    /// At most `max` streams of kind `what` (for messages) per identity.
    pub fn new(what: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self { what, max, open: Mutex::new(HashMap::new()) })
    }

    /// Counts a new stream of `identity`, or refuses it over the limit.
    pub fn open(self: &Arc<Self>, identity: &str) -> Result<StreamPermit, Status> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(identity.to_owned()).or_default();
        if *count >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{identity} already has {} open {} (the limit): close one first",
                self.max, self.what
            )));
        }
        *count += 1;
        Ok(StreamPermit { limits: self.clone(), key: identity.to_owned() })
    }

    /// Open streams of `identity`.
    pub fn count(&self, identity: &str) -> usize {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(identity).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_beyond_the_limit_are_refused_until_one_closes() {
        let limits = StreamLimits::new("agent streams", 2);
        let a = limits.open("node a").unwrap();
        let _b = limits.open("node a").unwrap();
        let err = limits.open("node a").unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("node a already has 2 open agent streams"), "{}", err.message());
        let _other = limits.open("node b").expect("other identities are counted apart");
        drop(a);
        assert_eq!(limits.count("node a"), 1);
        let _c = limits.open("node a").expect("room again");
    }
}
