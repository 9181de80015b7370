//! A PostgreSQL primary failover under load, with the real engine: a pg_auto_failover formation
//! (a monitor, a primary and its synchronous standby, `tests/support/formation.rs`) and the
//! real service binary on a `database.url` naming both data nodes. While clients create tokens
//! one by one and validate HOTP codes, and a 30,000-token create job runs, the primary node is
//! killed, its postmaster with the `pg_autoctl` that keeps it (`kill -9` of them all: a lost
//! machine; the postmaster alone would be restarted by its keeper); pg_auto_failover promotes
//! the standby. Then:
//!
//! - every request got an answer: a success, or `503 SERVICE_UNAVAILABLE` with `Retry-After`,
//!   never a 500 nor a wait past `database.acquire_timeout_seconds` and a margin;
//! - the same process recovers by itself on the new primary (the warning names it, and
//!   `oath_database_primary_switches_total` counted it);
//! - every token acknowledged with 201 is there, every code that answered VALID is refused
//!   when sent again, and the job ends DONE with each of its items created exactly once (its
//!   intermediate chunks commit with `synchronous_commit = off`).
//!
//! It prints the failover window (from the first failed write to the first successful write
//! after the last failure) and the 503s; with `OATH_FAILOVER_REPORT=<file>` it also writes them
//! there as JSON (`bench/failover` reads it). Ignored by default (it needs `pg_autoctl` and the
//! server binaries, and takes about a minute); scripts/check runs it on its own. Without them it
//! fails: it never skips.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oath_service::auth::{self, Scope};
use oath_service::domain::job::JobType;
use oath_service::domain::HashAlgorithm;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use support::app::{create_job, hotp_token, rfc_code, test_settings};
use support::formation::{require_pg_auto_failover, Formation};
use support::service::{service_env, Service};

/// Items of the job that runs through the failover, and its chunk size: many chunks, so that
/// the failover meets it mid-flight.
const JOB_ITEMS: usize = 30_000;
const JOB_CHUNK: usize = 500;
/// Clients creating tokens one by one, and clients validating codes of their own tokens.
const CREATORS: usize = 2;
const VALIDATORS: usize = 2;
const TOKENS_PER_VALIDATOR: usize = 3;
/// `database.acquire_timeout_seconds` of the service.
const ACQUIRE_TIMEOUT_SECONDS: u64 = 2;
/// What a request may take beyond the acquire timeout: its own work, on a busy 2-core machine.
const LATENCY_MARGIN: Duration = Duration::from_millis(1500);
/// Successful writes in a row that make the service recovered.
const RECOVERED_RUN: usize = 10;
/// How long any one condition may take to come true on a slow machine.
const PATIENCE: Duration = Duration::from_secs(180);

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

#[derive(Debug, Clone)]
struct Sample {
    op: &'static str,
    /// Since the start of the load.
    started: Duration,
    ended: Duration,
    /// None: no HTTP answer (connection error or client timeout).
    status: Option<u16>,
    retry_after: bool,
    code: Option<String>,
    /// A 201's token id.
    created: Option<String>,
    /// A validation's answer (`VALID`, ...), the token and the counter of the code sent.
    validation: Option<(String, String, u64)>,
}

impl Sample {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    fn unavailable(&self) -> bool {
        self.status == Some(503)
            && self.retry_after
            && self.code.as_deref() == Some("SERVICE_UNAVAILABLE")
    }
}

struct Load {
    t0: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `CREATORS` clients creating tokens and `VALIDATORS` clients validating the codes of
    /// `tokens` (their share each), one request after another.
    fn start(base: &str, env: Uuid, bearer: &str, tokens: &[String]) -> Self {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        // A hang is an error; the bound is generous, so that a slow machine is not one.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let path = format!("{base}/v1/environments/{env}/oathTokens");
        let mut tasks = Vec::new();
        for c in 0..CREATORS {
            let (stop, samples, client, path) =
                (stop.clone(), samples.clone(), client.clone(), path.clone());
            let bearer = bearer.to_string();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body = hotp_token(&format!("F{c}x{n}"));
                    let request = client.post(&path).bearer_auth(&bearer).json(&body);
                    let (sample, _) = send(t0, "create", request).await;
                    samples.lock().unwrap().push(sample);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        for v in 0..VALIDATORS {
            let (stop, samples, client, path) =
                (stop.clone(), samples.clone(), client.clone(), path.clone());
            let bearer = bearer.to_string();
            let mine: Vec<String> =
                tokens[v * TOKENS_PER_VALIDATOR..(v + 1) * TOKENS_PER_VALIDATOR].to_vec();
            tasks.push(tokio::spawn(async move {
                let mut counters = vec![0u64; mine.len()];
                // Whether the last try of a token's current code had no definite answer (503):
                // it may have been used up, and then its retry is rightly INVALID.
                let mut uncertain = vec![false; mine.len()];
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i = (i + 1) % mine.len();
                    let code = rfc_code(HashAlgorithm::Sha1, 6, counters[i]);
                    let url = format!("{path}/{}/validate", mine[i]);
                    let request = client
                        .post(&url)
                        .bearer_auth(&bearer)
                        .json(&json!({"otp": code}));
                    let (mut sample, body) = send(t0, "validate", request).await;
                    if sample.status == Some(200) {
                        let answer = body["status"].as_str().unwrap_or("?").to_string();
                        let expected = answer == "VALID" || (answer == "INVALID" && uncertain[i]);
                        assert!(
                            expected,
                            "token {} counter {}: {answer} (uncertain: {})",
                            mine[i], counters[i], uncertain[i]
                        );
                        sample.validation = Some((answer, mine[i].clone(), counters[i]));
                        counters[i] += 1;
                        uncertain[i] = false;
                    } else {
                        uncertain[i] = true;
                    }
                    samples.lock().unwrap().push(sample);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Self {
            t0,
            stop,
            samples,
            tasks,
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// Waits until every client has had `RECOVERED_RUN` successes in a row that started after
    /// `since`.
    async fn wait_for_recovery(&self, since: Duration, service: &mut Service) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            service.assert_running();
            let samples = self.snapshot();
            let recovered = ["create", "validate"].iter().all(|op| {
                let mut run = 0;
                for s in samples.iter().filter(|s| s.op == *op && s.started > since) {
                    run = if s.ok() { run + 1 } else { 0 };
                }
                run >= RECOVERED_RUN
            });
            if recovered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no recovery within {PATIENCE:?}; the service's log:\n{}",
                service.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
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

/// Sends `request`; its sample (timed from `t0`) and JSON body.
async fn send(t0: Instant, op: &'static str, request: reqwest::RequestBuilder) -> (Sample, Value) {
    let started = t0.elapsed();
    let mut sample = Sample {
        op,
        started,
        ended: started,
        status: None,
        retry_after: false,
        code: None,
        created: None,
        validation: None,
    };
    let mut body = Value::Null;
    if let Ok(res) = request.send().await {
        sample.status = Some(res.status().as_u16());
        sample.retry_after = res.headers().contains_key("retry-after");
        body = res.json().await.unwrap_or(Value::Null);
        sample.code = body["code"].as_str().map(str::to_string);
        if sample.status == Some(201) {
            sample.created = body["id"].as_str().map(str::to_string);
        }
    }
    sample.ended = t0.elapsed();
    (sample, body)
}

/// Status and JSON body of a GET.
async fn get(client: &reqwest::Client, url: &str, bearer: &str) -> (u16, Value) {
    let res = client
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("an HTTP answer");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A fresh connection's answer to `sql` (a single bigint).
async fn scalar(url: &str, sql: &str) -> i64 {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("the primary answers");
    let n = sqlx::query_scalar(sql)
        .fetch_one(&mut conn)
        .await
        .expect(sql);
    conn.close().await.unwrap();
    n
}

/// The value of an unlabelled counter in a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pg_auto_failover (pg_autoctl) and PostgreSQL server binaries; scripts/check runs it"]
async fn a_primary_failover_under_load_is_a_pause_with_nothing_lost() {
    // Never a silent pass: without the engine there is nothing to test, and that is a failure.
    let (autoctl, bin) = require_pg_auto_failover();
    let started = Instant::now();
    let mut formation = Formation::create(autoctl, bin, "pg-failover").await;
    let formed = started.elapsed();
    let first = &formation.nodes[0];
    let mut admin = PgConnection::connect(&first.url("postgres")).await.unwrap();
    sqlx::query("create database oath")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();

    // Both hosts, libpq's form; target_session_attrs is read-write by default with several.
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", formation.url("oath", "")),
        ("OATH__SERVER__WORKERS", "2".into()),
        ("OATH__SERVER__SHUTDOWN_TIMEOUT_SECONDS", "2".into()),
        (
            "OATH__DATABASE__ACQUIRE_TIMEOUT_SECONDS",
            ACQUIRE_TIMEOUT_SECONDS.to_string(),
        ),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__JOBS__CHUNK_SIZE", JOB_CHUNK.to_string()),
        ("OATH__JOBS__POLL_INTERVAL_MS", "200".into()),
        ("OATH__LIMITS__OTP_PER_TOKEN_PER_MINUTE", "0".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    let log = formation.nodes[0].data.with_file_name("service.log");
    let mut service = Service::start(&["serve"], &env, log);
    service.wait_ready(PATIENCE).await;
    let base = service.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The validators' tokens.
    let env_id = Uuid::new_v4();
    let bearer = bearer_for(env_id);
    let tokens_url = format!("{base}/v1/environments/{env_id}/oathTokens");
    let mut validated = Vec::new();
    for i in 0..VALIDATORS * TOKENS_PER_VALIDATOR {
        let res = client
            .post(&tokens_url)
            .bearer_auth(&bearer)
            .json(&hotp_token(&format!("V{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        validated.push(body["id"].as_str().unwrap().to_string());
    }

    // The job, in an environment of its own so that its tokens can be counted alone.
    let job_env = Uuid::new_v4();
    let job_bearer = bearer_for(job_env);
    let items = create_job((0..JOB_ITEMS).map(|i| format!("J{i:06}")));
    let res = client
        .post(format!("{base}/v1/environments/{job_env}/oathJobs"))
        .bearer_auth(&job_bearer)
        .header("content-type", JobType::CREATE_MEDIA_TYPE)
        .body(items.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job_url = format!("{base}/v1/environments/{job_env}/oathJobs/{job_id}");

    // Load, and the job under way, on a primary with a synchronous standby; then the kill.
    let load = Load::start(&base, env_id, &bearer, &validated);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = get(&client, &job_url, &job_bearer).await;
        assert_eq!(status, 200, "{body}");
        if body["progress"]["processed"].as_i64().unwrap() >= 2 * JOB_CHUNK as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not start: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let primary = formation.primary().await.expect("one primary");
    assert_eq!(primary.name, "node1");
    assert!(
        support::formation::synchronous_standbys(&primary.url("postgres")).await > 0,
        "the primary commits with a synchronous standby"
    );
    let (_, before) = get(&client, &job_url, &job_bearer).await;
    let processed_before = before["progress"]["processed"].as_i64().unwrap();
    assert!(
        processed_before < (JOB_ITEMS - 4 * JOB_CHUNK) as i64,
        "the job was nearly done before the failover ({before}): it must be mid-flight"
    );
    let pid = service.pid();
    let killed_at = load.now();
    formation.kill_node(0);

    // pg_auto_failover promotes the standby; the service follows by itself.
    let standby = &formation.nodes[1];
    let standby_url = standby.url("postgres");
    formation
        .wait_until("promotion of node2", || {
            let url = standby_url.clone();
            async move { support::formation::writable(&url).await == Some(true) }
        })
        .await;
    let promoted_at = load.now();
    load.wait_for_recovery(killed_at, &mut service).await;
    let samples = load.finish().await;
    service.assert_running();
    assert_eq!(service.pid(), pid, "the same process throughout");

    // What the clients saw: successes or 503s, each within the acquire timeout and a margin.
    let bound = Duration::from_secs(ACQUIRE_TIMEOUT_SECONDS) + LATENCY_MARGIN;
    for s in &samples {
        assert!(s.ok() || s.unavailable(), "{s:?}");
        assert!(
            s.ended - s.started <= bound,
            "a request waited too long: {s:?}"
        );
    }
    let slowest = samples.iter().map(|s| s.ended - s.started).max().unwrap();
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok()).collect();
    let unavailable = failed.len();
    assert!(unavailable > 0, "the failover was noticed");
    assert!(
        failed.iter().all(|s| s.started + bound >= killed_at),
        "no failure before the kill"
    );
    // The window: from the first failed write to the first successful one after the last
    // failure.
    let first_failure = failed.iter().map(|s| s.started).min().unwrap();
    let last_failure = failed.iter().map(|s| s.started).max().unwrap();
    let first_success = samples
        .iter()
        .filter(|s| s.ok() && s.started > last_failure)
        .map(|s| s.ended)
        .min()
        .unwrap();
    let window = first_success - first_failure;

    // The same process on the new primary: the warning names it, and the metric counted it.
    let new_primary = format!("127.0.0.1:{}", standby.port);
    let output = service.output();
    assert!(
        output
            .lines()
            .any(|l| l.contains("database primary switched") && l.contains(&new_primary)),
        "a warning names the new primary {new_primary}:\n{output}"
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let switches = metric(&metrics, "oath_database_primary_switches_total").unwrap_or(0.0);
    assert!(
        switches >= 1.0,
        "oath_database_primary_switches_total {switches}"
    );
    let (status, _) = get(&client, &format!("{base}/health/ready"), "").await;
    assert_eq!(status, 200);

    // Nothing acknowledged was lost: every 201's token is there...
    let created: Vec<&String> = samples.iter().filter_map(|s| s.created.as_ref()).collect();
    for id in &created {
        let (status, body) = get(&client, &format!("{tokens_url}/{id}"), &bearer).await;
        assert_eq!(status, 200, "token {id} was acknowledged with 201: {body}");
    }
    // ...and no code that answered VALID is VALID again.
    let valid: Vec<&(String, String, u64)> = samples
        .iter()
        .filter_map(|s| s.validation.as_ref())
        .filter(|(answer, _, _)| answer == "VALID")
        .collect();
    for (_, token, counter) in &valid {
        let code = rfc_code(HashAlgorithm::Sha1, 6, *counter);
        let res = client
            .post(format!("{tokens_url}/{token}/validate"))
            .bearer_auth(&bearer)
            .json(&json!({"otp": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_ne!(
            body["status"], "VALID",
            "token {token}: the code of counter {counter} was accepted twice"
        );
    }

    // The job ends DONE with each of its items created exactly once.
    let deadline = Instant::now() + PATIENCE;
    let done = loop {
        service.assert_running();
        let (status, body) = get(&client, &job_url, &job_bearer).await;
        assert!(status == 200 || status == 503, "{status} {body}");
        if status == 200 && body["status"] != "IN_PROGRESS" && body["status"] != "PENDING" {
            break body;
        }
        assert!(Instant::now() < deadline, "the job did not end: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], json!({"created": JOB_ITEMS}), "{done}");
    assert_eq!(done["progress"]["processed"], JOB_ITEMS);
    let db = standby.url("oath");
    let per_job = |what: &str| {
        format!("select {what} from job_results where environment_id = '{job_env}' and job_id = '{job_id}'")
    };
    assert_eq!(scalar(&db, &per_job("count(*)")).await, JOB_ITEMS as i64);
    assert_eq!(
        scalar(&db, &per_job("count(*) filter (where outcome = 'CREATED')")).await,
        JOB_ITEMS as i64,
        "no item met its own earlier insert (a duplicate) or was lost"
    );
    assert_eq!(
        scalar(&db, &per_job("count(distinct token_id)")).await,
        JOB_ITEMS as i64
    );
    assert_eq!(
        scalar(
            &db,
            &format!("select count(*) from oath_tokens where environment_id = '{job_env}'")
        )
        .await,
        JOB_ITEMS as i64
    );

    let (creates, validations) = (
        samples.iter().filter(|s| s.op == "create").count(),
        samples.iter().filter(|s| s.op == "validate").count(),
    );
    let secs = |d: Duration| d.as_secs_f64();
    eprintln!(
        "failover window {:.1} s (first failed write to the first successful write after the \
         last failure); {unavailable} requests answered 503 of {} ({creates} creates, \
         {validations} validations); the standby was promoted {:.1} s after the kill; slowest \
         request {:.1} s; {} tokens created and {} codes VALID before, during and after, none \
         lost or accepted twice; a {JOB_ITEMS}-item job at {processed_before} at the kill ended \
         DONE with each item once; {switches} primary switch(es); formation up in {:.1} s, \
         {:.1} s in all",
        secs(window),
        samples.len(),
        secs(promoted_at - killed_at),
        secs(slowest),
        created.len(),
        valid.len(),
        secs(formed),
        secs(started.elapsed()),
    );
    if let Some(path) = std::env::var_os("OATH_FAILOVER_REPORT") {
        let report = json!({
            "window_seconds": secs(window),
            "unavailable": unavailable,
            "requests": samples.len(),
            "promoted_after_kill_seconds": secs(promoted_at - killed_at),
            "slowest_request_seconds": secs(slowest),
            "switches": switches,
            "job_items": JOB_ITEMS,
        });
        std::fs::write(path, report.to_string()).unwrap();
    }
}
