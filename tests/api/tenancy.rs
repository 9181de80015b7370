//! Many environments on one deployment: runners serve environments in turn chunk by chunk, and
//! finished jobs are purged after their retention. Runners are driven step by step in-process.

use std::sync::Arc;
use std::time::Duration;

use oath_service::auth::Scope;
use oath_service::domain::job::JobType;
use oath_service::jobs::retention::purge_once;
use oath_service::jobs::runner::{RunnerPool, Step};
use oath_service::metrics::METRICS;
use oath_service::store::retention::PURGE_LOCK;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    call, create_job, environment_path, metric_value, numbered, send, spawn_app_with, wait_until,
    TestApp,
};

/// Input chunks not yet processed, of one environment's jobs.
async fn chunks_left(app: &TestApp, env: Uuid) -> i64 {
    app.count_in(
        env,
        "select count(*) from oath_job_chunks where environment_id = $1",
    )
    .await
}

#[sqlx::test]
async fn a_small_job_of_another_environment_overtakes_a_big_backlog(pool: PgPool) {
    let mut app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 500;
        s.limits.tokens_per_environment = 1_000_000;
    })
    .await;
    // Only a hang fails a request: 60,000 tokens take a while on a busy machine.
    app.client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    // Submitted two at a time, as the app has two workers.
    let bodies: Vec<Value> = (0..3)
        .map(|n| create_job(numbered(&format!("A{n}x"), 0..60_000)))
        .collect();
    tokio::join!(app.submit_in(a, &bodies[0]), app.submit_in(a, &bodies[1]));
    app.submit_in(a, &bodies[2]).await;
    // Both runners busy with A's jobs.
    let (mut r1, mut r2) = (app.runner("r1"), app.runner("r2"));
    for _ in 0..2 {
        assert!(matches!(r1.step().await.unwrap(), Step::Progress { .. }));
        assert!(matches!(r2.step().await.unwrap(), Step::Progress { .. }));
    }

    let mut body = create_job(numbered("B", 0..10));
    body["async"] = json!(false);
    let waiting = {
        let app_b = TestApp {
            address: app.address.clone(),
            env: b,
            pool: app.pool.clone(),
            settings: app.settings.clone(),
            client: app.client.clone(),
        };
        tokio::spawn(async move { app_b.post_job_in(b, &body).await })
    };
    let b_jobs = "select count(*) from oath_jobs where environment_id = $1";
    wait_until(
        "B's job to be stored",
        Duration::from_secs(60),
        async || app.count_in(b, b_jobs).await == 1,
    )
    .await;
    let before = chunks_left(&app, a).await;

    // The runners go on, a step each per round, until B's job is done (or B's request gave up).
    let b_done = "select count(*) from oath_jobs where environment_id = $1 and status = 'DONE'";
    while app.count_in(b, b_done).await == 0 && !waiting.is_finished() {
        let (s1, s2) = (r1.step().await.unwrap(), r2.step().await.unwrap());
        assert!(s1 != Step::Idle || s2 != Step::Idle, "work remains");
    }
    let after = chunks_left(&app, a).await;
    let (status, done) = waiting.await.unwrap();
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"], json!({"created": 10}));
    // B waited for at most a chunk per runner, not behind A's queue.
    assert!(
        before - after <= 4,
        "A's chunks committed while B waited: {}",
        before - after
    );
    assert!(after > 0, "A still has work queued");
    assert_eq!(
        app.count_in(
            a,
            "select count(*) from oath_jobs where environment_id = $1 and status = 'DONE'"
        )
        .await,
        0
    );
}

#[sqlx::test]
async fn one_runner_alternates_environments_and_yielding_is_no_failure(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 5;
        s.jobs.parallel_chunks = 2;
        // Any counted claim past the first would fail the job.
        s.jobs.max_attempts = 1;
    })
    .await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let job_a = app.submit_in(a, &create_job(numbered("A", 0..50))).await;
    let job_b = app.submit_in(b, &create_job(numbered("B", 0..30))).await;
    let mut runner = app.runner("r1");
    let served: Vec<Uuid> = app
        .drain(&mut runner)
        .await
        .into_iter()
        .map(|step| match step {
            Step::Progress { job, .. } => job,
            Step::Finished { job, failed } => {
                assert!(!failed, "{job} failed");
                job
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let (ja, jb) = (job_a, job_b);
    assert_eq!(served, [ja, jb, ja, jb, ja, jb, ja, ja]);
    for (env, job, created) in [(a, job_a, 30 + 20), (b, job_b, 30)] {
        let (status, body) = app.get_in(env, &format!("/oathJobs/{job}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "DONE", "{body}");
        assert_eq!(body["result"], json!({"created": created}));
    }
    assert_eq!(
        app.count("select sum(takeovers)::bigint from oath_jobs")
            .await,
        0
    );
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    metric_value(&app.metrics().await, name)
}

#[sqlx::test]
async fn finished_jobs_are_purged_after_their_retention(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 10).await;
    let env = app.env;
    let done = app.submit_in(env, &create_job(numbered("R", 0..25))).await;
    app.run_jobs().await;
    let pending = app.submit_in(env, &create_job(numbered("P", 0..5))).await;
    let results_of =
        |job: Uuid| app.count_in(job, "select count(*) from job_results where job_id = $1");
    assert_eq!(results_of(done).await, 25);

    // Within its retention: kept.
    let pool = &app.pool;
    assert_eq!(
        purge_once(pool, Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(app.get_in(env, &format!("/oathJobs/{done}")).await.0, 200);

    let retention = Duration::from_secs(1);
    wait_until(
        "the job to be past 1 s",
        Duration::from_secs(60),
        async || {
            sqlx::query_scalar::<_, bool>(
                "select completed_at < now() - interval '1 second' from oath_jobs where id = $1",
            )
            .bind(done)
            .fetch_one(pool)
            .await
            .unwrap()
        },
    )
    .await;

    // Another replica purging: this pass stops at once and deletes nothing.
    let mut other = pool.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(PURGE_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(purge_once(pool, retention, 10).await.unwrap(), 0);
    assert_eq!(results_of(done).await, 25);
    other.commit().await.unwrap();

    // Results in batches of 10 (three statements), then the job.
    // The process-wide counter, measured around this purge (other tests may purge too when
    // they share the process, as under plain `cargo test`).
    let purged_before = metric(&app, "oath_jobs_purged_total").await;
    assert_eq!(purge_once(pool, retention, 10).await.unwrap(), 1);
    let purged_after = metric(&app, "oath_jobs_purged_total").await;
    assert_eq!(results_of(done).await, 0);
    let (status, body) = app.get_in(env, &format!("/oathJobs/{done}")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.get_in(env, &format!("/oathJobs/{done}/results")).await;
    assert_eq!(status, 404, "{body}");
    // Unfinished jobs and the tokens created stay.
    let (status, body) = app.get_in(env, &format!("/oathJobs/{pending}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("PENDING")));
    assert_eq!(app.tokens_in(env).await, 25);

    // The purge is counted; the backlog gauges read the database, without environment labels.
    assert!(
        purged_after >= purged_before + 1.0,
        "{purged_before} -> {purged_after}"
    );
    METRICS.refresh_backlog(pool).await.unwrap();
    assert_eq!(metric(&app, "oath_jobs_unfinished").await, 1.0);
    assert!(metric(&app, "oath_job_oldest_pending_age_seconds").await >= 0.0);
    app.run_jobs().await;
    METRICS.refresh_backlog(pool).await.unwrap();
    assert_eq!(metric(&app, "oath_jobs_unfinished").await, 0.0);
    assert_eq!(
        metric(&app, "oath_job_oldest_pending_age_seconds").await,
        0.0
    );
}

#[sqlx::test]
async fn the_runner_pool_purges_on_its_interval(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.retention_seconds = 1;
        s.jobs.purge_interval_seconds = 1;
    })
    .await;
    let runners = RunnerPool::start(app.pool.clone(), Arc::new(app.settings.clone()));
    let job = app
        .submit_in(app.env, &create_job(numbered("W", 0..3)))
        .await;
    let path = format!("/oathJobs/{job}");
    wait_until(
        "the job to be purged",
        Duration::from_secs(120),
        async || {
            let (status, body) = app.get_in(app.env, &path).await;
            assert!(
                status == 404 || (status == 200 && body["status"] != "FAILED"),
                "{status} {body}"
            );
            status == 404
        },
    )
    .await;
    runners.stop().await;
    assert_eq!(app.tokens_in(app.env).await, 3);
    assert_eq!(
        app.count_in(
            app.env,
            "select count(*) from job_results where environment_id = $1"
        )
        .await,
        0
    );
}

/// `jobs.max_unfinished_per_environment`: ten concurrent submissions of one environment against a
/// limit of 3 leave exactly 3 jobs, the others 429 with `Retry-After`; another environment is
/// unaffected; once the jobs finish, the environment may submit again.
#[sqlx::test]
async fn unfinished_jobs_per_environment_are_limited_under_concurrency(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.max_unfinished_per_environment = 3).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let bodies: Vec<Value> = (0..10)
        .map(|i| create_job(numbered(&format!("L{i}x"), 0..2)))
        .collect();
    let answers =
        futures_util::future::join_all(bodies.iter().map(|body| app.post_job_in(a, body))).await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(accepted, 3, "{statuses:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["code"], "REQUEST_LIMITED");
    }
    let res = send(
        app.request_in(a, Method::POST, &environment_path(a, "/oathJobs"))
            .header("content-type", JobType::CREATE_MEDIA_TYPE)
            .body(create_job(numbered("M", 0..1)).to_string()),
    )
    .await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let count = |env: Uuid| {
        app.count_in(
            env,
            "select count(*) from oath_jobs where environment_id = $1",
        )
    };
    assert_eq!(count(a).await, 3);

    // Another environment is not held back by a's limit.
    app.submit_in(b, &create_job(numbered("B", 0..1))).await;

    // Finished jobs no longer count.
    let mut runner = app.runner("r1");
    while runner.step().await.unwrap() != Step::Idle {}
    app.submit_in(a, &create_job(numbered("N", 0..1))).await;
    assert_eq!(count(a).await, 4);
}

/// `GET /v1/environments/{envID}`, where every `_links.environment` leads: the environment's
/// tokens and unfinished jobs against their limits, for any read scope of that environment.
#[sqlx::test]
async fn the_environment_shows_its_usage_against_its_limits(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.tokens_per_environment = 50).await;
    let env = Uuid::new_v4();
    app.submit_in(env, &create_job(numbered("E", 0..3))).await;
    let mut runner = app.runner("r1");
    while runner.step().await.unwrap() != Step::Idle {}
    app.submit_in(env, &create_job(numbered("F", 0..1))).await;
    let read = |scopes: Vec<Scope>, as_env: Uuid| {
        let app = &app;
        async move {
            let bearer = app.token_for(as_env, &scopes);
            call(app.request_as(&bearer, Method::GET, &environment_path(env, ""))).await
        }
    };
    for scope in [Scope::TokensRead, Scope::JobsRead] {
        let (status, body) = read(vec![scope], env).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({
                "_links": {"self": {"href": format!("https://api.example.test/v1/environments/{env}")}},
                "id": env.to_string(),
                "tokens": {"count": 3, "limit": 50},
                "jobs": {"unfinished": 1, "limit": 20},
            })
        );
    }
    let (status, _) = read(vec![Scope::OtpValidate, Scope::TokensWrite], env).await;
    assert_eq!(status, 403);
    let (status, _) = read(vec![Scope::TokensRead], Uuid::new_v4()).await;
    assert_eq!(status, 403);
}
