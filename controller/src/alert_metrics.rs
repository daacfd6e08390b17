//! The metrics the chart's alerting rules need beyond the counters of
//! [`crate::metrics`]: which replica is active, when the certificates the
//! controller serves with expire, and which nodes are not converged.
//!
//! They are all read from live state when `/metrics` is scraped, so they
//! follow a certificate reload or a lost lock at the next scrape without any
//! bookkeeping of their own. A standby replica lists no nodes: only the
//! active one knows the fleet, and two replicas naming the same node would
//! make one alert out of two opinions.
//!
//! This module never changes what it reads, and never names anything but a
//! node and the state `multinicctl get node` shows for it (no addresses, no
//! MACs), for at most [`MAX_LISTED_NODES`] nodes: the per-node details are
//! `multinicctl`'s, the metric only says which nodes to look at.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use multinic_tls::{CertificateAuthority, CertificateInfo, Live, ServerTls};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::fleet::Fleet;
use crate::tls::Transport;

type Labels = Vec<(&'static str, String)>;

/// At most this many nodes are listed (the first by name): enough for any
/// alert to name a node worth a look, while a fleet-wide event (every agent
/// away after a controller start) costs a scrape about 85 KB, not 80 bytes
/// per node. `multinic_controller_nodes{state}` still counts them all.
pub const MAX_LISTED_NODES: usize = 1000;

/// The alerting metrics, registered under the controller's prefix.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    /// 1 while this replica holds the controller lock.
    pub active: Gauge,
    /// `notAfter` of each certificate the controller serves or signs with.
    pub certificate_expiration: Family<Labels, Gauge>,
    /// One series per node that is not converged, by state.
    pub node_not_converged: Family<Labels, Gauge>,
}

impl AlertMetrics {
    /// Registers the metrics in `registry` (prefixed `multinic_controller`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("active", "1 while this replica holds the controller lock and acts", m.active.clone());
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "When a certificate in use expires (Unix time), by certificate: server (the gRPC and issuer ports), \
             issuer_ca (signs node certificates)",
            m.certificate_expiration.clone(),
        );
        registry.register(
            "node_not_converged",
            "1 for each node the active replica knows that is not converged (the first 1000 by name), by state: \
             pending, failed, waiting, or disconnected (rows in the database, no agent stream)",
            m.node_not_converged.clone(),
        );
        m
    }

    /// Reads the fleet and the certificates; called on every scrape.
    pub fn refresh(&self, fleet: &Fleet, certificates: &WatchedCertificates) {
        let active = fleet.leadership().is_active();
        self.active.set(i64::from(active));
        self.node_not_converged.clear();
        if active {
            for (node, state) in fleet.view().unconverged_nodes(MAX_LISTED_NODES) {
                self.node_not_converged
                    .get_or_create(&vec![("node", node.to_string()), ("state", state.into())])
                    .set(1);
            }
        }
        for (name, not_after) in certificates.expirations() {
            self.certificate_expiration
                .get_or_create(&vec![("certificate", name.to_owned())])
                .set(unix_seconds(not_after));
        }
    }
}

/// The TLS material whose expiry is exported: the live values the
/// handshakes use, so a reloaded file shows at the next scrape.
#[derive(Debug, Clone, Default)]
pub struct WatchedCertificates {
    server: Option<ServerTls>,
    issuer_ca: Option<Live<CertificateAuthority>>,
}

impl WatchedCertificates {
    /// What `transport` serves with (nothing with `--insecure`).
    pub fn of(transport: &Transport) -> Self {
        match transport {
            Transport::Insecure => Self::default(),
            Transport::Mutual(tls) => Self {
                server: Some(tls.server.clone()),
                issuer_ca: tls.issuer.as_ref().map(|issuer| issuer.ca.clone()),
            },
        }
    }

    /// `(certificate, notAfter)` of each certificate in use now.
    pub fn expirations(&self) -> Vec<(&'static str, SystemTime)> {
        let mut out = Vec::new();
        if let Some(server) = &self.server {
            let current = server.current_certificate();
            // A CertifiedKey always holds the chain it was built from, which
            // `pem::certificates` refuses to leave empty.
            if let Some(Ok(info)) = current.cert.first().map(|der| CertificateInfo::from_der(der)) {
                out.push(("server", info.not_after));
            }
        }
        if let Some(ca) = &self.issuer_ca {
            let ca: Arc<CertificateAuthority> = ca.borrow().clone();
            out.push(("issuer_ca", ca.info().not_after));
        }
        out
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unix_seconds_is_whole_seconds_and_never_negative() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)), 1_700_000_000);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn an_active_replica_lists_the_first_nodes_by_name_and_no_more() {
        use crate::desired::desired_fleet;
        use crate::store::{ActiveRows, InterfaceRow};

        let rows = (0..=MAX_LISTED_NODES)
            .map(|i| {
                InterfaceRow::plain(
                    i as i64,
                    &format!("node-{i:04}"),
                    &format!("fa:16:3e:00:{:02x}:{:02x}", i >> 8, i & 0xff),
                    1500,
                    0,
                )
            })
            .collect();
        let fleet = Fleet::new();
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
        fleet.leadership().set_active(true);
        let mut registry = Registry::with_prefix("multinic_controller");
        let metrics = AlertMetrics::register(&mut registry);
        metrics.refresh(&fleet, &WatchedCertificates::default());
        let text = encode(&registry);
        let listed: Vec<&str> =
            text.lines().filter(|l| l.starts_with("multinic_controller_node_not_converged{")).collect();
        assert_eq!(listed.len(), MAX_LISTED_NODES);
        assert!(
            listed.contains(&"multinic_controller_node_not_converged{node=\"node-0000\",state=\"disconnected\"} 1")
        );
        assert!(!text.contains(&format!("node-{MAX_LISTED_NODES:04}")), "the last by name is left out");
        assert!(text.contains("multinic_controller_active 1\n"), "{text}");

        // Losing the lock empties the list at the next scrape.
        fleet.leadership().set_active(false);
        metrics.refresh(&fleet, &WatchedCertificates::default());
        assert!(!encode(&registry).contains("multinic_controller_node_not_converged{"));
    }

    #[test]
    fn a_standby_lists_no_node_and_says_it_is_not_active() {
        let mut registry = Registry::with_prefix("multinic_controller");
        let metrics = AlertMetrics::register(&mut registry);
        let fleet = Fleet::new();
        metrics.refresh(&fleet, &WatchedCertificates::default());
        let text = encode(&registry);
        assert!(text.contains("multinic_controller_active 0\n"), "{text}");
        assert!(!text.contains("multinic_controller_node_not_converged{"), "{text}");
        assert!(!text.contains("multinic_controller_certificate_expiration_timestamp_seconds{"), "{text}");
    }
}
