//! Captured logs of a full request cycle, at the most verbose level, never contain a secret.
//! A test binary of its own: it installs the process-wide log subscriber.

mod support;

use oath_service::domain::HashAlgorithm;
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

use support::app::{parts, rfc_code, seed_token, spawn_app, RFC_SECRET_HEX, SEED_SECRET};
use support::logs::Capture;

#[sqlx::test]
async fn no_secret_in_logs_of_a_full_cycle(pool: PgPool) {
    let capture = Capture::install();
    let app = spawn_app(pool).await;
    let tokens = app.tokens_path();

    let (status, created) = parts(app.create_token(&seed_token()).await).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_string();
    let one = format!("{tokens}/{id}");
    // Error paths: a duplicate, an invalid field next to the secret, a broken body.
    assert_eq!(app.create_token(&seed_token()).await.status(), 400);
    let mut invalid = seed_token();
    invalid["otpLength"] = json!(7);
    assert_eq!(app.create_token(&invalid).await.status(), 400);
    let res = app
        .request(Method::POST, &tokens)
        .header("content-type", "application/json")
        .body(format!("{{\"secret\": \"{SEED_SECRET}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(app.get_path(&one).await.status(), 200);
    assert_eq!(
        app.get_path(&format!(
            "{tokens}?filter=serialNumber%20eq%20%222333734700388%22"
        ))
        .await
        .status(),
        200
    );
    assert_eq!(app.delete(&one).await.status(), 204);

    // The OTP cycle: validate (right and wrong), resync, pairing, unpairing. Eight digits, so that
    // no code can appear by chance inside a number of the log.
    let rfc_secret = RFC_SECRET_HEX;
    let (status, created) = parts(
        app.create_token(
            &json!({"serialNumber": "H8", "secret": rfc_secret, "type": "HOTP",
                                 "otpLength": 8}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    let hotp_id = created["id"].as_str().unwrap().to_string();
    let token = format!("{tokens}/{hotp_id}");
    let code = |c: u64| rfc_code(HashAlgorithm::Sha1, 8, c);
    let codes: Vec<String> = (0..5).map(code).collect();
    let wrong = "97531864";
    assert!(!codes.contains(&wrong.to_string()));
    let calls = [
        ("validate", json!({"otp": codes[0]}), 200),
        ("validate", json!({"otp": wrong}), 200),
        ("resync", json!({"otps": [codes[1], codes[2]]}), 200),
        ("resync", json!({"otps": [codes[1], codes[2]]}), 400),
        ("pairing", json!({"userId": "alice", "otp": wrong}), 400),
        ("pairing", json!({"userId": "alice", "otp": codes[3]}), 200),
        ("validate", json!({"otp": codes[4]}), 200),
    ];
    for (action, body, want) in calls {
        let res = app
            .request(Method::POST, &format!("{token}/{action}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want, "{action} {body}");
    }
    let res = app.delete(&format!("{token}/pairing")).await;
    assert_eq!(res.status(), 204);

    // A PSKC file under the caller's own transport key, and one under a password: neither the
    // key nor the password may reach the log.
    let psk = "12345678901234567890123456789012";
    let password = "correct horse battery staple";
    for (file, header, value) in [
        ("rfc6030-figure6.pskcxml", "X-PSKC-Key", psk),
        ("vendor-pbkdf2.pskcxml", "X-PSKC-Password", password),
    ] {
        let res = app
            .request(Method::POST, &app.jobs_path())
            .header("content-type", "application/pskc+xml")
            .header(header, value)
            .body(std::fs::read(format!("tests/fixtures/pskc/{file}")).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{file}");
    }
    app.drain(&mut app.runner("r1")).await;

    let logs = capture.text();
    assert!(!logs.contains(psk) && !logs.contains(password));
    // Start-up warned that HS256 tokens are accepted.
    assert!(
        logs.lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("auth.hs256_secret is set")),
        "no HS256 warning"
    );
    // Every check is an event with its outcome, and no OTP appears anywhere.
    let checks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("otp checked") && l.contains(&hotp_id))
        .collect();
    assert_eq!(checks.len(), 7, "{checks:?}");
    assert!(checks.iter().any(|l| l.contains("\"outcome\":\"INVALID\"")));
    for otp in codes.iter().map(String::as_str).chain([wrong]) {
        if let Some(line) = logs.lines().find(|l| l.contains(otp)) {
            panic!("OTP {otp} found in logs: {line}");
        }
    }
    assert!(!logs.contains(rfc_secret) && !logs.contains("12345678901234567890"));
    // The capture saw the cycle, including the statements sent to the database...
    assert!(logs.contains("request completed"), "nothing captured");
    assert!(logs.contains(&id));
    assert!(logs.to_lowercase().contains("update oath_tokens"));
    // ...and not the secret, in any case.
    let lower = SEED_SECRET.to_lowercase();
    for needle in [SEED_SECRET, lower.as_str()] {
        assert!(!logs.contains(needle), "secret found in logs");
    }
    // Nor the bearer token.
    assert!(!logs.contains(&app.all_scopes()[..40]));
}
