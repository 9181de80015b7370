//! HTTP-level tests: each test gets a fresh database (`#[sqlx::test]`) and a real server on a free
//! port, and talks to it over HTTP.

mod auth;
mod corpus;
mod errors;
mod helpers;
mod idempotency;
mod imports;
mod jobs;
mod jwks_https;
mod limits;
mod metrics;
mod openapi;
mod operations;
mod otp;
mod outage;
mod secrets;
mod security;
#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;
mod tokens;
mod typed_rows;
mod validation;
