//! The lockout policies over HTTP. `lock` (the default) keeps a token locked after
//! `otp.max_failures` failures until a resync or an unlock, so anyone who knows its id can keep
//! its user out; `throttle` refuses checks for a delay that doubles from
//! `otp.throttle_base_seconds` to `otp.throttle_max_seconds`, so that nobody is kept out longer
//! than that, and guessing stays slow. "Time passes" is the token's `locked_until` moved into
//! the past, except in one test that waits for real.

use std::time::Duration;

use futures_util::future::join_all;
use oath_service::config::{Lockout, Settings};
use oath_service::domain::HashAlgorithm;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{call, hotp_token, rfc_code, spawn_app_with, TestApp};

fn code(counter: u64) -> String {
    rfc_code(HashAlgorithm::Sha1, 6, counter)
}

/// A six-digit code that is none of the token's codes at counters 0 to 100.
fn wrong_code() -> String {
    let taken: Vec<String> = (0..=100).map(code).collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|c| !taken.contains(c))
        .unwrap()
}

fn throttled(base: u32, max: u32) -> impl FnOnce(&mut Settings) {
    move |s: &mut Settings| {
        s.otp.lockout = Lockout::Throttle;
        s.otp.throttle_base_seconds = base;
        s.otp.throttle_max_seconds = max;
        // The attacks below send more checks than a minute's rate limit allows.
        s.limits.otp_per_token_per_minute = 0;
    }
}

/// Creates an HOTP token (counter 0); returns its path.
async fn token(app: &TestApp, serial: &str) -> String {
    let id = app.create_token_id(&hotp_token(serial)).await;
    format!("{}/{id}", app.tokens_path())
}

/// The answer to a validation: 200 and its body.
async fn validate(app: &TestApp, token: &str, otp: &str) -> Value {
    let (status, body) = call(
        app.request(Method::POST, &format!("{token}/validate"))
            .json(&json!({"otp": otp})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn status_of(app: &TestApp, token: &str, otp: &str) -> String {
    validate(app, token, otp).await["status"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn read(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get_json(token).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn id_of(token: &str) -> Uuid {
    Uuid::parse_str(token.rsplit('/').next().unwrap()).unwrap()
}

/// The token's throttle delay ends now, as if it had been waited out.
async fn wait_out(app: &TestApp, token: &str) {
    sqlx::query(
        "update oath_tokens set locked_until = now() - interval '1 millisecond' \
         where id = $1 and locked_until is not null",
    )
    .bind(id_of(token))
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn fail_count(app: &TestApp, token: &str) -> i64 {
    app.count_in(
        id_of(token),
        "select fail_count::bigint from oath_tokens where id = $1",
    )
    .await
}

/// The attack of issue #24: ten wrong codes sent by anyone who knows a token's id. Under `lock`
/// they lock the token until a helpdesk resyncs or unlocks it.
#[sqlx::test]
async fn under_lock_ten_wrong_codes_keep_the_user_out(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.otp_per_token_per_minute = 0).await;
    let token = token(&app, "H1").await;
    for _ in 0..10 {
        assert_eq!(status_of(&app, &token, &wrong_code()).await, "INVALID");
    }
    let locked = validate(&app, &token, &code(0)).await;
    assert_eq!(locked, json!({"status": "LOCKED"}), "no retryAfterSeconds");
    let body = read(&app, &token).await;
    assert_eq!(
        (&body["locked"], &body["failedAttempts"]),
        (&json!(true), &json!(10))
    );
    assert!(body.get("lockedUntil").is_none(), "{body}");
}

/// The same attack under `throttle`: the attacker's tenth wrong code refuses checks for 30
/// seconds, and then the user's code is accepted; further failures double the delay up to its
/// maximum, never beyond. Refused checks check nothing (the right code is not consumed) and
/// extend nothing.
#[sqlx::test]
async fn under_throttle_wrong_codes_only_delay_the_user(pool: PgPool) {
    let app = spawn_app_with(pool, throttled(30, 100)).await;
    let token = token(&app, "H1").await;
    for _ in 0..10 {
        assert_eq!(status_of(&app, &token, &wrong_code()).await, "INVALID");
    }
    // Refused for 30 seconds: the right code is not checked, and refusals extend nothing.
    for _ in 0..5 {
        let refused = validate(&app, &token, &code(0)).await;
        assert_eq!(refused["status"], "LOCKED", "{refused}");
        let retry = refused["retryAfterSeconds"].as_u64().unwrap();
        assert!((28..=30).contains(&retry), "{refused}");
    }
    let body = read(&app, &token).await;
    assert_eq!(body["hotp"]["counter"], 0, "the code was not consumed");
    assert_eq!(
        (&body["locked"], &body["failedAttempts"]),
        (&json!(true), &json!(10))
    );
    assert!(body["lockedUntil"].as_str().unwrap().ends_with('Z'));
    assert_eq!(fail_count(&app, &token).await, 10);

    // Each further failure doubles the delay, up to the maximum of 100 seconds.
    for expected in [60, 100, 100] {
        wait_out(&app, &token).await;
        assert_eq!(status_of(&app, &token, &wrong_code()).await, "INVALID");
        let retry = validate(&app, &token, &code(0)).await["retryAfterSeconds"]
            .as_u64()
            .unwrap();
        assert!((expected - 2..=expected).contains(&retry), "{retry}");
    }

    // Once the delay is over the user's code is checked, accepted, and clears the failures.
    wait_out(&app, &token).await;
    assert_eq!(status_of(&app, &token, &code(0)).await, "VALID");
    let body = read(&app, &token).await;
    assert_eq!(
        (&body["locked"], &body["failedAttempts"]),
        (&json!(false), &json!(0))
    );
    assert!(body.get("lockedUntil").is_none(), "{body}");
    assert_eq!(status_of(&app, &token, &wrong_code()).await, "INVALID");
}

/// The delay is real time: a check one second after a one-second delay began is checked.
#[sqlx::test]
async fn a_throttle_delay_ends_by_itself(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        throttled(1, 1)(s);
        s.otp.max_failures = 2;
    })
    .await;
    let token = token(&app, "H1").await;
    for _ in 0..2 {
        assert_eq!(status_of(&app, &token, &wrong_code()).await, "INVALID");
    }
    let refused = validate(&app, &token, &code(0)).await;
    assert_eq!(refused, json!({"status": "LOCKED", "retryAfterSeconds": 1}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status_of(&app, &token, &code(0)).await, "VALID");
}

/// Once a delay is over, checks sent in the same instant are not all let through: the first
/// failure starts the next delay, and every other check of that instant is refused, checked
/// against nothing, whether the process reads the token (a replica that never saw it) or
/// remembers it (each check then one conditional statement).
#[sqlx::test]
async fn concurrent_checks_after_a_delay_let_one_through(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), throttled(30, 900)).await;
    let read_first = token(&app, "H1").await;
    let remembered = token(&app, "H2").await;
    assert_eq!(status_of(&app, &remembered, &code(0)).await, "VALID");
    for token in [&read_first, &remembered] {
        for _ in 0..10 {
            assert_eq!(status_of(&app, token, &wrong_code()).await, "INVALID");
        }
        for round in 0..3 {
            // A replica that has never seen the token reads it first.
            let mut replica = spawn_app_with(pool.clone(), throttled(30, 900)).await;
            replica.env = app.env;
            let sender = if token == &read_first { &replica } else { &app };
            wait_out(&app, token).await;
            let before = fail_count(&app, token).await;
            let wrong = wrong_code();
            let answers = join_all((0..20).map(|_| status_of(sender, token, &wrong))).await;
            let checked = answers.iter().filter(|a| *a == "INVALID").count();
            assert_eq!(checked, 1, "{token} round {round}: {answers:?}");
            assert_eq!(
                answers.iter().filter(|a| *a == "LOCKED").count(),
                19,
                "{answers:?}"
            );
            assert_eq!(fail_count(&app, token).await, before + 1);
        }
    }
}
