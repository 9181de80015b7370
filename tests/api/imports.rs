//! File imports over HTTP: PSKC (RFC 6030) and CSV bodies become create jobs whose unreadable
//! rows are INVALID results; files that cannot be read at all are refused.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use oath_service::auth::Scope;
use oath_service::config::PskcKeySetting;
use oath_service::crypto::SecretCipher;
use oath_service::import::pskc::UNREADABLE as UNREADABLE_PACKAGE;
use oath_service::jobs::runner::RunnerPool;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, assert_error_mentions, call, expect_error, parts, send, spawn_app_with, TestApp,
};

const PSKC: &str = "application/pskc+xml";
const CSV: &str = "text/csv";
/// The secret of the RFC 6030 examples (and of RFC 4226's test vectors).
const RFC_SECRET: &[u8] = b"12345678901234567890";
const RFC_PSK: &str = "12345678901234567890123456789012";
const HEADER: &str = "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep";

/// Extra request headers: name, value.
type Headers<'a> = Vec<(&'a str, &'a str)>;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/pskc/{name}")).unwrap()
}

fn vendor_key() -> String {
    (0u8..32).map(|b| format!("{b:02x}")).collect()
}

async fn spawn(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |s| {
        // Bound to every environment: these tests import each file into a new one.
        s.import.pskc_keys = [
            ("rfc6030", RFC_PSK.to_string()),
            ("vendor", vendor_key()),
            ("wrong", "00".repeat(16)),
        ]
        .into_iter()
        .map(|(id, key)| (id.to_string(), PskcKeySetting::bound(&key, &["*"])))
        .collect();
    })
    .await
}

/// Submits a file to a fresh environment, runs the job to its end and returns the environment,
/// the finished job and its results.
async fn import(
    app: &TestApp,
    media_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (Uuid, Value, Vec<Value>) {
    let env = Uuid::new_v4();
    let (status, accepted) = app.post_file(env, media_type, body, headers).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["type"], "CREATE_OATH_TOKENS");
    assert_eq!(accepted["async"], true);
    app.run_jobs().await;
    let id = accepted["id"].as_str().unwrap();
    let get = |path: String| {
        let token = app.token_for(env, &Scope::ALL);
        async move { call(app.request_as(&token, Method::GET, &path)).await }
    };
    let (_, job) = get(format!("/v1/environments/{env}/oathJobs/{id}")).await;
    assert_eq!(job["status"], "DONE", "{job}");
    let (_, page) = get(format!(
        "/v1/environments/{env}/oathJobs/{id}/results?limit=1000"
    ))
    .await;
    let results = page["_embedded"]["results"].as_array().unwrap().clone();
    (env, job, results)
}

/// The stored secret of a token, opened with the app's keys.
async fn stored_secret(app: &TestApp, env: Uuid, serial: &str) -> Vec<u8> {
    let (ciphertext, key_id, id): (Vec<u8>, String, Uuid) = sqlx::query_as(
        "select secret_ciphertext, secret_key_id, id from oath_tokens
         where environment_id = $1 and serial_number = $2",
    )
    .bind(env)
    .bind(serial)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (active, keys) = app.settings.crypto.decoded_keys().unwrap();
    let cipher = SecretCipher::new(active, &keys).unwrap();
    cipher
        .open(&key_id, &ciphertext, env, id)
        .unwrap()
        .expose()
        .to_vec()
}

/// RFC 4226 HOTP with HMAC-SHA1.
fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[19] & 0x0f);
    let code = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    format!(
        "{:0width$}",
        code % 10u32.pow(digits),
        width = digits as usize
    )
}

fn outcomes(results: &[Value]) -> Vec<(i64, String)> {
    results
        .iter()
        .map(|r| {
            (
                r["rowNumber"].as_i64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rows(pairs: &[(i64, &str)]) -> Vec<(i64, String)> {
    pairs.iter().map(|(n, o)| (*n, o.to_string())).collect()
}

#[sqlx::test]
async fn rfc6030_examples_import_with_the_rfcs_secret(pool: PgPool) {
    let app = spawn(pool).await;
    assert_eq!(hotp(RFC_SECRET, 0, 6), "755224", "RFC 4226 appendix D");
    for (figure, headers) in [
        ("rfc6030-figure3.pskcxml", vec![]),
        ("rfc6030-figure5.pskcxml", vec![]),
        (
            "rfc6030-figure6.pskcxml",
            vec![("X-PSKC-Key-Id", "RFC6030")],
        ),
        (
            "rfc6030-figure7.pskcxml",
            vec![("X-PSKC-Password", "qwerty")],
        ),
    ] {
        let (env, job, results) = import(&app, PSKC, fixture(figure), &headers).await;
        assert_eq!(job["result"]["created"], 1, "{figure}: {job}");
        assert_eq!(results[0]["serialNumber"], "987654321");
        assert_eq!(results[0]["outcome"], "CREATED");
        assert_eq!(results[0]["rowNumber"], 1);
        let secret = stored_secret(&app, env, "987654321").await;
        assert_eq!(secret, RFC_SECRET, "{figure}");
        // The OTP the token shows first: counter 0, eight digits.
        assert_eq!(hotp(&secret, 0, 8), "84755224", "{figure}");
        let (_, page) = call(app.request_in(
            env,
            Method::GET,
            &format!(
                "/v1/environments/{env}/oathTokens?filter=serialNumber%20eq%20%22987654321%22"
            ),
        ))
        .await;
        let token = &page["_embedded"]["oathTokens"][0];
        assert_eq!(token["type"], "HOTP");
        assert_eq!(token["otpLength"], 8);
        assert_eq!(token["hotp"]["counter"], 0);
        // And the service agrees: the code validates once, and not twice.
        let validate = || async {
            let res = send(
                app.request_in(
                    env,
                    Method::POST,
                    &format!(
                        "/v1/environments/{env}/oathTokens/{}/validate",
                        token["id"].as_str().unwrap()
                    ),
                )
                .json(&json!({"otp": "84755224"})),
            )
            .await;
            parts(res).await.1["status"].as_str().unwrap().to_string()
        };
        assert_eq!(validate().await, "VALID", "{figure}");
        assert_eq!(validate().await, "INVALID", "{figure}");
    }

    // Figure 5's second key package is the PIN, not a token.
    let (_, job, results) = import(&app, PSKC, fixture("rfc6030-figure5.pskcxml"), &[]).await;
    assert_eq!(job["result"]["failed"], 1);
    assert_eq!(results[1]["outcome"], "INVALID");
    assert_eq!(results[1]["rowNumber"], 2);
    assert!(results[1]["message"]
        .as_str()
        .unwrap()
        .contains("is not HOTP or TOTP"));

    // Figure 2 has no OTP length, figure 4 no secret (it is derived from a master key): each
    // file is accepted and its key package is an INVALID row.
    for (figure, want) in [
        ("rfc6030-figure2.pskcxml", "ResponseFormat is missing"),
        ("rfc6030-figure4.pskcxml", "KeyReference"),
    ] {
        let (_, job, results) = import(&app, PSKC, fixture(figure), &[]).await;
        assert_eq!(
            job["result"],
            json!({"created": 0, "failed": 1}),
            "{figure}"
        );
        assert_eq!(outcomes(&results), rows(&[(1, "INVALID")]));
        assert!(
            results[0]["message"].as_str().unwrap().contains(want),
            "{figure}: {}",
            results[0]
        );
    }
}

#[sqlx::test]
async fn a_wrong_key_or_password_gives_invalid_rows(pool: PgPool) {
    let app = spawn(pool).await;
    for (figure, header) in [
        ("rfc6030-figure6.pskcxml", ("X-PSKC-Key-Id", "wrong")),
        ("rfc6030-figure7.pskcxml", ("X-PSKC-Password", "QWERTY")),
        ("vendor-aes256.pskcxml", ("X-PSKC-Key-Id", "rfc6030")),
    ] {
        let (env, job, results) = import(&app, PSKC, fixture(figure), &[header]).await;
        assert_eq!(job["result"]["created"], 0, "{figure}: {job}");
        assert!(job["result"]["failed"].as_i64().unwrap() >= 1);
        for r in &results {
            assert_eq!(r["outcome"], "INVALID");
            assert_eq!(r["message"], UNREADABLE_PACKAGE, "{figure}: {r}");
        }
        assert_eq!(
            app.count(&format!(
                "select count(*) from oath_tokens where environment_id = '{env}'"
            ))
            .await,
            0
        );
    }
}

#[sqlx::test]
async fn vendor_files_plain_encrypted_and_with_a_bad_mac(pool: PgPool) {
    let app = spawn(pool).await;
    for (file, header, prefix) in [
        ("vendor-aes256.pskcxml", ("X-PSKC-Key-Id", "vendor"), "EVA"),
        (
            "vendor-pbkdf2.pskcxml",
            ("X-PSKC-Password", "correct horse battery staple"),
            "EVP",
        ),
    ] {
        let (env, job, _) = import(&app, PSKC, fixture(file), &[header]).await;
        assert_eq!(job["result"], json!({"created": 3}), "{file}");
        let secret = stored_secret(&app, env, &format!("{prefix}0001")).await;
        assert_eq!(secret, RFC_SECRET);
        let (_, page) = call(app.request_in(
            env,
            Method::GET,
            &format!("/v1/environments/{env}/oathTokens"),
        ))
        .await;
        let tokens = page["_embedded"]["oathTokens"].as_array().unwrap();
        assert_eq!(tokens[0]["hotp"], json!({"counter": 5}));
        assert_eq!(tokens[1]["totp"], json!({"timeStep": 30, "drift": 0}));
        assert_eq!(tokens[1]["hashAlgorithm"], "HmacSHA256");
        assert_eq!(tokens[2]["totp"]["timeStep"], 60);
        assert_eq!(tokens[2]["hashAlgorithm"], "HmacSHA512");
    }

    // One altered ValueMAC: that key package is INVALID, the others are created.
    let (_, job, results) = import(
        &app,
        PSKC,
        fixture("vendor-aes256-bad-mac.pskcxml"),
        &[("X-PSKC-Key-Id", "vendor")],
    )
    .await;
    assert_eq!(job["result"], json!({"created": 2, "failed": 1}));
    assert_eq!(
        outcomes(&results),
        rows(&[(1, "CREATED"), (2, "INVALID"), (3, "CREATED")])
    );
    assert_eq!(results[1]["serialNumber"], "EVM0002");
    assert_eq!(results[1]["message"], UNREADABLE_PACKAGE);

    // Plain vendor file: a key package without a serial and one with a 7-digit OTP are INVALID.
    let (env, job, results) = import(&app, PSKC, fixture("vendor-plain.pskcxml"), &[]).await;
    assert_eq!(job["result"], json!({"created": 3, "failed": 2}));
    // The file's TimeDrift is taken over.
    let (_, page) = call(app.request_in(
        env,
        Method::GET,
        &format!("/v1/environments/{env}/oathTokens?filter=serialNumber%20eq%20%22EV2000003%22"),
    ))
    .await;
    assert_eq!(
        page["_embedded"]["oathTokens"][0]["totp"],
        json!({"timeStep": 60, "drift": -1})
    );
    assert_eq!(
        outcomes(&results),
        rows(&[
            (1, "CREATED"),
            (2, "CREATED"),
            (3, "CREATED"),
            (4, "INVALID"),
            (5, "INVALID")
        ])
    );
    assert!(results[3].get("serialNumber").is_none());
    assert!(results[3]["message"]
        .as_str()
        .unwrap()
        .starts_with("SerialNo is missing"));
    assert_eq!(results[4]["serialNumber"], "EV1000005");
    assert_eq!(
        results[4]["message"],
        "ResponseFormat Length must be 6 or 8"
    );
    // No message or result repeats a secret.
    let all = serde_json::to_string(&results).unwrap();
    assert!(!all.contains("MTIzNDU2") && !all.contains("3132333435"));
}

#[sqlx::test]
async fn malicious_and_unreadable_files_are_refused_before_any_work(pool: PgPool) {
    let app = spawn(pool).await;
    let cases: Vec<(Vec<u8>, Headers, &str)> = vec![
        (
            fixture("billion-laughs.pskcxml"),
            vec![],
            "Line 2: a DOCTYPE declaration is not accepted",
        ),
        (
            fixture("external-entity.pskcxml"),
            vec![],
            "Line 2: a DOCTYPE declaration is not accepted",
        ),
        (
            fixture("undeclared-entity.pskcxml"),
            vec![],
            "Line 4: the entity reference &serial;",
        ),
        (
            fixture("truncated.pskcxml"),
            vec![],
            "the file ends before the element Data (line 8)",
        ),
        (
            b"not xml at all".to_vec(),
            vec![],
            "Line 1: text outside the root element",
        ),
        (fixture("rfc6030-figure6.pskcxml"), vec![], "X-PSKC-Key-Id"),
        (
            fixture("rfc6030-figure7.pskcxml"),
            vec![],
            "X-PSKC-Password",
        ),
        (
            fixture("rfc6030-figure3.pskcxml"),
            vec![("X-PSKC-Key-Id", "nobody")],
            "X-PSKC-Key-Id names no pre-shared key this environment may use",
        ),
    ];
    for (body, headers, want) in cases {
        let (status, res) = app.post_file(app.env, PSKC, body, &headers).await;
        assert_error_mentions(status, &res, 400, "INVALID_REQUEST", want);
    }
    // A larger billion-laughs body is refused at its DOCTYPE (the message names it), before any
    // of it is expanded.
    let mut bomb = fixture("billion-laughs.pskcxml");
    bomb.extend(std::iter::repeat_n(b' ', 8 << 20));
    let (status, res) = app.post_file(app.env, PSKC, bomb, &[]).await;
    assert_error_mentions(
        status,
        &res,
        400,
        "INVALID_REQUEST",
        "Line 2: a DOCTYPE declaration is not accepted",
    );

    let (status, res) = app
        .post_file(app.env, "text/plain", b"x".to_vec(), &[])
        .await;
    assert_error(status, &res, 415, "UNSUPPORTED_MEDIA_TYPE");
    app.assert_empty(&["oath_jobs", "oath_job_chunks", "oath_tokens"])
        .await;
}

#[sqlx::test]
async fn csv_rows_import_and_bad_rows_are_invalid_with_their_line(pool: PgPool) {
    let app = spawn(pool).await;
    let secret = hex::encode_upper(RFC_SECRET);
    let body = format!(
        "\u{feff}{HEADER}\r\n\
         C1,{secret},HOTP,6,,7,\r\n\
         \"C2\",\"{secret}\",TOTP,8,HmacSHA256,,60\r\n\
         C3,{secret},HOTP,7,,,\r\n\
         \"C\r\n4\",{secret},HOTP,6,,,\r\n\
         C5,{secret}\r\n\
         C1,{secret},HOTP,6,,,\r\n"
    );
    let (env, job, results) = import(&app, CSV, body.into_bytes(), &[]).await;
    assert_eq!(
        job["result"],
        json!({"created": 2, "duplicates": [{"serialNumber": "C1", "maskedSecret": "31******"}],
               "failed": 3})
    );
    assert_eq!(
        outcomes(&results),
        rows(&[
            (1, "CREATED"),
            (2, "CREATED"),
            (3, "INVALID"),
            (4, "INVALID"),
            (5, "INVALID"),
            (6, "DUPLICATE")
        ])
    );
    let messages: Vec<&str> = results[2..5]
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "line 4: otpLength must be 6 or 8",
            "line 5: serialNumber must contain ASCII letters and digits only",
            "line 7: the row has 2 fields, the header row 7",
        ]
    );
    assert_eq!(stored_secret(&app, env, "C1").await, RFC_SECRET);

    // Base32 seeds, in any case, with padding.
    let body = "serialNumber,secretBase32,type,otpLength\nB1,gezdgnbvgy3tqojqgezdgnbvgy3tqojq,HOTP,6\nB2,GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====,TOTP,6\n";
    let (env, job, _) = import(&app, CSV, body.into(), &[]).await;
    assert_eq!(job["result"], json!({"created": 2}));
    assert_eq!(stored_secret(&app, env, "B2").await, RFC_SECRET);
}

#[sqlx::test]
async fn csv_files_without_a_usable_header_are_refused(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.max_items = 3).await;
    let secret = hex::encode(RFC_SECRET);
    let row = format!("A1,{secret},HOTP,6,,,");
    let cases = [
        (String::new(), "The file is empty"),
        (
            format!("{row}\n"),
            "Line 1: the first line must be the header row",
        ),
        (
            format!("serial,secret,type,otpLength\n{row}\n"),
            "Line 1: unknown column(s) \"serial\"",
        ),
        (format!("{HEADER}\n"), "no data rows"),
        (
            format!("{HEADER}\n{row}\n{row}\n{row}\n{row}\n"),
            "more than 3 rows",
        ),
    ];
    for (body, want) in cases {
        let (status, res) = app.post_file(app.env, CSV, body.into_bytes(), &[]).await;
        assert_error(status, &res, 400, "INVALID_REQUEST");
        let message = res["message"].as_str().unwrap();
        assert!(message.contains(want), "{want}: {res}");
        assert!(!message.contains(&secret));
    }
    assert_eq!(app.count("select count(*) from oath_jobs").await, 0);
}

#[sqlx::test]
async fn imports_honour_idempotency_keys_and_async_false(pool: PgPool) {
    let app = spawn(pool).await;
    let body = fixture("rfc6030-figure6.pskcxml");
    let headers = [("X-PSKC-Key-Id", "rfc6030"), ("Idempotency-Key", "f6")];
    let (s1, first) = app.post_file(app.env, PSKC, body.clone(), &headers).await;
    let (s2, again) = app.post_file(app.env, PSKC, body.clone(), &headers).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first, again);
    // The same file under another key is another request.
    let (status, res) = app
        .post_file(
            app.env,
            PSKC,
            body,
            &[("X-PSKC-Key-Id", "wrong"), ("Idempotency-Key", "f6")],
        )
        .await;
    assert_error(status, &res, 409, "CONFLICT");
    assert_eq!(app.count("select count(*) from oath_jobs").await, 1);
    app.run_jobs().await;

    let runners = RunnerPool::start(app.pool.clone(), Arc::new(app.settings.clone()));
    let res = app
        .post_body(
            &format!("{}?async=false", app.jobs_path()),
            "text/csv; charset=utf-8",
            format!("{HEADER}\nS1,{},HOTP,6,,,\n", hex::encode(RFC_SECRET)),
        )
        .send()
        .await
        .unwrap();
    let (status, done) = parts(res).await;
    runners.stop().await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["async"], false);
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"], json!({"created": 1}));
    let res = app
        .post_body(
            &format!("{}?async=maybe", app.jobs_path()),
            "text/csv",
            format!("{HEADER}\n"),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 400, "INVALID_REQUEST").await;
}

/// `n` HOTP tokens as a CSV file.
pub fn csv_file(n: usize, prefix: &str) -> Vec<u8> {
    let mut body = format!("{HEADER}\n").into_bytes();
    for i in 0..n {
        body.extend_from_slice(
            format!("{prefix}{i:06},3132333435363738393031323334353637383930,HOTP,6,,,\n")
                .as_bytes(),
        );
    }
    body
}

#[sqlx::test]
async fn a_100k_row_csv_imports_through_the_chunked_engine(pool: PgPool) {
    const N: usize = 100_000;
    let app = spawn(pool).await;
    let (env, job, _) = import(&app, CSV, csv_file(N, "V"), &[]).await;
    assert_eq!(job["result"], json!({"created": N}));
    assert_eq!(job["progress"], json!({"processed": N, "total": N}));
    assert_eq!(
        app.count(&format!(
            "select count(*) from oath_tokens where environment_id = '{env}'"
        ))
        .await,
        N as i64
    );
    assert_eq!(
        app.count("select max(row_number) from job_results").await,
        N as i64
    );
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
}

#[test]
fn a_100k_key_pskc_file_parses_every_key_package() {
    use oath_service::domain::job::CreateItem;
    use oath_service::import::pskc::{parse, PskcKeys};

    const N: usize = 100_000;
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<KeyContainer Version=\"1.0\" xmlns=\"urn:ietf:params:xml:ns:keyprov:pskc\">\n",
    );
    for i in 0..N {
        body.push_str(&format!(
            "<KeyPackage><DeviceInfo><Manufacturer>Acme</Manufacturer><SerialNo>P{i:06}</SerialNo></DeviceInfo>\
             <Key Id=\"{i}\" Algorithm=\"urn:ietf:params:xml:ns:keyprov:pskc:hotp\"><Issuer>Acme</Issuer>\
             <AlgorithmParameters><ResponseFormat Length=\"6\" Encoding=\"DECIMAL\"/></AlgorithmParameters>\
             <Data><Secret><PlainValue>MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=</PlainValue></Secret>\
             <Counter><PlainValue>0</PlainValue></Counter></Data></Key></KeyPackage>\n"
        ));
    }
    body.push_str("</KeyContainer>\n");
    // How long it takes is bench/'s business; here, that every key package is read.
    let items = parse(body.as_bytes(), &PskcKeys::default(), N).unwrap();
    assert_eq!(items.len(), N);
    assert!(items.iter().all(|i| matches!(i, CreateItem::Token(_))));
    assert!(matches!(
        parse(body.as_bytes(), &PskcKeys::default(), N - 1),
        Err(oath_service::import::ImportError::TooManyRows { .. })
    ));
}

/// 128 bits or more written as a secret cell may be: 32 hex digits or more, or 26 base32 digits
/// or more, once spaces, dashes and padding are left out.
fn looks_like_a_secret(text: &str) -> bool {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '='))
        .collect();
    let hex = compact.len() >= 32 && compact.chars().all(|c| c.is_ascii_hexdigit());
    let base32 = compact.len() >= 26
        && compact
            .chars()
            .all(|c| c.is_ascii_alphabetic() || ('2'..='7').contains(&c));
    hex || base32
}

/// A CSV row with its serial and secret cells swapped has the right number of cells, so it is
/// read: its secret fails, and the seed in the serial's place must not be echoed as its serial
/// number, neither in the results nor in the job's stored chunks.
#[sqlx::test]
async fn csv_rows_with_serial_and_secret_swapped_echo_no_secret(pool: PgPool) {
    let app = spawn(pool).await;
    let hex = hex::encode_upper(RFC_SECRET);
    let base32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let spaced = "gezd gnbv gy3t qojq gezd gnbv gy3t qojq";
    let files = [
        (
            format!(
                "serialNumber,secret,type,otpLength\n{hex},S1,HOTP,6\n{},S2,TOTP,6\nS3,{hex},HOTP,7\n",
                hex.to_lowercase()
            ),
            vec![hex.clone()],
        ),
        (
            format!("serialNumber,secretBase32,type,otpLength\n{base32},S4,HOTP,6\n\"{spaced}\",S5,HOTP,6\nS6,{base32},HOTP,7\n"),
            vec![base32.to_string(), spaced.replace(' ', "")],
        ),
    ];
    for (body, secrets) in files {
        let env = Uuid::new_v4();
        let holds_a_secret = |text: &str| {
            let text = text.to_uppercase().replace(' ', "");
            secrets.iter().any(|s| text.contains(&s.to_uppercase()))
        };
        let (status, accepted) = app.post_file(env, CSV, body.into_bytes(), &[]).await;
        assert_eq!(status, 202, "{accepted}");
        // The job as stored, before it runs: the row as text, and its encoded input as the
        // bytes they are (its text is stored as UTF-8 as it is).
        let stored: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "select c::text, input from oath_job_chunks c where environment_id = $1",
        )
        .bind(env)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), 1);
        for (row, input) in &stored {
            assert!(!holds_a_secret(row), "oath_job_chunks: {row}");
            let input = String::from_utf8_lossy(input);
            assert!(!holds_a_secret(&input), "oath_job_chunks.input: {input}");
        }
        // The same chunk as arrays (the form of a job queued before migration 20261208000002).
        assert_eq!(app.store_chunks_as_arrays(None).await, 1);
        let serials: Vec<Option<String>> = sqlx::query_scalar(
            "select s from oath_job_chunks, unnest(invalid_serials) s where environment_id = $1",
        )
        .bind(env)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(serials.len(), 3);
        assert!(
            !serials.iter().flatten().any(|s| looks_like_a_secret(s)),
            "{serials:?}"
        );
        app.run_jobs().await;

        let (_, page) = app
            .get_in(
                env,
                &format!(
                    "/oathJobs/{}/results?limit=1000",
                    accepted["id"].as_str().unwrap()
                ),
            )
            .await;
        let results = page["_embedded"]["results"].as_array().unwrap();
        assert_eq!(
            outcomes(results),
            rows(&[(1, "INVALID"), (2, "INVALID"), (3, "INVALID")])
        );
        for r in &results[..2] {
            assert!(r.get("serialNumber").is_none(), "{r}");
            assert!(r["message"].as_str().unwrap().contains("secret"), "{r}");
        }
        // A serial that cannot be a secret is still shown.
        assert!(
            matches!(results[2]["serialNumber"].as_str(), Some("S3" | "S6")),
            "{}",
            results[2]
        );
        let all = serde_json::to_string(results).unwrap();
        assert!(!holds_a_secret(&all), "{all}");
        for r in results {
            for field in ["serialNumber", "message"] {
                let text = r[field].as_str().unwrap_or_default();
                assert!(!looks_like_a_secret(text), "{field}: {r}");
            }
        }
        let stored: Vec<(String, Option<Vec<Option<String>>>)> = sqlx::query_as(
            "select r::text, serial_numbers from job_result_chunks r where environment_id = $1",
        )
        .bind(env)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(stored.len(), 1);
        for (row, serials) in &stored {
            assert!(!holds_a_secret(row), "job_result_chunks: {row}");
            let serials = serials.iter().flatten().flatten();
            assert!(!serials.clone().any(|s| looks_like_a_secret(s)), "{row}");
        }
    }
}
