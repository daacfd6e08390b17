//! Command-line flags of `multinic-agent`; every flag also reads an
//! environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use multinic_proto::{DEFAULT_CAPACITY, MAX_CAPACITY, NodeName};
use multinic_runtime::{LogFormat, parse_duration, parse_duration_or_zero};
use multinic_tls::client::controller_url;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendChoice, detect_backend};
use crate::reconcile::ApplyChoice;
use crate::tls::{AgentIdentity, AgentTls, AgentTransport, default_issuer_url};
use crate::worker::drift::DriftConfig;
use crate::{Agent, AgentConfig, default_host_root};

/// Applies this node's secondary NICs as the multinic controller says:
/// renders netplan, wicked or NetworkManager files, names NICs multinic0..N by MAC, and
/// reports the outcome.
#[derive(Debug, Parser)]
#[command(name = "multinic-agent", version, about, long_about = None)]
pub struct Args {
    /// The controller's gRPC address: host:port or a URL.
    #[arg(long, env = "MULTINIC_CONTROLLER")]
    pub controller: String,

    /// This node's name (matched against attached_node_name on its short,
    /// lower-case form). Default: the short host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Where the host's / is mounted. Default: /host if it exists, else /.
    #[arg(long, env = "MULTINIC_HOST_ROOT")]
    pub host_root: Option<PathBuf>,

    /// Network configuration backend; auto reads the host's /etc/os-release
    /// (Ubuntu/Debian: netplan, SUSE 15: wicked, the RHEL family and SUSE
    /// 16: networkmanager).
    #[arg(long, env = "MULTINIC_BACKEND", default_value = "auto", value_parser = backend_choice())]
    pub backend: BackendChoice,

    /// How changes are applied; each is verified through netlink and rolled
    /// back per interface on failure. auto: the backend's default (netplan:
    /// netlink; wicked and networkmanager: host). netlink: write the files
    /// (for boot) and set name, MTU, addresses and link state directly; no
    /// network daemon is called, nothing else on the node changes. host:
    /// write the files, rename by MAC through netlink, then have the node's
    /// daemon apply exactly the changed interfaces, run in the host's
    /// namespaces (entered through PID 1; needs hostPID): `wicked ifreload`
    /// of them, or NetworkManager's checkpoint, load and activation (or
    /// reapply) of our profile of each (D-Bus calls on the host's system
    /// bus, reached as /proc/1/root/run/dbus/system_bus_socket); refused
    /// with netplan, whose only apply is whole-host. none: render the files
    /// only (dry run).
    #[arg(long, env = "MULTINIC_APPLY", default_value = "auto")]
    pub apply: ApplyChoice,

    /// How many multinicN names this node has (multinic0..multinic{N-1}).
    #[arg(long, env = "MULTINIC_CAPACITY", default_value_t = DEFAULT_CAPACITY,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CAPACITY)))]
    pub capacity: u8,

    /// Where the agent keeps its journal (never where netplan, wicked, NetworkManager or udev read).
    #[arg(long, env = "MULTINIC_STATE_DIR", default_value = "/var/lib/multinic")]
    pub state_dir: PathBuf,

    /// The node's own addresses, comma-separated (e.g. the pod's
    /// status.hostIP): NICs holding them are never touched, like the NICs
    /// carrying a default route.
    #[arg(long, env = "NODE_IP", value_delimiter = ',')]
    pub node_ip: Vec<IpAddr>,

    /// The host process whose namespaces --apply host enters (PID 1 of the
    /// host, seen through hostPID). For tests.
    #[arg(long, env = "MULTINIC_HOST_PID", default_value_t = 1, hide = true)]
    pub host_pid: u32,

    /// HTTP address of /healthz, /readyz, /metrics and GET / (health JSON).
    /// Default: 0.0.0.0:8080, or 0.0.0.0:<--health-port> when that is set.
    #[arg(long, env = "MULTINIC_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// The predecessor's setting, for manifests that still set it: serve
    /// HTTP on 0.0.0.0:<port>. --http-listen (MULTINIC_HTTP_LISTEN) wins when both are set.
    #[arg(long, env = "HEALTH_PORT")]
    pub health_port: Option<u16>,

    /// An apply (one desired state) still running after this makes the
    /// agent unready (/readyz 503, GET / unhealthy, the apply_overdue
    /// metric) until it ends; a shutdown waits for an apply only within it.
    #[arg(long, env = "MULTINIC_APPLY_DEADLINE", default_value = "3m", value_parser = parse_duration)]
    pub apply_deadline: Duration,

    /// How often the node is checked for drift, while the stream to the
    /// controller is up: the kernel (one netlink dump) and our files
    /// compared with the last applied set, read only. What drifted is
    /// repaired per interface (see --drift-repair) and reported. 0 turns
    /// the check off.
    #[arg(long, env = "MULTINIC_DRIFT_CHECK_INTERVAL", default_value = "60s", value_parser = parse_duration_or_zero)]
    pub drift_check_interval: Duration,

    /// Whether drift is repaired, through the same journal and rollback as
    /// any apply (one kind of drift on one interface at most 3 times in 30
    /// check intervals; seen again, the interface is reported
    /// DRIFT_REPEATED and left alone until a new push or 60 intervals
    /// later). false: drift is only reported (the interface as failed,
    /// DRIFTED) until it is back as applied.
    #[arg(long, env = "MULTINIC_DRIFT_REPAIR", default_value_t = true, action = clap::ArgAction::Set)]
    pub drift_repair: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log level or filter (e.g. info, debug, multinic_agent=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Runs the agent until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            controller,
            node_name,
            host_root,
            backend,
            apply,
            capacity,
            state_dir,
            node_ip,
            host_pid,
            http_listen,
            health_port,
            apply_deadline,
            drift_check_interval,
            drift_repair,
            tls,
            log_format: _,
            log_level: _,
        } = self;
        let node_name = match node_name {
            Some(name) => name,
            None => short_hostname().context("cannot tell the node name: set --node-name or NODE_NAME")?,
        };
        let node: NodeName = node_name.parse().context("--node-name")?;
        let host_root = host_root.unwrap_or_else(default_host_root);
        let backend = detect_backend(backend, &host_root)?;
        let apply = apply.resolve(backend)?;
        let controller = controller_url(&controller, !tls.insecure);
        let transport = tls.transport(&controller, &state_dir)?;
        let config = AgentConfig {
            controller,
            transport,
            node,
            host_root,
            backend,
            apply,
            capacity,
            state_dir,
            http_listen: Some(http_address(http_listen, health_port)),
            node_ips: node_ip,
            host_pid,
            apply_deadline,
            drift: DriftConfig { interval: drift_check_interval, repair: drift_repair },
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(multinic_runtime::signal_shutdown(shutdown.clone()));
        let agent = Agent::new(&config);
        Ok(agent.run(config, shutdown).await?)
    }
}

/// `--http-listen`, else the predecessor's `HEALTH_PORT` on every address,
/// else `0.0.0.0:8080`.
fn http_address(http_listen: Option<SocketAddr>, health_port: Option<u16>) -> SocketAddr {
    let any = IpAddr::from([0, 0, 0, 0]);
    http_listen.unwrap_or_else(|| SocketAddr::new(any, health_port.unwrap_or(8080)))
}

/// `--backend` values: `auto` and every registered backend's name (listed
/// by `--help`).
fn backend_choice() -> impl clap::builder::TypedValueParser<Value = BackendChoice> {
    use clap::builder::TypedValueParser as _;
    let names = std::iter::once("auto").chain(crate::backend::ALL.iter().map(|b| b.name()));
    clap::builder::PossibleValuesParser::new(names).try_map(|name| name.parse::<BackendChoice>())
}

/// The host name up to the first dot.
fn short_hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read /proc/sys/kernel/hostname")?;
    Ok(name.trim().split('.').next().unwrap_or_default().to_owned())
}

/// TLS to the controller: a mounted certificate, or one obtained with a
/// ServiceAccount token.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    /// PEM client certificate naming this node (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle the controller's certificate must chain to (reloaded when it changes).
    #[arg(long, env = "MULTINIC_CA")]
    pub ca: Option<PathBuf>,

    /// Check the controller's certificate for this name instead of the host of --controller.
    #[arg(long, env = "MULTINIC_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,

    /// Projected ServiceAccount token (audience: the controller). Without
    /// --tls-cert, the agent trades it at the controller's issuer for a
    /// short-lived node certificate, renewed at half-life and kept in --state-dir.
    #[arg(long, env = "MULTINIC_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// The issuer's address (host:port or URL). Default: the host of --controller, port 50052.
    #[arg(long, env = "MULTINIC_ISSUER")]
    pub issuer: Option<String>,

    /// How often certificate, key and CA files are checked for changes.
    #[arg(long, env = "MULTINIC_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Connect without TLS. Development only: the controller then trusts
    /// whatever node this agent names.
    #[arg(long, env = "MULTINIC_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    fn transport(self, controller: &str, state_dir: &std::path::Path) -> anyhow::Result<AgentTransport> {
        let Self {
            tls_cert,
            tls_key,
            ca,
            tls_server_name,
            bootstrap_token_file,
            issuer,
            tls_reload_interval,
            insecure,
        } = self;
        if insecure {
            // The agent warns when it starts without TLS.
            return Ok(AgentTransport::Insecure);
        }
        let Some(ca) = ca else {
            bail!("TLS needs --ca, the CA bundle of the controller's certificate (or --insecure for development)");
        };
        let identity = match (tls_cert, tls_key, bootstrap_token_file) {
            (Some(cert), Some(key), None) => AgentIdentity::Mounted { cert, key },
            (None, None, Some(token_file)) => {
                let issuer = match issuer {
                    Some(issuer) => controller_url(&issuer, true),
                    None => default_issuer_url(controller)?,
                };
                AgentIdentity::Bootstrap { token_file, issuer, state_dir: state_dir.to_owned() }
            }
            (Some(_), Some(_), Some(_)) => bail!("use either --tls-cert/--tls-key or --bootstrap-token-file, not both"),
            _ => bail!(
                "TLS needs a node certificate: --tls-cert and --tls-key, or --bootstrap-token-file (or --insecure)"
            ),
        };
        Ok(AgentTransport::Tls(AgentTls {
            ca,
            identity,
            server_name: tls_server_name,
            reload_interval: tls_reload_interval,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(flags: &[&str]) -> anyhow::Result<AgentTransport> {
        let mut argv = vec!["multinic-agent", "--controller", "controller.multinic.svc:50051"];
        argv.extend(flags);
        let args = Args::try_parse_from(argv)?;
        let controller = controller_url(&args.controller, !args.tls.insecure);
        args.tls.transport(&controller, &args.state_dir)
    }

    #[test]
    fn tls_is_the_default_and_needs_a_ca_and_a_certificate_source() {
        let err = transport(&[]).unwrap_err().to_string();
        assert!(err.contains("--ca"), "{err}");
        let err = transport(&["--ca", "ca.crt"]).unwrap_err().to_string();
        assert!(err.contains("--tls-cert and --tls-key, or --bootstrap-token-file"), "{err}");
        let both = ["--ca", "ca.crt", "--tls-cert", "c", "--tls-key", "k", "--bootstrap-token-file", "t"];
        assert!(transport(&both).unwrap_err().to_string().contains("not both"));
        assert!(matches!(transport(&["--insecure"]).unwrap(), AgentTransport::Insecure));
    }

    #[test]
    fn apply_auto_follows_the_backend_and_host_is_refused_on_netplan() {
        use crate::backend::{netplan::Netplan, wicked::Wicked};
        use crate::reconcile::ApplyMode;
        let parse = |flags: &[&str]| {
            let mut argv = vec!["multinic-agent", "--controller", "c:1"];
            argv.extend(flags);
            Args::try_parse_from(argv).unwrap().apply
        };
        assert_eq!(parse(&[]), ApplyChoice::Auto, "auto is the default");
        assert_eq!(parse(&[]).resolve(&Netplan).unwrap(), ApplyMode::Netlink);
        assert_eq!(parse(&[]).resolve(&Wicked).unwrap(), ApplyMode::Host);
        let err = parse(&["--apply", "host"]).resolve(&Netplan).unwrap_err().to_string();
        assert!(err.contains("not offered with the netplan backend") && err.contains("--apply netlink"), "{err}");
        assert_eq!(parse(&["--apply", "host"]).resolve(&Wicked).unwrap(), ApplyMode::Host);
        for mode in ["netlink", "none"] {
            for &backend in crate::backend::ALL {
                assert_eq!(parse(&["--apply", mode]).resolve(backend).unwrap().as_str(), mode);
            }
        }
        let argv = ["multinic-agent", "--controller", "c:1", "--apply", "hots"];
        let err = Args::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains("expected auto, host, netlink or none"), "{err}");
    }

    #[test]
    fn the_predecessors_health_port_is_accepted_and_http_listen_wins() {
        let address = |flags: &[&str]| {
            let mut argv = vec!["multinic-agent", "--controller", "c:50051"];
            argv.extend(flags);
            let args = Args::try_parse_from(argv).unwrap();
            http_address(args.http_listen, args.health_port).to_string()
        };
        assert_eq!(address(&[]), "0.0.0.0:8080");
        assert_eq!(address(&["--health-port", "9090"]), "0.0.0.0:9090");
        assert_eq!(address(&["--health-port", "9090", "--http-listen", "127.0.0.1:9737"]), "127.0.0.1:9737");
        let command = <Args as clap::CommandFactory>::command();
        let env = |id: &str| {
            command.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env()).map(|e| e.to_owned())
        };
        assert_eq!(env("health_port").as_deref(), Some(std::ffi::OsStr::new("HEALTH_PORT")));
        assert_eq!(env("http_listen").as_deref(), Some(std::ffi::OsStr::new("MULTINIC_HTTP_LISTEN")));
        assert_eq!(env("apply_deadline").as_deref(), Some(std::ffi::OsStr::new("MULTINIC_APPLY_DEADLINE")));
        assert_eq!(env("drift_check_interval").as_deref(), Some(std::ffi::OsStr::new("MULTINIC_DRIFT_CHECK_INTERVAL")));
        assert_eq!(env("drift_repair").as_deref(), Some(std::ffi::OsStr::new("MULTINIC_DRIFT_REPAIR")));
    }

    #[test]
    fn drift_checks_every_minute_and_repairs_by_default_and_zero_turns_them_off() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["multinic-agent", "--controller", "c:1"];
            argv.extend(flags);
            Args::try_parse_from(argv).map(|a| (a.drift_check_interval, a.drift_repair))
        };
        assert_eq!(parse(&[]).unwrap(), (Duration::from_secs(60), true));
        assert_eq!(parse(&["--drift-check-interval", "0"]).unwrap().0, Duration::ZERO);
        assert_eq!(
            parse(&["--drift-check-interval", "5s", "--drift-repair=false"]).unwrap(),
            (Duration::from_secs(5), false)
        );
        let err = parse(&["--drift-repair=maybe"]).unwrap_err().to_string();
        assert!(err.contains("maybe"), "{err}");
        let err = parse(&["--drift-check-interval", "soon"]).unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn mounted_and_bootstrap_identities() {
        let AgentTransport::Tls(tls) = transport(&["--ca", "ca.crt", "--tls-cert", "c", "--tls-key", "k"]).unwrap()
        else {
            panic!("expected TLS")
        };
        assert!(matches!(tls.identity, AgentIdentity::Mounted { .. }));
        let AgentTransport::Tls(tls) =
            transport(&["--ca", "ca.crt", "--bootstrap-token-file", "/var/run/secrets/multinic/token"]).unwrap()
        else {
            panic!("expected TLS")
        };
        let AgentIdentity::Bootstrap { issuer, state_dir, .. } = tls.identity else { panic!("expected bootstrap") };
        assert_eq!(issuer, "https://controller.multinic.svc:50052");
        assert_eq!(state_dir, PathBuf::from("/var/lib/multinic"));
    }
}
