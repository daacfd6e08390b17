//! One module per subcommand.

pub mod certs;
pub mod demo;
pub mod get;
pub mod status;
