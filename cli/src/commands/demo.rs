//! `multinicctl demo`: the whole system on one machine, no root, no server.
//!
//! An embedded SQLite database stands in for the OpenStack side's MariaDB;
//! a real controller and three real agents run in this process and talk
//! gRPC over loopback; each agent renders into its own temporary host root
//! (`--apply none`). The demo then plays the OpenStack side: adds rows,
//! changes an MTU, soft-deletes a row, re-inserts one with a new id, and
//! shows what each step did. Everything talks mTLS, with a throwaway CA made
//! in the temporary folder: each agent's certificate names its node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use multinic_agent::tls::{AgentIdentity, AgentTls, AgentTransport};
use multinic_agent::{Agent, AgentConfig};
use multinic_controller::store::{self, DatabaseConfig};
use multinic_controller::tls::{TlsConfig, Transport};
use multinic_controller::{Controller, ControllerConfig};
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_tls::{CertificateAuthority, ClientTls, Identity, ServerTls, TrustDomain, Validity};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::get::{all_nodes, interfaces_table, nodes_table};
use crate::out::{out, outln};
use crate::view::{InterfaceView, NodeView};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary folder (database and node roots) and print its path.
    #[arg(long)]
    keep: bool,

    /// How long to wait for each step before giving up.
    #[arg(long, default_value = "20s", value_parser = multinic_runtime::parse_duration)]
    step_timeout: Duration,

    /// Also show the controller's and agents' logs at this level (e.g. info).
    #[arg(long)]
    log_level: Option<String>,
}

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// A sample row: (port, node, mac, address, cidr, mtu).
type SampleRow = (&'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>, i64);

const ROWS: [SampleRow; 5] = [
    ("port-1a", "node-1.novalocal", "FA:16:3E:00:01:0A", Some("192.168.10.11"), Some("192.168.10.0/24"), 1500),
    ("port-1b", "node-1", "fa:16:3e:00:01:0b", Some("10.20.0.11"), None, 9000),
    ("port-2a", "node-2", "fa:16:3e:00:02:0a", Some("192.168.10.12"), Some("192.168.10.0/24"), 1500),
    ("port-2b", "node-2", "fa:16:3e:00:02:0b", None, None, 1450),
    ("port-3a", "NODE-3", "fa:16:3e:00:03:0a", Some("192.168.10.13"), Some("192.168.10.0/24"), 1500),
];

struct Demo {
    db: SqlitePool,
    fleet: FleetServiceClient<Channel>,
    roots: Vec<PathBuf>,
    agents: Vec<Agent>,
    timeout: Duration,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs { keep, step_timeout, log_level } = args;
    if let Some(level) = log_level {
        multinic_runtime::init_logging(multinic_runtime::LogFormat::Text, &level).map_err(|e| anyhow::anyhow!(e))?;
    }
    let dir = tempfile::Builder::new().prefix("multinic-demo-").tempdir().context("create a temporary folder")?;
    let base = dir.path().to_path_buf();
    let result = run_in(&base, step_timeout).await;
    if keep {
        let kept = dir.keep();
        outln!("\nKept {} (database, node roots).", kept.display());
    }
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_in(base: &Path, timeout: Duration) -> anyhow::Result<()> {
    let url = format!("sqlite://{}", base.join("multinic.db").display());
    step(&format!("Embedded SQLite database: {}", base.join("multinic.db").display()));
    store::create_sqlite_schema(&url).await?;
    let db = SqlitePool::connect(&url).await?;
    sqlx::query(
        "INSERT INTO multi_subnet (subnet_id, subnet_name, cidr) VALUES ('subnet-20', 'storage', '10.20.0.0/16')",
    )
    .execute(&db)
    .await?;

    let pki = Pki::create(&base.join("pki"))?;
    step(&format!(
        "mTLS on: throwaway CA, controller, agent and operator certificates in {}",
        base.join("pki").display()
    ));
    let shutdown = CancellationToken::new();
    let database = DatabaseConfig::Url(url.clone());
    let store = store::connect(&database)?;
    let server = ServerTls::from_files(&pki.file("controller.crt"), &pki.file("controller.key"), &pki.ca(), RELOAD)?;
    let config = ControllerConfig {
        store,
        election: multinic_controller::leader::for_database(&database)?,
        poll_interval: Duration::from_millis(300),
        full_read_interval: Duration::from_secs(60),
        hello_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(3),
        guard: multinic_controller::guard::GuardConfig { warmup: Duration::ZERO, ..Default::default() },
        push_answer_timeout: Duration::from_secs(60),
        rollout: Default::default(),
        transport: Transport::Mutual(Box::new(TlsConfig::new(server, TrustDomain::default()))),
    };
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let controller = Controller::bind(config, loopback, loopback).await?;
    let grpc = controller.grpc_addr();
    step(&format!("Controller listening on {grpc} (gRPC) and {} (HTTP), polling every 300ms", controller.http_addr()));
    let controller_task = tokio::spawn(controller.serve(shutdown.clone()));

    let mut roots = Vec::new();
    let mut agents = Vec::new();
    let mut agent_tasks = Vec::new();
    for node in NODES {
        let root = base.join(node);
        std::fs::create_dir_all(root.join("etc/netplan"))?;
        let mut config = AgentConfig::new(format!("https://{grpc}"), node.parse()?, &root);
        config.transport = AgentTransport::Tls(AgentTls {
            ca: pki.ca(),
            identity: AgentIdentity::Mounted {
                cert: pki.file(&format!("agent-{node}.crt")),
                key: pki.file(&format!("agent-{node}.key")),
            },
            server_name: None,
            reload_interval: RELOAD,
        });
        let agent = Agent::new(&config);
        let runner = agent.clone();
        let stop = shutdown.clone();
        agent_tasks.push(tokio::spawn(async move { runner.run(config, stop).await }));
        step(&format!(
            "Agent {node} started (certificate spiffe://multinic.local/multinic/node/{node}); host root {}",
            root.display()
        ));
        roots.push(root);
        agents.push(agent);
    }
    let fleet = connect(grpc, &pki, timeout).await?;
    let mut demo = Demo { db, fleet, roots, agents, timeout };
    let outcome = demo.scenario().await;

    shutdown.cancel();
    let _ = controller_task.await;
    for task in agent_tasks {
        let _ = task.await;
    }
    outcome
}

impl Demo {
    async fn scenario(&mut self) -> anyhow::Result<()> {
        section("1. The OpenStack side adds five interfaces for three nodes");
        for (port, node, mac, address, cidr, mtu) in ROWS {
            sqlx::query(
                "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(port)
            .bind(if cidr.is_none() && address.is_some() { "subnet-20" } else { "subnet-1" })
            .bind(mac)
            .bind(node)
            .bind(address)
            .bind(cidr)
            .bind(mtu)
            .execute(&self.db)
            .await?;
            outln!("   row {port}: {node} {mac} {} mtu {mtu}", address.unwrap_or("(no address)"));
        }
        self.wait_rows_applied().await?;
        for (i, root) in self.roots.iter().enumerate() {
            for file in netplan_files(root)? {
                outln!("   {}: wrote {}", NODES[i], file.display());
            }
        }
        outln!("   every row now reads netplan_success = 1");

        section("2. The MTU of node-2's port-2a changes to 9000");
        let writes_before = self.writes();
        sqlx::query("UPDATE multi_interface SET mtu = 9000, netplan_success = 0 WHERE port_id = 'port-2a'")
            .execute(&self.db)
            .await?;
        let path = self.roots[1].join("etc/netplan/90-multinic0.yaml");
        self.wait("node-2's multinic0 file to say mtu 9000", || {
            std::fs::read_to_string(&path).is_ok_and(|f| f.contains("mtu: 9000"))
        })
        .await?;
        self.wait_rows_applied().await?;
        outln!(
            "   node-2 rewrote {} ({} file written in the fleet); the row is back to 1",
            path.display(),
            self.writes() - writes_before
        );

        section("3. node-1's port-1b is soft-deleted (deleted_at set)");
        sqlx::query("UPDATE multi_interface SET deleted_at = CURRENT_TIMESTAMP WHERE port_id = 'port-1b'")
            .execute(&self.db)
            .await?;
        let path = self.roots[0].join("etc/netplan/91-multinic1.yaml");
        self.wait("node-1's multinic1 file to be removed", || !path.exists()).await?;
        outln!("   node-1 removed {}; its multinic0 is untouched", path.display());

        section("4. node-3's port-3a is deleted and re-inserted with a new id, same content");
        let writes_before = self.writes();
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE multi_interface SET deleted_at = CURRENT_TIMESTAMP WHERE port_id = 'port-3a'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
             VALUES ('port-3a-new', 'subnet-1', 'fa:16:3e:00:03:0a', 'node-3', '192.168.10.13', '192.168.10.0/24', 1500)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let new_id: i64 = sqlx::query_scalar("SELECT id FROM multi_interface WHERE port_id = 'port-3a-new'")
            .fetch_one(&self.db)
            .await?;
        self.wait_rows_applied().await?;
        let written = self.writes() - writes_before;
        outln!("   row {new_id} reads netplan_success = 1; files written on the node: {written}");
        if written != 0 {
            bail!("the re-inserted row caused {written} file writes; expected none");
        }

        section("Final status (multinicctl get nodes / get interfaces)");
        let nodes = all_nodes(&mut self.fleet).await?;
        out!("{}", nodes_table(&nodes, false));
        outln!();
        let interfaces: Vec<InterfaceView> = nodes.iter().flat_map(|n| NodeView::from(n).interfaces).collect();
        out!("{}", interfaces_table(&interfaces, false));
        let converged =
            nodes.iter().filter(|n| n.convergence == multinic_proto::v1::Convergence::Converged as i32).count();
        outln!("\n{converged}/{} nodes converged. Demo finished.", nodes.len());
        Ok(())
    }

    fn writes(&self) -> u64 {
        self.agents.iter().map(|a| a.reconciler.files().writes()).sum()
    }

    async fn wait_rows_applied(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM multi_interface WHERE deleted_at IS NULL AND netplan_success = 0",
            )
            .fetch_one(&self.db)
            .await?;
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{pending} row(s) still read netplan_success = 0 after {:?}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait(&self, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.timeout;
        while !done() {
            if Instant::now() > deadline {
                bail!("timed out after {:?} waiting for {what}", self.timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// `multinicctl` as operator "demo".
async fn connect(grpc: SocketAddr, pki: &Pki, timeout: Duration) -> anyhow::Result<FleetServiceClient<Channel>> {
    let tls = ClientTls::from_files(&pki.ca(), &pki.file("operator-demo.crt"), &pki.file("operator-demo.key"), RELOAD)?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))?.connect_timeout(timeout);
    let channel = tls.connect(&endpoint).await.with_context(|| format!("connect to the demo controller at {grpc}"))?;
    Ok(FleetServiceClient::new(channel))
}

/// How often the demo's TLS files are checked for changes.
const RELOAD: Duration = Duration::from_secs(5);

/// The demo's throwaway PKI (what `multinicctl certs` makes).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let day = Duration::from_secs(86_400);
        let ca = CertificateAuthority::generate("multinic demo CA", day)?;
        std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
        let validity = Validity::starting_now(day);
        let td = TrustDomain::default();
        let controller = ca.server_certificate(&["localhost".into()], &["127.0.0.1".parse()?], validity)?;
        controller.write(&dir.join("controller.crt"), &dir.join("controller.key"))?;
        for node in NODES {
            let cert = ca.client_certificate(&Identity::Node(node.parse()?), &td, validity)?;
            cert.write(&dir.join(format!("agent-{node}.crt")), &dir.join(format!("agent-{node}.key")))?;
        }
        let operator = ca.client_certificate(&Identity::Operator("demo".parse()?), &td, validity)?;
        operator.write(&dir.join("operator-demo.crt"), &dir.join("operator-demo.key"))?;
        Ok(Self { dir: dir.to_owned() })
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn netplan_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("etc/netplan"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn section(title: &str) {
    outln!("\n== {title}");
}

fn step(text: &str) {
    outln!("-- {text}");
}
