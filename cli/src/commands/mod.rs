//! One module per subcommand.

pub mod certs;
pub mod confirm;
pub mod demo;
pub mod diff;
pub mod get;
pub mod status;
pub mod watch;
