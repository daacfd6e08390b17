//! One module per subcommand.

pub mod demo;
pub mod get;
pub mod status;
pub mod watch;
