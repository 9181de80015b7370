//! What the test binaries share: the app in-process on a test database and the ways to call it
//! (`app`), captured logs (`logs`), a private PostgreSQL cluster (`cluster`), a pg_auto_failover
//! formation (`formation`), the service binary as a process (`service`), HTTP by hand (`raw`),
//! and certificates made at test time (`tls`). Each binary uses a part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod app;
pub mod cluster;
pub mod formation;
pub mod logs;
pub mod raw;
pub mod receiver;
pub mod service;
pub mod tls;
