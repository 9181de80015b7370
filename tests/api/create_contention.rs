//! The create batcher (`src/create_batch.rs`) under contention: two real service processes take
//! single creates of one environment near its quota while a create job of the same environment
//! runs, some serial numbers are sent twice, and some clients go away mid-request. Every answer
//! matches the database, the quota row counts exactly the tokens, and each process committed
//! creates in batches of more than one.

use std::collections::HashMap;
use std::time::Duration;

use oath_service::auth::Scope;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{create_job, hotp_token, numbered, spawn_app_with, wait_until};
use crate::support::raw::{post_head, read_response};
use crate::support::service::{database_url, service_env, with_query_param, Service};
use crate::support::tls::scratch_dir;

const LIMIT: i64 = 330;

fn start(url: &str, name: &str, dir: &std::path::Path) -> Service {
    let mut env = service_env();
    env.extend([
        (
            "DATABASE_URL",
            with_query_param(url, &format!("application_name={name}")),
        ),
        ("OATH__SERVER__WORKERS", "2".into()),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__JOBS__POLL_INTERVAL_MS", "100".into()),
        ("OATH__LIMITS__TOKENS_PER_ENVIRONMENT", LIMIT.to_string()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    Service::start(
        &["serve", "--no-migrate"],
        &env,
        dir.join(format!("{name}.log")),
    )
}

/// The value of the sample `series` (name and labels, as printed) in a `/metrics` text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{series} in {text}"))
}

async fn lock_waiters(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "select count(*) from pg_stat_activity \
         where application_name = $1 and wait_event_type = 'Lock'",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn single_creates_of_two_processes_near_the_quota_match_the_database(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), |s| s.limits.tokens_per_environment = LIMIT).await;
    let env = app.env;
    // 200 tokens already there.
    app.submit_in(env, &create_job(numbered("P", 0..200))).await;
    app.run_jobs().await;
    assert_eq!(app.tokens_in(env).await, 200);

    let dir = scratch_dir("create-contention");
    let url = database_url(&pool.connect_options());
    let names = ["creates-a", "creates-b"];
    let mut services: Vec<Service> = names.iter().map(|n| start(&url, n, &dir)).collect();
    for service in &mut services {
        service.wait_ready(Duration::from_secs(60)).await;
    }

    // The test holds the quota row: each process's first transaction waits for it, and the
    // creates arriving meanwhile queue behind it, to be committed together.
    let mut hold = pool.begin().await.unwrap();
    sqlx::query("select 1 from environment_usage where environment_id = $1 for update")
        .bind(env)
        .execute(&mut *hold)
        .await
        .unwrap();
    // A job of 60 more, run by the processes at the same time.
    let job = app.submit_in(env, &create_job(numbered("J", 0..60))).await;

    // 100 serial numbers sent twice, to alternate processes, and 30 more whose clients reset
    // the connection as soon as the request is sent: 190 new tokens for 130 places.
    let bearer = app.token(&[Scope::TokensWrite]);
    let path = app.tokens_path();
    let mut kept = Vec::new();
    for i in 0..200 {
        let serial = format!("S{}", i % 100);
        let body = hotp_token(&serial).to_string();
        let base = &services[i % 2].base;
        let stream = post_head(
            base,
            &path,
            &bearer,
            "application/json",
            body.len(),
            body.as_bytes(),
        )
        .await;
        kept.push((serial, stream));
    }
    for i in 0..30 {
        let body = hotp_token(&format!("X{i}")).to_string();
        let stream = post_head(
            &services[i % 2].base,
            &path,
            &bearer,
            "application/json",
            body.len(),
            body.as_bytes(),
        )
        .await;
        // Deprecated because a linger time blocks the dropping thread; a zero one resets at once.
        #[allow(deprecated)]
        stream.set_linger(Some(Duration::ZERO)).unwrap();
        drop(stream);
    }
    for name in names {
        wait_until(
            "each process's creates to wait for the quota row",
            Duration::from_secs(60),
            async || lock_waiters(&pool, name).await > 0,
        )
        .await;
    }
    hold.rollback().await.unwrap();

    // Every kept request's answer.
    let mut answers: Vec<(String, u16, Value)> = Vec::new();
    for (serial, mut stream) in kept {
        let (status, _, body) = read_response(&mut stream, Duration::from_secs(120)).await;
        answers.push((serial, status, body));
    }
    wait_until("the job to end", Duration::from_secs(120), async || {
        app.count_in(
            job,
            "select count(*) from oath_jobs where id = $1 and status = 'DONE'",
        )
        .await
            == 1
    })
    .await;

    let rows: HashMap<String, Uuid> = sqlx::query_as::<_, (String, Uuid)>(
        "select serial_number, id from oath_tokens where environment_id = $1",
    )
    .bind(env)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut created: HashMap<String, Uuid> = HashMap::new();
    let (mut duplicates, mut limited) = (0, 0);
    for (serial, status, body) in &answers {
        match status {
            201 => {
                let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
                assert_eq!(body["serialNumber"], serial.as_str());
                assert!(
                    created.insert(serial.clone(), id).is_none(),
                    "created twice: {serial}"
                );
                assert_eq!(
                    rows.get(serial),
                    Some(&id),
                    "{serial}: a 201 without its row"
                );
            }
            400 => match body["details"][0]["code"].as_str() {
                Some("UNIQUENESS_VIOLATION") => duplicates += 1,
                Some("LIMIT_EXCEEDED") => limited += 1,
                _ => panic!("{serial}: {body}"),
            },
            _ => panic!("{serial}: {status} {body}"),
        }
    }
    // A serial number refused every time it was sent has no row.
    for (serial, _, _) in &answers {
        if !created.contains_key(serial) {
            assert!(!rows.contains_key(serial), "{serial}: a row without a 201");
        }
    }
    assert_eq!(created.len() + duplicates + limited, 200);
    assert!(limited > 0, "the quota was reached");

    // The job's created tokens are there, and the quota row counts exactly the tokens: full.
    let job_created = app
        .count_in(
            job,
            "select count(*) from job_results r join oath_tokens t \
             on t.id = r.token_id and t.environment_id = r.environment_id \
             where r.job_id = $1 and r.outcome = 'CREATED'",
        )
        .await;
    assert_eq!(
        job_created,
        app.count_in(job, "select created::bigint from oath_jobs where id = $1")
            .await
    );
    let usage = app
        .count_in(
            env,
            "select token_count from environment_usage where environment_id = $1",
        )
        .await;
    assert_eq!(usage, rows.len() as i64);
    assert_eq!(usage, LIMIT);

    // Each process committed some of its creates together.
    for service in &services {
        let text = reqwest::get(format!("{}/metrics", service.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let batches = sample(&text, "oath_create_batch_size_count");
        let singles = sample(&text, "oath_create_batch_size_bucket{le=\"1\"}");
        assert!(
            batches > singles,
            "no batch above 1 in {}:\n{text}",
            service.base
        );
    }
    for service in &mut services {
        service.assert_running();
    }
}
