//! The one error type of the domain parsers.

/// Why a value was refused. Each variant carries the offending input so that
/// the message alone tells an operator what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid MAC address {input:?}: {reason}")]
    Mac { input: String, reason: &'static str },
    #[error("invalid MTU {input}: {reason}")]
    Mtu { input: i64, reason: String },
    #[error("invalid address {input:?}: {reason}")]
    Address { input: String, reason: String },
    #[error("invalid cidr {input:?}: {reason}")]
    Cidr { input: String, reason: String },
    #[error("invalid node name {input:?}: {reason}")]
    NodeName { input: String, reason: &'static str },
    #[error("invalid interface name {input:?}: {reason}")]
    InterfaceName { input: String, reason: String },
    #[error("MAC {mac} appears more than once in the set")]
    DuplicateMac { mac: String },
    #[error("digest mismatch: message says {claimed}, content hashes to {actual}")]
    DigestMismatch { claimed: String, actual: String },
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("{field} is missing")]
    Missing { field: &'static str },
}
