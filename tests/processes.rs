//! The real binary as job runner: killed with SIGKILL in the middle of a job and started again,
//! and several processes sharing one database. Jobs are submitted over HTTP to an in-process app
//! on the same database; the spawned processes only run jobs.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use helpers::{parts, spawn_app_with, TestApp, HS256_SECRET, KEY_A};

/// A service process on the test database, with a short lease so that work left by a killed
/// process is taken over quickly.
struct Service(Child);

impl Service {
    fn start(database_url: &str, limit: i64) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_oath-service"))
            .args(["serve", "--no-migrate"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "OATH_CONFIG_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
            )
            .env("DATABASE_URL", database_url)
            .env("OATH__SERVER__ADDR", "127.0.0.1:0")
            .env("OATH__SERVER__WORKERS", "1")
            .env("OATH__AUTH__HS256_SECRET", HS256_SECRET)
            .env("OATH__CRYPTO__ACTIVE_KEY_ID", "a")
            .env("OATH__CRYPTO__KEYS__A", KEY_A)
            .env("OATH__JOBS__RUNNERS", "2")
            .env("OATH__JOBS__CHUNK_SIZE", "250")
            .env("OATH__JOBS__LEASE_SECONDS", "2")
            .env("OATH__JOBS__POLL_INTERVAL_MS", "100")
            .env("OATH__LIMITS__TOKENS_PER_ENVIRONMENT", limit.to_string())
            .env("OATH__LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("service binary starts");
        Self(child)
    }

    /// SIGTERM: the server drains, the runners finish their chunk and hand their jobs back.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.0.wait().expect("reaped")
    }

    /// SIGKILL: no chance to release leases or finish a chunk.
    fn kill(mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reaped");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test database's URL: the server of DATABASE_URL, the database the test was given.
fn database_url(connect: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let base = base.split('?').next().unwrap();
    let server = &base[..base.rfind('/').unwrap()];
    format!(
        "{server}/{}",
        connect.get_database().expect("test database name")
    )
}

async fn app_on(connect: &PgConnectOptions, limit: i64) -> TestApp {
    app_with_chunks(connect, limit, 1000).await
}

/// The submitting app; `chunk_size` is fixed per job when it is submitted.
async fn app_with_chunks(connect: &PgConnectOptions, limit: i64, chunk_size: usize) -> TestApp {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(connect.clone())
        .await
        .unwrap();
    spawn_app_with(pool, |s| {
        s.limits.tokens_per_environment = limit;
        s.jobs.chunk_size = chunk_size;
    })
    .await
}

fn create_job(prefix: &str, range: std::ops::Range<usize>) -> Value {
    let tokens: Vec<Value> = range
        .map(|i| {
            json!({"serialNumber": format!("{prefix}{i}"), "secret": "3132333435363738393031323334353637383930",
                   "type": "HOTP", "otpLength": 6})
        })
        .collect();
    json!({"type": "CREATE_OATH_TOKENS", "tokens": tokens})
}

async fn submit_to(app: &TestApp, env: Uuid, body: &Value) -> Uuid {
    let token = app.token_for(env, &oath_service::auth::Scope::ALL);
    let res = app
        .client
        .post(app.url(&format!("/v1/environments/{env}/oathJobs")))
        .bearer_auth(token)
        .header(
            "content-type",
            oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let (status, job) = parts(res).await;
    assert_eq!(status, 202, "{job}");
    Uuid::parse_str(job["id"].as_str().unwrap()).unwrap()
}

async fn processed(pool: &PgPool, job: Uuid) -> i32 {
    sqlx::query_scalar("select processed from oath_jobs where id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions open on the server under `application_name`.
async fn sessions(pool: &PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_stat_activity where application_name = $1")
        .bind(application_name)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn all_done(pool: &PgPool) -> bool {
    let open: i64 =
        sqlx::query_scalar("select count(*) from oath_jobs where status not in ('DONE', 'FAILED')")
            .fetch_one(pool)
            .await
            .unwrap();
    open == 0
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

#[sqlx::test]
async fn kill_9_mid_job_then_restart_creates_every_token_once(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const TOTAL: usize = 20_000;
    let url = database_url(&connect);
    let app = app_on(&connect, 1_000_000).await;
    let job = submit_to(&app, app.env, &create_job("K", 0..TOTAL)).await;

    // Kill the runner process at several points of the job, each time mid-flight.
    for (n, fraction) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        // Its connections carry a name, so that the test can see them end.
        let name = format!("killed-{n}");
        let service = Service::start(&format!("{url}?application_name={name}"), 1_000_000);
        let target = (TOTAL as f64 * fraction) as i32;
        wait_until("progress", Duration::from_secs(120), async || {
            processed(&app.pool, job).await >= target
        })
        .await;
        service.kill();
        // A COMMIT already sent when the process died still lands: wait until the server has
        // ended every session of the dead process. Then nothing can move while no runner lives.
        wait_until(
            "the killed process's sessions to end",
            Duration::from_secs(120),
            async || sessions(&app.pool, &name).await == 0,
        )
        .await;
        let at_kill = processed(&app.pool, job).await;
        assert!(at_kill < TOTAL as i32, "the job finished before the kill");
    }
    let _service = Service::start(&url, 1_000_000);
    wait_until("the job to end", Duration::from_secs(180), async || {
        all_done(&app.pool).await
    })
    .await;

    let pool = &app.pool;
    assert_eq!(
        scalar(pool, "select count(*) from oath_jobs where status = 'DONE'").await,
        1
    );
    assert_eq!(
        scalar(
            pool,
            "select (created + duplicates + failed)::bigint from oath_jobs"
        )
        .await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(pool, "select created::bigint from oath_jobs").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(pool, "select count(*) from oath_tokens").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(pool, "select token_count from environment_usage").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(
            pool,
            "select count(distinct idx) from job_results where outcome = 'CREATED'"
        )
        .await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(pool, "select count(*) from job_results").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(pool, "select count(*) from oath_job_chunks").await,
        0
    );
    // Every result points at the token it created.
    assert_eq!(
        scalar(pool, "select count(*) from job_results r join oath_tokens t on t.id = r.token_id and t.serial_number = r.serial_number").await,
        TOTAL as i64
    );
    assert!(scalar(pool, "select attempt::bigint from oath_jobs").await >= 4);
    app.pool.close().await;
}

#[sqlx::test]
async fn three_processes_share_ten_jobs_and_the_quota(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const LIMIT: i64 = 5_000;
    let url = database_url(&connect);
    let app = app_on(&connect, LIMIT).await;
    let (plain, racing, overlapping) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut jobs = Vec::new();
    // Six jobs of distinct serials within the quota.
    for n in 0..6 {
        jobs.push(submit_to(&app, plain, &create_job(&format!("P{n}x"), 0..800)).await);
    }
    // Two jobs racing past the quota: 6,000 new serials for 5,000 places.
    for n in 0..2 {
        jobs.push(submit_to(&app, racing, &create_job(&format!("R{n}x"), 0..3000)).await);
    }
    // Two jobs overlapping by half: 4,500 distinct serials, 1,500 duplicates.
    jobs.push(submit_to(&app, overlapping, &create_job("O", 0..3000)).await);
    jobs.push(submit_to(&app, overlapping, &create_job("O", 1500..4500)).await);

    let services: Vec<Service> = (0..3).map(|_| Service::start(&url, LIMIT)).collect();
    wait_until("every job to end", Duration::from_secs(240), async || {
        all_done(&app.pool).await
    })
    .await;
    drop(services);

    let pool = &app.pool;
    assert_eq!(
        scalar(pool, "select count(*) from oath_jobs where status = 'DONE'").await,
        10
    );
    assert_eq!(
        scalar(
            pool,
            "select count(*) from oath_jobs where processed <> total"
        )
        .await,
        0
    );
    let results_match: i64 = scalar(
        pool,
        "select count(*) from oath_jobs j where total = (select count(*) from job_results r where r.job_id = j.id)",
    )
    .await;
    assert_eq!(results_match, 10, "every item has exactly one result row");
    let count = |env: Uuid| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from oath_tokens where environment_id = $1")
            .bind(env)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let sum = |env: Uuid, column: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!(
            "select sum({column})::bigint from oath_jobs where environment_id = $1"
        ))
        .bind(env)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(count(plain).await, 4800);
    assert_eq!(sum(plain, "created").await, 4800);
    assert_eq!(count(racing).await, LIMIT);
    assert_eq!(sum(racing, "created").await, LIMIT);
    assert_eq!(sum(racing, "failed").await, 6000 - LIMIT);
    assert_eq!(count(overlapping).await, 4500);
    assert_eq!(sum(overlapping, "created").await, 4500);
    assert_eq!(sum(overlapping, "duplicates").await, 1500);
    for env in [plain, racing, overlapping] {
        let usage: i64 = sqlx::query_scalar(
            "select token_count from environment_usage where environment_id = $1",
        )
        .bind(env)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(usage, count(env).await);
    }
    assert_eq!(
        scalar(pool, "select count(*) from oath_job_chunks").await,
        0
    );
    app.pool.close().await;
}

#[sqlx::test]
async fn sigterm_hands_the_job_back_for_another_process(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    const TOTAL: usize = 20_000;
    let url = database_url(&connect);
    let app = app_on(&connect, 1_000_000).await;
    let job = submit_to(&app, app.env, &create_job("T", 0..TOTAL)).await;
    let service = Service::start(&url, 1_000_000);
    wait_until("progress", Duration::from_secs(120), async || {
        processed(&app.pool, job).await > 0
    })
    .await;
    let started = Instant::now();
    let status = service.terminate();
    assert!(status.success(), "graceful exit, got {status}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let (done, owner): (i32, Option<String>) =
        sqlx::query_as("select processed, lease_owner from oath_jobs where id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    if done < TOTAL as i32 {
        assert_eq!(owner, None, "the lease was released");
        // Released, not expired: the next process resumes at once.
        let expired: bool =
            sqlx::query_scalar("select lease_expires_at <= now() from oath_jobs where id = $1")
                .bind(job)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert!(expired);
    }
    let _next = Service::start(&url, 1_000_000);
    wait_until("the job to end", Duration::from_secs(120), async || {
        all_done(&app.pool).await
    })
    .await;
    assert_eq!(
        scalar(&app.pool, "select count(*) from oath_tokens").await,
        TOTAL as i64
    );
    assert_eq!(
        scalar(&app.pool, "select count(*) from job_results").await,
        TOTAL as i64
    );
    app.pool.close().await;
}

#[sqlx::test]
async fn two_processes_serve_five_environments_in_turn_and_create_every_item_once(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let url = database_url(&connect);
    // Jobs of ten chunks each.
    let app = app_with_chunks(&connect, 1_000_000, 100).await;
    let envs: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    // Two jobs per environment, overlapping by a quarter: each environment holds 1,750 distinct
    // serials and 250 duplicates; the processes yield between chunks, so jobs interleave.
    let mut jobs = Vec::new();
    for (lo, hi) in [(0, 1000), (750, 1750)] {
        for (n, env) in envs.iter().enumerate() {
            jobs.push(submit_to(&app, *env, &create_job(&format!("E{n}x"), lo..hi)).await);
        }
    }
    let services: Vec<Service> = (0..2).map(|_| Service::start(&url, 1_000_000)).collect();
    wait_until("every job to end", Duration::from_secs(240), async || {
        all_done(&app.pool).await
    })
    .await;
    drop(services);

    let pool = &app.pool;
    assert_eq!(
        scalar(pool, "select count(*) from oath_jobs where status = 'DONE'").await,
        10
    );
    let results_match: i64 = scalar(
        pool,
        "select count(*) from oath_jobs j where total = (select count(*) from job_results r where r.environment_id = j.environment_id and r.job_id = j.id)",
    )
    .await;
    assert_eq!(results_match, 10, "every item has exactly one result row");
    for env in &envs {
        let per_env = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(env)
                .fetch_one(pool)
                .await
                .expect(sql)
        };
        assert_eq!(
            per_env("select count(*) from oath_tokens where environment_id = $1").await,
            1750
        );
        assert_eq!(
            per_env("select sum(created)::bigint from oath_jobs where environment_id = $1").await,
            1750
        );
        assert_eq!(
            per_env("select sum(duplicates)::bigint from oath_jobs where environment_id = $1")
                .await,
            250
        );
        assert_eq!(
            per_env(
                "select count(*) from job_results r join oath_tokens t on t.id = r.token_id \
                 where r.environment_id = $1 and r.outcome = 'CREATED' and t.serial_number = r.serial_number"
            )
            .await,
            1750
        );
        assert_eq!(
            per_env("select token_count from environment_usage where environment_id = $1").await,
            1750
        );
    }
    // Jobs were given back between chunks and resumed (each claim bumps attempt).
    assert!(scalar(pool, "select sum(attempt)::bigint from oath_jobs").await > 10);
    assert_eq!(
        scalar(pool, "select count(*) from oath_job_chunks").await,
        0
    );
    app.pool.close().await;
}
