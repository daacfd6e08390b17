//! One module per subcommand.

pub mod certs;
pub mod confirm;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diff;
pub mod get;
pub mod rollout;
pub mod status;
pub mod watch;
