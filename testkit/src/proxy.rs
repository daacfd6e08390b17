//! A stand-in for a Kubernetes Service: forwards each new TCP connection to
//! the first backend whose `/readyz` answers 200, as kube-proxy routes only
//! to Ready endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// One controller replica behind the Service.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// The proxy; dropped, it stops accepting (open connections stay).
#[derive(Debug)]
pub struct ServiceProxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Backend>>>,
    task: JoinHandle<()>,
}

impl ServiceProxy {
    pub async fn start(backends: Vec<Backend>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let backends = Arc::new(Mutex::new(backends));
        let list = backends.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let list = list.lock().await.clone();
                tokio::spawn(async move {
                    for backend in list {
                        if crate::http_get_checked(backend.http, "/readyz").await == Some(200) {
                            if let Ok(mut upstream) = TcpStream::connect(backend.grpc).await {
                                let mut client = client;
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                            return;
                        }
                    }
                    // No ready endpoint: the connection is refused (closed).
                });
            }
        });
        Self { addr, backends, task }
    }

    /// `http://addr` for agents and multinicctl.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the endpoints (e.g. a restarted replica on a new port).
    pub async fn set_backends(&self, backends: Vec<Backend>) {
        *self.backends.lock().await = backends;
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
