//! The admin side of a running host: the HTTP API (deploys, rollbacks,
//! metrics, probes), the dashboard, the watched deploy directory, and the
//! CLI's client.

pub mod api;
pub mod client;
pub mod dashboard;
pub mod metrics;
pub mod watch;
