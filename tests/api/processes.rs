//! The real binary as job runner: killed with SIGKILL in the middle of a job and started again,
//! and several processes sharing one database. Jobs are submitted over HTTP to an in-process app
//! on the same database; the spawned processes only run jobs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{create_job, numbered, spawn_app_with, wait_until, TestApp};
use crate::support::cluster::free_port;
use crate::support::service::{command, database_url, service_env, with_query_param};

/// A service process on the test database, with a short lease so that work left by a killed
/// process is taken over quickly.
struct Service(Child);

impl Service {
    fn start(database_url: &str, limit: i64) -> Self {
        Self::start_with(database_url, limit, &[])
    }

    /// `start`, with `extra` settings over those.
    fn start_with(database_url: &str, limit: i64, extra: &[(&'static str, String)]) -> Self {
        let mut env = service_env();
        env.extend([
            ("DATABASE_URL", database_url.to_string()),
            ("OATH__SERVER__ADDR", "127.0.0.1:0".into()),
            ("OATH__SERVER__WORKERS", "1".into()),
            ("OATH__JOBS__RUNNERS", "2".into()),
            ("OATH__JOBS__CHUNK_SIZE", "250".into()),
            ("OATH__JOBS__LEASE_SECONDS", "2".into()),
            ("OATH__JOBS__POLL_INTERVAL_MS", "100".into()),
            ("OATH__LIMITS__TOKENS_PER_ENVIRONMENT", limit.to_string()),
            ("OATH__LOG__LEVEL", "warn".into()),
        ]);
        env.extend_from_slice(extra);
        let child = command(&env)
            .args(["serve", "--no-migrate"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("service binary starts");
        Self(child)
    }

    /// SIGTERM: the server drains, the runners finish their chunk and hand their jobs back.
    fn signal_terminate(&self) {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
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

/// Tokens of the job that processes are killed or stopped in the middle of.
const TOTAL: usize = 20_000;

/// The test database's URL, and the submitting app with one job of `TOTAL` tokens named
/// `prefix`N, not started.
async fn app_with_a_big_job(connect: &PgConnectOptions, prefix: &str) -> (String, TestApp, Uuid) {
    let app = app_on(connect, 1_000_000).await;
    let job = app
        .submit_in(app.env, &create_job(numbered(prefix, 0..TOTAL)))
        .await;
    (database_url(connect), app, job)
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

async fn processed(pool: &PgPool, job: Uuid) -> i32 {
    sqlx::query_scalar("select processed from oath_jobs where id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Sessions open on the server under `application_name`.
async fn sessions(pool: &PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar("select count(*) from pg_stat_activity where application_name = $1")
        .bind(application_name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Sessions under `application_name` waiting for a lock.
async fn waiting_on_a_lock(pool: &PgPool, application_name: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where application_name = $1 and wait_event_type = 'Lock'",
    )
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

#[sqlx::test]
async fn kill_9_mid_job_then_restart_creates_every_token_once(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, app, job) = app_with_a_big_job(&connect, "K").await;

    // Kill the runner process at several points of the job, each time mid-flight.
    for (n, fraction) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        // Its connections carry a name, so that the test can see them end.
        let name = format!("killed-{n}");
        let service = Service::start(
            &with_query_param(&url, &format!("application_name={name}")),
            1_000_000,
        );
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

    let total = TOTAL as i64;
    app.assert_counts(&[
        ("select count(*) from oath_jobs where status = 'DONE'", 1),
        (
            "select (created + duplicates + failed)::bigint from oath_jobs",
            total,
        ),
        ("select created::bigint from oath_jobs", total),
        ("select count(*) from oath_tokens", total),
        ("select token_count from environment_usage", total),
        (
            "select count(distinct idx) from job_results where outcome = 'CREATED'",
            total,
        ),
        ("select count(*) from job_results", total),
        ("select count(*) from oath_job_chunks", 0),
        // Every result points at the token it created.
        (
            "select count(*) from job_results r join oath_tokens t \
             on t.id = r.token_id and t.serial_number = r.serial_number",
            total,
        ),
    ])
    .await;
    assert!(app.count("select attempt::bigint from oath_jobs").await >= 4);
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
        jobs.push(
            app.submit_in(plain, &create_job(numbered(&format!("P{n}x"), 0..800)))
                .await,
        );
    }
    // Two jobs racing past the quota: 6,000 new serials for 5,000 places.
    for n in 0..2 {
        jobs.push(
            app.submit_in(racing, &create_job(numbered(&format!("R{n}x"), 0..3000)))
                .await,
        );
    }
    // Two jobs overlapping by half: 4,500 distinct serials, 1,500 duplicates.
    jobs.push(
        app.submit_in(overlapping, &create_job(numbered("O", 0..3000)))
            .await,
    );
    jobs.push(
        app.submit_in(overlapping, &create_job(numbered("O", 1500..4500)))
            .await,
    );

    let services: Vec<Service> = (0..3).map(|_| Service::start(&url, LIMIT)).collect();
    wait_until("every job to end", Duration::from_secs(240), async || {
        all_done(&app.pool).await
    })
    .await;
    drop(services);

    app.assert_counts(&[
        ("select count(*) from oath_jobs where status = 'DONE'", 10),
        ("select count(*) from oath_jobs where processed <> total", 0),
    ])
    .await;
    let results_match = app
        .count(
            "select count(*) from oath_jobs j \
             where total = (select count(*) from job_results r where r.job_id = j.id)",
        )
        .await;
    assert_eq!(results_match, 10, "every item has exactly one result row");
    let count = |env: Uuid| app.tokens_in(env);
    let sum = |env: Uuid, column: &'static str| {
        let sql = format!("select sum({column})::bigint from oath_jobs where environment_id = $1");
        let app = &app;
        async move { app.count_in(env, &sql).await }
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
        let usage = app
            .count_in(
                env,
                "select token_count from environment_usage where environment_id = $1",
            )
            .await;
        assert_eq!(usage, count(env).await);
    }
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
    app.pool.close().await;
}

#[sqlx::test]
async fn sigterm_hands_the_job_back_for_another_process(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let (url, app, job) = app_with_a_big_job(&connect, "T").await;
    // The test holds back every token insert, so that the job cannot end before the process
    // stops, whatever the machine's speed: the runner waits inside its chunk.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("lock table oath_tokens in share mode")
        .execute(&mut *hold)
        .await
        .unwrap();
    let port = free_port();
    let name = "terminated";
    let service = Service::start_with(
        &with_query_param(&url, &format!("application_name={name}")),
        1_000_000,
        &[
            ("OATH__SERVER__ADDR", format!("127.0.0.1:{port}")),
            // Stop at once: no balancer to wait for.
            ("OATH__SERVER__SHUTDOWN_DELAY_SECONDS", "0".into()),
            // No lease may expire while the runner waits for the test.
            ("OATH__JOBS__LEASE_SECONDS", "300".into()),
        ],
    );
    wait_until(
        "a runner to wait for the held table",
        Duration::from_secs(120),
        async || waiting_on_a_lock(&app.pool, name).await > 0,
    )
    .await;
    service.signal_terminate();
    // The listener closes when the server has drained; the runners are told to stop right after.
    wait_until(
        "the listener to close",
        Duration::from_secs(60),
        async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        },
    )
    .await;
    hold.rollback().await.unwrap();
    let status = service.wait();
    assert!(status.success(), "graceful exit, got {status}");
    let (done, owner): (i32, Option<String>) =
        sqlx::query_as("select processed, lease_owner from oath_jobs where id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(done < TOTAL as i32, "{done} of {TOTAL} processed");
    assert_eq!(owner, None, "the lease was released");
    // Released, not expired: the next process resumes at once.
    let expired: bool =
        sqlx::query_scalar("select lease_expires_at <= now() from oath_jobs where id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(expired);
    let _next = Service::start(&url, 1_000_000);
    wait_until("the job to end", Duration::from_secs(120), async || {
        all_done(&app.pool).await
    })
    .await;
    app.assert_counts(&[
        ("select count(*) from oath_tokens", TOTAL as i64),
        ("select count(*) from job_results", TOTAL as i64),
    ])
    .await;
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
            jobs.push(
                app.submit_in(*env, &create_job(numbered(&format!("E{n}x"), lo..hi)))
                    .await,
            );
        }
    }
    let services: Vec<Service> = (0..2).map(|_| Service::start(&url, 1_000_000)).collect();
    wait_until("every job to end", Duration::from_secs(240), async || {
        all_done(&app.pool).await
    })
    .await;
    drop(services);

    assert_eq!(
        app.count("select count(*) from oath_jobs where status = 'DONE'")
            .await,
        10
    );
    let results_match = app
        .count(
            "select count(*) from oath_jobs j where total = (select count(*) from job_results r \
             where r.environment_id = j.environment_id and r.job_id = j.id)",
        )
        .await;
    assert_eq!(results_match, 10, "every item has exactly one result row");
    for env in &envs {
        app.assert_counts_in(
            *env,
            &[
                (
                    "select count(*) from oath_tokens where environment_id = $1",
                    1750,
                ),
                (
                    "select sum(created)::bigint from oath_jobs where environment_id = $1",
                    1750,
                ),
                (
                    "select sum(duplicates)::bigint from oath_jobs where environment_id = $1",
                    250,
                ),
                (
                    "select count(*) from job_results r join oath_tokens t on t.id = r.token_id \
                     where r.environment_id = $1 and r.outcome = 'CREATED' \
                     and t.serial_number = r.serial_number",
                    1750,
                ),
                (
                    "select token_count from environment_usage where environment_id = $1",
                    1750,
                ),
            ],
        )
        .await;
    }
    // Jobs were given back between chunks and resumed (each claim bumps attempt).
    assert!(
        app.count("select sum(attempt)::bigint from oath_jobs")
            .await
            > 10
    );
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
    app.pool.close().await;
}
