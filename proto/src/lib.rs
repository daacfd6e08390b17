//! The wire contract of multinic (package `multinic.v1`) and the validated
//! domain types every other crate works with.
//!
//! Generated code stays in [`v1`]; everything else in the workspace speaks the
//! types of [`domain`]. The only place that knows both is [`convert`]: wire
//! values are parsed into domain values there (parse, don't validate), so a
//! malformed message is refused at the edge with an error that names the field.

pub mod convert;
pub mod domain;

/// Code generated from `proto/multinic/v1/multinic.proto` and `issuer.proto`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("multinic.v1");
}

pub use domain::*;

/// The largest gRPC message either end of a multinic stream accepts (a
/// desired set at full capacity is a few KiB; this bounds what a hostile
/// peer can make the other side buffer).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
