//! The JWKS URL over HTTPS with the operator's CAs: a real HTTPS server whose certificate a CA of
//! the test signed serves the key set. It is trusted through `auth.jwks_ca_file` (besides the
//! system's CA store) and refused without it; `http://` is refused unless
//! `auth.allow_http_jwks = true`. Settings are given both as a test's `Settings` and, to the
//! binary, as the environment variables an operator sets.

use std::time::Duration;

use reqwest::Method;
use reqwest::StatusCode;
use sqlx::PgPool;

use super::auth::{claims, rs256};
use crate::support::app::{expect_error, send, spawn_app_with, test_settings, HS256_SECRET};
use crate::support::service::{
    assert_start_up_refused, command, crypto_env, database_url, Service,
};
use crate::support::tls::{scratch_dir, Ca, HttpsServer};

const JWKS: &str = include_str!("../fixtures/jwt/jwks.json");

#[sqlx::test]
async fn jwks_url_over_https_trusts_jwks_ca_file_and_only_it(pool: PgPool) {
    let ca = Ca::new("identity provider test CA");
    let idp = HttpsServer::start(&ca.issue(&["127.0.0.1"]), JWKS);
    let ca_file = ca.write_pem(&scratch_dir("jwks-ca"), "idp-ca.pem");
    let jwks_url = format!("{}/jwks.json", idp.base);

    let trusting = spawn_app_with(pool.clone(), |s| {
        s.auth.jwks_path = None;
        s.auth.jwks_url = Some(jwks_url.clone());
        s.auth.jwks_ca_file = Some(ca_file.clone());
    })
    .await;
    let token = rs256(&claims(&trusting));
    let res = send(trusting.request_as(&token, Method::GET, &trusting.tokens_path())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(idp.requests(), 1, "the start-up fetch, over HTTPS");

    // The system's CA store alone does not know the test CA: no key set, so 503, and no request
    // got past the TLS handshake.
    let untrusting = spawn_app_with(pool, |s| {
        s.auth.jwks_path = None;
        s.auth.jwks_url = Some(jwks_url.clone());
    })
    .await;
    let token = rs256(&claims(&untrusting));
    let res = send(untrusting.request_as(&token, Method::GET, &untrusting.tokens_path())).await;
    expect_error(res, 503, "SERVICE_UNAVAILABLE").await;
    assert_eq!(
        idp.requests(),
        1,
        "handshakes with an unknown CA are refused"
    );
}

/// What an operator sets: `OATH__AUTH__JWKS_URL` and `OATH__AUTH__JWKS_CA_FILE` for the binary.
#[sqlx::test]
async fn jwks_settings_from_the_environment(pool: PgPool) {
    let ca = Ca::new("identity provider test CA");
    let idp = HttpsServer::start(&ca.issue(&["127.0.0.1"]), JWKS);
    let dir = scratch_dir("jwks-env");
    let ca_file = ca.write_pem(&dir, "idp-ca.pem");
    let mut env = crypto_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__WORKERS", "1".to_string()),
        ("OATH__AUTH__ISSUER", test_settings().auth.issuer),
        ("OATH__AUTH__JWKS_URL", format!("{}/jwks.json", idp.base)),
        ("OATH__AUTH__JWKS_CA_FILE", ca_file.display().to_string()),
        ("OATH__JOBS__RUNNERS", "0".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    let mut service = Service::start(&["serve", "--no-migrate"], &env, dir.join("service.log"));
    service.wait_ready(Duration::from_secs(30)).await;
    let app = spawn_app_with(pool, |_| {}).await;
    let res = reqwest::Client::new()
        .get(format!("{}{}", service.base, app.tokens_path()))
        .bearer_auth(rs256(&claims(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{}", service.output());
    assert_eq!(idp.requests(), 1);
}

/// Each of these stops the binary before it serves, with one line naming the key.
#[tokio::test]
async fn unusable_jwks_settings_stop_start_up_naming_the_key() {
    let dir = scratch_dir("jwks-bad");
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let http = "http://127.0.0.1:9/jwks.json?token=hunter2";
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("OATH__AUTH__JWKS_URL", http)], "auth.allow_http_jwks"),
        (
            &[
                ("OATH__AUTH__JWKS_URL", http),
                ("OATH__AUTH__ALLOW_HTTP_JWKS", "false"),
            ],
            "auth.allow_http_jwks",
        ),
        (
            &[
                ("OATH__AUTH__JWKS_URL", "https://127.0.0.1:9/jwks.json"),
                ("OATH__AUTH__JWKS_CA_FILE", "/nonexistent/ca.pem"),
            ],
            "auth.jwks_ca_file",
        ),
        (
            &[
                ("OATH__AUTH__JWKS_URL", "https://127.0.0.1:9/jwks.json"),
                ("OATH__AUTH__JWKS_CA_FILE", not_pem.to_str().unwrap()),
            ],
            "auth.jwks_ca_file",
        ),
    ];
    for (settings, key) in cases {
        let mut env = crypto_env();
        env.extend([
            // Nothing listens there: the checks must come before any connection.
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:9/oath".to_string(),
            ),
            ("OATH__LOG__LEVEL", "error".into()),
        ]);
        env.extend(settings.iter().map(|(k, v)| (*k, v.to_string())));
        let out = command(&env)
            .args(["serve", "--no-migrate"])
            .output()
            .unwrap();
        let stderr = assert_start_up_refused(&out, &format!("{settings:?}"));
        assert!(stderr.contains(key), "{settings:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }

    // Allowed for development: the service starts (and serves HS256 while the URL is away).
    let mut env = crypto_env();
    env.extend([
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:9/oath".to_string(),
        ),
        ("OATH__AUTH__JWKS_URL", http.into()),
        ("OATH__AUTH__ALLOW_HTTP_JWKS", "true".into()),
        ("OATH__AUTH__HS256_SECRET", HS256_SECRET.into()),
        ("OATH__LOG__LEVEL", "error".into()),
    ]);
    let mut service = Service::start(&["serve", "--no-migrate"], &env, dir.join("allowed.log"));
    service
        .wait_for("/health/live", Duration::from_secs(20))
        .await;
}
