//! A change round's rollout as the controller reports it: how many waves,
//! their sizes, the time from each wave's release to the next's, and the
//! whole rollout's time.
//!
//! Exists because a change of more nodes than the controller's
//! `--rollout-threshold` is released in waves: the benchmark shows them
//! beside the round's latency. Asked over `FleetService.GetRollout` with an
//! operator certificate, like `multinicctl rollout status`; it never acts
//! on a rollout.

use std::time::{Duration, Instant};

use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, RolloutState};
use multinic_testkit::certs::TestPki;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::BenchError;
use crate::server::ServerProcess;

/// One rollout's waves.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Waves {
    pub rollout: u64,
    pub sizes: Vec<u32>,
    /// Seconds from each wave's release to the next one's (the last: to the
    /// rollout's completion).
    pub wave_s: Vec<f64>,
    /// From the rollout's start to its completion.
    pub total_s: f64,
}

impl Waves {
    /// `13 waves (1, 2, 4, …), per wave 0.01–0.21 s, total 1.4 s`.
    pub fn summary(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(u32::to_string).collect();
        let (low, high) = self.wave_s.iter().fold((f64::MAX, 0.0f64), |(l, h), &s| (l.min(s), h.max(s)));
        format!(
            "rollout {}: {} waves ({}), per wave {:.2}-{:.2} s, total {:.2} s",
            self.rollout,
            self.sizes.len(),
            sizes.join(", "),
            if self.wave_s.is_empty() { 0.0 } else { low },
            high,
            self.total_s
        )
    }
}

/// The controller's current rollout once it has completed (`None`: there
/// is none, or it is not rollout `after + 1` or later, i.e. the round's
/// change went at once).
pub async fn completed(
    pki: &TestPki,
    controller: &ServerProcess,
    after: u64,
    timeout: Duration,
) -> Result<Option<Waves>, BenchError> {
    let mut client = client(pki, controller).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let Some(status) = get(&mut client).await? else { return Ok(None) };
        if !status.present || status.id <= after {
            return Ok(None);
        }
        match status.state() {
            RolloutState::Completed => return Ok(Some(of(&status))),
            RolloutState::Running => {}
            other => {
                return Err(BenchError::Check(format!(
                    "rollout {} is {}: {}",
                    status.id,
                    other.as_str_name(),
                    status.reason
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout { what: format!("rollout {} completed", status.id) });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id of the controller's current (or last) rollout, 0 for none.
pub async fn current_id(pki: &TestPki, controller: &ServerProcess) -> Result<u64, BenchError> {
    let status = get(&mut client(pki, controller).await?).await?;
    Ok(status.filter(|s| s.present).map_or(0, |s| s.id))
}

/// A `FleetService` client with an operator certificate.
async fn client(pki: &TestPki, controller: &ServerProcess) -> Result<FleetServiceClient<Channel>, BenchError> {
    let tls = pki.client_tls(&pki.operator("bench"));
    let endpoint = Endpoint::from_shared(controller.url()).map_err(|e| BenchError::Setup(e.to_string()))?;
    let channel = tls.connect(&endpoint).await.map_err(|e| BenchError::Setup(format!("operator connect: {e}")))?;
    Ok(FleetServiceClient::new(channel))
}

/// The rollout status; `None` from a controller that predates rollouts (so
/// that the benchmark can measure an older binary, `--controller-bin`).
async fn get(client: &mut FleetServiceClient<Channel>) -> Result<Option<v1::RolloutStatus>, BenchError> {
    match client.get_rollout(v1::GetRolloutRequest {}).await {
        Ok(status) => Ok(Some(status.into_inner())),
        Err(e) if e.code() == tonic::Code::Unimplemented => Ok(None),
        Err(e) => Err(BenchError::Check(format!("GetRollout: {}", e.message()))),
    }
}

fn of(status: &v1::RolloutStatus) -> Waves {
    let released: Vec<i64> = status.waves.iter().map(|w| w.released_unix_ms).collect();
    let ends = released.iter().skip(1).copied().chain([status.updated_unix_ms]);
    let wave_s = released.iter().zip(ends).map(|(from, to)| (to - from).max(0) as f64 / 1000.0).collect();
    Waves {
        rollout: status.id,
        sizes: status.waves.iter().map(|w| w.nodes_total).collect(),
        wave_s,
        total_s: (status.updated_unix_ms - status.started_unix_ms).max(0) as f64 / 1000.0,
    }
}
