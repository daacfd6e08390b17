//! Turns agents' reports into `netplan_success` writes, batched.
//!
//! Sessions and the poll loop only mark nodes dirty; one task computes the
//! writes every dirty node calls for and applies them in one transaction.
//! A failed write is retried; a write already made is not repeated while the
//! database still shows the old value in a snapshot read before it landed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use multinic_proto::NodeName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::{RowContent, RowUpdate, Store};

enum Dirty {
    Node(NodeName),
    All,
}

/// Marks nodes whose rows may need a write.
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    tx: mpsc::UnboundedSender<Dirty>,
}

impl std::fmt::Debug for Dirty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "Node({n})"),
            Self::All => f.write_str("All"),
        }
    }
}

impl RecorderHandle {
    /// The node's reports changed.
    pub fn dirty(&self, node: NodeName) {
        let _ = self.tx.send(Dirty::Node(node));
    }

    /// A new snapshot arrived: every node's rows may need a write.
    pub fn all_dirty(&self) {
        let _ = self.tx.send(Dirty::All);
    }
}

/// Starts the recorder task.
pub fn spawn(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (RecorderHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(store, fleet, metrics, rx, shutdown));
    (RecorderHandle { tx }, task)
}

async fn run(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Dirty>,
    shutdown: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(1);
    // Writes made, by row id, with the content they were for.
    let mut written: HashMap<i64, (RowContent, bool)> = HashMap::new();
    let mut pending: BTreeSet<NodeName> = BTreeSet::new();
    let mut all = false;
    loop {
        if pending.is_empty() && !all {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(d) => take(d, &mut pending, &mut all),
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
        while let Ok(d) = rx.try_recv() {
            take(d, &mut pending, &mut all);
        }
        let nodes: Vec<NodeName> = if all { fleet.node_names() } else { pending.iter().cloned().collect() };
        let wanted: Vec<RowUpdate> = nodes.iter().flat_map(|node| fleet.row_updates(node)).collect();
        if all {
            // A row whose fresh snapshot no longer calls for the write we made
            // shows our value (or changed): forget it. Keep the rest, read
            // before our write landed, so the write is not repeated.
            written.retain(|id, (content, success)| {
                wanted.iter().any(|u| u.id == *id && u.content == *content && u.success == *success)
            });
        }
        let updates: Vec<RowUpdate> = wanted
            .into_iter()
            .filter(|u| !matches!(written.get(&u.id), Some((c, s)) if *c == u.content && *s == u.success))
            .collect();
        if updates.is_empty() {
            pending.clear();
            all = false;
            continue;
        }
        match store.record(&updates).await {
            Ok(changed) => {
                debug!(rows = updates.len(), changed, "recorded netplan_success");
                metrics.rows_recorded(&updates);
                for RowUpdate { id, success, content } in updates {
                    written.insert(id, (content, success));
                }
                pending.clear();
                all = false;
            }
            Err(error) => {
                metrics.db_write_errors.inc();
                warn!(rows = updates.len(), error = %error, "cannot record netplan_success; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

fn take(d: Dirty, pending: &mut BTreeSet<NodeName>, all: &mut bool) {
    match d {
        Dirty::Node(n) => {
            pending.insert(n);
        }
        Dirty::All => *all = true,
    }
}
