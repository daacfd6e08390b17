//! The agent's own D-Bus client on the host's system bus, for
//! NetworkManager's API: one connection per host, opened on the first call,
//! kept for the next ones, and opened again once it broke (the bus
//! restarted, or a call timed out).
//!
//! Why in-process: host mode used to run `busctl` and `nmcli` in the host's
//! namespaces, 5 to 15 ms per process, which made a first apply take 1.6 to
//! 1.8 times NetworkManager's own `nmcli connection load` + `up`. A call
//! over an open connection costs well under a millisecond.
//!
//! The host's bus is reached without entering any namespace: the socket
//! path is looked up through `/proc/<pid>/root`, the root of the host
//! process (PID 1 with `hostPID`), which resolves in that process's mount
//! namespace. A path-bound Unix socket ignores network namespaces. The
//! agent authenticates with `EXTERNAL`, as the user it runs as (root: the
//! kernel vouches for it to the bus).
//!
//! The calls run on a runtime of their own (one thread), so the blocking
//! callers (host mode runs on the blocking pool, the benchmark on a plain
//! thread) never need, nor can upset, the agent's runtime. Every call is
//! bounded: a bus or a NetworkManager that does not answer is an error of
//! that call, never a hang.
//!
//! This module only carries calls to NetworkManager's service: it never
//! claims a name, serves an object or calls any other service.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;
use zbus::connection::{AuthMechanism, Builder};
use zbus::{Connection, DynamicType, OwnedVariant, Type};

use crate::hostns::HostNamespaces;

/// NetworkManager's service name.
pub const SERVICE: &str = "org.freedesktop.NetworkManager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Where the system bus listens, inside the host's filesystem.
pub const SYSTEM_BUS_SOCKET: &str = "run/dbus/system_bus_socket";

/// How long connecting (and authenticating) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one call may take: D-Bus's own default reply timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// A call to NetworkManager that did not get its answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot start the D-Bus client: {0}")]
    Runtime(String),
    #[error("cannot connect to the host's system bus at {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: zbus::Error,
    },
    #[error("the host's system bus at {} did not accept a connection within {timeout:?}", .socket.display())]
    ConnectTimeout { socket: PathBuf, timeout: Duration },
    #[error("{call}: no answer within {timeout:?}")]
    Timeout { call: String, timeout: Duration },
    /// NetworkManager answered with an error, or the connection broke.
    #[error("{call}: {source}")]
    Call {
        call: String,
        #[source]
        source: zbus::Error,
    },
}

impl BusError {
    /// The D-Bus error NetworkManager answered with, e.g.
    /// `org.freedesktop.NetworkManager.UnknownDevice`.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Call { source: zbus::Error::MethodError(name, ..), .. } => Some(name.as_str()),
            _ => None,
        }
    }
}

/// The host's system bus, as seen from the agent.
#[derive(Debug, Clone)]
pub struct Bus {
    socket: PathBuf,
}

impl Bus {
    /// The system bus of the host whose namespaces are `host`'s.
    pub fn of(host: &HostNamespaces) -> Self {
        Self { socket: PathBuf::from(format!("/proc/{}/root/{SYSTEM_BUS_SOCKET}", host.pid)) }
    }

    /// `interface.method(body)` on NetworkManager's `object`: its answer.
    pub fn call<B, R>(
        &self,
        object: &str,
        interface: &'static str,
        method: &'static str,
        body: B,
    ) -> Result<R, BusError>
    where
        B: Serialize + DynamicType + Send + Sync + 'static,
        R: DeserializeOwned + Type + Send + 'static,
    {
        let name = format!("{interface}.{method} on {object}");
        let object = object.to_owned();
        self.run(name, CALL_TIMEOUT, move |conn| async move {
            let reply = conn.call_method(Some(SERVICE), object.as_str(), Some(interface), method, &body).await?;
            reply.body().deserialize::<R>()
        })
    }

    /// The property `name` of `interface` on NetworkManager's `object`.
    pub fn property<R>(&self, object: &str, interface: &'static str, name: &'static str) -> Result<R, BusError>
    where
        R: TryFrom<OwnedVariant, Error = zbus::Error> + Send + 'static,
    {
        let value: OwnedVariant = self.call(object, PROPERTIES, "Get", (interface.to_owned(), name.to_owned()))?;
        R::try_from(value).map_err(|source| BusError::Call { call: format!("{interface}.{name} of {object}"), source })
    }

    /// Runs `work` on the open connection (opening it first when there is
    /// none or it broke), bounded by `timeout`. `call` names it in errors.
    /// A connection that broke or did not answer in time is dropped, so the
    /// next call opens a new one.
    pub fn run<T, F, Fut>(&self, call: String, timeout: Duration, work: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = zbus::Result<T>> + Send + 'static,
    {
        let started = Instant::now();
        let conn = self.connection()?;
        let kept = conn.clone();
        let answer = block_on(timeout, async move { work(conn).await })?;
        debug!(call = %call, took_us = started.elapsed().as_micros(), ok = matches!(answer, Some(Ok(_))), "D-Bus call");
        match answer {
            Some(Ok(value)) => Ok(value),
            Some(Err(source)) => {
                if kept.is_closed() || matches!(source, zbus::Error::InputOutput(_)) {
                    self.forget(&kept);
                }
                Err(BusError::Call { call, source })
            }
            None => {
                self.forget(&kept);
                Err(BusError::Timeout { call, timeout })
            }
        }
    }

    /// The open connection to this bus, or a new one.
    fn connection(&self) -> Result<Connection, BusError> {
        let mut open = connections().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = open.get(&self.socket).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let socket = self.socket.clone();
        let connecting = async move {
            // Tokio's connect never blocks the runtime's thread (a frozen
            // bus with a full backlog is an error at once).
            let stream = tokio::net::UnixStream::connect(&socket).await?.into_std()?;
            Builder::unix_stream(stream).auth_mechanism(AuthMechanism::External).build().await
        };
        let conn = match block_on(CONNECT_TIMEOUT, connecting)? {
            Some(Ok(conn)) => conn,
            Some(Err(source)) => return Err(BusError::Connect { socket: self.socket.clone(), source }),
            None => return Err(BusError::ConnectTimeout { socket: self.socket.clone(), timeout: CONNECT_TIMEOUT }),
        };
        debug!(socket = %self.socket.display(), name = ?conn.unique_name().map(|n| n.to_string()), "connected to the host's system bus");
        open.insert(self.socket.clone(), conn.clone());
        Ok(conn)
    }

    /// Drops `conn` from the open connections (when it is still the one).
    fn forget(&self, conn: &Connection) {
        let mut open = connections().lock().unwrap_or_else(PoisonError::into_inner);
        if open.get(&self.socket).is_some_and(|c| c.unique_name() == conn.unique_name()) {
            debug!(socket = %self.socket.display(), "dropping the connection to the host's system bus");
            open.remove(&self.socket);
        }
    }
}

/// The open connections, by socket path (one host in production; one per
/// test node in tests).
fn connections() -> &'static Mutex<BTreeMap<PathBuf, Connection>> {
    static OPEN: Mutex<BTreeMap<PathBuf, Connection>> = Mutex::new(BTreeMap::new());
    &OPEN
}

/// Runs `work` on the bus runtime and waits for it at most `timeout`:
/// `None` when it did not finish in time (it is then dropped). Never
/// enters a runtime on the calling thread, so it cannot panic in one.
fn block_on<T: Send + 'static>(
    timeout: Duration,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<Option<T>, BusError> {
    let runtime = runtime()?;
    let (done, answer) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = done.send(tokio::time::timeout(timeout, work).await.ok());
    });
    // The task's own timeout ends it; this one only guards against a
    // runtime that no longer runs it.
    Ok(answer.recv_timeout(timeout + Duration::from_secs(1)).ok().flatten())
}

/// The bus runtime: one thread, started with the first call.
fn runtime() -> Result<&'static tokio::runtime::Runtime, BusError> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("multinic-dbus")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BusError::Runtime(e.clone()))
}
