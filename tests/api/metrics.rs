//! `/metrics` in the Prometheus text format.
//!
//! The registry is process-wide, and plain `cargo test` runs the tests of this binary on threads
//! of one process, so other tests move the same series meanwhile. Counters only grow, though:
//! the test measures each series' change around its own requests and repeats the round until one
//! round saw exactly its own counts. A series that counts wrongly (not at all, or twice) misses
//! in every round and fails; under nextest (a process per test) the first round is exact.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{parts, spawn_app, TestApp};

/// Rounds before giving up on a quiet one.
const ROUNDS: usize = 25;

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let res = app.get_anonymous_ok("/metrics", "text/plain").await;
    res.text().await.unwrap()
}

/// One round of requests: a token created, its duplicate refused, a job with one new serial and
/// one duplicate run to its end, and an OTP of the new token validated.
async fn round(app: &TestApp, n: usize) {
    let secret = "3132333435363738393031323334353637383930";
    let token = |serial: String| json!({"serialNumber": serial, "secret": secret, "type": "HOTP", "otpLength": 6});
    assert_eq!(
        app.create_token(&token(format!("M{n}A"))).await.status(),
        201
    );
    assert_eq!(
        app.create_token(&token(format!("M{n}A"))).await.status(),
        400
    );
    let (status, job) = parts(
        app.submit_job(&json!({"type": "CREATE_OATH_TOKENS",
                               "tokens": [token(format!("M{n}J")), token(format!("M{n}A"))]}))
            .await,
    )
    .await;
    assert_eq!(status, 202, "{job}");
    app.run_jobs().await;
    let id: uuid::Uuid = sqlx::query_scalar("select id from oath_tokens where serial_number = $1")
        .bind(format!("M{n}J"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // RFC 4226's first HOTP value for the secret "12345678901234567890".
    let res = app
        .request(
            reqwest::Method::POST,
            &format!("{}/{id}/validate", app.tokens_path()),
        )
        .json(&json!({"otp": "755224"}))
        .send()
        .await
        .unwrap();
    let (_, check) = parts(res).await;
    assert_eq!(check["status"], "VALID");
}

#[sqlx::test]
async fn metrics_count_requests_jobs_and_the_pool(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tokens = "/v1/environments/{env_id}/oathTokens";
    let validate = "/v1/environments/{env_id}/oathTokens/{token_id}/validate";
    let want: BTreeMap<String, f64> = [
        (format!(r#"oath_http_requests_total{{method="POST",route="{tokens}",status="201"}}"#), 1.0),
        (format!(r#"oath_http_requests_total{{method="POST",route="{tokens}",status="400"}}"#), 1.0),
        (format!(r#"oath_http_request_duration_seconds_count{{method="POST",route="{tokens}",status="201"}}"#), 1.0),
        (format!(r#"oath_http_requests_total{{method="POST",route="{validate}",status="200"}}"#), 1.0),
        (r#"oath_job_items_total{outcome="CREATED"}"#.to_string(), 1.0),
        (r#"oath_job_items_total{outcome="DUPLICATE"}"#.to_string(), 1.0),
        ("oath_job_claims_total".to_string(), 1.0),
        (r#"oath_job_chunk_duration_seconds_count{type="CREATE_OATH_TOKENS"}"#.to_string(), 1.0),
        (r#"oath_otp_validations_total{operation="validate",outcome="VALID"}"#.to_string(), 1.0),
    ]
    .into();

    let mut seen = Vec::new();
    let mut text = String::new();
    for n in 0..ROUNDS {
        let before = scrape(&app).await;
        round(&app, n).await;
        text = scrape(&app).await;
        let deltas: BTreeMap<&str, f64> = want
            .keys()
            .map(|series| {
                let at = |t: &str| sample(t, series).unwrap_or(0.0);
                (series.as_str(), at(&text) - at(&before))
            })
            .collect();
        for (series, delta) in &deltas {
            // Other tests only add: fewer than this round's own counts is always wrong.
            assert!(
                *delta >= want[*series],
                "{series} moved by {delta} around a round that should count {}:\n{text}",
                want[*series]
            );
        }
        if deltas.iter().all(|(series, delta)| *delta == want[*series]) {
            seen.clear();
            break;
        }
        seen.push(
            deltas
                .into_iter()
                .map(|(s, d)| (s.to_string(), d))
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        seen.is_empty(),
        "no round of {ROUNDS} counted exactly its own requests: {seen:#?}"
    );

    assert!(sample(&text, r#"oath_db_pool_connections{state="idle"}"#).is_some());
    assert!(sample(&text, r#"oath_db_pool_connections{state="in_use"}"#).is_some());
    // The test's pool is sqlx::test's, not one sized by the settings.
    assert!(sample(&text, "oath_db_pool_max_connections").is_some_and(|n| n >= 1.0));
    // Ids never become labels.
    assert!(!text.contains(&app.env.to_string()));
}

/// `oath_build_info` names the build: the crate's version and its source revision.
#[sqlx::test]
async fn build_info_names_the_version_and_revision(pool: PgPool) {
    let app = spawn_app(pool).await;
    let text = scrape(&app).await;
    let (version, revision) = (
        oath_service::version::VERSION,
        oath_service::version::REVISION,
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(
        revision == "unknown"
            || (revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{revision}"
    );
    let line = format!(r#"oath_build_info{{revision="{revision}",version="{version}"}} 1"#);
    assert!(text.lines().any(|l| l == line), "{line} in {text}");
}
