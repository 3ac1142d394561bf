//! The SQL server backends: one implementation for PostgreSQL and for MySQL
//! and MariaDB, and a dialect file for each.

pub mod logins;
pub mod mysql;
pub mod plan;
pub mod postgres;
pub mod server;
