//! A corpus of bad requests: each is answered 4xx with the contract's error body, never a 5xx, and
//! nothing already stored is lost.

use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;

use crate::support::app::{parts, seed_token, spawn_app};

const JSON: &str = "application/json";
const CREATE_JOB: &str = "application/vnd.pingidentity.job.oathtokens.create+json";
const REVOKE_JOB: &str = "application/vnd.pingidentity.job.oathtokens.revoke+json";

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn case(
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
) -> Case {
    Case {
        name,
        method,
        path,
        content_type,
        body: body.into(),
    }
}

#[sqlx::test]
async fn bad_inputs_are_4xx_with_the_error_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, kept) = parts(app.create_token(&seed_token()).await).await;
    let kept_path = format!("{}/{}", app.tokens_path(), kept["id"].as_str().unwrap());
    let tokens = app.tokens_path();
    let jobs = app.jobs_path();
    let env = app.env;
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}{}", r#"{"a":"#.repeat(1000), "}".repeat(1000));
    let huge_number = format!(
        r#"{{"serialNumber":"N1","secret":"3132333435363738393031323334353637383930","type":"HOTP","otpLength":{}}}"#,
        "9".repeat(500)
    );
    let many_tokens_bad: String = format!(
        r#"{{"type":"CREATE_OATH_TOKENS","tokens":[{}]}}"#,
        vec![r#"{"serialNumber":1}"#; 3000].join(",")
    );

    let cases = vec![
        // Malformed and truncated JSON.
        case("empty body", Method::POST, tokens.clone(), Some(JSON), ""),
        case("truncated object", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "A1", "secret": "#),
        case("truncated string", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "A1"#),
        case("trailing garbage", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "A1"} x"#),
        case("single quotes", Method::POST, tokens.clone(), Some(JSON), "{'serialNumber': 'A1'}"),
        case("trailing comma", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "A1",}"#),
        case("comment", Method::POST, tokens.clone(), Some(JSON), r#"{/* c */ "serialNumber": "A1"}"#),
        case("bare word", Method::POST, tokens.clone(), Some(JSON), "hello"),
        case("NaN", Method::POST, tokens.clone(), Some(JSON), r#"{"otpLength": NaN}"#),
        // Wrong types and values.
        case("array body", Method::POST, tokens.clone(), Some(JSON), "[1,2,3]"),
        case("string body", Method::POST, tokens.clone(), Some(JSON), r#""token""#),
        case("null body", Method::POST, tokens.clone(), Some(JSON), "null"),
        case("number types", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": 1, "secret": 2, "type": 3, "otpLength": "6"}"#),
        case("object types", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": {}, "secret": [], "type": {}, "otpLength": []}"#),
        case("huge number", Method::POST, tokens.clone(), Some(JSON), huge_number),
        case("negative counter", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber":"N2","secret":"3132333435363738393031323334353637383930","type":"HOTP","otpLength":6,"hotp":{"counter":-5}}"#),
        case("float counter", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber":"N3","secret":"3132333435363738393031323334353637383930","type":"HOTP","otpLength":6,"hotp":{"counter":1.5}}"#),
        case("exponent counter", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber":"N4","secret":"3132333435363738393031323334353637383930","type":"HOTP","otpLength":6,"hotp":{"counter":1e300}}"#),
        case("duplicate of kept serial", Method::POST, tokens.clone(), Some(JSON), seed_token().to_string()),
        // Deep nesting.
        case("deep array", Method::POST, tokens.clone(), Some(JSON), deep.clone()),
        case("deep object", Method::POST, tokens.clone(), Some(JSON), deep_object.clone()),
        case("deep job", Method::POST, jobs.clone(), Some(CREATE_JOB), deep),
        // NUL and non-ASCII bytes.
        case("NUL in serial", Method::POST, tokens.clone(), Some(JSON), "{\"serialNumber\": \"A\\u0000B\", \"secret\": \"3132333435363738393031323334353637383930\", \"type\": \"HOTP\", \"otpLength\": 6}"),
        case("raw NUL byte", Method::POST, tokens.clone(), Some(JSON), b"{\"serialNumber\": \"A\x00B\"}".to_vec()),
        case("invalid UTF-8", Method::POST, tokens.clone(), Some(JSON), vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
        case("non-ASCII serial", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "ÄÖÜ123", "secret": "3132333435363738393031323334353637383930", "type": "HOTP", "otpLength": 6}"#),
        case("emoji secret", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "E1", "secret": "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀", "type": "HOTP", "otpLength": 6}"#),
        case("lone surrogate", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber": "\ud800"}"#),
        // Oversized bodies.
        case("oversized token body", Method::POST, tokens.clone(), Some(JSON), vec![b' '; 2 * 1024 * 1024]),
        // Odd media types.
        case("no content type", Method::POST, tokens.clone(), None, seed_token().to_string()),
        case("text/plain", Method::POST, tokens.clone(), Some("text/plain"), seed_token().to_string()),
        case("form", Method::POST, tokens.clone(), Some("application/x-www-form-urlencoded"), "a=b"),
        case("garbage content type", Method::POST, tokens.clone(), Some(";;;"), "{}"),
        case("job as json", Method::POST, jobs.clone(), Some(JSON), r#"{"type":"CREATE_OATH_TOKENS","tokens":[]}"#),
        case("job type mismatch", Method::POST, jobs.clone(), Some(REVOKE_JOB), r#"{"type":"CREATE_OATH_TOKENS","tokens":[]}"#),
        case("job not json", Method::POST, jobs.clone(), Some(CREATE_JOB), "<xml/>"),
        case("job tokens not array", Method::POST, jobs.clone(), Some(CREATE_JOB), r#"{"type":"CREATE_OATH_TOKENS","tokens":{}}"#),
        case("job many bad items", Method::POST, jobs.clone(), Some(CREATE_JOB), many_tokens_bad),
        case("revoke bad ids", Method::POST, jobs.clone(), Some(REVOKE_JOB), r#"{"type":"REVOKE_OATH_TOKENS","tokenIds":["nope", 1, null]}"#),
        // Bad UUIDs in paths.
        case("bad token id", Method::GET, format!("{tokens}/123"), None, ""),
        case("bad env id", Method::GET, "/v1/environments/xyz/oathTokens".to_string(), None, ""),
        case("uuid with braces", Method::GET, format!("{tokens}/{{{}}}", uuid::Uuid::new_v4()), None, ""),
        case("bad job id", Method::GET, format!("{jobs}/not-a-job"), None, ""),
        case("bad job id results", Method::GET, format!("{jobs}/zzz/results"), None, ""),
        case("delete bad id", Method::DELETE, format!("{tokens}/%00"), None, ""),
        // Bad filters, limits and cursors.
        case("filter unknown attribute", Method::GET, format!("{tokens}?filter=user%20eq%20%22x%22"), None, ""),
        case("filter operator", Method::GET, format!("{tokens}?filter=serialNumber%20sw%20%22x%22"), None, ""),
        case("filter unterminated", Method::GET, format!("{tokens}?filter=serialNumber%20eq%20%22x"), None, ""),
        case("filter injection", Method::GET, format!("{tokens}?filter=serialNumber%20eq%20%22x%22%20or%201%3D1"), None, ""),
        case("bad percent encoding", Method::GET, format!("{tokens}?filter=%zz"), None, ""),
        case("limit huge", Method::GET, format!("{tokens}?limit=99999999999999999999"), None, ""),
        case("limit zero", Method::GET, format!("{tokens}?limit=0"), None, ""),
        case("cursor garbage", Method::GET, format!("{tokens}?cursor=%%%"), None, ""),
        case("cursor base64 junk", Method::GET, format!("{tokens}?cursor=AAAA"), None, ""),
        case("job list cursor", Method::GET, format!("{jobs}?cursor=bad"), None, ""),
        case("results outcome", Method::GET, format!("{jobs}/{}/results?outcome=created", uuid::Uuid::new_v4()), None, ""),
        // Unknown paths and methods.
        case("unknown path", Method::GET, format!("/v1/environments/{env}/widgets"), None, ""),
        case("wrong method", Method::PUT, kept_path.clone(), Some(JSON), "{}"),
        case("patch collection", Method::PATCH, tokens.clone(), Some(JSON), "{}"),
        // A body that would be created (a new serial): the 400 can only come from the key.
        case("idempotency key too long", Method::POST, tokens.clone(), Some(JSON), r#"{"serialNumber":"IDEM1","secret":"3132333435363738393031323334353637383930","type":"HOTP","otpLength":6}"#),
    ];
    assert!(cases.len() >= 40);

    for c in cases {
        let mut req = app.request(c.method.clone(), &c.path).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if c.name == "idempotency key too long" {
            req = req.header("idempotency-key", "k".repeat(300));
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert!(
            (400..500).contains(&status),
            "{}: got {status}: {text}",
            c.name
        );
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
        if c.name == "idempotency key too long" {
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Idempotency-Key")),
                "{}: {body}",
                c.name
            );
        }
        assert!(
            body["code"].is_string() && body["message"].is_string() && body["id"].is_string(),
            "{}: {body}",
            c.name
        );
    }

    // Nothing stored was lost or changed.
    let (status, after) = app.get_json(&kept_path).await;
    assert_eq!(status, 200);
    assert_eq!(after, kept);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 1);
    assert_eq!(app.count("select count(*) from oath_jobs").await, 0);
}
