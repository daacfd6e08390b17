//! Command-line flags of `multinic-controller`; every flag also reads an
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use multinic_runtime::{LogFormat, parse_duration, parse_duration_or_zero};
use multinic_tls::{CertificateAuthority, ServerTls, TrustDomain};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::issuer::token_review::{IN_CLUSTER_CA, IN_CLUSTER_TOKEN};
use crate::issuer::{IssuancePolicy, IssuerConfig, TokenReviewer};
use crate::rollout::{MaxUnavailable, RolloutConfig};
use crate::store::{self, DatabaseConfig};
use crate::tls::{TlsConfig, Transport};
use crate::{Controller, ControllerConfig};

/// Keeps the secondary NICs of every node in line with the multi_interface
/// table: polls the database, pushes each node's desired set to its agent
/// over gRPC, and records the outcome in netplan_success.
#[derive(Debug, Parser)]
#[command(name = "multinic-controller", version, about, long_about = None)]
pub struct Args {
    /// Database URL: mysql://user:pass@host:3306/db (MySQL/MariaDB) or
    /// sqlite:///path/to.db. When unset, DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME are used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Database host (when --database-url is unset).
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,

    /// Database port (when --database-url is unset).
    #[arg(long, env = "DB_PORT", default_value_t = 3306)]
    pub db_port: u16,

    /// Database user (when --database-url is unset).
    #[arg(long, env = "DB_USER", default_value = "root")]
    pub db_user: String,

    /// Database password (when --database-url is unset).
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true, default_value = "")]
    pub db_password: String,

    /// Database name (when --database-url is unset).
    #[arg(long, env = "DB_NAME", default_value = "multinic")]
    pub db_name: String,

    /// gRPC address agents and multinicctl connect to.
    #[arg(long, env = "MULTINIC_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "MULTINIC_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// How often the database is probed for changes (e.g. 500ms, 2s). An
    /// idle tick is two small statements (the controller-lock check, and
    /// the newest id and the tables' last-write times: no scan, about 1 ms
    /// of database time at any table size); after a write, the recently
    /// modified rows are read for a few ticks (one scan of multi_interface
    /// without an index on modified_at).
    #[arg(long, env = "POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// The whole fleet is read at least this often, whatever the probe
    /// says: the safety net for writers that keep modified_at (every other
    /// change is seen within one poll). Each read costs the database a scan
    /// and sends every active row (measured: 0.03 s at 22,000 rows, 0.5 s
    /// at 1,000,000 rows with 500,000 active), so at 60s that is about
    /// 0.05 % / 0.8 % of a database core; at 10s, six times as much. 0s
    /// reads the whole fleet every tick.
    #[arg(long, env = "MULTINIC_FULL_READ_INTERVAL", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub full_read_interval: Duration,

    /// How long shutdown waits for agent streams to drain.
    #[arg(long, env = "MULTINIC_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Hold removals when one database read would remove more than this share
    /// (0..1) of all interfaces the agents have, until an operator confirms.
    #[arg(long, env = "MULTINIC_MAX_REMOVAL_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub max_removal_share: f64,

    /// ... and at least this many interfaces would go at once.
    #[arg(long, env = "MULTINIC_MIN_GUARDED_REMOVALS", default_value_t = 10)]
    pub min_guarded_removals: usize,

    /// After becoming active, hold every removal until every node with rows
    /// (and every connected agent) has reported what it has, at most this
    /// long; removals on nodes with no rows left wait the whole time, and
    /// agents' claims made within it count (0s: judge at once).
    #[arg(long, env = "MULTINIC_REMOVAL_WARMUP", default_value = "30s", value_parser = parse_duration_or_zero)]
    pub removal_warmup: Duration,

    /// A push the agent has not answered for this long shows as a node
    /// problem in `multinicctl status` and `get node` (a stuck agent).
    #[arg(long, env = "MULTINIC_PUSH_ANSWER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub push_answer_timeout: Duration,

    /// A change seen in one poll that changes the desired set of more than
    /// this many nodes (already given a set before) is released in waves:
    /// a canary node, then waves that double up to --max-unavailable, each
    /// once the previous one has reported, stopping at the first failed
    /// node (multinicctl rollout status|resume|abort). At or under it,
    /// changes go at once. 0 turns waves off.
    #[arg(long, env = "MULTINIC_ROLLOUT_THRESHOLD", default_value_t = 5)]
    pub rollout_threshold: usize,

    /// The largest rollout wave: a node count (e.g. 10) or a percentage of
    /// the rollout's nodes (e.g. 25%, rounded up, at least 1).
    #[arg(long, env = "MULTINIC_MAX_UNAVAILABLE", default_value = "25%")]
    pub max_unavailable: MaxUnavailable,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub issuer: IssuerArgs,

    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log level or filter (e.g. info, debug, multinic_controller=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Runs the controller until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            database_url,
            db_host,
            db_port,
            db_user,
            db_password,
            db_name,
            listen,
            http_listen,
            poll_interval,
            full_read_interval,
            drain_timeout,
            max_removal_share,
            min_guarded_removals,
            removal_warmup,
            push_answer_timeout,
            rollout_threshold,
            max_unavailable,
            tls,
            issuer,
            log_format: _,
            log_level: _,
        } = self;

        let database = match (database_url, db_host) {
            (Some(url), _) => DatabaseConfig::Url(url),
            (None, Some(host)) => {
                DatabaseConfig::Parts { host, port: db_port, user: db_user, password: db_password, name: db_name }
            }
            (None, None) => bail!("no database configured: set --database-url (DATABASE_URL) or DB_HOST"),
        };
        let transport = tls.transport(issuer)?;
        let store = store::connect(&database).context("database configuration")?;
        let election = crate::leader::for_database(&database).context("database configuration")?;
        info!(database = %database.redacted(), "using database");
        let config = ControllerConfig {
            store,
            election,
            poll_interval,
            full_read_interval,
            hello_timeout: crate::grpc::agent_service::HELLO_TIMEOUT,
            drain_timeout,
            guard: crate::guard::GuardConfig {
                max_share: max_removal_share,
                min_removals: min_guarded_removals,
                warmup: removal_warmup,
            },
            push_answer_timeout,
            rollout: RolloutConfig { threshold: rollout_threshold, max_unavailable },
            transport,
        };
        let controller = Controller::bind(config, listen, http_listen).await?;
        info!(grpc = %controller.grpc_addr(), http = %controller.http_addr(), "listening");
        let shutdown = CancellationToken::new();
        tokio::spawn(multinic_runtime::signal_shutdown(shutdown.clone()));
        controller.serve(shutdown).await?;
        info!("controller stopped");
        Ok(())
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (e.g. 0.5)")),
    }
}

/// mTLS of the gRPC port.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain the controller presents (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle that agent and operator client certificates must chain
    /// to (reloaded when it changes; a bundle of old and new CA rotates a CA).
    #[arg(long, env = "MULTINIC_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// SPIFFE trust domain of client identities
    /// (spiffe://<trust-domain>/multinic/node/<node>, .../multinic/operator/<name>).
    #[arg(long, env = "MULTINIC_TRUST_DOMAIN", default_value = multinic_tls::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: TrustDomain,

    /// Connections end after this long (never later than half the client
    /// certificate's remaining lifetime); agents reconnect at once.
    #[arg(long, env = "MULTINIC_MAX_CONNECTION_AGE", default_value = "1h", value_parser = parse_duration)]
    pub max_connection_age: Duration,

    /// How often certificate, key and CA files are checked for changes.
    #[arg(long, env = "MULTINIC_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// TLS handshakes that take longer are dropped.
    #[arg(long, env = "MULTINIC_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Serve plaintext gRPC without client certificates. Development only:
    /// any peer can then claim to be any node.
    #[arg(long, env = "MULTINIC_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// Plaintext with --insecure (and a warning); otherwise mTLS, which needs
    /// all three files.
    pub fn transport(self, issuer: IssuerArgs) -> anyhow::Result<Transport> {
        let Self {
            tls_cert,
            tls_key,
            client_ca,
            trust_domain,
            max_connection_age,
            tls_reload_interval,
            tls_handshake_timeout,
            insecure,
        } = self;
        if insecure {
            // The controller itself warns when it starts serving plaintext.
            if issuer.issuer_listen.is_some() {
                bail!("--issuer-listen needs TLS: drop --insecure");
            }
            return Ok(Transport::Insecure);
        }
        let (Some(cert), Some(key), Some(client_ca)) = (tls_cert, tls_key, client_ca) else {
            bail!("mTLS needs --tls-cert, --tls-key and --client-ca (or --insecure for development)");
        };
        let server =
            ServerTls::from_files(&cert, &key, &client_ca, tls_reload_interval).context("controller TLS material")?;
        let mut config = TlsConfig::new(server, trust_domain);
        config.max_connection_age = max_connection_age;
        config.handshake_timeout = tls_handshake_timeout;
        config.issuer = issuer.config(tls_reload_interval)?;
        if let Some(issuer) = &config.issuer {
            let issuing = issuer.ca.borrow().cert_pem().to_owned();
            let bundle = multinic_tls::pem::read(&client_ca)?;
            let trusted = multinic_tls::pem::certificates(&bundle, "client CA")?;
            let issuing = multinic_tls::pem::certificates(issuing.as_bytes(), "issuer CA")?;
            if !issuing.iter().all(|c| trusted.contains(c)) {
                warn!(client_ca = %client_ca.display(), "the issuer CA is not in --client-ca: issued node certificates will be refused");
            }
        }
        Ok(Transport::Mutual(Box::new(config)))
    }
}

/// Issuing node certificates for ServiceAccount tokens.
#[derive(Debug, clap::Args)]
pub struct IssuerArgs {
    /// Serve the issuer (agents trade a projected ServiceAccount token for a
    /// node certificate) on this address, with server-only TLS. Off when unset.
    #[arg(long, env = "MULTINIC_ISSUER_LISTEN")]
    pub issuer_listen: Option<SocketAddr>,

    /// PEM certificate of the CA that signs node certificates (must be in --client-ca).
    #[arg(long, env = "MULTINIC_ISSUER_CA_CERT")]
    pub issuer_ca_cert: Option<PathBuf>,

    /// PEM private key of --issuer-ca-cert.
    #[arg(long, env = "MULTINIC_ISSUER_CA_KEY")]
    pub issuer_ca_key: Option<PathBuf>,

    /// Audience the agents' projected tokens are minted for.
    #[arg(long, env = "MULTINIC_TOKEN_AUDIENCE", default_value = "multinic-controller")]
    pub token_audience: String,

    /// User name of the agents' ServiceAccount; tokens of anyone else are refused.
    #[arg(
        long,
        env = "MULTINIC_AGENT_SERVICE_ACCOUNT",
        default_value = "system:serviceaccount:multinic:multinic-agent"
    )]
    pub agent_service_account: String,

    /// Lifetime of issued node certificates (agents renew at half-life).
    #[arg(long, env = "MULTINIC_NODE_CERT_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub node_cert_lifetime: Duration,

    /// TokenReview endpoint. Default: the in-cluster API server
    /// (https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/tokenreviews).
    #[arg(long, env = "MULTINIC_TOKEN_REVIEW_URL")]
    pub token_review_url: Option<String>,

    /// CA bundle of the API server (https TokenReview URLs).
    #[arg(long, env = "MULTINIC_TOKEN_REVIEW_CA", default_value = IN_CLUSTER_CA)]
    pub token_review_ca: PathBuf,

    /// The controller's own ServiceAccount token, sent as bearer token with
    /// every TokenReview (re-read each time).
    #[arg(long, env = "MULTINIC_TOKEN_REVIEW_TOKEN_FILE", default_value = IN_CLUSTER_TOKEN)]
    pub token_review_token_file: PathBuf,
}

impl IssuerArgs {
    fn config(self, reload_interval: Duration) -> anyhow::Result<Option<IssuerConfig>> {
        let Self {
            issuer_listen,
            issuer_ca_cert,
            issuer_ca_key,
            token_audience,
            agent_service_account,
            node_cert_lifetime,
            token_review_url,
            token_review_ca,
            token_review_token_file,
        } = self;
        let Some(listen) = issuer_listen else { return Ok(None) };
        let (Some(ca_cert), Some(ca_key)) = (issuer_ca_cert, issuer_ca_key) else {
            bail!("--issuer-listen needs --issuer-ca-cert and --issuer-ca-key");
        };
        let ca = multinic_tls::live::watch_files("issuer CA", vec![ca_cert, ca_key], reload_interval, |f| {
            let pem = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            CertificateAuthority::from_pem(&pem(&f[0]), &pem(&f[1])).map(std::sync::Arc::new)
        })
        .context("issuer CA")?;
        let url = token_review_url
            .or_else(TokenReviewer::in_cluster_url)
            .context("no TokenReview endpoint: set --token-review-url or run in a pod")?;
        let ca_pem = if url.starts_with("https://") {
            Some(std::fs::read(&token_review_ca).with_context(|| format!("read {}", token_review_ca.display()))?)
        } else {
            None
        };
        let bearer = token_review_token_file.exists().then_some(token_review_token_file);
        let reviewer = TokenReviewer::new(&url, ca_pem.as_deref(), bearer).map_err(anyhow::Error::msg)?;
        let policy = IssuancePolicy {
            audience: token_audience,
            service_account: agent_service_account,
            lifetime: node_cert_lifetime,
        };
        info!(url = %url, audience = %policy.audience, service_account = %policy.service_account, "token reviews");
        Ok(Some(IssuerConfig { listen, ca, reviewer, policy }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(flags: &[&str]) -> anyhow::Result<Transport> {
        let mut argv = vec!["multinic-controller", "--database-url", "sqlite:///tmp/x.db"];
        argv.extend(flags);
        let Args { tls, issuer, .. } = Args::try_parse_from(argv)?;
        tls.transport(issuer)
    }

    #[test]
    fn mtls_is_required_unless_insecure() {
        let err = transport(&[]).unwrap_err().to_string();
        assert!(err.contains("mTLS needs --tls-cert, --tls-key and --client-ca (or --insecure"), "{err}");
        let err = transport(&["--tls-cert", "c", "--tls-key", "k"]).unwrap_err().to_string();
        assert!(err.contains("--client-ca"), "{err}");
        assert!(matches!(transport(&["--insecure"]).unwrap(), Transport::Insecure));
        let err = transport(&["--insecure", "--issuer-listen", "0.0.0.0:50052"]).unwrap_err().to_string();
        assert!(err.contains("needs TLS"), "{err}");
    }

    #[test]
    fn defaults_and_bad_values() {
        let args = Args::try_parse_from(["multinic-controller", "--insecure"]).unwrap();
        assert_eq!(args.tls.trust_domain.to_string(), "multinic.local");
        assert_eq!(args.tls.max_connection_age, Duration::from_secs(3600));
        assert_eq!(args.issuer.node_cert_lifetime, Duration::from_secs(86_400));
        assert_eq!(args.issuer.token_audience, "multinic-controller");
        assert!(Args::try_parse_from(["multinic-controller", "--trust-domain", "Bad/Domain"]).is_err());
    }

    #[test]
    fn zero_means_no_warm_up_and_a_full_read_every_tick() {
        let argv = ["multinic-controller", "--insecure", "--removal-warmup", "0s", "--full-read-interval", "0"];
        let args = Args::try_parse_from(argv).unwrap();
        assert_eq!(args.removal_warmup, Duration::ZERO);
        assert_eq!(args.full_read_interval, Duration::ZERO);
        let err = Args::try_parse_from(["multinic-controller", "--poll-interval", "0s"]).unwrap_err().to_string();
        assert!(err.contains("must be positive"), "{err}");
    }

    #[test]
    fn rollout_flags_default_parse_and_refuse_bad_values() {
        let args = Args::try_parse_from(["multinic-controller", "--insecure"]).unwrap();
        assert_eq!(args.rollout_threshold, 5);
        assert_eq!(args.max_unavailable, MaxUnavailable::Percent(25));
        let argv = ["multinic-controller", "--rollout-threshold", "0", "--max-unavailable", "3"];
        let args = Args::try_parse_from(argv).unwrap();
        assert_eq!((args.rollout_threshold, args.max_unavailable), (0, MaxUnavailable::Count(3)));
        let err = Args::try_parse_from(["multinic-controller", "--max-unavailable", "150%"]).unwrap_err().to_string();
        assert!(err.contains("--max-unavailable") && err.contains("between 1% and 100%"), "{err}");
    }
}
