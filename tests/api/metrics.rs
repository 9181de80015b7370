//! `/metrics` in the Prometheus text format.

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{parts, seed_token, spawn_app};

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[sqlx::test]
async fn metrics_count_requests_jobs_and_the_pool(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.create_token(&seed_token()).await.status(), 201);
    assert_eq!(app.create_token(&seed_token()).await.status(), 400);
    let (_, job) = parts(
        app.submit_job(&json!({"type": "CREATE_OATH_TOKENS", "tokens": [
            {"serialNumber": "M1", "secret": "3132333435363738393031323334353637383930", "type": "HOTP", "otpLength": 6},
            {"serialNumber": "2333734700388", "secret": "3132333435363738393031323334353637383930", "type": "HOTP", "otpLength": 6}
        ]}))
        .await,
    )
    .await;
    assert!(job["id"].is_string());
    app.drain(&mut app.runner("r1")).await;
    // RFC 4226's first HOTP value for the secret "12345678901234567890".
    let id: uuid::Uuid =
        sqlx::query_scalar("select id from oath_tokens where serial_number = 'M1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
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

    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    let route = "/v1/environments/{env_id}/oathTokens";
    assert_eq!(
        sample(
            &text,
            &format!(r#"oath_http_requests_total{{method="POST",route="{route}",status="201"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"oath_http_requests_total{{method="POST",route="{route}",status="400"}}"#)
        ),
        Some(1.0)
    );
    assert!(sample(
        &text,
        &format!(
            r#"oath_http_request_duration_seconds_count{{method="POST",route="{route}",status="201"}}"#
        )
    )
    .is_some());
    assert_eq!(
        sample(&text, r#"oath_job_items_total{outcome="CREATED"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"oath_job_items_total{outcome="DUPLICATE"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "oath_job_claims_total"), Some(1.0));
    assert!(sample(
        &text,
        r#"oath_job_chunk_duration_seconds_count{type="CREATE_OATH_TOKENS"}"#
    )
    .is_some());
    assert!(sample(&text, r#"oath_db_pool_connections{state="idle"}"#).is_some());
    assert!(sample(&text, r#"oath_db_pool_connections{state="in_use"}"#).is_some());
    // The test's pool is sqlx::test's, not one sized by the settings.
    assert!(sample(&text, "oath_db_pool_max_connections").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(
            &text,
            r#"oath_otp_validations_total{operation="validate",outcome="VALID"}"#
        ),
        Some(1.0)
    );
    // Ids never become labels.
    assert!(!text.contains(&app.env.to_string()));
}
