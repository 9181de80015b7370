//! A real PostgreSQL outage under load: a private cluster (initdb under target/, a free port) and
//! the real service binary on it; while clients keep creating and reading tokens, PostgreSQL is
//! stopped with `pg_ctl stop -m immediate` (a crash), then started again. Requests must get a
//! 503 JSON error with `Retry-After` during the outage, the process must stay up (live 200, ready
//! 503), and requests must succeed again without restarting it; every token acknowledged with a
//! 201 must be readable afterwards. A create job runs through the crash (its intermediate chunks
//! commit with `synchronous_commit = off`, so the last of them may be lost): after recovery it
//! must finish with every item processed exactly once.
//!
//! Ignored by default (it needs the PostgreSQL server binaries and takes about 30 s);
//! scripts/check runs it on its own. Without server binaries it fails: it never skips.
//! No assertion is timed: each phase waits for what it needs, with a generous deadline.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oath_service::auth::{self, Scope};
use oath_service::domain::job::JobType;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use support::app::{create_job, hotp_token, seed_token, test_settings};
use support::cluster::{require_server_binaries, Cluster};
use support::service::{service_env, Service};

/// How long PostgreSQL stays down at least.
const OUTAGE: Duration = Duration::from_secs(6);
/// Clients running at once.
const CLIENTS: usize = 4;
/// Requests each phase needs (before, during and after the outage).
const SAMPLES_PER_PHASE: usize = 10;
/// Items of the job that runs through the crash, and its chunk size: many chunks, so that the
/// crash meets it mid-flight.
const JOB_ITEMS: usize = 20_000;
const JOB_CHUNK: usize = 100;
/// How long any one condition may take to come true on a slow machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// The service binary on `database_url`, with a runner that works through the outage: small
/// chunks, so that the job spans the crash.
fn start_service(database_url: &str, log: std::path::PathBuf) -> Service {
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url.to_string()),
        ("OATH__SERVER__WORKERS", "2".into()),
        ("OATH__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "2".into()),
        ("OATH__DATABASE__ACQUIRE_TIMEOUT_SECONDS", "1".into()),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__JOBS__CHUNK_SIZE", JOB_CHUNK.to_string()),
        ("OATH__JOBS__POLL_INTERVAL_MS", "200".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
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
        // A hang is an error; the bound is generous, so that a slow machine is not one.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
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
                            let body = hotp_token(&format!("L{c}x{n}"));
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

    /// Requests that started and ended in `phase`.
    fn count_in(&self, phase: u8) -> usize {
        let samples = self.samples.lock().unwrap();
        samples
            .iter()
            .filter(|s| s.started == phase && s.ended == phase)
            .count()
    }

    /// Waits until `SAMPLES_PER_PHASE` requests started and ended in `phase`.
    async fn wait_for_samples(&self, phase: u8, service: &mut Service) {
        let deadline = Instant::now() + PATIENCE;
        while self.count_in(phase) < SAMPLES_PER_PHASE {
            service.assert_running();
            assert!(
                Instant::now() < deadline,
                "only {} requests in phase {phase} after {PATIENCE:?}",
                self.count_in(phase)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// Sends `request`, asserts its status, and returns the id in the answer.
async fn created_id(request: reqwest::RequestBuilder, status: u16) -> String {
    let res = request.send().await.expect("an HTTP answer");
    assert_eq!(res.status(), status);
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A fresh connection's answer to `sql` (a single bigint).
async fn scalar(url: &str, sql: &str) -> i64 {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("the cluster answers");
    let n = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .expect(sql);
    conn.close().await.unwrap();
    n
}

/// A job's representation, read through the service.
async fn job(client: &reqwest::Client, url: &str, bearer: &str) -> Value {
    let (status, _, body) = get(client, url, bearer).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn bearer_for(env: Uuid) -> String {
    let scopes: Vec<String> = Scope::ALL.iter().map(|s| s.as_str().to_string()).collect();
    auth::mint_dev_token(
        &test_settings().auth,
        env,
        &scopes,
        Duration::from_secs(3600),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL server binaries; scripts/check runs it"]
async fn postgres_stopped_under_load_is_503_then_recovers_without_restart() {
    // Never a silent pass: without a server there is nothing to test, and that is a failure.
    let bin = require_server_binaries();
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
    let db_url = cluster.url("oath");

    let mut service = start_service(&db_url, cluster.log.with_file_name("service.log"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = service.base.clone();
    service.wait_ready(PATIENCE).await;

    let env = Uuid::new_v4();
    let bearer = bearer_for(env);
    let tokens = format!("{base}/v1/environments/{env}/oathTokens");
    let request = client
        .post(&tokens)
        .bearer_auth(&bearer)
        .json(&seed_token());
    let existing = created_id(request, 201).await;
    let read_url = format!("{tokens}/{existing}");

    // A create job in an environment of its own, so that its tokens can be counted alone.
    let job_env = Uuid::new_v4();
    let job_bearer = bearer_for(job_env);
    let items = create_job((0..JOB_ITEMS).map(|i| format!("J{i:06}")));
    let request = client
        .post(format!("{base}/v1/environments/{job_env}/oathJobs"))
        .bearer_auth(&job_bearer)
        .header("content-type", JobType::CREATE_MEDIA_TYPE)
        .body(items.to_string());
    let job_id = created_id(request, 202).await;
    let job_url = format!("{base}/v1/environments/{job_env}/oathJobs/{job_id}");

    // Load, and the job under way; then the crash.
    let load = Load::start(&base, env, &bearer, &existing);
    load.wait_for_samples(BEFORE, &mut service).await;
    let deadline = Instant::now() + PATIENCE;
    while job(&client, &job_url, &job_bearer).await["progress"]["processed"]
        .as_i64()
        .unwrap()
        < 2 * JOB_CHUNK as i64
    {
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.set_phase(STOPPING);
    let before_crash = job(&client, &job_url, &job_bearer).await;
    cluster.crash();
    load.set_phase(DOWN);
    let down_at = Instant::now();
    let processed_before_crash = before_crash["progress"]["processed"].as_i64().unwrap();
    assert!(
        processed_before_crash < JOB_ITEMS as i64 - 2 * JOB_CHUNK as i64,
        "the job was nearly done before the crash ({before_crash}): it must be mid-flight"
    );

    // While down: 503 JSON with Retry-After (a hang fails on the client's timeout); the
    // process lives.
    for _ in 0..3 {
        let (status, retry_after, body) = get(&client, &read_url, &bearer).await;
        assert_eq!(status, 503, "{body}");
        assert!(retry_after, "Retry-After on a 503");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
    }
    let (status, _, _) = get(&client, &format!("{base}/health/live"), "").await;
    assert_eq!(status, 200, "liveness does not depend on the database");
    let (status, retry_after, body) = get(&client, &format!("{base}/health/ready"), "").await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after);
    let pid = service.pid();
    load.wait_for_samples(DOWN, &mut service).await;
    tokio::time::sleep(OUTAGE.saturating_sub(down_at.elapsed())).await;
    service.assert_running();

    // Back: requests succeed again, in the same process.
    let outage = down_at.elapsed();
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
            back_at.elapsed() < PATIENCE,
            "no recovery within {PATIENCE:?} of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = back_at.elapsed();
    // Connections broken by the crash are dropped as they are met: the recovered phase starts
    // once a run of requests in a row has succeeded.
    let mut in_a_row = 0;
    let deadline = Instant::now() + PATIENCE;
    while in_a_row < 20 {
        let (status, _, _) = get(&client, &read_url, &bearer).await;
        in_a_row = if status == 200 { in_a_row + 1 } else { 0 };
        assert!(Instant::now() < deadline, "requests keep failing");
    }
    load.set_phase(RECOVERED);
    load.wait_for_samples(RECOVERED, &mut service).await;
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
    assert!(creates > 0 && creates < samples.len());

    // Every acknowledged create survived the crash.
    for id in &created {
        let (status, _, body) = get(&client, &format!("{tokens}/{id}"), &bearer).await;
        assert_eq!(status, 200, "token {id} was acknowledged with 201: {body}");
    }

    // The job resumes from its last committed chunk and ends with every item exactly once.
    let deadline = Instant::now() + PATIENCE;
    let done = loop {
        service.assert_running();
        let body = job(&client, &job_url, &job_bearer).await;
        if body["status"] != "IN_PROGRESS" && body["status"] != "PENDING" {
            break body;
        }
        assert!(Instant::now() < deadline, "the job did not end: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], json!({"created": JOB_ITEMS}), "{done}");
    assert_eq!(done["progress"]["processed"], JOB_ITEMS);
    let per_job = |what: &str| {
        format!("select {what} from job_results where environment_id = '{job_env}' and job_id = '{job_id}'")
    };
    assert_eq!(
        scalar(&db_url, &per_job("count(*)")).await,
        JOB_ITEMS as i64
    );
    assert_eq!(
        scalar(
            &db_url,
            &per_job("count(*) filter (where outcome = 'CREATED')")
        )
        .await,
        JOB_ITEMS as i64,
        "no item met its own earlier insert (a duplicate) or was lost"
    );
    assert_eq!(
        scalar(&db_url, &per_job("count(distinct token_id)")).await,
        JOB_ITEMS as i64
    );
    assert_eq!(
        scalar(
            &db_url,
            &format!(
                "select count(*) from oath_tokens where environment_id = '{job_env}' \
                 and serial_number like 'J%'"
            )
        )
        .await,
        JOB_ITEMS as i64
    );

    eprintln!(
        "{} requests: {before} before, {during} during a {:?} outage (all 503), {after} after; \
         recovered {:.1?} after the database returned; {} tokens created, all readable; \
         a {JOB_ITEMS}-item job crashed at {processed_before_crash} and finished with each \
         item once; {:.1?} in all",
        samples.len(),
        outage,
        recovery,
        created.len(),
        started.elapsed()
    );
}
