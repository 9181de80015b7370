//! Rate limits (contract section 10): OTP checks per token, requests per environment, and the
//! memory the limits use whatever ids clients send.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use oath_service::auth::Scope;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, environment_path, parts, seed_token, spawn_app_with, TestApp, HS256_SECRET, KEY_A,
};
use crate::support::service::{database_url, Service};
use crate::support::tls::scratch_dir;

/// Creates a token (the seed's, under its own serial number) and returns its path.
async fn create(app: &TestApp, serial: &str) -> String {
    let mut body = seed_token();
    body["serialNumber"] = json!(serial);
    let (status, created) = parts(app.create_token(&body).await).await;
    assert_eq!(status, 201, "{created}");
    format!("{}/{}", app.tokens_path(), created["id"].as_str().unwrap())
}

async fn post(app: &TestApp, path: &str, body: Value) -> Response {
    app.request(Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `Retry-After` of a 429, checked to be whole seconds from 1 to `max`.
fn retry_after(res: &Response, max: u64) -> u64 {
    let seconds: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=max).contains(&seconds), "Retry-After: {seconds}");
    seconds
}

async fn fail_count(pool: &PgPool, token_path: &str) -> i32 {
    let id: Uuid = token_path.rsplit('/').next().unwrap().parse().unwrap();
    sqlx::query_scalar("select fail_count from oath_tokens where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Beyond 3 checks a minute a token is 429 for validate, resync and pairing alike; the limited
/// checks count no failure, so the token never locks; other tokens and environments go on.
#[sqlx::test]
async fn otp_checks_of_one_token_are_limited_without_counting_failures(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), |s| {
        s.limits.otp_per_token_per_minute = 3;
        s.otp.max_failures = 4;
    })
    .await;
    let token = create(&app, "LIMITED1").await;
    let other = create(&app, "LIMITED2").await;
    let wrong = json!({"otp": "00000000"});
    for _ in 0..3 {
        let (status, body) =
            parts(post(&app, &format!("{token}/validate"), wrong.clone()).await).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("INVALID")),
            "{body}"
        );
    }
    for (operation, body) in [
        ("validate", wrong.clone()),
        ("validate", wrong.clone()),
        ("resync", json!({"otps": ["00000000", "00000001"]})),
        ("pairing", json!({"userId": "u1", "otp": "00000000"})),
    ] {
        let res = post(&app, &format!("{token}/{operation}"), body).await;
        // 3 a minute: the next one in 20 s.
        let seconds = retry_after(&res, 20);
        assert!(seconds >= 15, "Retry-After: {seconds}");
        let (status, body) = parts(res).await;
        assert_error(status, &body, 429, "REQUEST_LIMITED");
    }
    assert_eq!(
        fail_count(&pool, &token).await,
        3,
        "a 429 is not a failed check"
    );

    let (status, body) = parts(post(&app, &format!("{other}/validate"), wrong.clone()).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("INVALID")),
        "{body}"
    );
    // The same token id checked by a caller of another environment has a budget of its own: it
    // finds no token there.
    let elsewhere = Uuid::new_v4();
    let foreign = token.replace(&app.env.to_string(), &elsewhere.to_string());
    let res = app
        .client
        .post(app.url(&format!("{foreign}/validate")))
        .bearer_auth(app.token_for(elsewhere, &[Scope::OtpValidate]))
        .json(&wrong)
        .send()
        .await
        .unwrap();
    let (status, body) = parts(res).await;
    assert_error(status, &body, 404, "NOT_FOUND");

    let metrics = app.metrics().await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("oath_rate_limited_total{")
                && l.contains("/oathTokens/{token_id}/validate")
        })
        .unwrap_or_else(|| panic!("no rate-limited validate in:\n{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2.0, "{line}");
}

/// One request a second: the second within the second is 429 whatever it asks for, while another
/// environment is served, and unauthenticated requests use none of the budget.
#[sqlx::test]
async fn requests_of_one_environment_are_limited(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.requests_per_environment_per_second = 1).await;
    for _ in 0..3 {
        let res = app
            .client
            .get(app.url(&app.tokens_path()))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    // Two requests at once are within one second unless the machine stalls a second between
    // them: then the pair proves nothing, and a fresh environment tries again.
    let mut limited = None;
    for env in [app.env]
        .into_iter()
        .chain(std::iter::repeat_with(Uuid::new_v4).take(19))
    {
        let started = Instant::now();
        let res = app
            .request_in(env, Method::GET, &environment_path(env, "/oathTokens"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let res = app
            .request_in(env, Method::GET, &environment_path(env, ""))
            .send()
            .await
            .unwrap();
        if started.elapsed() < Duration::from_secs(1) {
            limited = Some(res);
            break;
        }
    }
    let res = limited.expect("two requests within one second in 20 attempts");
    assert_eq!(retry_after(&res, 1), 1);
    let (status, body) = parts(res).await;
    assert_error(status, &body, 429, "REQUEST_LIMITED");

    let elsewhere = Uuid::new_v4();
    let res = app
        .client
        .get(app.url(&format!("/v1/environments/{elsewhere}/oathTokens")))
        .bearer_auth(app.token_for(elsewhere, &[Scope::TokensRead]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The real binary, asked to check OTPs of 8,000 random token ids with room for 2,000 keys:
/// every answer is 404, the limit remembers at most 2,000 keys, and the process's memory stays
/// put.
#[sqlx::test]
async fn the_limits_memory_is_bounded_whatever_ids_arrive(pool: PgPool) {
    let dir = scratch_dir("limits-memory");
    let app = spawn_app_with(pool.clone(), |_| {}).await;
    let env = vec![
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__WORKERS", "2".to_string()),
        ("OATH__AUTH__ISSUER", app.settings.auth.issuer.clone()),
        ("OATH__AUTH__HS256_SECRET", HS256_SECRET.into()),
        ("OATH__CRYPTO__ACTIVE_KEY_ID", "a".into()),
        ("OATH__CRYPTO__KEYS__A", KEY_A.into()),
        ("OATH__JOBS__RUNNERS", "0".into()),
        ("OATH__LOG__LEVEL", "error".into()),
        ("OATH__LIMITS__RATE_LIMIT_KEYS", "2000".into()),
    ];
    let mut service = Service::start(&["serve", "--no-migrate"], &env, dir.join("service.log"));
    service.wait_ready(Duration::from_secs(30)).await;
    let bearer = app.token(&[Scope::OtpValidate]);
    let client = reqwest::Client::new();
    let send = |n: usize| {
        let (client, bearer, base) = (&client, &bearer, &service.base);
        let tokens = format!("{base}{}", app.tokens_path());
        stream::iter(0..n)
            .map(move |_| {
                let url = format!("{tokens}/{}/validate", Uuid::new_v4());
                async move {
                    let res = client
                        .post(url)
                        .bearer_auth(bearer)
                        .json(&json!({"otp": "123456"}))
                        .send()
                        .await
                        .unwrap();
                    res.status().as_u16()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<u16>>()
    };
    // Warm up: every key slot used once, the server's buffers grown.
    assert!(send(2_500).await.iter().all(|s| *s == 404));
    let before = resident_kib(service.pid());
    assert!(send(8_000).await.iter().all(|s| *s == 404));
    let after = resident_kib(service.pid());
    service.assert_running();

    let metrics = client
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("oath_rate_limit_keys{limit=\"otp\"}"))
        .unwrap_or_else(|| panic!("no key gauge in:\n{metrics}"));
    let keys: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((1_000.0..=2_000.0).contains(&keys), "{line}");
    // The gauge is the exact bound; resident memory must merely not run away.
    assert!(
        after < before + 8 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}
