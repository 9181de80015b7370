//! Validate, resync and pairing over HTTP, with the RFC 4226 secret. Expected codes come from the
//! service's own engine at the current time (TOTP) or the counter (HOTP).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use oath_service::auth::Scope;
use oath_service::domain::{HashAlgorithm, OtpLength};
use oath_service::otp::{hotp, time_step_at};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, call, details, expect_error, parts, rfc_code, send, spawn_app, spawn_app_with,
    TestApp,
};

const RFC_SECRET: &str = "3132333435363738393031323334353637383930";

fn hotp_code(counter: u64) -> String {
    rfc_code(HashAlgorithm::Sha1, 6, counter)
}

/// A six-digit code that is none of the codes of `counters`.
fn wrong_hotp_code(counters: std::ops::RangeInclusive<u64>) -> String {
    let taken: Vec<String> = counters.map(hotp_code).collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|c| !taken.contains(c))
        .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The current time step, at least `margin` seconds before the next one begins (waiting for the
/// next step if needed), so that the server sees the same step as the test.
async fn steady_step(time_step: u64, margin: u64) -> u64 {
    loop {
        let now = unix_now();
        let left = time_step - now % time_step;
        if left > margin {
            return time_step_at(now, time_step as u32);
        }
        tokio::time::sleep(Duration::from_secs(left) + Duration::from_millis(100)).await;
    }
}

fn hotp_token(serial: &str, counter: u64) -> Value {
    json!({"serialNumber": serial, "secret": RFC_SECRET, "type": "HOTP",
           "hotp": {"counter": counter}, "otpLength": 6})
}

fn totp_token(serial: &str, algorithm: &str, time_step: u64) -> Value {
    let secret = match algorithm {
        // RFC 6238 Appendix B seeds: the RFC 4226 secret repeated to the hash's length.
        "HmacSHA256" => format!("{RFC_SECRET}{}", &RFC_SECRET[..24]),
        "HmacSHA512" => format!("{RFC_SECRET}{RFC_SECRET}{RFC_SECRET}{}", &RFC_SECRET[..8]),
        _ => RFC_SECRET.to_string(),
    };
    json!({"serialNumber": serial, "secret": secret, "type": "TOTP", "otpLength": 8,
           "hashAlgorithm": algorithm, "totp": {"timeStep": time_step}})
}

fn totp_code(algorithm: HashAlgorithm, step: u64) -> String {
    let key = match algorithm {
        HashAlgorithm::Sha1 => b"12345678901234567890".to_vec(),
        HashAlgorithm::Sha256 => b"12345678901234567890123456789012".to_vec(),
        HashAlgorithm::Sha512 => {
            b"1234567890123456789012345678901234567890123456789012345678901234".to_vec()
        }
    };
    let value = hotp(&key, algorithm, OtpLength::new(8).unwrap(), step);
    format!("{value:08}")
}

/// Creates a token and returns its path.
async fn create(app: &TestApp, body: &Value) -> String {
    let (status, created) = parts(app.create_token(body).await).await;
    assert_eq!(status, 201, "{created}");
    format!("{}/{}", app.tokens_path(), created["id"].as_str().unwrap())
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    call(app.request(Method::POST, path).json(&body)).await
}

/// The `status` a validation answers.
async fn validate(app: &TestApp, token: &str, otp: &str) -> String {
    let (status, body) = post(app, &format!("{token}/validate"), json!({"otp": otp})).await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_string()
}

async fn read(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get_json(token).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[sqlx::test]
async fn hotp_counter_advances_within_the_look_ahead_window(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;

    assert_eq!(validate(&app, &token, "755224").await, "VALID");
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 1);
    // Used once, never again.
    assert_eq!(validate(&app, &token, "755224").await, "INVALID");
    // Look-ahead: counter 5 from an expected 1; the counter moves past the match.
    assert_eq!(validate(&app, &token, &hotp_code(5)).await, "VALID");
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 6);
    // The window's last counter (6 + 10) is accepted, one beyond it (17 + 11) is not.
    assert_eq!(validate(&app, &token, &hotp_code(16)).await, "VALID");
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 17);
    assert_eq!(validate(&app, &token, &hotp_code(28)).await, "INVALID");
    // Skipped counters stay behind.
    assert_eq!(validate(&app, &token, &hotp_code(10)).await, "INVALID");
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 17);
}

#[sqlx::test]
async fn windows_come_from_configuration(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.otp.hotp_window = 2).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    assert_eq!(validate(&app, &token, &hotp_code(3)).await, "INVALID");
    assert_eq!(validate(&app, &token, &hotp_code(2)).await, "VALID");
}

#[sqlx::test]
async fn totp_drift_is_learnt_and_steps_are_never_accepted_twice(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &totp_token("T1", "HmacSHA1", 300)).await;
    let t = steady_step(300, 15).await;
    let sha1 = |step| totp_code(HashAlgorithm::Sha1, step);

    // The token runs one step ahead: accepted within the default window of 1, drift learnt.
    assert_eq!(validate(&app, &token, &sha1(t + 1)).await, "VALID");
    assert_eq!(read(&app, &token).await["totp"]["drift"], 1);
    // Replay of the accepted code, and an earlier step, are refused.
    assert_eq!(validate(&app, &token, &sha1(t + 1)).await, "INVALID");
    assert_eq!(validate(&app, &token, &sha1(t)).await, "INVALID");
    // The window is now centred on t + 1: t + 2 is in it, and moves the drift on.
    assert_eq!(validate(&app, &token, &sha1(t + 2)).await, "VALID");
    assert_eq!(read(&app, &token).await["totp"]["drift"], 2);
    // Out of the window around t + 2.
    assert_eq!(validate(&app, &token, &sha1(t + 4)).await, "INVALID");
    assert_eq!(validate(&app, &token, &sha1(t + 3)).await, "VALID");
}

#[sqlx::test]
async fn totp_with_sha256_and_sha512(pool: PgPool) {
    let app = spawn_app(pool).await;
    for (serial, name, algorithm) in [
        ("T256", "HmacSHA256", HashAlgorithm::Sha256),
        ("T512", "HmacSHA512", HashAlgorithm::Sha512),
    ] {
        let token = create(&app, &totp_token(serial, name, 30)).await;
        let t = time_step_at(unix_now(), 30);
        // The SHA-1 code of the same step is not this token's code.
        assert_eq!(
            validate(&app, &token, &totp_code(HashAlgorithm::Sha1, t)).await,
            "INVALID"
        );
        assert_eq!(
            validate(&app, &token, &totp_code(algorithm, t)).await,
            "VALID",
            "{name}"
        );
    }
}

#[sqlx::test]
async fn concurrent_validations_of_one_code_accept_exactly_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    let hotp = create(&app, &hotp_token("H1", 0)).await;
    let totp = create(&app, &totp_token("T1", "HmacSHA1", 30)).await;
    let totp_now = totp_code(HashAlgorithm::Sha1, time_step_at(unix_now(), 30));

    for (token, otp) in [(hotp.clone(), hotp_code(0)), (totp, totp_now)] {
        let answers = join_all((0..20).map(|_| validate(&app, &token, &otp))).await;
        let valid = answers.iter().filter(|a| *a == "VALID").count();
        assert_eq!(valid, 1, "{answers:?}");
        // The losers are failures (a replay), and may have locked the token meanwhile.
        assert!(
            answers
                .iter()
                .all(|a| ["VALID", "INVALID", "LOCKED"].contains(&a.as_str())),
            "{answers:?}"
        );
    }
    assert_eq!(read(&app, &hotp).await["hotp"]["counter"], 1);
}

/// The same with the token known to the process beforehand (each check is then one conditional
/// statement made against the factor seen earlier): still exactly one is accepted.
#[sqlx::test]
async fn concurrent_validations_of_a_token_checked_before_accept_exactly_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    let hotp = create(&app, &hotp_token("H1", 0)).await;
    assert_eq!(validate(&app, &hotp, &hotp_code(0)).await, "VALID");

    let code = hotp_code(1);
    // Eight: the seven replays count as failures, short of the lockout (ten).
    let answers = join_all((0..8).map(|_| validate(&app, &hotp, &code))).await;
    let valid = answers.iter().filter(|a| *a == "VALID").count();
    assert_eq!(valid, 1, "{answers:?}");
    assert_eq!(read(&app, &hotp).await["hotp"]["counter"], 2);
    // The counter moved on in the database: the next code is valid.
    assert_eq!(validate(&app, &hotp, &hotp_code(2)).await, "VALID");
}

/// Two replicas on one database: a replica checks a token against the moving factor it last
/// saw only while the row still has it. Here the other replica has moved the factor on, so that
/// a code the token's real window accepts is outside the window of what the first replica saw.
#[sqlx::test]
async fn a_replica_checks_codes_against_the_factor_another_replica_moved(pool: PgPool) {
    let narrow = |s: &mut oath_service::config::Settings| s.otp.hotp_window = 2;
    let a = spawn_app_with(pool.clone(), narrow).await;
    let mut b = spawn_app_with(pool, narrow).await;
    b.env = a.env;

    let hotp = create(&a, &hotp_token("H1", 0)).await;
    assert_eq!(validate(&a, &hotp, &hotp_code(0)).await, "VALID");
    for counter in 1..=3 {
        assert_eq!(validate(&b, &hotp, &hotp_code(counter)).await, "VALID");
    }
    // A saw counter 1 (window 1 ..= 3); the token expects 4 (window 4 ..= 6).
    assert_eq!(validate(&a, &hotp, &hotp_code(5)).await, "VALID");
    assert_eq!(read(&a, &hotp).await["hotp"]["counter"], 6);
    assert_eq!(validate(&a, &hotp, &hotp_code(1)).await, "INVALID");
    // B saw counter 4, where code 6 is in the window too: its check is made again on a read.
    assert_eq!(validate(&b, &hotp, &hotp_code(6)).await, "VALID");
    assert_eq!(read(&b, &hotp).await["hotp"]["counter"], 7);

    let totp = create(&a, &totp_token("T1", "HmacSHA1", 300)).await;
    let t = steady_step(300, 15).await;
    let sha1 = |step| totp_code(HashAlgorithm::Sha1, step);
    assert_eq!(validate(&a, &totp, &sha1(t)).await, "VALID");
    assert_eq!(validate(&b, &totp, &sha1(t + 1)).await, "VALID");
    // A saw drift 0 (window t - 1 ..= t + 1); the token's drift is 1 (window t ..= t + 2).
    assert_eq!(validate(&a, &totp, &sha1(t + 2)).await, "VALID");
    assert_eq!(read(&a, &totp).await["totp"]["drift"], 2);
    assert_eq!(validate(&a, &totp, &sha1(t + 1)).await, "INVALID");
}

#[sqlx::test]
async fn ten_wrong_codes_lock_until_a_resync(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let wrong = wrong_hotp_code(0..=10);

    // A success clears the count of consecutive failures.
    for _ in 0..9 {
        assert_eq!(validate(&app, &token, &wrong).await, "INVALID");
    }
    assert_eq!(validate(&app, &token, &hotp_code(0)).await, "VALID");
    for _ in 0..10 {
        assert_eq!(validate(&app, &token, &wrong).await, "INVALID");
    }
    // Locked: even the right code is not checked, and not consumed.
    assert_eq!(validate(&app, &token, &hotp_code(1)).await, "LOCKED");
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 1);
    // Pairing a locked token is refused too.
    let (status, body) = post(
        &app,
        &format!("{token}/pairing"),
        json!({"userId": "u1", "otp": hotp_code(1)}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");

    let (status, body) = post(
        &app,
        &format!("{token}/resync"),
        json!({"otps": [hotp_code(1), hotp_code(2)]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hotp"]["counter"], 3);
    assert_eq!(validate(&app, &token, &hotp_code(3)).await, "VALID");
}

#[sqlx::test]
async fn resync_sets_the_counter_far_ahead(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 10)).await;
    let resync = format!("{token}/resync");

    let (status, body) = post(
        &app,
        &resync,
        json!({"otps": [hotp_code(700), hotp_code(701)]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hotp"]["counter"], 702);
    assert_eq!(body["id"], token.rsplit('/').next().unwrap());
    assert!(body.get("secret").is_none());
    assert_eq!(validate(&app, &token, &hotp_code(701)).await, "INVALID");
    assert_eq!(validate(&app, &token, &hotp_code(702)).await, "VALID");

    // Not consecutive, reversed, behind the counter, beyond the window of 1,000.
    for (a, b) in [(800, 802), (801, 800), (500, 501), (1704, 1705)] {
        let (status, body) =
            post(&app, &resync, json!({"otps": [hotp_code(a), hotp_code(b)]})).await;
        assert_error(status, &body, 400, "INVALID_DATA");
        assert_eq!(
            details(&body),
            vec![("INVALID_VALUE".to_string(), "otps".to_string())]
        );
    }
    assert_eq!(read(&app, &token).await["hotp"]["counter"], 703);
}

#[sqlx::test]
async fn resync_learns_a_large_totp_drift(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &totp_token("T1", "HmacSHA1", 300)).await;
    let t = steady_step(300, 15).await;
    let sha1 = |step| totp_code(HashAlgorithm::Sha1, step);

    // Twelve hours behind (144 steps of 5 minutes): far outside the validation window.
    assert_eq!(validate(&app, &token, &sha1(t - 144)).await, "INVALID");
    let (status, body) = post(
        &app,
        &format!("{token}/resync"),
        json!({"otps": [sha1(t - 145), sha1(t - 144)]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totp"], json!({"timeStep": 300, "drift": -144}));
    // Both resync codes are used up; the next one validates with the learnt drift.
    assert_eq!(validate(&app, &token, &sha1(t - 144)).await, "INVALID");
    assert_eq!(validate(&app, &token, &sha1(t - 143)).await, "VALID");
    // More than 24 hours away is beyond the resync window.
    let (status, body) = post(
        &app,
        &format!("{token}/resync"),
        json!({"otps": [sha1(t + 289), sha1(t + 290)]}),
    )
    .await;
    assert_error(status, &body, 400, "INVALID_DATA");
}

#[sqlx::test]
async fn pairing_consumes_an_otp_and_conflicts_when_paired(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let pairing = format!("{token}/pairing");

    // A wrong OTP: 400 on `otp`, nothing paired.
    let (status, body) = post(
        &app,
        &pairing,
        json!({"userId": "alice", "otp": wrong_hotp_code(0..=10)}),
    )
    .await;
    assert_error(status, &body, 400, "INVALID_DATA");
    assert_eq!(
        details(&body),
        vec![("INVALID_VALUE".to_string(), "otp".to_string())]
    );
    assert_eq!(read(&app, &token).await["status"], "AVAILABLE");

    let (status, body) = post(
        &app,
        &pairing,
        json!({"userId": "alice", "otp": hotp_code(0)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "PAIRED");
    assert_eq!(body["user"], json!({"id": "alice"}));
    assert_eq!(body["hotp"]["counter"], 1);
    assert_eq!(read(&app, &token).await, body);
    // The pairing OTP is consumed.
    assert_eq!(validate(&app, &token, &hotp_code(0)).await, "INVALID");

    let (status, body) = post(
        &app,
        &pairing,
        json!({"userId": "bob", "otp": hotp_code(1)}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(read(&app, &token).await["user"]["id"], "alice");

    // Unpair, twice: both 204.
    for _ in 0..2 {
        let res = app.delete(&pairing).await;
        assert_eq!(res.status(), 204);
    }
    let after = read(&app, &token).await;
    assert_eq!(after["status"], "AVAILABLE");
    assert!(after.get("user").is_none(), "{after}");
    // And pair again.
    let (status, body) = post(
        &app,
        &pairing,
        json!({"userId": "bob", "otp": hotp_code(1)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], "bob");
}

#[sqlx::test]
async fn deleting_a_paired_token_unpairs_and_removes_it(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let (status, _) = post(
        &app,
        &format!("{token}/pairing"),
        json!({"userId": "alice", "otp": hotp_code(0)}),
    )
    .await;
    assert_eq!(status, 200);
    let res = app.delete(&token).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get_path(&token).await.status(), 404);
    let (status, body) = post(&app, &format!("{token}/validate"), json!({"otp": "287082"})).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let res = app.delete(&format!("{token}/pairing")).await;
    assert_eq!(res.status(), 404);
}

#[sqlx::test]
async fn scopes_are_checked_before_any_lookup(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let missing = format!("{}/{}", app.tokens_path(), Uuid::new_v4());
    let validator = app.token(&[Scope::OtpValidate]);
    let writer = app.token(&[Scope::TokensWrite, Scope::TokensRead]);

    for path in [&token, &missing] {
        let calls = [
            (
                Method::POST,
                "validate",
                &writer,
                json!({"otp": hotp_code(0)}),
            ),
            (
                Method::POST,
                "resync",
                &validator,
                json!({"otps": ["123456", "123456"]}),
            ),
            (
                Method::POST,
                "pairing",
                &validator,
                json!({"userId": "u", "otp": "123456"}),
            ),
            (Method::DELETE, "pairing", &validator, Value::Null),
        ];
        for (method, action, bearer, body) in calls {
            let mut request = app
                .client
                .request(method.clone(), app.url(&format!("{path}/{action}")))
                .bearer_auth(bearer);
            if !body.is_null() {
                request = request.json(&body);
            }
            let (status, body) = call(request).await;
            assert_error(status, &body, 403, "ACCESS_FAILED");
        }
        // No bearer token at all.
        let res = app
            .client
            .post(app.url(&format!("{path}/validate")))
            .json(&json!({"otp": "123456"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    // With the right scopes, the untouched token still takes its first code.
    let res = send(
        app.request_as(&validator, Method::POST, &format!("{token}/validate"))
            .json(&json!({"otp": hotp_code(0)})),
    )
    .await;
    assert_eq!(parts(res).await.1["status"], "VALID");
}

#[sqlx::test]
async fn tokens_of_other_environments_are_not_found(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let id = token.rsplit('/').next().unwrap();
    let other = Uuid::new_v4();
    let other_path = format!("/v1/environments/{other}/oathTokens/{id}");
    let bearer = app.token_for(other, &Scope::ALL);
    for (action, body) in [
        ("validate", json!({"otp": hotp_code(0)})),
        ("resync", json!({"otps": [hotp_code(0), hotp_code(1)]})),
        ("pairing", json!({"userId": "u", "otp": hotp_code(0)})),
    ] {
        let res = send(
            app.request_as(&bearer, Method::POST, &format!("{other_path}/{action}"))
                .json(&body),
        )
        .await;
        expect_error(res, 404, "NOT_FOUND").await;
    }
    // A token id that is not a UUID, and one that does not exist.
    let (status, body) = post(
        &app,
        &format!("{}/not-a-uuid/validate", app.tokens_path()),
        json!({"otp": "123456"}),
    )
    .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = post(
        &app,
        &format!("{}/{}/resync", app.tokens_path(), Uuid::new_v4()),
        json!({"otps": ["123456", "654321"]}),
    )
    .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    // The token in its own environment was never touched.
    assert_eq!(validate(&app, &token, &hotp_code(0)).await, "VALID");
}

#[sqlx::test]
async fn bodies_are_parsed_strictly(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = create(&app, &hotp_token("H1", 0)).await;
    let validate_path = format!("{token}/validate");

    let cases = [
        (json!({}), "REQUIRED_VALUE", "otp"),
        (json!({"otp": 755224}), "INVALID_VALUE", "otp"),
        (json!({"otp": "75522"}), "INVALID_VALUE", "otp"),
        (json!({"otp": "75522x"}), "INVALID_VALUE", "otp"),
        (
            json!({"otp": "755224", "counter": 3}),
            "INVALID_VALUE",
            "counter",
        ),
    ];
    for (body, code, target) in cases {
        let (status, answer) = post(&app, &validate_path, body.clone()).await;
        assert_error(status, &answer, 400, "INVALID_DATA");
        assert_eq!(
            details(&answer),
            vec![(code.to_string(), target.to_string())],
            "{body}"
        );
        assert!(!answer.to_string().contains("75522"), "{answer}");
    }
    let (status, answer) = post(&app, &validate_path, json!(["755224"])).await;
    assert_error(status, &answer, 400, "INVALID_REQUEST");
    let res = app
        .post_body(&validate_path, "text/plain", r#"{"otp": "755224"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = app
        .request(Method::GET, &validate_path)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    let res = app
        .request(Method::PUT, &format!("{token}/pairing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);

    // A well-formed OTP of the wrong length for this token is just a wrong code.
    assert_eq!(validate(&app, &token, "84755224").await, "INVALID");

    let pairing = format!("{token}/pairing");
    for (user_id, target) in [
        (json!("a".repeat(129)), "userId"),
        (json!("line\nbreak"), "userId"),
        (json!(""), "userId"),
        (json!(7), "userId"),
    ] {
        let (status, answer) =
            post(&app, &pairing, json!({"userId": user_id, "otp": "755224"})).await;
        assert_error(status, &answer, 400, "INVALID_DATA");
        assert_eq!(
            details(&answer),
            vec![("INVALID_VALUE".to_string(), target.to_string())]
        );
    }
    let (status, answer) = post(&app, &pairing, json!({})).await;
    assert_error(status, &answer, 400, "INVALID_DATA");
    assert_eq!(
        details(&answer),
        vec![
            ("REQUIRED_VALUE".to_string(), "userId".to_string()),
            ("REQUIRED_VALUE".to_string(), "otp".to_string())
        ]
    );
    let (status, answer) = post(
        &app,
        &format!("{token}/resync"),
        json!({"otps": ["755224"]}),
    )
    .await;
    assert_error(status, &answer, 400, "INVALID_DATA");
    assert_eq!(
        details(&answer),
        vec![("INVALID_VALUE".to_string(), "otps".to_string())]
    );
    // None of this consumed the first code.
    assert_eq!(validate(&app, &token, "755224").await, "VALID");
}
