//! A revoke job across crashes of the real binary: each service process is killed with SIGKILL
//! while its runner is inside a chunk's transaction (held there by a row lock of the test), and
//! the next process takes the job over when the lease expires. The job ends DONE with each id
//! revoked exactly once and the counts exact.

use std::collections::HashSet;
use std::time::Duration;

use oath_service::domain::HashAlgorithm;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{create_job, numbered, rfc_code, spawn_app_with, wait_until};
use crate::support::service::{database_url, service_env, with_query_param, Service};
use crate::support::tls::scratch_dir;

const TOKENS: usize = 3_000;
const CHUNK: usize = 100;

/// A service process running jobs only, with a short lease so that the job of a killed process
/// is taken over quickly; its connections carry `name`.
fn start(url: &str, name: &str, dir: &std::path::Path) -> Service {
    let mut env = service_env();
    env.extend([
        (
            "DATABASE_URL",
            with_query_param(url, &format!("application_name={name}")),
        ),
        ("OATH__SERVER__WORKERS", "1".into()),
        ("OATH__JOBS__RUNNERS", "2".into()),
        ("OATH__JOBS__LEASE_SECONDS", "2".into()),
        ("OATH__JOBS__POLL_INTERVAL_MS", "100".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    Service::start(
        &["serve", "--no-migrate"],
        &env,
        dir.join(format!("{name}.log")),
    )
}

async fn scalar(pool: &PgPool, sql: &str, name: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(name)
        .fetch_one(pool)
        .await
        .expect(sql)
}

async fn sessions(pool: &PgPool, name: &str) -> i64 {
    scalar(
        pool,
        "select count(*) from pg_stat_activity where application_name = $1",
        name,
    )
    .await
}

async fn waiting_on_a_lock(pool: &PgPool, name: &str) -> i64 {
    scalar(
        pool,
        "select count(*) from pg_stat_activity \
         where application_name = $1 and wait_event_type = 'Lock'",
        name,
    )
    .await
}

#[sqlx::test]
async fn kill_9_mid_revoke_job_then_restart_revokes_every_id_once(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = CHUNK).await;
    let dir = scratch_dir("revoke-crash");

    // The tokens, created in-process, their ids in order.
    let created = app
        .submit_in(app.env, &create_job(numbered("V", 0..TOKENS)))
        .await;
    app.run_jobs().await;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select token_id from job_results where job_id = $1 and outcome = 'CREATED' order by idx",
    )
    .bind(created)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), TOKENS);
    // Three of them paired: the job skips them.
    let paired: HashSet<Uuid> = [ids[10], ids[1_500], ids[TOKENS - 1]].into();
    for id in &paired {
        let (status, body) = app
            .post_json(
                &format!("{}/{id}/pairing", app.tokens_path()),
                &json!({"userId": "u", "otp": rfc_code(HashAlgorithm::Sha1, 6, 0)}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // The job's items: every token, an unknown id every 97th, and five tokens named again.
    let mut items: Vec<Uuid> = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        items.push(*id);
        if n % 97 == 0 {
            items.push(Uuid::new_v4());
        }
    }
    items.extend_from_slice(&ids[..5]);
    let known: HashSet<Uuid> = ids.iter().copied().collect();
    let mut seen = HashSet::new();
    let expected: Vec<&str> = items
        .iter()
        .map(|id| {
            if !known.contains(id) || !seen.insert(*id) {
                "NOT_FOUND"
            } else if paired.contains(id) {
                "SKIPPED_PAIRED"
            } else {
                "REVOKED"
            }
        })
        .collect();
    let total = items.len();
    let accepted = app
        .submit(&json!({"type": "REVOKE_OATH_TOKENS", "forceUnpair": false, "tokenIds": items}))
        .await;
    let job: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    let processed = async || {
        app.count_in(job, "select processed::bigint from oath_jobs where id = $1")
            .await
    };

    let url = database_url(&connect);
    for (n, at) in [450, 1_420, 2_390].into_iter().enumerate() {
        // The first revocable item from `at` on: its row, locked by the test, holds the runner
        // inside the transaction of that item's chunk.
        let at = (at..total).find(|&i| expected[i] == "REVOKED").unwrap();
        let mut hold = app.pool.begin().await.unwrap();
        sqlx::query("select 1 from oath_tokens where environment_id = $1 and id = $2 for update")
            .bind(app.env)
            .bind(items[at])
            .execute(&mut *hold)
            .await
            .unwrap();
        let name = format!("revoke-killed-{n}");
        let mut service = start(&url, &name, &dir);
        wait_until(
            "the runner to reach the held row",
            Duration::from_secs(120),
            async || {
                service.assert_running();
                waiting_on_a_lock(&app.pool, &name).await > 0
            },
        )
        .await;
        // Every chunk before the held one is committed; the held one is not.
        assert_eq!(processed().await, (at / CHUNK * CHUNK) as i64);
        if n > 0 {
            // Later kills come after every write of the chunk, just before its commit: the test
            // holds the environment's row of the fair schedule, which the chunk updates last,
            // and lets the tokens go.
            let mut tx = app.pool.begin().await.unwrap();
            let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
                "select 1 from environment_schedule where environment_id = $1 for update nowait",
            )
            .bind(app.env)
            .execute(&mut *tx)
            .await
            .expect("the chunk's transaction has not touched the schedule yet");
            hold.rollback().await.unwrap();
            wait_until(
                "the runner to reach the schedule",
                Duration::from_secs(120),
                async || {
                    sqlx::query_scalar::<_, i64>(
                        "select count(*) from pg_stat_activity \
                         where application_name = $1 and $2 = any(pg_blocking_pids(pid))",
                    )
                    .bind(&name)
                    .bind(pid)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap()
                        > 0
                },
            )
            .await;
            hold = tx;
        }
        drop(service); // SIGKILL
                       // The orphaned session gets the row, then finds its client gone and rolls back.
        hold.rollback().await.unwrap();
        wait_until(
            "the killed process's sessions to end",
            Duration::from_secs(120),
            async || sessions(&app.pool, &name).await == 0,
        )
        .await;
        assert_eq!(processed().await, (at / CHUNK * CHUNK) as i64);
        // Nothing of the killed chunk stayed: its tokens are all there.
        let chunk_ids: Vec<Uuid> =
            items[at / CHUNK * CHUNK..((at / CHUNK + 1) * CHUNK).min(total)].to_vec();
        let left: i64 = sqlx::query_scalar(
            "select count(*) from oath_tokens where environment_id = $1 and id = any($2)",
        )
        .bind(app.env)
        .bind(&chunk_ids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let revocable = expected[at / CHUNK * CHUNK..((at / CHUNK + 1) * CHUNK).min(total)]
            .iter()
            .filter(|o| **o != "NOT_FOUND")
            .count();
        assert_eq!(left, revocable as i64);
    }

    let _service = start(&url, "revoke-last", &dir);
    wait_until("the job to end", Duration::from_secs(180), async || {
        app.count_in(
            job,
            "select count(*) from oath_jobs where id = $1 and status in ('DONE', 'FAILED')",
        )
        .await
            == 1
    })
    .await;

    let done = app.job(&job.to_string()).await;
    assert_eq!(done["status"], "DONE", "{done}");
    let count = |outcome: &str| expected.iter().filter(|o| **o == outcome).count() as i64;
    let (revoked, skipped, not_found) = (
        count("REVOKED"),
        count("SKIPPED_PAIRED"),
        count("NOT_FOUND"),
    );
    assert_eq!(
        (revoked, skipped, not_found),
        (TOKENS as i64 - 3, 3, 31 + 5)
    );
    assert_eq!(
        done["result"],
        json!({"revoked": revoked, "skippedPaired": skipped, "notFound": not_found})
    );
    // One result per item, each the outcome of its first and only revocation.
    let outcomes: Vec<String> =
        sqlx::query_scalar("select outcome from job_results where job_id = $1 order by idx")
            .bind(job)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outcomes, expected);
    app.assert_counts_in(
        job,
        &[
            (
                "select count(distinct idx) from job_results where job_id = $1",
                total as i64,
            ),
            (
                "select count(distinct token_id) from job_results \
                 where job_id = $1 and outcome = 'REVOKED'",
                revoked,
            ),
            (
                "select revoked::bigint from oath_jobs where id = $1",
                revoked,
            ),
            ("select count(*) from oath_job_chunks where job_id = $1", 0),
        ],
    )
    .await;
    // Three takeovers at least (a blocked runner may also lose its lease within its process).
    let attempts = app
        .count_in(job, "select attempt::bigint from oath_jobs where id = $1")
        .await;
    assert!(attempts >= 4, "{attempts} attempts");
    app.assert_counts_in(
        app.env,
        &[
            (
                "select count(*) from oath_tokens where environment_id = $1",
                3,
            ),
            (
                "select count(*) from oath_tokens where environment_id = $1 and status = 'PAIRED'",
                3,
            ),
            (
                "select token_count from environment_usage where environment_id = $1",
                3,
            ),
        ],
    )
    .await;
    app.pool.close().await;
}
