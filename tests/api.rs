//! Tests of the service as its clients and operators meet it. Most get a fresh database
//! (`#[sqlx::test]`) and a real server on a free port, and talk to it over HTTP; others run the
//! binary itself (`processes`, `import_cli`, `operations`, `upload_memory`), against a private
//! PostgreSQL cluster (`postgres_tls`) or in a browser (`docs_browser`). One binary, so that it is
//! linked once; the tests that install the process-wide log subscriber (tests/logs.rs,
//! tests/audit.rs) and the outage under load (tests/postgres_outage.rs) are binaries of their own.

mod support;

mod api {
    mod auth;
    mod configuration;
    mod connection_reuse;
    mod corpus;
    mod create_contention;
    mod cross_tenant;
    mod deliveries;
    mod delivery_processes;
    mod docs_browser;
    mod errors;
    mod events;
    mod helpdesk;
    mod idempotency;
    #[cfg(feature = "import-cli")]
    mod import_cli;
    mod import_fairness;
    mod imports;
    mod jobs;
    mod jwks_https;
    mod keys;
    mod limits;
    mod lockout;
    mod metrics;
    mod openapi;
    mod operations;
    mod otp;
    mod outage;
    mod postgres_tls;
    mod processes;
    mod replicas;
    mod request_bodies;
    mod revoke_crash;
    mod rollback;
    mod secrets;
    mod security;
    mod shutdown;
    mod subscriptions;
    mod tenancy;
    mod tokens;
    mod traces;
    mod typed_rows;
    mod upload_memory;
    mod validation;
}
