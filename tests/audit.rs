//! The audit trail of a real request sequence, read from the captured JSON log: one `audit` event
//! per mutating request and per OTP check, with its fields, and never a secret or an OTP.
//! A test binary of its own: it installs the process-wide log subscriber.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oath_service::domain::HashAlgorithm;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;

use support::app::{
    rfc_code, seed_token, spawn_app, TestApp, HS256_SECRET, RFC_SECRET_HEX, SEED_SECRET,
};
use support::logs::Capture;

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
    want.push((c.request_id, "job.submit", job_id, "SUCCESS", SUBJECT));

    let c = call(with(Method::DELETE, &format!("{tokens}/{seed_id}"))).await;
    assert_eq!(c.status, 204);
    want.push((
        c.request_id,
        "token.delete",
        seed_id.clone(),
        "SUCCESS",
        SUBJECT,
    ));

    // Refused callers are audited too: no token, a token without `sub`, a token for another
    // environment's path.
    let c = call(app.client.post(&tokens).json(&seed_token())).await;
    assert_eq!(c.status, 401);
    want.push((
        c.request_id,
        "token.create",
        String::new(),
        "UNAUTHENTICATED",
        "(unauthenticated)",
    ));
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
        .filter(|v| v["target"] == "audit")
        .collect();
    // Only this test's requests reach this app; every event is one of them, once.
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
        assert_eq!(f["target_id"], target_id.as_str(), "{f}");
        assert_eq!(f["outcome"], *outcome, "{f}");
        assert_eq!(f["message"], "audit", "{f}");
    }
    for read in &reads {
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
