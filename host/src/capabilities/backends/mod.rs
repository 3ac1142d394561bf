//! Capability backends, one file each (the SQL servers share one folder).
//! A backend only speaks its store; grants and the WIT types' checks stay in
//! the capability.

pub mod batch;
pub mod elasticsearch;
pub mod http;
pub mod memory;
pub mod redis;
pub mod sql;
pub mod sqlite;
pub mod tantivy;
