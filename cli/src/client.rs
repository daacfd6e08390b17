//! Connecting to the controller's `FleetService`: mTLS with an operator
//! certificate unless `--insecure`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_tls::ClientTls;
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

    /// PEM operator certificate (spiffe://<trust-domain>/multinic/operator/<name>).
    #[arg(long, global = true, env = "MULTINIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "MULTINIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle the controller's certificate must chain to.
    #[arg(long, global = true, env = "MULTINIC_CA")]
    pub ca: Option<PathBuf>,

    /// Check the controller's certificate for this name instead of the host of --controller.
    #[arg(long, global = true, env = "MULTINIC_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// How long to wait for the controller.
    #[arg(long, global = true, default_value = "5s", value_parser = multinic_runtime::parse_duration)]
    pub timeout: Duration,
}

impl ConnectArgs {
    /// The URL tried, for error messages.
    pub fn url(&self) -> String {
        multinic_tls::client::controller_url(&self.controller, !self.insecure)
    }

    /// A connected fleet client, or a one-line error naming the address.
    pub async fn fleet(&self) -> anyhow::Result<FleetServiceClient<Channel>> {
        let url = self.url();
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid controller address {:?}", self.controller))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let channel = match self.tls()? {
            None => endpoint.connect().await,
            Some(tls) => tls.connect(&endpoint).await,
        };
        let channel = channel.map_err(|e| anyhow!("cannot reach the controller at {url}: {}", root_cause(&e)))?;
        Ok(FleetServiceClient::new(channel))
    }

    /// The operator's TLS client; `None` with `--insecure`.
    fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        if self.insecure {
            return Ok(None);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.tls_cert, &self.tls_key) else {
            bail!(
                "the controller requires mTLS: pass --ca, --tls-cert and --tls-key (MULTINIC_CA, MULTINIC_TLS_CERT, \
                 MULTINIC_TLS_KEY) with an operator certificate, e.g. from `multinicctl certs operator`"
            );
        };
        // A short-lived command: the files are read once.
        let tls = ClientTls::from_files(ca, cert, key, Duration::from_secs(3600)).context("TLS material")?;
        Ok(Some(tls.with_server_name(self.tls_server_name.as_deref())?))
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
