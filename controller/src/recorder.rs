//! Turns agents' reports into `netplan_success` writes, batched.
//!
//! Sessions and the poll loop only mark nodes dirty; one task computes the
//! writes the dirty nodes call for and applies them together (one
//! transaction, a few hundred rows per statement). Work is per dirty node,
//! never per fleet. A failed write is retried. A write already made is not
//! repeated while the controller's copy of the row still shows the old
//! value; every write made is handed back to the poll loop, which notes it
//! in its copy of the rows (a read that started before the write cannot
//! undo it: the poll loop applies writes after each read).
//!
//! Why a write made is remembered twice, here (`Written`) and in the copy of
//! the rows (`RowCopy::recorded`): the copy is the owner, the one place a
//! row's stored `netplan_success` (and whether it is stale) is known, and
//! what [`crate::fleet::WriteBack::row_updates`] compares against once the
//! poll loop republishes the node. But the copy belongs to the poll loop's
//! task and takes a write only after that task's next good read (it drains
//! the channel then), a poll interval later at best. Until then every report
//! of the node marks it dirty again and the fleet still calls for the same
//! value: `Written` covers that gap, so no UPDATE is repeated. It is never
//! the truth about a row: an entry is forgotten as soon as the node's rows no
//! longer call for that exact write (the copy caught up, or the row's content
//! changed), so it holds only writes the copy does not show yet, and a failed
//! write (never entered) is never hidden by it.

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

/// Marks nodes whose rows may need a write.
#[derive(Debug, Clone)]
pub struct RecorderHandle {
    tx: mpsc::UnboundedSender<Vec<NodeName>>,
}

impl RecorderHandle {
    /// The node's reports (or rows) changed.
    pub fn dirty(&self, node: NodeName) {
        let _ = self.tx.send(vec![node]);
    }

    /// These nodes' rows changed.
    pub fn dirty_nodes(&self, nodes: Vec<NodeName>) {
        if !nodes.is_empty() {
            let _ = self.tx.send(nodes);
        }
    }
}

/// The running recorder.
#[derive(Debug)]
pub struct Recorder {
    pub handle: RecorderHandle,
    pub task: tokio::task::JoinHandle<()>,
    /// Every batch of writes that landed, for the poll loop's copy of the rows.
    pub recorded: mpsc::UnboundedReceiver<Vec<RowUpdate>>,
}

/// Starts the recorder task.
pub fn spawn(store: Arc<dyn Store>, fleet: Arc<Fleet>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Recorder {
    let (tx, rx) = mpsc::unbounded_channel();
    let (recorded_tx, recorded) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(store, fleet, metrics, rx, recorded_tx, shutdown));
    Recorder { handle: RecorderHandle { tx }, task, recorded }
}

/// Writes made, per node, by row id, with the content they were for, until
/// the copy of the rows shows them (see the module docs).
type Written = HashMap<NodeName, HashMap<i64, (RowContent, bool)>>;

async fn run(
    store: Arc<dyn Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Vec<NodeName>>,
    recorded: mpsc::UnboundedSender<Vec<RowUpdate>>,
    shutdown: CancellationToken,
) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut written = Written::new();
    let mut pending: BTreeSet<NodeName> = BTreeSet::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(nodes) => pending.extend(nodes),
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
        while let Ok(nodes) = rx.try_recv() {
            pending.extend(nodes);
        }
        let nodes = std::mem::take(&mut pending);
        let updates = wanted_writes(&fleet, &nodes, &mut written);
        if updates.is_empty() {
            continue;
        }
        let rows: Vec<RowUpdate> = updates.iter().map(|(_, u)| u.clone()).collect();
        match store.record(&rows).await {
            Ok(changed) => {
                debug!(rows = rows.len(), changed, nodes = nodes.len(), "recorded netplan_success");
                metrics.rows_recorded(&rows);
                for (node, RowUpdate { id, success, content }) in updates {
                    written.entry(node).or_default().insert(id, (content, success));
                }
                let _ = recorded.send(rows);
            }
            Err(error) => {
                metrics.db_write_errors.inc();
                warn!(rows = rows.len(), error = %error, "cannot record netplan_success; retrying");
                pending.extend(nodes);
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The writes `nodes` call for now, minus those already made. A write made
/// is forgotten once the node's rows no longer call for it (the copy shows
/// our value, or the row changed).
fn wanted_writes(fleet: &Fleet, nodes: &BTreeSet<NodeName>, written: &mut Written) -> Vec<(NodeName, RowUpdate)> {
    let mut out = Vec::new();
    for node in nodes {
        let wanted = fleet.write_back().row_updates(node);
        if let Some(made) = written.get_mut(node) {
            // By id: a node's rows can be many thousands (a scan per write
            // made would be quadratic).
            let by_id: HashMap<i64, &RowUpdate> = wanted.iter().map(|u| (u.id, u)).collect();
            made.retain(|id, (content, success)| {
                by_id.get(id).is_some_and(|u| u.content == *content && u.success == *success)
            });
            if made.is_empty() {
                written.remove(node);
            }
        }
        let made = written.get(node);
        out.extend(
            wanted
                .into_iter()
                .filter(|u| {
                    !made.is_some_and(|m| matches!(m.get(&u.id), Some((c, s)) if *c == u.content && *s == u.success))
                })
                .map(|u| (node.clone(), u)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_fleet;
    use crate::store::{ActiveRows, InterfaceRow};
    use multinic_proto::{AgentHello, AgentReport, InterfaceName, InterfaceStatus, Outcome};

    fn snapshot(success: i64) -> ActiveRows {
        ActiveRows {
            rows: vec![InterfaceRow {
                id: 1,
                macaddress: "fa:16:3e:00:00:01".into(),
                attached_node_name: Some("a".into()),
                address: None,
                cidr: None,
                subnet_cidr: None,
                mtu: Some(1500),
                netplan_success: success,
            }],
        }
    }

    #[test]
    fn a_write_is_not_repeated_until_the_rows_show_it() {
        let fleet = Fleet::new();
        let a: NodeName = "a".parse().unwrap();
        fleet.publisher().publish(desired_fleet(&snapshot(0)));
        let hello = AgentHello {
            node: a.clone(),
            agent_version: "t".into(),
            backend: "netplan".into(),
            apply_mode: "none".into(),
            applied_digest: None,
            interfaces: vec![],
        };
        let (session, rx, _) = fleet.sessions().connect(&hello);
        let pushed = rx.borrow().clone().unwrap();
        let status =
            InterfaceStatus::applied(pushed.set.iter().next().unwrap().mac, InterfaceName::new(0, 10).unwrap());
        let report = AgentReport {
            generation: pushed.generation,
            nonce: 1,
            digest: Some(pushed.set.digest().clone()),
            outcome: Outcome::Applied,
            interfaces: vec![status],
            error: String::new(),
            drift: Vec::new(),
        };
        fleet.sessions().record(&a, session, &pushed, &report).unwrap();

        let nodes: BTreeSet<NodeName> = [a.clone()].into();
        let mut written = Written::new();
        let first = wanted_writes(&fleet, &nodes, &mut written);
        assert_eq!(first.iter().map(|(_, u)| (u.id, u.success)).collect::<Vec<_>>(), vec![(1, true)]);
        for (node, u) in first {
            written.entry(node).or_default().insert(u.id, (u.content, u.success));
        }
        assert!(wanted_writes(&fleet, &nodes, &mut written).is_empty(), "made already: not repeated");
        assert_eq!(written.len(), 1, "remembered while the rows still show 0");
        fleet.publisher().publish(desired_fleet(&snapshot(1)));
        assert!(wanted_writes(&fleet, &nodes, &mut written).is_empty());
        assert!(written.is_empty(), "forgotten once the rows show it");
    }
}
