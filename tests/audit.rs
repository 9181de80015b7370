//! The audit trail of a real request sequence, read from the captured JSON log: one `audit` event
//! per mutating request and per OTP check, with its fields, and never a secret or an OTP.
//! A test binary of its own: it installs the process-wide log subscriber.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oath_service::domain::HashAlgorithm;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;

use support::app::{
    rfc_code, seed_token, spawn_app, spawn_app_with, wait_until, TestApp, HS256_SECRET,
    RFC_SECRET_HEX, SEED_SECRET,
};
use support::logs::Capture;
use support::raw::post_and_reset;

const SUBJECT: &str = "operator-7@example.test";

/// An HS256 token like the identity provider's: `sub` names the person or client.
fn token_with_subject(app: &TestApp, sub: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({
        "iss": app.settings.auth.issuer, "aud": app.settings.auth.audience,
        "env": app.env.to_string(), "iat": now, "exp": now + 300,
        "scope": "oath:tokens:read oath:tokens:write oath:jobs:read oath:jobs:write oath:otp:validate",
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

struct Call {
    request_id: String,
    status: u16,
    body: Value,
}

async fn call(builder: RequestBuilder) -> Call {
    let res: Response = builder.send().await.unwrap();
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    Call {
        request_id,
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

#[sqlx::test]
async fn one_audit_event_per_mutating_request_and_otp_check(pool: PgPool) {
    let capture = Capture::install();
    let app = spawn_app(pool).await;
    let env = app.env.to_string();
    let bearer = token_with_subject(&app, Some(SUBJECT));
    let anonymous_sub = token_with_subject(&app, None);
    let tokens = app.url(&app.tokens_path());
    let with = |method: Method, url: &str| app.client.request(method, url).bearer_auth(&bearer);

    // (request id, action, target id, outcome, actor) of every call that must be audited.
    let mut want: Vec<(String, &str, String, &str, &str)> = Vec::new();

    let created = call(with(Method::POST, &tokens).json(&seed_token())).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let seed_id = created.body["id"].as_str().unwrap().to_string();
    want.push((
        created.request_id,
        "token.create",
        seed_id.clone(),
        "SUCCESS",
        SUBJECT,
    ));
    let dup = call(with(Method::POST, &tokens).json(&seed_token())).await;
    assert_eq!(dup.status, 400);
    want.push((
        dup.request_id,
        "token.create",
        String::new(),
        "REJECTED",
        SUBJECT,
    ));

    // A HOTP token with 8 digits, so that no OTP can appear by chance inside another number.
    let rfc_secret = RFC_SECRET_HEX;
    let eight_digits =
        json!({"serialNumber": "AUD1", "secret": rfc_secret, "type": "HOTP", "otpLength": 8});
    let created = call(with(Method::POST, &tokens).json(&eight_digits)).await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().unwrap().to_string();
    want.push((
        created.request_id,
        "token.create",
        id.clone(),
        "SUCCESS",
        SUBJECT,
    ));
    let code = |c: u64| rfc_code(HashAlgorithm::Sha1, 8, c);
    let codes: Vec<String> = (0..4).map(code).collect();
    let wrong = "97531864";
    assert!(!codes.iter().any(|c| c == wrong));
    let one = format!("{tokens}/{id}");
    let checks = [
        (
            "validate",
            json!({"otp": codes[0]}),
            200,
            "otp.validate",
            "VALID",
        ),
        (
            "validate",
            json!({"otp": wrong}),
            200,
            "otp.validate",
            "INVALID",
        ),
        (
            "resync",
            json!({"otps": [codes[1], codes[2]]}),
            200,
            "otp.resync",
            "VALID",
        ),
        (
            "pairing",
            json!({"userId": "alice", "otp": codes[3]}),
            200,
            "token.pair",
            "VALID",
        ),
    ];
    for (path, body, status, action, outcome) in checks {
        let c = call(with(Method::POST, &format!("{one}/{path}")).json(&body)).await;
        assert_eq!(c.status, status, "{path}: {}", c.body);
        want.push((c.request_id, action, id.clone(), outcome, SUBJECT));
    }
    let c = call(with(Method::DELETE, &format!("{one}/pairing"))).await;
    assert_eq!(c.status, 204);
    want.push((c.request_id, "token.unpair", id.clone(), "SUCCESS", SUBJECT));

    // Helpdesk actions: disable (a check then answers DISABLED), enable, unlock.
    let c = call(with(Method::PATCH, &one).json(&json!({"enabled": false}))).await;
    assert_eq!(c.status, 200, "{}", c.body);
    want.push((c.request_id, "token.update", id.clone(), "SUCCESS", SUBJECT));
    let c = call(with(Method::POST, &format!("{one}/validate")).json(&json!({"otp": wrong}))).await;
    assert_eq!(c.body["status"], "DISABLED", "{}", c.body);
    want.push((
        c.request_id,
        "otp.validate",
        id.clone(),
        "DISABLED",
        SUBJECT,
    ));
    let c = call(with(Method::PATCH, &one).json(&json!({"enabled": true, "x": 1}))).await;
    assert_eq!(c.status, 400, "{}", c.body);
    want.push((
        c.request_id,
        "token.update",
        id.clone(),
        "REJECTED",
        SUBJECT,
    ));
    let c = call(with(Method::POST, &format!("{one}/unlock"))).await;
    assert_eq!(c.status, 200, "{}", c.body);
    want.push((c.request_id, "token.unlock", id.clone(), "SUCCESS", SUBJECT));

    let job = json!({"type": "CREATE_OATH_TOKENS", "tokens": [
        {"serialNumber": "AUDJOB1", "secret": SEED_SECRET, "type": "HOTP", "otpLength": 6}]});
    let c = call(
        with(Method::POST, &app.url(&app.jobs_path()))
            .header(
                "content-type",
                "application/vnd.pingidentity.job.oathtokens.create+json",
            )
            .body(job.to_string()),
    )
    .await;
    assert_eq!(c.status, 202, "{}", c.body);
    let job_id = c.body["id"].as_str().unwrap().to_string();
    want.push((
        c.request_id,
        "job.submit",
        job_id.clone(),
        "SUCCESS",
        SUBJECT,
    ));
    let cancel = app.url(&format!("{}/{job_id}/cancel", app.jobs_path()));
    let c = call(with(Method::POST, &cancel)).await;
    assert_eq!(c.status, 202, "{}", c.body);
    want.push((
        c.request_id,
        "job.cancel",
        job_id.clone(),
        "SUCCESS",
        SUBJECT,
    ));
    let c = call(with(Method::POST, &cancel)).await;
    assert_eq!(c.status, 409, "{}", c.body);
    want.push((c.request_id, "job.cancel", job_id, "CONFLICT", SUBJECT));

    let c = call(with(Method::DELETE, &format!("{tokens}/{seed_id}"))).await;
    assert_eq!(c.status, 204);
    want.push((
        c.request_id,
        "token.delete",
        seed_id.clone(),
        "SUCCESS",
        SUBJECT,
    ));

    // Refused callers are audited too: a token without `sub`, a token for another environment's
    // path. A request without a valid token is not: anyone can send one, and it changes nothing.
    let unauthenticated = call(app.client.post(&tokens).json(&seed_token())).await;
    assert_eq!(unauthenticated.status, 401);
    let c = call(
        app.client
            .delete(format!("{tokens}/{seed_id}"))
            .bearer_auth(&anonymous_sub),
    )
    .await;
    assert_eq!(c.status, 404);
    want.push((
        c.request_id,
        "token.delete",
        seed_id.clone(),
        "NOT_FOUND",
        "(no sub)",
    ));
    let elsewhere = app.url(&format!(
        "/v1/environments/{}/oathTokens",
        uuid::Uuid::new_v4()
    ));
    let c = call(
        app.client
            .post(&elsewhere)
            .bearer_auth(&bearer)
            .json(&seed_token()),
    )
    .await;
    assert_eq!(c.status, 403);
    let other_env = elsewhere.split('/').nth(5).unwrap().to_string();
    want.push((
        c.request_id,
        "token.create",
        String::new(),
        "FORBIDDEN",
        SUBJECT,
    ));

    // Reads are not audited.
    let reads = [
        call(with(Method::GET, &one)).await,
        call(with(Method::GET, &tokens)).await,
        call(with(Method::GET, &app.url(&app.jobs_path()))).await,
    ];
    assert!(reads.iter().all(|r| r.status == 200));

    let logs = capture.text();
    let events: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit" && v["fields"]["caller_environment"] == env.as_str())
        .collect();
    // Only this test's callers are of this environment; every event is one of their requests, once.
    assert_eq!(events.len(), want.len(), "{events:#?}");
    for (request_id, action, target_id, outcome, actor) in &want {
        let matching: Vec<&Value> = events
            .iter()
            .filter(|e| e["fields"]["request_id"] == request_id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{action} {request_id}: {events:#?}");
        let f = &matching[0]["fields"];
        let env_field = if *outcome == "FORBIDDEN" {
            &other_env
        } else {
            &env
        };
        assert_eq!(f["action"], *action, "{f}");
        assert_eq!(f["actor"], *actor, "{f}");
        assert_eq!(f["environment"], env_field.as_str(), "{f}");
        assert_eq!(f["caller_environment"], env.as_str(), "{f}");
        assert_eq!(f["target_id"], target_id.as_str(), "{f}");
        assert_eq!(f["outcome"], *outcome, "{f}");
        assert_eq!(f["message"], "audit", "{f}");
    }
    for read in reads.iter().chain([&unauthenticated]) {
        assert!(!events
            .iter()
            .any(|e| e["fields"]["request_id"] == read.request_id.as_str()));
    }
    // Never a secret or an OTP, in the audit events or anywhere else in the log.
    for needle in codes
        .iter()
        .map(String::as_str)
        .chain([wrong, rfc_secret, SEED_SECRET])
    {
        if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
            panic!("{needle} found in the log: {line}");
        }
    }
    assert!(!logs.contains(&SEED_SECRET.to_lowercase()));
    assert!(!logs.contains(&bearer[bearer.len() - 30..]));
}

/// A change is audited where it commits, whether or not its client waits for the answer: clients
/// that reset the connection a few milliseconds after sending (creates, and a job submitted with
/// `"async": false`, whose answer would come when the job ends) leave no change without its event.
#[sqlx::test]
async fn changes_whose_client_left_are_audited_all_the_same(pool: PgPool) {
    const CREATES: usize = 40;
    let capture = Capture::install();
    let app = spawn_app_with(pool, |s| s.jobs.sync_wait_seconds = 2).await;
    let bearer = token_with_subject(&app, Some(SUBJECT));
    let env = app.env.to_string();
    for i in 0..CREATES {
        let body = json!({"serialNumber": format!("GONE{i}"), "secret": SEED_SECRET,
            "type": "HOTP", "otpLength": 6});
        let (path, body) = (app.tokens_path(), body.to_string());
        let address = app.address.clone();
        let bearer = bearer.clone();
        tokio::spawn(async move {
            let after = Duration::from_millis(i as u64 % 4);
            post_and_reset(
                &address,
                &path,
                &bearer,
                "application/json",
                body.as_bytes(),
                after,
            )
            .await
        });
    }
    let job = json!({"type": "CREATE_OATH_TOKENS", "async": false, "tokens": [
        {"serialNumber": "GONEJOB", "secret": SEED_SECRET, "type": "HOTP", "otpLength": 6}]});
    post_and_reset(
        &app.address,
        &app.jobs_path(),
        &bearer,
        "application/vnd.pingidentity.job.oathtokens.create+json",
        job.to_string().as_bytes(),
        // Time to be read and stored, not to be answered: the job waits for a runner.
        Duration::from_millis(50),
    )
    .await;

    let audited = |action: &'static str| {
        let logs = capture.text();
        let env = env.clone();
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "audit")
            .map(|v| v["fields"].clone())
            .filter(|f| f["environment"] == env.as_str() && f["action"] == action)
            .filter_map(|f| f["target_id"].as_str().map(str::to_string))
            .collect::<Vec<String>>()
    };
    let ids = |table: &'static str| {
        let pool = app.pool.clone();
        let env = app.env;
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(&format!(
                "select id from {table} where environment_id = $1"
            ))
            .bind(env)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|id| id.to_string())
            .collect::<Vec<String>>()
        }
    };
    wait_until("the job is stored", Duration::from_secs(10), async || {
        !ids("oath_jobs").await.is_empty()
    })
    .await;
    // Each change's event follows its commit at once; creates still in flight finish meanwhile.
    wait_until(
        "an audit event for every change",
        Duration::from_secs(10),
        async || {
            let (jobs, tokens) = (ids("oath_jobs").await, ids("oath_tokens").await);
            let (submitted, created) = (audited("job.submit"), audited("token.create"));
            jobs.iter().all(|id| submitted.contains(id))
                && tokens.iter().all(|id| created.contains(id))
        },
    )
    .await;
    assert!(
        !ids("oath_tokens").await.is_empty(),
        "no create reached the service: the test proves nothing"
    );
}
