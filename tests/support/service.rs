//! The real `oath-service` binary, configured as an operator would: environment variables only,
//! over the shipped `config/` files.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use super::app::{test_settings, HS256_SECRET, KEY_A};

/// The URL of the database of `options` on the server of `DATABASE_URL`, e.g. the database a
/// `#[sqlx::test]` was given, for a service process.
pub fn database_url(options: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (base, query) = base.split_once('?').unwrap_or((&base, ""));
    let server = &base[..base.rfind('/').unwrap()];
    let db = options.get_database().expect("a database name");
    match query {
        "" => format!("{server}/{db}"),
        query => format!("{server}/{db}?{query}"),
    }
}

/// `url` with one more query parameter `param` (`name=value`).
pub fn with_query_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// The secret key of the test settings, as an operator sets it: `crypto.active_key_id` "a",
/// `crypto.keys.a`.
pub fn crypto_env() -> Vec<(&'static str, String)> {
    vec![
        ("OATH__CRYPTO__ACTIVE_KEY_ID", "a".into()),
        ("OATH__CRYPTO__KEYS__A", KEY_A.into()),
    ]
}

/// What a service process needs besides its database to accept the tests' HS256 tokens and
/// store secrets: the issuer and HS256 secret of the test settings, and `crypto_env`.
pub fn service_env() -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OATH__AUTH__ISSUER", test_settings().auth.issuer),
        ("OATH__AUTH__HS256_SECRET", HS256_SECRET.into()),
    ];
    env.extend(crypto_env());
    env
}

/// Asserts that a run of the binary stopped at start-up with exit code 1 and a single line on
/// stderr; returns that line. `case` names the run in failures.
pub fn assert_start_up_refused(out: &std::process::Output, case: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
    stderr
}

/// The binary with an empty environment but `PATH`, the shipped `config/` and `env`.
pub fn command(env: &[(&str, String)]) -> Command {
    // OATH_SERVICE_BIN: another build of the binary (a release build, or a copy that a build
    // of another checkout sharing the target directory cannot replace meanwhile).
    let binary = std::env::var_os("OATH_SERVICE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_oath-service")),
        PathBuf::from,
    );
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "OATH_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .stdin(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// Runs `cmd` to its end off the async runtime, which may have to keep serving meanwhile (e.g.
/// an in-process app that the command calls, on a pool bound to this runtime).
pub async fn output(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap()
}

/// A long-running service process on a free port, killed on drop; its output goes to `log`.
pub struct Service {
    child: Child,
    pub base: String,
    pub log: PathBuf,
}

impl Service {
    pub fn start(args: &[&str], env: &[(&str, String)], log: PathBuf) -> Self {
        let port = super::cluster::free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = command(env)
            .args(args)
            .env("OATH__SERVER__ADDR", format!("127.0.0.1:{port}"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the service binary starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (and, if so, with success).
    pub fn exited(&mut self) -> bool {
        match self.child.try_wait().unwrap() {
            None => false,
            Some(status) => {
                assert!(status.success(), "exited with {status}:\n{}", self.output());
                true
            }
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the service exited ({status}); its log:\n{}", self.output());
        }
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for("/health/ready", timeout).await;
    }

    /// Waits until `path` answers 200.
    pub async fn wait_for(&mut self, path: &str, timeout: Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Ok(res) = client.get(format!("{}{path}", self.base)).send().await {
                if res.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer 200; the service's log:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
