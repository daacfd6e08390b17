//! The gRPC edge: wire messages are converted to domain values here and
//! nowhere else in the controller.

pub mod agent_service;
pub mod diff_view;
pub mod fleet_service;
pub mod limits;
pub mod rollout_view;
pub mod stream_rules;

pub use agent_service::AgentSvc;
pub use fleet_service::FleetSvc;
