//! Who is on the other end of a request.
//!
//! With mTLS the transport puts the verified peer identity into each
//! request's extensions; without it (`--insecure`) every peer is anonymous
//! and an agent is trusted to name its own node in Hello.

use multinic_proto::NodeName;
use tonic::{Request, Status};

/// The verified identity of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Plaintext (`--insecure`): no identity.
    Anonymous,
    /// An agent certificate naming its node.
    Agent { node: NodeName },
    /// An operator certificate (multinicctl).
    Operator { name: String },
}

impl Peer {
    /// The peer of a request.
    pub fn of<T>(request: &Request<T>) -> Self {
        request.extensions().get::<Peer>().cloned().unwrap_or(Peer::Anonymous)
    }

    /// Refuses anyone but an agent (or anybody when running insecure).
    pub fn require_agent(&self) -> Result<(), Status> {
        match self {
            Self::Anonymous | Self::Agent { .. } => Ok(()),
            Self::Operator { name } => {
                Err(Status::permission_denied(format!("operator {name:?} may not open an agent stream")))
            }
        }
    }

    /// Refuses anyone but an operator (or anybody when running insecure).
    pub fn require_operator(&self) -> Result<(), Status> {
        match self {
            Self::Anonymous | Self::Operator { .. } => Ok(()),
            Self::Agent { node } => {
                Err(Status::permission_denied(format!("agent of node {node} may not use the fleet service")))
            }
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::Agent { node } => write!(f, "agent/{node}"),
            Self::Operator { name } => write!(f, "operator/{name}"),
        }
    }
}
