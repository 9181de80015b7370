//! Attacks of one tenant on another, and of anyone on the service's secrets and resources: each
//! test replays one and checks that it gets nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use oath_service::config::{PskcKeySetting, Settings};
use oath_service::import::pskc::UNREADABLE;
use reqwest::Method;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, assert_error_mentions, parts, seed_token, send, spawn_app, spawn_app_with,
    TestApp,
};

const PSKC: &str = "application/pskc+xml";
/// RFC 6030 figure 6's pre-shared key: digits only, as a key in hex may well be.
const RFC_PSK: &str = "12345678901234567890123456789012";
const RFC_SECRET_HEX: &str = "3132333435363738393031323334353637383930";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/pskc/{name}")).unwrap()
}

/// Runs the app's queued jobs, then returns `env`'s job `id` and its results.
async fn finish(app: &TestApp, env: Uuid, id: &str) -> (Value, Vec<Value>) {
    app.run_jobs().await;
    let get = |path: String| async move {
        let res = send(app.request_in(env, Method::GET, &path)).await;
        parts(res).await.1
    };
    let job = get(format!("/v1/environments/{env}/oathJobs/{id}")).await;
    let page = get(format!(
        "/v1/environments/{env}/oathJobs/{id}/results?limit=1000"
    ))
    .await;
    let results = page["_embedded"]["results"].as_array().unwrap().clone();
    (job, results)
}

async fn tokens_in(app: &TestApp, env: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from oath_tokens where environment_id = $1")
        .bind(env)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Environment A holds the figure 6 key under the id `tenant-a`.
async fn spawn_with_bound_key(pool: PgPool) -> TestApp {
    let env_a = Uuid::new_v4();
    let mut app = spawn_app_with(pool, |s| {
        s.import.pskc_keys = [(
            "tenant-a".to_string(),
            PskcKeySetting::bound(RFC_PSK, &[&env_a.to_string()]),
        )]
        .into();
    })
    .await;
    app.env = env_a;
    app
}

#[sqlx::test]
async fn a_key_id_bound_to_another_environment_answers_as_an_unknown_one(pool: PgPool) {
    let app = spawn_with_bound_key(pool).await;
    let intruder = Uuid::new_v4();
    let file = fixture("rfc6030-figure6.pskcxml");
    let (status, borrowed) = app
        .post_file(
            intruder,
            PSKC,
            file.clone(),
            &[("X-PSKC-Key-Id", "tenant-a")],
        )
        .await;
    assert_error(status, &borrowed, 400, "INVALID_REQUEST");
    let (status, unknown) = app
        .post_file(intruder, PSKC, file.clone(), &[("X-PSKC-Key-Id", "nobody")])
        .await;
    assert_error(status, &unknown, 400, "INVALID_REQUEST");
    assert_eq!(
        borrowed["message"], unknown["message"],
        "no hint of existence"
    );
    assert_eq!(
        borrowed.as_object().unwrap().len(),
        unknown.as_object().unwrap().len()
    );
    assert_eq!(tokens_in(&app, intruder).await, 0);

    // The environment the key is bound to imports with it (the id is case-insensitive).
    let (status, job) = app
        .post_file(app.env, PSKC, file, &[("X-PSKC-Key-Id", "TENANT-A")])
        .await;
    assert_eq!(status, 202, "{job}");
    let (job, _) = finish(&app, app.env, job["id"].as_str().unwrap()).await;
    assert_eq!(job["result"]["created"], 1, "{job}");
}

#[sqlx::test]
async fn callers_bring_their_own_pskc_key_which_is_never_echoed(pool: PgPool) {
    let app = spawn_app(pool).await;
    let file = fixture("rfc6030-figure6.pskcxml");
    let (status, job) = app
        .post_file(app.env, PSKC, file.clone(), &[("X-PSKC-Key", RFC_PSK)])
        .await;
    assert_eq!(status, 202, "{job}");
    let (job, results) = finish(&app, app.env, job["id"].as_str().unwrap()).await;
    assert_eq!(job["result"]["created"], 1, "{job}");
    let everything = format!("{job}{results:?}");
    assert!(!everything.contains(RFC_PSK) && !everything.contains(RFC_SECRET_HEX));

    for (headers, want) in [
        (
            vec![("X-PSKC-Key", "00112233")],
            "X-PSKC-Key must be the hex",
        ),
        (
            vec![("X-PSKC-Key", "not hex at all, not hex at all!!")],
            "X-PSKC-Key must be the hex",
        ),
        (
            vec![("X-PSKC-Key", RFC_PSK), ("X-PSKC-Key-Id", "tenant-a")],
            "either X-PSKC-Key or X-PSKC-Key-Id",
        ),
    ] {
        let (status, body) = app.post_file(app.env, PSKC, file.clone(), &headers).await;
        assert_error_mentions(status, &body, 400, "INVALID_REQUEST", want);
        assert!(!body.to_string().contains(RFC_PSK));
    }
}

/// A MACKey that decrypts to nothing is a MAC key the attacker knows: with it, they could
/// MAC any ciphertext and import a clone of a token whose ciphertext they hold.
#[sqlx::test]
async fn a_forged_container_with_an_empty_mac_key_imports_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, job) = app
        .post_file(
            app.env,
            PSKC,
            fixture("forged-empty-mac-key.pskcxml"),
            &[("X-PSKC-Key", RFC_PSK)],
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let (job, results) = finish(&app, app.env, job["id"].as_str().unwrap()).await;
    assert_eq!(job["result"], json!({"created": 0, "failed": 1}), "{job}");
    assert_eq!(results[0]["outcome"], "INVALID");
    assert_eq!(results[0]["message"], UNREADABLE);
    assert_eq!(tokens_in(&app, app.env).await, 0);
}

/// The RFC's own file, with its digits-only key configured the way operators do it: through
/// environment variables, read by the real loader.
#[sqlx::test]
async fn a_digits_only_pskc_key_from_the_environment_imports_rfc6030_figure6(pool: PgPool) {
    let env_a = Uuid::new_v4();
    let vars: HashMap<String, String> = [
        ("OATH__IMPORT__PSKC_KEYS__RFC__KEY", RFC_PSK.to_string()),
        (
            "OATH__IMPORT__PSKC_KEYS__RFC__ENVIRONMENTS",
            env_a.to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let from_env = Settings::read_with_env(Path::new("config"), None, Some(vars)).unwrap();
    let mut app = spawn_app_with(pool, |s| s.import = from_env.import).await;
    app.env = env_a;
    let file = fixture("rfc6030-figure6.pskcxml");
    let (status, job) = app
        .post_file(env_a, PSKC, file, &[("X-PSKC-Key-Id", "rfc")])
        .await;
    assert_eq!(status, 202, "{job}");
    let (job, results) = finish(&app, env_a, job["id"].as_str().unwrap()).await;
    assert_eq!(job["result"]["created"], 1, "{job} {results:?}");
}

/// `dev-token` signs with `auth.hs256_secret` as the environment gives it, digits and all.
#[test]
fn a_digits_only_hs256_secret_from_the_environment_signs_as_given() {
    let secret = "98765432109876543210987654321098";
    let env = Uuid::new_v4();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oath-service"))
        .args(["dev-token", "--env", &env.to_string()])
        .env("OATH__AUTH__HS256_SECRET", secret)
        .env_remove("OATH_ENV")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["oath-service"]);
    let claims = jsonwebtoken::decode::<Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("signed with the secret exactly as configured");
    assert_eq!(claims.claims["env"], env.to_string());
}

/// A row missing its serial cell has the secret where the serial should be: it must come back
/// in no result and be stored in no table.
#[sqlx::test]
async fn a_shifted_csv_row_gives_back_and_stores_no_secret(pool: PgPool) {
    let app = spawn_app(pool).await;
    let csv = format!(
        "serialNumber,secret,type,otpLength\nOK1,{RFC_SECRET_HEX},HOTP,6\n{RFC_SECRET_HEX},HOTP,6\n"
    );
    let (status, job) = app
        .post_file(app.env, "text/csv", csv.into_bytes(), &[])
        .await;
    assert_eq!(status, 202, "{job}");
    let leaked = |table: &'static str| {
        let pool = app.pool.clone();
        async move {
            // A job's encoded chunk input (`input`, bytea) shows as hex in the row's text: its
            // bytes are searched as they are.
            let input = if table == "oath_job_chunks" {
                " or position(convert_to($1, 'UTF8') in coalesce(t.input, '')) > 0"
            } else {
                ""
            };
            let sql =
                format!("select count(*) from {table} t where position($1 in t::text) > 0{input}");
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(RFC_SECRET_HEX)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(leaked("oath_job_chunks").await, 0, "queued input");
    let (job, results) = finish(&app, app.env, job["id"].as_str().unwrap()).await;
    assert_eq!(job["result"], json!({"created": 1, "failed": 1}), "{job}");
    assert_eq!(results[1]["outcome"], "INVALID");
    assert!(results[1].get("serialNumber").is_none(), "{}", results[1]);
    assert!(!format!("{job}{results:?}").contains(RFC_SECRET_HEX));
    assert_eq!(leaked("job_results").await, 0);
}

/// Anonymous requests with made-up methods and paths: each once made a new series.
#[sqlx::test]
async fn metrics_labels_stay_bounded_whatever_clients_send(pool: PgPool) {
    let app = spawn_app(pool).await;
    let metrics = || async { app.get_anonymous("/metrics").await.text().await.unwrap() };
    // A first round puts the series these requests legitimately make in place.
    let flood = |round: usize| {
        let app = &app;
        async move {
            for i in 0..150 {
                let method = Method::from_bytes(format!("BREW{round}X{i}").as_bytes()).unwrap();
                let _ = app
                    .client
                    .request(method, app.url(&format!("/made/up/{round}/{i}")))
                    .send()
                    .await
                    .unwrap();
                let _ = app
                    .get_anonymous(&format!("/v1/nowhere/{round}/{i}?x={i}"))
                    .await;
            }
        }
    };
    flood(0).await;
    let long = Method::from_bytes("M".repeat(3000).as_bytes()).unwrap();
    let _ = app.client.request(long, app.url("/metrics")).send().await;
    let before = metrics().await;
    flood(1).await;
    let after = metrics().await;
    for text in [&before, &after] {
        assert!(!text.contains("BREW") && !text.contains("MMMM") && !text.contains("/made/up"));
        for label in text.split("method=\"").skip(1) {
            let method = label.split('"').next().unwrap();
            assert!(
                [
                    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
                    "OTHER"
                ]
                .contains(&method),
                "{method}"
            );
        }
    }
    // The second flood adds no series: the same lines, other counts.
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("oath_http_request"))
            .filter(|l| l.contains("route=\"unmatched\""))
            .filter(|l| l.contains("method=\"OTHER\"") || l.contains("method=\"GET\""))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(!series(&before).is_empty());
    assert_eq!(series(&before), series(&after));
}

/// A body of thousands of unknown properties, one with a huge name, once made an answer larger
/// than the request.
#[sqlx::test]
async fn error_details_are_capped_on_every_body(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut body: Map<String, Value> = seed_token().as_object().unwrap().clone();
    for i in 0..5000 {
        body.insert(format!("x{i}"), Value::from(i));
    }
    body.insert("y".repeat(200_000), Value::from(1));
    let res = app.create_token(&Value::Object(body.clone())).await;
    let text = res.text().await.unwrap();
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["code"], "INVALID_DATA");
    assert_eq!(err["details"].as_array().unwrap().len(), 1000);
    assert_eq!(
        err["message"],
        "The request has 5001 invalid fields; the first 1000 are listed."
    );
    assert!(text.len() < 150_000, "{} bytes", text.len());

    // In a job item too (the job's own limit was already 1,000 details).
    let job = json!({"type": "CREATE_OATH_TOKENS", "tokens": [Value::Object(body)]});
    let (status, err) = parts(app.submit_job(&job).await).await;
    assert_error(status, &err, 400, "INVALID_DATA");
    assert_eq!(err["details"].as_array().unwrap().len(), 1000);
    assert!(err.to_string().len() < 150_000);
    assert!(err["details"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["target"].as_str().unwrap().len() < 100));
}

#[sqlx::test]
async fn pbkdf2_iteration_counts_above_the_limit_are_refused(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.import.pbkdf2_max_iterations = 4095).await;
    let (status, body) = app
        .post_file(
            app.env,
            PSKC,
            fixture("vendor-pbkdf2.pskcxml"),
            &[("X-PSKC-Password", "correct horse battery staple")],
        )
        .await;
    assert_error_mentions(
        status,
        &body,
        400,
        "INVALID_REQUEST",
        "import.pbkdf2_max_iterations",
    );
}

/// What a database reader would compute to test a guessed secret against a stored binding:
/// the length-framed SHA-256 of method, path, media type and body.
fn plain_binding(path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in [b"POST".as_slice(), path.as_bytes(), b"application/json"] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().to_vec()
}

#[sqlx::test]
async fn idempotency_bindings_are_keyed_not_plain_hashes(pool: PgPool) {
    let mut stored = Vec::new();
    for key in [[3u8; 32], [4u8; 32]] {
        let app = spawn_app_with(pool.clone(), |s| {
            s.crypto.request_hash_key = Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                key,
            ));
        })
        .await;
        let body = seed_token().to_string();
        let res = app
            .request(Method::POST, &app.tokens_path())
            .header("content-type", "application/json")
            .header("Idempotency-Key", "k1")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let hash: Vec<u8> = sqlx::query_scalar(
            "select request_hash from idempotency_keys where environment_id = $1",
        )
        .bind(app.env)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_ne!(hash, plain_binding(&app.tokens_path(), body.as_bytes()));
        assert_ne!(hash, Sha256::digest(body.as_bytes()).to_vec());
        stored.push(hash);
        // And the binding still does its work: a retry replays, another body conflicts.
        let retry = app
            .request(Method::POST, &app.tokens_path())
            .header("content-type", "application/json")
            .header("Idempotency-Key", "k1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(retry.status(), 201);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        let other = app
            .request(Method::POST, &app.tokens_path())
            .header("content-type", "application/json")
            .header("Idempotency-Key", "k1")
            .body(json!({"serialNumber": "X2", "secret": RFC_SECRET_HEX, "type": "HOTP", "otpLength": 6}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 409);
    }
    // Same request, other server key: another binding. Only the key holder can compute it.
    assert_ne!(stored[0], stored[1]);
}

/// Password-protected imports beyond `import.max_concurrent` wait for a turn: none is refused
/// or lost, and the API answers while they derive their keys.
#[sqlx::test]
async fn imports_beyond_the_concurrency_bound_wait_and_all_complete(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.import.max_concurrent = 1).await;
    // One upload per environment at a time: four environments.
    let uploads = (0..4).map(|_| {
        app.post_file(
            uuid::Uuid::new_v4(),
            PSKC,
            fixture("vendor-pbkdf2.pskcxml"),
            &[("X-PSKC-Password", "correct horse battery staple")],
        )
    });
    let health = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        app.get_anonymous("/health/live").await.status()
    };
    let (answers, health) = tokio::join!(futures_util::future::join_all(uploads), health);
    assert_eq!(health, 200);
    for (status, body) in answers {
        assert_eq!(status, 202, "{body}");
    }
}
