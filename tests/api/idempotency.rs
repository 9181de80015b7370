//! `Idempotency-Key` on POST: what a key may hold, that keys belong to one environment, that a
//! key is remembered for 24 hours and then forgotten, and that forgotten keys are purged.
//! (Replays and conflicts of one key in one environment are in jobs.rs.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use oath_service::jobs::runner::RunnerPool;
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, hotp_token, parts, send, spawn_app, spawn_app_with, TestApp,
};

/// Creates a token in `env` with an `Idempotency-Key` header of exactly these bytes.
async fn create_in(app: &TestApp, env: Uuid, key: HeaderValue, body: &Value) -> (u16, Value, bool) {
    let res = send(
        app.request_in(
            env,
            Method::POST,
            &format!("/v1/environments/{env}/oathTokens"),
        )
        .header("idempotency-key", key)
        .json(body),
    )
    .await;
    let replayed = res.headers().get("idempotent-replayed").is_some();
    let (status, body) = parts(res).await;
    (status, body, replayed)
}

async fn create(app: &TestApp, key: &str, body: &Value) -> (u16, Value, bool) {
    create_in(app, app.env, HeaderValue::from_str(key).unwrap(), body).await
}

async fn stored_keys(app: &TestApp, key: &str) -> i64 {
    sqlx::query_scalar("select count(*) from idempotency_keys where key = $1")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Makes the stored key look `age` old.
async fn age_key(app: &TestApp, key: &str, age: &str) {
    let updated = sqlx::query(
        "update idempotency_keys set created_at = now() - $2::interval \
         where environment_id = $1 and key = $3",
    )
    .bind(app.env)
    .bind(age)
    .bind(key)
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(updated, 1, "key {key} is stored");
}

#[sqlx::test]
async fn keys_are_1_to_255_visible_ascii_characters(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Each body would be created (a new serial) but for its key: a 400 can only come from it.
    let refused: Vec<(&str, HeaderValue)> = vec![
        (
            "256 characters",
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        ),
        ("empty", HeaderValue::from_static("")),
        ("a space", HeaderValue::from_static("two words")),
        ("a tab", HeaderValue::from_static("tab\there")),
        (
            "non-ASCII",
            HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        ),
    ];
    for (i, (what, key)) in refused.into_iter().enumerate() {
        let (status, body, _) =
            create_in(&app, app.env, key, &hotp_token(&format!("BAD{i}"))).await;
        assert_error(status, &body, 400, "INVALID_REQUEST");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key"), "{what}: {body}");
    }
    assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
    assert_eq!(app.count("select count(*) from idempotency_keys").await, 0);

    // The longest key and the visible punctuation are accepted, and replay.
    let longest = "k".repeat(255);
    let punctuation = "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\"";
    for (serial, key) in [
        ("OK1", longest.as_str()),
        ("OK2", punctuation),
        ("OK3", "x"),
    ] {
        let (status, first, replayed) = create(&app, key, &hotp_token(serial)).await;
        assert_eq!(status, 201, "{key}: {first}");
        assert!(!replayed);
        let (status, again, replayed) = create(&app, key, &hotp_token(serial)).await;
        assert_eq!((status, replayed), (201, true), "{key}: {again}");
        assert_eq!(again, first);
    }
    assert_eq!(app.count("select count(*) from oath_tokens").await, 3);
}

#[sqlx::test]
async fn the_same_key_in_two_environments_does_two_things(pool: PgPool) {
    let app = spawn_app(pool).await;
    let other = Uuid::new_v4();
    let key = || HeaderValue::from_static("shared-key");
    let (status, in_a, replayed_a) = create_in(&app, app.env, key(), &hotp_token("SAME")).await;
    assert_eq!((status, replayed_a), (201, false), "{in_a}");
    let (status, in_b, replayed_b) = create_in(&app, other, key(), &hotp_token("SAME")).await;
    assert_eq!((status, replayed_b), (201, false), "{in_b}");
    assert_ne!(in_a["id"], in_b["id"]);
    assert_eq!(in_b["environment"]["id"], other.to_string());
    // Within each environment the key stays bound to its own first request.
    let (status, other_body, _) = create_in(&app, other, key(), &hotp_token("OTHER")).await;
    assert_error(status, &other_body, 409, "CONFLICT");
    for env in [app.env, other] {
        assert_eq!(app.tokens_in(env).await, 1, "{env}");
    }
    assert_eq!(stored_keys(&app, "shared-key").await, 2);
}

#[sqlx::test]
async fn a_key_is_remembered_24_hours_then_forgotten(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, first, _) = create(&app, "day-key", &hotp_token("D1")).await;
    assert_eq!(status, 201, "{first}");

    // Just inside 24 hours: the first answer, and a different request is a conflict.
    age_key(&app, "day-key", "23 hours 59 minutes").await;
    let (status, again, replayed) = create(&app, "day-key", &hotp_token("D1")).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again, first);
    let (status, body, _) = create(&app, "day-key", &hotp_token("D2")).await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(app.count("select count(*) from oath_tokens").await, 1);

    // Past 24 hours the key is free again: the request is done anew.
    age_key(&app, "day-key", "24 hours 1 minute").await;
    let (status, fresh, replayed) = create(&app, "day-key", &hotp_token("D2")).await;
    assert_eq!((status, replayed), (201, false), "{fresh}");
    assert_eq!(fresh["serialNumber"], "D2");
    assert_eq!(app.count("select count(*) from oath_tokens").await, 2);
    // ... and remembered from then on.
    let (status, again, replayed) = create(&app, "day-key", &hotp_token("D2")).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again, fresh);
}

#[sqlx::test]
async fn expired_keys_are_purged_and_live_ones_kept(pool: PgPool) {
    // An API-only process (no runners) still purges.
    let app = spawn_app_with(pool, |s| s.jobs.runners = 0).await;
    for (key, serial) in [("old-key", "P1"), ("young-key", "P2")] {
        let (status, body, _) = create(&app, key, &hotp_token(serial)).await;
        assert_eq!(status, 201, "{body}");
    }
    age_key(&app, "old-key", "24 hours 1 second").await;
    age_key(&app, "young-key", "23 hours").await;

    let runners = RunnerPool::start(app.pool.clone(), Arc::new(app.settings.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_keys(&app, "old-key").await > 0 {
        assert!(Instant::now() < deadline, "the expired key was not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runners.stop().await;
    assert_eq!(stored_keys(&app, "young-key").await, 1);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 2);
    // The young key still answers for its request.
    let (status, _, replayed) = create(&app, "young-key", &hotp_token("P2")).await;
    assert_eq!((status, replayed), (201, true));
}
