//! The path of a delivery from its source to its settlement: routing,
//! admission, per-key ordering, invocation, the outbox, retries with backoff,
//! dead-lettering, and where published messages go.

pub mod delivery;
pub mod dispatcher;
pub mod faults;
pub mod loopback;
pub mod ordering;
pub mod outbound;
pub mod quota;
pub mod relay;
pub mod route;
pub mod router;
pub mod stats;
