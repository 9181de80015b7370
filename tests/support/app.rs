//! The app in-process on a test database (`TestApp`), and the ways the tests call it: requests
//! with every scope or with another environment's token, answers as status and JSON, the
//! contract's error body, jobs submitted and read back.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oath_service::auth::{self, Scope};
use oath_service::config::Settings;
use oath_service::domain::job::JobType;
use oath_service::domain::{HashAlgorithm, OtpLength};
use oath_service::jobs::runner::{Runner, Step};
use oath_service::otp::hotp;
use oath_service::startup::{self, AppState, Application};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use uuid::Uuid;

pub const BASE_URL: &str = "https://api.example.test";
pub const HS256_SECRET: &str = "test-only-hs256-secret-of-at-least-32-bytes";
/// base64 of 32 bytes 0x01.
pub const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
pub const SEED_SECRET: &str = "6EBD59F71A800C48C4619CD33F6C385C9237C9BA";
/// The secret of RFC 4226's test vectors, "12345678901234567890", in hex.
pub const RFC_SECRET_HEX: &str = "3132333435363738393031323334353637383930";

pub fn seed_token() -> Value {
    json!({
        "serialNumber": "2333734700388",
        "secret": SEED_SECRET,
        "type": "HOTP",
        "hotp": {"counter": 456789},
        "otpLength": 8
    })
}

/// A six-digit HOTP token with the RFC 4226 secret.
pub fn hotp_token(serial: &str) -> Value {
    json!({"serialNumber": serial, "secret": RFC_SECRET_HEX, "type": "HOTP", "otpLength": 6})
}

/// The body of a create job of one `hotp_token` per serial.
pub fn create_job(serials: impl IntoIterator<Item = String>) -> Value {
    let tokens: Vec<Value> = serials.into_iter().map(|s| hotp_token(&s)).collect();
    json!({"type": "CREATE_OATH_TOKENS", "tokens": tokens})
}

/// The HOTP code of the RFC 4226 secret (`RFC_SECRET_HEX`) at `counter`, of `digits` digits.
pub fn rfc_code(algorithm: HashAlgorithm, digits: u8, counter: u64) -> String {
    let key = hex::decode(RFC_SECRET_HEX).unwrap();
    let length = OtpLength::new(u64::from(digits)).unwrap();
    let value = hotp(&key, algorithm, length, counter);
    format!("{value:0width$}", width = usize::from(digits))
}

/// `prefix` followed by each number of `range`: `numbered("K", 0..3)` is K0, K1, K2.
pub fn numbered(prefix: &str, range: Range<usize>) -> impl Iterator<Item = String> {
    let prefix = prefix.to_string();
    range.map(move |i| format!("{prefix}{i}"))
}

/// The path of environment `env`, followed by `rest`.
pub fn environment_path(env: Uuid, rest: &str) -> String {
    format!("/v1/environments/{env}{rest}")
}

pub fn test_settings() -> Settings {
    let mut s = Settings::read_from(Path::new("config"), None).expect("config/default.toml");
    s.server.addr = "127.0.0.1:0".into();
    s.server.public_base_url = BASE_URL.into();
    s.server.workers = 2;
    s.server.shutdown_timeout_seconds = 1;
    s.database.acquire_timeout_seconds = 1;
    s.auth.issuer = "https://issuer.example.test".into();
    s.auth.audience = "oath-service".into();
    s.auth.hs256_secret = Some(HS256_SECRET.into());
    s.auth.jwks_path = Some("tests/fixtures/jwt/jwks.json".into());
    s.auth.jwks_url = None;
    s.crypto.active_key_id = Some("a".into());
    s.crypto.keys = [("a".to_string(), KEY_A.to_string())].into();
    s.check().expect("test settings are valid");
    s
}

pub struct TestApp {
    pub address: String,
    pub env: Uuid,
    pub pool: PgPool,
    pub settings: Settings,
    pub client: reqwest::Client,
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, |_| {}).await
}

pub async fn spawn_app_with(pool: PgPool, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    configure(&mut settings);
    let state = AppState::new(settings.clone(), pool.clone())
        .await
        .expect("app state");
    let app = Application::build(state).expect("app binds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        env: Uuid::new_v4(),
        pool,
        settings,
        // Only a hang should fail a request: a 100k-row upload on a loaded 2-core machine is not
        // one.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            // The server closes a connection idle for its keep-alive (5 s); a test that spends
            // longer building its next body must not be handed that closing connection.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    }
}

/// A pool on the test database reached through `options` (e.g. via a proxy).
pub fn pool_via(settings: &Settings, options: PgConnectOptions) -> PgPool {
    startup::pool_with(settings, options)
}

impl TestApp {
    /// An HS256 token for this app's environment with the given scopes.
    pub fn token(&self, scopes: &[Scope]) -> String {
        self.token_for(self.env, scopes)
    }

    pub fn token_for(&self, env: Uuid, scopes: &[Scope]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_string()).collect();
        auth::mint_dev_token(&self.settings.auth, env, &scopes, Duration::from_secs(300)).unwrap()
    }

    pub fn all_scopes(&self) -> String {
        self.token(&Scope::ALL)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn tokens_path(&self) -> String {
        environment_path(self.env, "/oathTokens")
    }

    /// A request with a bearer token carrying every scope.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.request_as(&self.all_scopes(), method, path)
    }

    /// A request with the given bearer token.
    pub fn request_as(&self, bearer: &str, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path).bearer_auth(bearer)
    }

    /// A request as environment `env`, with every scope.
    pub fn request_in(&self, env: Uuid, method: Method, path: &str) -> RequestBuilder {
        self.request_as(&self.token_for(env, &Scope::ALL), method, path)
    }

    /// A request without credentials.
    pub fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A GET without credentials (health, metrics, documents).
    pub async fn get_anonymous(&self, path: &str) -> Response {
        send(self.anonymous(Method::GET, path)).await
    }

    /// A GET without credentials that must answer 200 with a media type starting with
    /// `media_type`.
    pub async fn get_anonymous_ok(&self, path: &str, media_type: &str) -> Response {
        let res = self.get_anonymous(path).await;
        assert_eq!(res.status(), 200, "{path}");
        let content_type = res.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with(media_type),
            "{path}: {content_type}"
        );
        res
    }

    /// Asserts that each table is empty.
    pub async fn assert_empty(&self, tables: &[&str]) {
        for table in tables {
            assert_eq!(
                self.count(&format!("select count(*) from {table}")).await,
                0,
                "{table}"
            );
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get_anonymous("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn create_token(&self, body: &Value) -> Response {
        send(self.request(Method::POST, &self.tokens_path()).json(body)).await
    }

    /// Creates a token, asserting 201; returns its id.
    pub async fn create_token_id(&self, body: &Value) -> String {
        let (status, created) = parts(self.create_token(body).await).await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().expect("an id").to_string()
    }

    /// Creates one `hotp_token` per serial, asserting 201 each; returns their ids in order.
    pub async fn create_hotp_tokens(
        &self,
        serials: impl IntoIterator<Item = String>,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for serial in serials {
            ids.push(self.create_token_id(&hotp_token(&serial)).await);
        }
        ids
    }

    /// Status and JSON body of a GET with every scope.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        parts(self.get_path(path).await).await
    }

    /// Status and JSON body of a POST of `body` with every scope.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        call(self.request(Method::POST, path).json(body)).await
    }

    /// A POST of a raw `body` of `content_type`, with every scope.
    pub fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> RequestBuilder {
        self.request(Method::POST, path)
            .header("content-type", content_type)
            .body(body)
    }

    /// Asserts the links of a resource of this environment created at `rest` below its path
    /// (`/oathTokens/{id}`): `Location`, `_links.self`, `_links.environment` and `environment.id`.
    pub fn assert_links(&self, body: &Value, location: &str, rest: &str) {
        let self_href = format!("{BASE_URL}{}", environment_path(self.env, rest));
        assert_eq!(location, self_href);
        assert_eq!(body["_links"]["self"]["href"], self_href);
        assert_eq!(
            body["_links"]["environment"]["href"],
            format!("{BASE_URL}{}", environment_path(self.env, ""))
        );
        assert_eq!(body["environment"]["id"], self.env.to_string());
    }

    /// A DELETE with every scope.
    pub async fn delete(&self, path: &str) -> Response {
        send(self.request(Method::DELETE, path)).await
    }

    pub fn jobs_path(&self) -> String {
        environment_path(self.env, "/oathJobs")
    }

    /// A POST of a job body to this environment's jobs, with the media type of its `type`.
    pub fn job_request(&self, body: &Value) -> RequestBuilder {
        let media_type = match body["type"].as_str() {
            Some("REVOKE_OATH_TOKENS") => JobType::REVOKE_MEDIA_TYPE,
            _ => JobType::CREATE_MEDIA_TYPE,
        };
        self.request(Method::POST, &self.jobs_path())
            .header("content-type", media_type)
            .body(body.to_string())
    }

    /// POSTs a job body with the media type of its `type`.
    pub async fn submit_job(&self, body: &Value) -> Response {
        send(self.job_request(body)).await
    }

    /// Submits a job, asserting 202; returns the accepted job.
    pub async fn submit(&self, body: &Value) -> Value {
        let (status, job) = parts(self.submit_job(body).await).await;
        assert_eq!(status, 202, "{job}");
        job
    }

    /// POSTs a create job body to environment `env`'s jobs, as that environment; the status and
    /// body of the answer.
    pub async fn post_job_in(&self, env: Uuid, body: &Value) -> (u16, Value) {
        let request = self
            .request_in(env, Method::POST, &environment_path(env, "/oathJobs"))
            .header("content-type", JobType::CREATE_MEDIA_TYPE)
            .body(body.to_string());
        call(request).await
    }

    /// Submits a create job to environment `env`, asserting 202; returns the job's id.
    pub async fn submit_in(&self, env: Uuid, body: &Value) -> Uuid {
        let (status, job) = self.post_job_in(env, body).await;
        assert_eq!(status, 202, "{job}");
        Uuid::parse_str(job["id"].as_str().unwrap()).unwrap()
    }

    /// A GET of `rest` below environment `env`'s path, as that environment; status and body.
    pub async fn get_in(&self, env: Uuid, rest: &str) -> (u16, Value) {
        call(self.request_in(env, Method::GET, &environment_path(env, rest))).await
    }

    /// A job of this environment, asserting 200.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get_json(&format!("{}/{id}", self.jobs_path())).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A job runner on this app's database and settings, driven by the test.
    pub fn runner(&self, owner: &str) -> Runner {
        Runner::new(
            self.pool.clone(),
            Arc::new(self.settings.clone()),
            owner.to_string(),
        )
    }

    /// Steps a runner until it finds nothing to do; returns the steps taken.
    pub async fn drain(&self, runner: &mut Runner) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            match runner.step().await.expect("runner step") {
                Step::Idle => return steps,
                step => steps.push(step),
            }
        }
    }

    /// Runs the queued jobs with a runner of its own until none is left; returns the steps.
    pub async fn run_jobs(&self) -> Vec<Step> {
        self.drain(&mut self.runner("r1")).await
    }

    /// Submits a job, runs the queued jobs to their end and returns the job as it ended.
    pub async fn submit_and_run(&self, body: &Value) -> Value {
        let accepted = self.submit(body).await;
        self.run_jobs().await;
        self.job(accepted["id"].as_str().unwrap()).await
    }

    /// Ends the lease of every job, as if its runner had died.
    pub async fn expire_leases(&self) {
        sqlx::query("update oath_jobs set lease_expires_at = now() - interval '1 second'")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// POSTs a file (or any body of `media_type`) to `env`'s jobs, as that environment, with
    /// extra headers.
    pub async fn post_file(
        &self,
        env: Uuid,
        media_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .request_in(env, Method::POST, &environment_path(env, "/oathJobs"))
            .header("content-type", media_type)
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        call(req).await
    }

    /// The answer to `sql`, a query of one bigint.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    /// The answer to `sql`, a query of one bigint, with `$1` bound to `id` (an environment's, a
    /// job's).
    pub async fn count_in(&self, id: Uuid, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    /// Rewrites the create chunks stored as one value (of every job, or of the chunks at
    /// `first_idx` only) as column arrays, the form of a job queued before migration
    /// 20261208000002: what a job stored by the previous release looks like after the upgrade.
    /// Returns how many chunks it rewrote.
    pub async fn store_chunks_as_arrays(&self, first_idx: Option<i32>) -> usize {
        use oath_service::store::batch::TokenBatch;
        use oath_service::store::chunks::{self, ChunkKey};

        let mut tx = self.pool.begin().await.unwrap();
        let rows: Vec<(Uuid, Uuid, i32, Vec<u8>)> = sqlx::query_as(
            "select environment_id, job_id, first_idx, input from oath_job_chunks
             where input is not null and ($1::integer is null or first_idx = $1)",
        )
        .bind(first_idx)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        for (env, job_id, first_idx, input) in &rows {
            let key = ChunkKey {
                env: *env,
                job_id: *job_id,
                first_idx: *first_idx,
            };
            let batch = TokenBatch::decode(input).unwrap();
            chunks::consume(&mut tx, key).await.unwrap();
            chunks::insert_create_arrays(&mut tx, key, &batch)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        rows.len()
    }

    /// How many tokens environment `env` holds.
    pub async fn tokens_in(&self, env: Uuid) -> i64 {
        self.count_in(
            env,
            "select count(*) from oath_tokens where environment_id = $1",
        )
        .await
    }

    /// Asserts the answer of each query of one bigint with `$1` bound to `env`:
    /// `(query, expected)`.
    pub async fn assert_counts_in(&self, env: Uuid, expected: &[(&str, i64)]) {
        for (sql, want) in expected {
            assert_eq!(self.count_in(env, sql).await, *want, "{env}: {sql}");
        }
    }

    /// Asserts the answer of each query of one bigint: `(query, expected)`.
    pub async fn assert_counts(&self, expected: &[(&str, i64)]) {
        for (sql, want) in expected {
            assert_eq!(self.count(sql).await, *want, "{sql}");
        }
    }

    pub async fn get_path(&self, path: &str) -> Response {
        send(self.request(Method::GET, path)).await
    }
}

/// Sends a request; its answer, whatever the status.
pub async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("request sent")
}

/// Sends a request; status and JSON body of its answer.
pub async fn call(request: RequestBuilder) -> (u16, Value) {
    parts(send(request).await).await
}

/// Asserts that `res` is the contract's error body with `status` and `code`; returns the body.
pub async fn expect_error(res: Response, status: u16, code: &str) -> Value {
    let (got, body) = parts(res).await;
    assert_error(got, &body, status, code);
    body
}

/// Waits until `done` answers true, checking every 20 ms; fails after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled metric `name` in a `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// Status and JSON body of a response.
pub async fn parts(res: Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body, got {text:?}"))
    };
    (status, body)
}

/// Asserts the contract's error body: status, code, an id and a message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["code"], want_code, "body: {body}");
    assert!(
        body["id"]
            .as_str()
            .and_then(|s| Uuid::try_parse(s).ok())
            .is_some(),
        "id: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
}

/// Asserts the contract's error body, as `assert_error`, and that its message contains `text`.
pub fn assert_error_mentions(status: u16, body: &Value, want_status: u16, code: &str, text: &str) {
    assert_error(status, body, want_status, code);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(text), "{text:?} not in {body}");
}

/// `(code, target)` of every detail.
pub fn details(body: &Value) -> Vec<(String, String)> {
    body["details"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["code"].as_str().unwrap_or_default().to_string(),
                        d["target"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
