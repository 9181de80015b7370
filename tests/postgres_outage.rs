//! A real PostgreSQL outage under load: a private cluster (initdb under target/, a free port) and
//! the real service binary on it; while clients keep creating and reading tokens, PostgreSQL is
//! stopped with `pg_ctl stop -m immediate` (a crash), then started again. Requests must get a
//! 503 JSON error with `Retry-After` during the outage, the process must stay up (live 200, ready
//! 503), and requests must succeed again without restarting it; every token acknowledged with a
//! 201 must be readable afterwards.
//!
//! Ignored by default (it needs the PostgreSQL server binaries and takes about 30 s);
//! scripts/check runs it on its own. It skips, saying so, when no server binaries exist.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oath_service::auth::{self, Scope};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use helpers::{test_settings, HS256_SECRET, KEY_A};
use support::cluster::{server_binaries, Cluster};
use support::service::Service;

/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(6);
/// Clients running at once.
const CLIENTS: usize = 4;

/// The service binary on `database_url`, with a job runner polling through the outage too.
fn start_service(database_url: &str, log: std::path::PathBuf) -> Service {
    let env = [
        ("DATABASE_URL", database_url.to_string()),
        ("OATH__SERVER__WORKERS", "2".into()),
        ("OATH__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "2".into()),
        ("OATH__DATABASE__ACQUIRE_TIMEOUT_SECONDS", "1".into()),
        ("OATH__AUTH__ISSUER", test_settings().auth.issuer),
        ("OATH__AUTH__HS256_SECRET", HS256_SECRET.into()),
        ("OATH__CRYPTO__ACTIVE_KEY_ID", "a".into()),
        ("OATH__CRYPTO__KEYS__A", KEY_A.into()),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__JOBS__POLL_INTERVAL_MS", "200".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ];
    Service::start(&["serve"], &env, log)
}

/// Phases of the run, as the clients see them when a request starts and when it ends. Only
/// requests that start and end within one of BEFORE, DOWN or RECOVERED are held to that phase.
const BEFORE: u8 = 0;
const STOPPING: u8 = 1;
const DOWN: u8 = 2;
const RESTARTING: u8 = 3;
const RECOVERED: u8 = 4;

#[derive(Debug)]
struct Sample {
    op: &'static str,
    started: u8,
    ended: u8,
    /// None: no HTTP answer (connection error or client timeout).
    status: Option<u16>,
    retry_after: bool,
    code: Option<String>,
    created: Option<String>,
}

struct Load {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `CLIENTS` clients, each alternately creating a token and reading one.
    fn start(base: &str, env: Uuid, bearer: &str, existing: &str) -> Self {
        let phase = Arc::new(AtomicU8::new(BEFORE));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let tokens = format!("{base}/v1/environments/{env}/oathTokens");
        let tasks = (0..CLIENTS)
            .map(|c| {
                let (phase, stop, samples) = (phase.clone(), stop.clone(), samples.clone());
                let (client, tokens, bearer) = (client.clone(), tokens.clone(), bearer.to_string());
                let read = format!("{tokens}/{existing}");
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let started = phase.load(Ordering::SeqCst);
                        let (op, request) = if n % 2 == 1 {
                            let body = json!({"serialNumber": format!("L{c}x{n}"),
                                "secret": "3132333435363738393031323334353637383930",
                                "type": "HOTP", "otpLength": 6});
                            ("create", client.post(&tokens).json(&body))
                        } else {
                            ("read", client.get(&read))
                        };
                        let result = request.bearer_auth(&bearer).send().await;
                        let mut sample = Sample {
                            op,
                            started,
                            ended: BEFORE,
                            status: None,
                            retry_after: false,
                            code: None,
                            created: None,
                        };
                        if let Ok(res) = result {
                            sample.status = Some(res.status().as_u16());
                            sample.retry_after = res.headers().contains_key("retry-after");
                            let body: Option<Value> = res.json().await.ok();
                            sample.code = body
                                .as_ref()
                                .and_then(|b| b["code"].as_str())
                                .map(str::to_string);
                            if sample.status == Some(201) {
                                sample.created = body
                                    .as_ref()
                                    .and_then(|b| b["id"].as_str())
                                    .map(str::to_string);
                            }
                        }
                        sample.ended = phase.load(Ordering::SeqCst);
                        samples.lock().unwrap().push(sample);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            phase,
            stop,
            samples,
            tasks,
        }
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

/// Status, whether `Retry-After` was sent, and the JSON body; `bearer` may be empty.
async fn get(client: &reqwest::Client, url: &str, bearer: &str) -> (u16, bool, Value) {
    let mut request = client.get(url);
    if !bearer.is_empty() {
        request = request.bearer_auth(bearer);
    }
    let res = request.send().await.expect("an HTTP answer");
    let status = res.status().as_u16();
    let retry_after = res.headers().contains_key("retry-after");
    (status, retry_after, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL server binaries; scripts/check runs it"]
async fn postgres_stopped_under_load_is_503_then_recovers_without_restart() {
    let Some(bin) = server_binaries() else {
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql \
             or OATH_PG_BINDIR; install the postgresql package to run this test"
        );
        return;
    };
    let started = Instant::now();
    let cluster = Cluster::create(bin, "pg-outage");
    let mut admin = PgConnection::connect(&cluster.url("postgres"))
        .await
        .expect("the private cluster answers");
    sqlx::query("create database oath")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();

    let mut service = start_service(
        &cluster.url("oath"),
        cluster.log.with_file_name("service.log"),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = service.base.clone();
    service.wait_ready(Duration::from_secs(30)).await;

    let env = Uuid::new_v4();
    let scopes: Vec<String> = Scope::ALL.iter().map(|s| s.as_str().to_string()).collect();
    let bearer = auth::mint_dev_token(
        &test_settings().auth,
        env,
        &scopes,
        Duration::from_secs(600),
    )
    .unwrap();
    let tokens = format!("{base}/v1/environments/{env}/oathTokens");
    let res = client
        .post(&tokens)
        .bearer_auth(&bearer)
        .json(&helpers::seed_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let existing = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read_url = format!("{tokens}/{existing}");

    // Load, then the crash.
    let load = Load::start(&base, env, &bearer, &existing);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.set_phase(STOPPING);
    cluster.crash();
    load.set_phase(DOWN);
    let down_at = Instant::now();

    // While down: 503 JSON with Retry-After, promptly; the process lives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let asked = Instant::now();
        let (status, retry_after, body) = get(&client, &read_url, &bearer).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after, "Retry-After on a 503");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        assert!(asked.elapsed() < Duration::from_secs(3), "a prompt 503");
    }
    let (status, _, _) = get(&client, &format!("{base}/health/live"), "").await;
    assert_eq!(status, 200, "liveness does not depend on the database");
    let (status, retry_after, body) = get(&client, &format!("{base}/health/ready"), "").await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    let pid = service.pid();
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    service.assert_running();

    // Back: requests succeed again, in the same process.
    load.set_phase(RESTARTING);
    cluster.start();
    let back_at = Instant::now();
    loop {
        let (status, _, body) = get(&client, &read_url, &bearer).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            back_at.elapsed() < Duration::from_secs(20),
            "no recovery within 20 s of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = back_at.elapsed();
    // Connections broken by the crash are dropped as they are met; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.set_phase(RECOVERED);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = load.finish().await;
    service.assert_running();
    assert_eq!(service.pid(), pid, "the same process throughout");
    let (status, _, _) = get(&client, &format!("{base}/health/ready"), "").await;
    assert_eq!(status, 200);

    // What the clients saw.
    let mut created = Vec::new();
    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| f(s)).count();
    for s in &samples {
        let status = s.status.unwrap_or_else(|| panic!("no HTTP answer: {s:?}"));
        let ok = (200..300).contains(&status);
        let unavailable =
            status == 503 && s.retry_after && s.code.as_deref() == Some("SERVICE_UNAVAILABLE");
        match (s.started, s.ended) {
            (BEFORE, BEFORE) | (RECOVERED, RECOVERED) => assert!(ok, "{s:?}"),
            (DOWN, DOWN) => assert!(unavailable, "{s:?}"),
            _ => assert!(ok || unavailable, "{s:?}"),
        }
        created.extend(s.created.clone());
    }
    let during = count(&|s| s.started == DOWN && s.ended == DOWN);
    let before = count(&|s| s.started == BEFORE && s.ended == BEFORE);
    let after = count(&|s| s.started == RECOVERED && s.ended == RECOVERED);
    let creates = count(&|s| s.op == "create");
    assert!(
        before >= 10 && during >= 10 && after >= 10,
        "{before}/{during}/{after}"
    );
    assert!(creates > 0 && creates < samples.len());

    // Every acknowledged create survived the crash.
    for id in &created {
        let (status, _, body) = get(&client, &format!("{tokens}/{id}"), &bearer).await;
        assert_eq!(status, 200, "token {id} was acknowledged with 201: {body}");
    }
    eprintln!(
        "{} requests: {before} before, {during} during a {:?} outage (all 503), {after} after; \
         recovered {:.1?} after the database returned; {} tokens created, all readable; {:.1?} in all",
        samples.len(),
        OUTAGE,
        recovery,
        created.len(),
        started.elapsed()
    );
}
