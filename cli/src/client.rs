//! Connecting to the controller's `FleetService`.

use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Channel, Endpoint};

/// How to reach the controller.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The controller's gRPC address (host:port or URL).
    #[arg(long, global = true, env = "MULTINIC_CONTROLLER", default_value = "127.0.0.1:50051")]
    pub controller: String,

    /// Connect without TLS (development only).
    #[arg(long, global = true, env = "MULTINIC_INSECURE")]
    pub insecure: bool,

    /// How long to wait for the controller.
    #[arg(long, global = true, default_value = "5s", value_parser = multinic_proto::runtime::parse_duration)]
    pub timeout: Duration,
}

impl ConnectArgs {
    /// The URL tried, for error messages.
    pub fn url(&self) -> String {
        multinic_agent::controller_url(&self.controller, !self.insecure)
    }

    /// A connected fleet client, or a one-line error naming the address.
    pub async fn fleet(&self) -> anyhow::Result<FleetServiceClient<Channel>> {
        let url = self.url();
        if !self.insecure {
            return Err(anyhow!("mTLS is not available in this build yet; pass --insecure"));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid controller address {:?}", self.controller))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the controller at {url}: {}", root_cause(&e)))?;
        Ok(FleetServiceClient::new(channel))
    }
}

/// The innermost error message (e.g. "Connection refused (os error 111)").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
