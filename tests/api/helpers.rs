//! Spawning the app against a test database, and calling it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oath_service::auth::{self, Scope};
use oath_service::config::Settings;
use oath_service::domain::job::JobType;
use oath_service::jobs::runner::{Runner, Step};
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

pub fn seed_token() -> Value {
    json!({
        "serialNumber": "2333734700388",
        "secret": SEED_SECRET,
        "type": "HOTP",
        "hotp": {"counter": 456789},
        "otpLength": 8
    })
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
        format!("/v1/environments/{}/oathTokens", self.env)
    }

    /// A request with a bearer token carrying every scope.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(self.all_scopes())
    }

    pub async fn create_token(&self, body: &Value) -> Response {
        self.request(Method::POST, &self.tokens_path())
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub fn jobs_path(&self) -> String {
        format!("/v1/environments/{}/oathJobs", self.env)
    }

    /// POSTs a job body with the media type of its `type`.
    pub async fn submit_job(&self, body: &Value) -> Response {
        let media_type = match body["type"].as_str() {
            Some("REVOKE_OATH_TOKENS") => JobType::REVOKE_MEDIA_TYPE,
            _ => JobType::CREATE_MEDIA_TYPE,
        };
        self.request(Method::POST, &self.jobs_path())
            .header("content-type", media_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
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
            .client
            .post(self.url(&format!("/v1/environments/{env}/oathJobs")))
            .bearer_auth(self.token_for(env, &Scope::ALL))
            .header("content-type", media_type)
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        parts(req.send().await.expect("request sent")).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    pub async fn get_path(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("request sent")
    }
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

/// Asserts the contract's error body and returns it.
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
