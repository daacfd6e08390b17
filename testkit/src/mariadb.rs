//! A private `mariadbd` for one test: its own data folder, socket and port,
//! killed when dropped.
//!
//! `mariadb-install-db` runs once per machine into a template folder under
//! the target directory; each server starts from a copy of it, which takes
//! about a second instead of five.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlConnection, MySqlPool};
use tempfile::TempDir;

/// The table layout the OpenStack side writes (a copy of
/// `shared/fixtures/schema-mysql.sql`, checked equal by a test).
pub const SCHEMA: &str = include_str!("../sql/schema-mysql.sql");

/// The controller's user (what `url()` names).
pub const USER: &str = "multinic";
pub const PASSWORD: &str = "multinic-test";
/// The user of the test's own SQL: the OpenStack side's writes.
pub const WRITER: &str = "openstack";
pub const DATABASE: &str = "multinic";

/// A running private MariaDB server.
#[derive(Debug)]
pub struct MariaDb {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    options: ServerOptions,
}

/// How the server is started beyond the defaults every test uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// `--innodb-buffer-pool-size` (tests: 32M; a benchmark holding a
    /// million rows wants them to fit, as a production server would).
    pub buffer_pool: String,
    /// performance_schema with statement history (`events_statements_history_long`),
    /// for MariaDB's own accounting of each statement's time. Off by
    /// default, as in `mariadbd --no-defaults`.
    pub statement_history: Option<u32>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { buffer_pool: "32M".into(), statement_history: None }
    }
}

impl MariaDb {
    /// Starts a server with the schema loaded, or `None` when `mariadbd` is
    /// missing on a developer machine (CI fails instead).
    pub async fn start() -> Option<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// [`MariaDb::start`] with other server options.
    pub async fn start_with(options: ServerOptions) -> Option<Self> {
        let available = crate::have("mariadbd") && crate::have("mariadb-install-db");
        if !crate::require(available, "mariadbd", "apt-get install -y mariadb-server") {
            return None;
        }
        let template = template().await;
        let dir = tempfile::Builder::new().prefix("multinic-mariadb-").tempdir().expect("temp dir");
        let status = Command::new("cp").arg("-a").arg(&template).arg(dir.path().join("data")).status().expect("cp");
        assert!(status.success(), "cannot copy the MariaDB template");
        let mut db = Self { dir, port: free_port(), child: None, options };
        db.spawn().await;
        let mut root = db.root().await;
        for sql in [
            "DROP USER IF EXISTS ''@'localhost'".to_owned(),
            format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"),
            format!("CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}'"),
            format!("CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"),
            format!("GRANT ALL ON {DATABASE}.* TO '{USER}'@'localhost'"),
            format!("GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1'"),
            format!("CREATE USER IF NOT EXISTS '{WRITER}'@'localhost' IDENTIFIED BY '{PASSWORD}'"),
            format!("CREATE USER IF NOT EXISTS '{WRITER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"),
            format!("GRANT ALL ON {DATABASE}.* TO '{WRITER}'@'localhost'"),
            format!("GRANT ALL ON {DATABASE}.* TO '{WRITER}'@'127.0.0.1'"),
            "GRANT PROCESS ON *.* TO 'openstack'@'127.0.0.1'".to_owned(),
        ] {
            sqlx::raw_sql(&sql).execute(&mut root).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let mut conn = db.connection().await;
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await.expect("schema");
        Some(db)
    }

    /// `mysql://…@127.0.0.1:port/multinic` for the controller.
    pub fn url(&self) -> String {
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A pool for the test's own SQL (the OpenStack side's writes), as a user
    /// other than the controller's so that per-user statistics tell them apart.
    pub async fn pool(&self) -> MySqlPool {
        MySqlPoolOptions::new().max_connections(2).connect_with(self.options()).await.expect("connect to test MariaDB")
    }

    /// One connection as the test user.
    pub async fn connection(&self) -> MySqlConnection {
        self.options().connect().await.expect("connect to test MariaDB")
    }

    fn options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username(WRITER)
            .password(PASSWORD)
            .database(DATABASE)
    }

    /// A root connection over the socket (for server settings).
    pub async fn root(&self) -> MySqlConnection {
        MySqlConnectOptions::new().socket(self.socket()).username("root").connect().await.expect("root over the socket")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (as a database outage), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = self.dir.path().join("mariadbd.log");
        let mut cmd = Command::new(crate::which("mariadbd").expect("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--pid-file={}", self.dir.path().join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=500",
            ])
            .arg(format!("--innodb-buffer-pool-size={}", self.options.buffer_pool));
        if let Some(size) = self.options.statement_history {
            cmd.args([
                "--performance-schema=ON",
                "--performance-schema-consumer-events-statements-current=ON",
                "--performance-schema-consumer-events-statements-history-long=ON",
            ])
            .arg(format!("--performance-schema-events-statements-history-long-size={size}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if crate::is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let options = MySqlConnectOptions::new().socket(self.socket()).username("root");
            if options.connect().await.is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("mariadbd exited with {status}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start in 60s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens a fresh connection and runs the SQL (a convenience for tests).
pub async fn execute(conn: &mut MySqlConnection, sql: &str) {
    sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.ping().await;
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The installed system tables, made once per machine and copied per server.
async fn template() -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testkit");
    let template = base.join("mariadb-template");
    if template.join("mysql").is_dir() {
        return template;
    }
    std::fs::create_dir_all(&base).expect("target/testkit");
    let staging = tempfile::Builder::new().prefix("mariadb-template-").tempdir_in(&base).expect("staging dir");
    let data = staging.path().join("data");
    let mut cmd = Command::new(crate::which("mariadb-install-db").expect("mariadb-install-db"));
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if crate::is_root() {
        cmd.arg("--user=root");
    }
    let out = cmd.output().expect("run mariadb-install-db");
    assert!(out.status.success(), "mariadb-install-db failed: {}", String::from_utf8_lossy(&out.stderr));
    // Another test may have won the race; either template is fine. Should
    // the shared folder be unusable for any other reason (seen once on a
    // fresh target/), this server's own install serves it: kept, not shared.
    match std::fs::rename(&data, &template) {
        Ok(()) => template,
        Err(_) if template.join("mysql").is_dir() => template,
        Err(e) => {
            eprintln!("testkit: cannot share the MariaDB template at {} ({e}); using this install", template.display());
            staging.keep().join("data")
        }
    }
}
