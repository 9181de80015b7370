//! What the tests that run real components share: a private PostgreSQL cluster, the service
//! binary as a process, and certificates made at test time.

pub mod cluster;
pub mod service;
pub mod tls;
