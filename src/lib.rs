//! oath-service: a multi-tenant store and validator for OATH hardware tokens (HOTP, RFC 4226;
//! TOTP, RFC 6238), wire-compatible with the PingOne OATH Tokens API.
//!
//! A request flows one way: `routes` parses it into `domain` types and calls one function of
//! `service`, which reads and writes through `store` (secrets sealed by `crypto`) and returns a
//! domain result or a `service::ServiceError`; the route renders the response. `otp` is the
//! HOTP/TOTP engine: pure functions the verification service calls between reading and updating a
//! token. `jobs` runs bulk jobs in the background. `auth` guards every route; `error` is the single
//! mapping from failures to the contract's error body.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod database;
pub mod domain;
pub mod error;
pub mod events;
pub(crate) mod generations;
pub mod healthcheck;
pub mod import;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod otp;
pub(crate) mod parallel;
pub mod routes;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod version;
