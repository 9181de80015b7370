//! Every field rule of a token create, each answered 400 INVALID_DATA with its detail and target,
//! and nothing stored.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::app::{assert_error, details, parts, spawn_app};

const SECRET: &str = "3132333435363738393031323334353637383930";

fn base() -> Value {
    json!({"serialNumber": "SN1", "secret": SECRET, "type": "HOTP", "otpLength": 6})
}

fn with(patch: Value) -> Value {
    let mut v = base();
    for (k, val) in patch.as_object().unwrap() {
        if val.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = val.clone();
        }
    }
    v
}

#[sqlx::test]
async fn each_rule_reports_its_target(pool: PgPool) {
    let app = spawn_app(pool).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        // serialNumber: required, string, 1-50 ASCII letters and digits.
        (
            with(json!({"serialNumber": null})),
            "REQUIRED_VALUE",
            "serialNumber",
        ),
        (
            with(json!({"serialNumber": 12345})),
            "INVALID_VALUE",
            "serialNumber",
        ),
        (
            with(json!({"serialNumber": ""})),
            "INVALID_VALUE",
            "serialNumber",
        ),
        (
            with(json!({"serialNumber": "A".repeat(51)})),
            "INVALID_VALUE",
            "serialNumber",
        ),
        (
            with(json!({"serialNumber": "SN-1"})),
            "INVALID_VALUE",
            "serialNumber",
        ),
        (
            with(json!({"serialNumber": "SNé1"})),
            "INVALID_VALUE",
            "serialNumber",
        ),
        // secret: required, hex, even, 32-200 digits.
        (with(json!({"secret": null})), "REQUIRED_VALUE", "secret"),
        (with(json!({"secret": 42})), "INVALID_VALUE", "secret"),
        (
            with(json!({"secret": "0".repeat(30)})),
            "INVALID_VALUE",
            "secret",
        ),
        (
            with(json!({"secret": "0".repeat(202)})),
            "INVALID_VALUE",
            "secret",
        ),
        (
            with(json!({"secret": format!("{}G", "0".repeat(33))})),
            "INVALID_VALUE",
            "secret",
        ),
        (
            with(json!({"secret": "0".repeat(33)})),
            "INVALID_VALUE",
            "secret",
        ),
        // type: required, HOTP or TOTP.
        (with(json!({"type": null})), "REQUIRED_VALUE", "type"),
        (with(json!({"type": "hotp"})), "INVALID_VALUE", "type"),
        (with(json!({"type": ["HOTP"]})), "INVALID_VALUE", "type"),
        // otpLength: required, 6 or 8.
        (
            with(json!({"otpLength": null})),
            "REQUIRED_VALUE",
            "otpLength",
        ),
        (with(json!({"otpLength": 7})), "INVALID_VALUE", "otpLength"),
        (
            with(json!({"otpLength": "6"})),
            "INVALID_VALUE",
            "otpLength",
        ),
        (
            with(json!({"otpLength": 6.5})),
            "INVALID_VALUE",
            "otpLength",
        ),
        // hashAlgorithm: one of three; HOTP only HmacSHA1.
        (
            with(json!({"hashAlgorithm": "SHA1"})),
            "INVALID_VALUE",
            "hashAlgorithm",
        ),
        (
            with(json!({"hashAlgorithm": "HmacSHA256"})),
            "INVALID_VALUE",
            "hashAlgorithm",
        ),
        // hotp.counter: 0 to 2^63-1.
        (
            with(json!({"hotp": {"counter": -1}})),
            "INVALID_VALUE",
            "hotp.counter",
        ),
        (
            with(json!({"hotp": {"counter": 9223372036854775808u64}})),
            "INVALID_VALUE",
            "hotp.counter",
        ),
        (
            with(json!({"hotp": {"counter": "1"}})),
            "INVALID_VALUE",
            "hotp.counter",
        ),
        (
            with(json!({"hotp": {"counter": 1, "step": 2}})),
            "INVALID_VALUE",
            "hotp.step",
        ),
        (with(json!({"hotp": 5})), "INVALID_VALUE", "hotp"),
        (
            with(json!({"totp": {"timeStep": 30}})),
            "INVALID_VALUE",
            "totp",
        ),
        // totp.timeStep: 10-300; totp only on TOTP.
        (
            with(json!({"type": "TOTP", "totp": {"timeStep": 9}})),
            "INVALID_VALUE",
            "totp.timeStep",
        ),
        (
            with(json!({"type": "TOTP", "totp": {"timeStep": 301}})),
            "INVALID_VALUE",
            "totp.timeStep",
        ),
        (
            with(json!({"type": "TOTP", "totp": {"drift": 1}})),
            "INVALID_VALUE",
            "totp.drift",
        ),
        (
            with(json!({"type": "TOTP", "hotp": {"counter": 1}})),
            "INVALID_VALUE",
            "hotp",
        ),
        // Unknown properties, and rowNumber outside a job.
        (with(json!({"colour": "blue"})), "INVALID_VALUE", "colour"),
        (with(json!({"rowNumber": 1})), "INVALID_VALUE", "rowNumber"),
    ];
    for (body, code, target) in cases {
        let (status, res) = parts(app.create_token(&body).await).await;
        assert_error(status, &res, 400, "INVALID_DATA");
        assert_eq!(
            details(&res),
            vec![(code.to_string(), target.to_string())],
            "for {body}"
        );
    }
    // Valid edge values pass.
    for body in [
        with(json!({"serialNumber": "A".repeat(50), "secret": "aB".repeat(100)})),
        with(json!({"serialNumber": "B1", "hotp": {"counter": 9223372036854775807u64}})),
        with(
            json!({"serialNumber": "B2", "type": "TOTP", "otpLength": 8, "hashAlgorithm": "HmacSHA512", "totp": {"timeStep": 300}}),
        ),
        with(json!({"serialNumber": "B3", "type": "TOTP", "totp": {"timeStep": 10}})),
    ] {
        let (status, res) = parts(app.create_token(&body).await).await;
        assert_eq!(status, 201, "{body} -> {res}");
    }
    let count = app.count("select count(*) from oath_tokens").await;
    assert_eq!(count, 4, "no invalid request stored anything");
}

#[sqlx::test]
async fn every_problem_is_reported_at_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, res) = parts(
        app.create_token(
            &json!({"serialNumber": "bad serial", "secret": "xyz", "type": "TOTP",
                                  "otpLength": 5, "hotp": {}, "extra": 1}),
        )
        .await,
    )
    .await;
    assert_error(status, &res, 400, "INVALID_DATA");
    let mut targets: Vec<String> = details(&res).into_iter().map(|(_, t)| t).collect();
    targets.sort();
    assert_eq!(
        targets,
        ["extra", "hotp", "otpLength", "secret", "serialNumber"]
    );
    // No message repeats the submitted secret.
    assert!(!res.to_string().contains("xyz"));
}

#[sqlx::test]
async fn a_body_that_is_not_an_object_is_invalid_request(pool: PgPool) {
    let app = spawn_app(pool).await;
    for body in [json!([1, 2]), json!("x"), json!(null), json!(5)] {
        let (status, res) = parts(app.create_token(&body).await).await;
        assert_error(status, &res, 400, "INVALID_REQUEST");
    }
}
