//! HTTP-level tests: each test gets a fresh database (`#[sqlx::test]`) and a real server on a free
//! port, and talks to it over HTTP.

mod auth;
mod corpus;
mod errors;
mod helpers;
mod idempotency;
mod imports;
mod jobs;
mod metrics;
mod openapi;
mod otp;
mod outage;
mod secrets;
mod tokens;
mod validation;
