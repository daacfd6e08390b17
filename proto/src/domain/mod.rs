//! Validated domain types: a value of one of these types is always valid.
//!
//! This module has no I/O and no async: it takes values and returns values.

mod addr;
mod desired;
mod drift;
mod error;
mod mac;
mod messages;
mod name;
mod status;

pub use addr::{IfaceAddr, Mtu};
pub use desired::{DesiredSet, Digest, InterfaceSpec};
pub use drift::{DriftAction, DriftFinding, DriftKind};
pub use error::ParseError;
pub use mac::MacAddress;
pub use messages::{AgentHello, AgentReport, DesiredPush};
pub use name::{DEFAULT_CAPACITY, InterfaceName, MAX_CAPACITY, NodeName};
pub use status::{ErrorCode, InterfaceState, InterfaceStatus, Outcome};
