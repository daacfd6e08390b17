//! The write-back's input: which `netplan_success` values a node's reports
//! call for, for the recorder (`crate::recorder`) to write.
//!
//! Pure over the fleet's state: it compares what the agent reported with
//! each row as last published from the copy of the rows (`RowCopy`) and
//! returns only the values that differ. It never writes, and never returns
//! a value for a row it does not hold. Until the copy shows a write made,
//! it keeps calling for it; the recorder's own memory of its writes covers
//! that gap (see `crate::recorder`).

use multinic_proto::NodeName;

use super::Fleet;
use crate::store::RowUpdate;

impl Fleet {
    /// What the recorder should write for a node.
    pub fn write_back(&self) -> WriteBack<'_> {
        WriteBack { fleet: self }
    }
}

/// The recorder's input; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct WriteBack<'a> {
    fleet: &'a Fleet,
}

impl WriteBack<'_> {
    /// The `netplan_success` writes that the node's reports call for: 1 for
    /// rows whose exact content the agent applied, 0 for rows it failed,
    /// refused or waits for, 0 for invalid rows, and 0 for rows whose
    /// content changed in this run until the node confirms the new content.
    /// Only rows whose stored value differs are returned.
    pub fn row_updates(&self, node: &NodeName) -> Vec<RowUpdate> {
        let Some(entry) = self.fleet.nodes.get(node) else { return Vec::new() };
        let mut updates = Vec::new();
        for (mac, rows) in &entry.desired.rows {
            let held = entry.desired.set.is_held(mac);
            let record = entry.interfaces.get(mac);
            for row in rows {
                let unconfirmed = row.stale.then_some(false);
                let wanted = match (row.spec, record) {
                    (None, _) => Some(false),
                    (Some(_), _) if held => unconfirmed,
                    (Some(spec), Some(record)) if record.spec == Some(spec) => {
                        record.status.state.netplan_success().or(unconfirmed)
                    }
                    _ => unconfirmed,
                };
                if let Some(success) = wanted
                    && success != row.netplan_success
                {
                    updates.push(RowUpdate { id: row.id, success, content: row.content.clone() });
                }
            }
        }
        updates
    }
}
