//! Imports are fair between environments: one file per environment at a time, refused before its
//! body is read; the unfinished-job limit and the idempotency key decided before any parsing; JSON
//! job bodies parsed off the threads that serve requests.

use std::time::{Duration, Instant};

use oath_service::auth::Scope;
use oath_service::domain::job::{parse_job, JobType};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::support::app::{
    assert_error, assert_error_mentions, create_job, numbered, spawn_app, spawn_app_with,
};
use crate::support::raw::{post_head, read_response};

const CSV: &str = "text/csv";

fn csv(serial: &str) -> Vec<u8> {
    format!(
        "serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep\n\
         {serial},3132333435363738393031323334353637383930,HOTP,6,,,\n"
    )
    .into_bytes()
}

#[sqlx::test]
async fn a_second_file_of_an_environment_is_refused_while_the_first_is_read(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.max_unfinished_per_environment = 1000).await;
    let first = csv("SLOW1");
    let (head, rest) = first.split_at(20);
    let (bearer, path) = (app.token(&Scope::ALL), app.jobs_path());
    // The first file arrives slowly: its upload holds the environment's slot.
    let slow_upload = || post_head(&app.address, &path, &bearer, CSV, first.len(), head);
    let mut slow = slow_upload().await;
    let started = Instant::now();
    let (body, retry_after) = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no upload was refused"
        );
        // A second upload can win the slot before the slow one's head is read; the slow one is
        // then refused at once, and is started again.
        let mut answered = [0u8; 1];
        let peek = tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut answered));
        if let Ok(Ok(1)) = peek.await {
            slow = slow_upload().await;
            continue;
        }
        let res = app
            .request(Method::POST, &app.jobs_path())
            .header("content-type", CSV)
            .body(csv("SECOND"))
            .send()
            .await
            .unwrap();
        let retry_after = res.headers().get("retry-after").cloned();
        match crate::support::app::parts(res).await {
            (202, _) => continue,
            (429, body) => break (body, retry_after),
            (status, body) => panic!("{status} {body}"),
        }
    };
    assert_error_mentions(429, &body, 429, "REQUEST_LIMITED", "being imported");
    let retry_after: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);

    // Another environment imports meanwhile.
    let other = Uuid::new_v4();
    let (status, body) = app.post_file(other, CSV, csv("OTHER"), &[]).await;
    assert_eq!(status, 202, "{body}");

    // The first file completes; the environment's next file is taken.
    slow.write_all(rest).await.unwrap();
    let (status, _, body) = read_response(&mut slow, Duration::from_secs(30)).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.post_file(app.env, CSV, csv("THIRD"), &[]).await;
    assert_eq!(status, 202, "{body}");
}

/// A file that cannot even be parsed gets the limit's 429, not the parser's 400: the limit is
/// checked first.
#[sqlx::test]
async fn an_environment_at_its_unfinished_limit_is_refused_before_parsing(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.max_unfinished_per_environment = 1).await;
    let res = app.submit_job(&create_job(numbered("U", 0..2))).await;
    assert_eq!(res.status(), 202);
    let unreadable = b"not,a,header\n".to_vec();
    let (status, body) = app.post_file(app.env, CSV, unreadable, &[]).await;
    assert_error(status, &body, 429, "REQUEST_LIMITED");
    let pskc = b"<not-pskc".to_vec();
    let (status, body) = app
        .post_file(app.env, "application/pskc+xml", pskc, &[])
        .await;
    assert_error(status, &body, 429, "REQUEST_LIMITED");
}

/// A key used before is decided before the body is parsed: another body under it is a 409
/// even when it could not be parsed, and the first body is replayed.
#[sqlx::test]
async fn an_idempotency_key_is_decided_before_parsing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let key = [("idempotency-key", "import-7")];
    let (status, first) = app.post_file(app.env, CSV, csv("K1"), &key).await;
    assert_eq!(status, 202, "{first}");
    let (status, body) = app
        .post_file(app.env, CSV, b"not,a,header\n".to_vec(), &key)
        .await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, replayed) = app.post_file(app.env, CSV, csv("K1"), &key).await;
    assert_eq!((status, &replayed["id"]), (202, &first["id"]));
}

/// A large JSON job is parsed off the worker thread: with one worker, a request sent while the
/// job's body is parsed is answered in far less time than the parse takes.
#[sqlx::test]
async fn json_job_bodies_are_parsed_off_the_request_threads(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.server.workers = 1).await;
    let job = json!({"type": "CREATE_OATH_TOKENS", "tokens": numbered("P", 0..40_000)
        .map(|serial| json!({"serialNumber": serial, "secret": "3132333435363738393031323334353637383930",
            "type": "HOTP", "otpLength": 6}))
        .collect::<Vec<_>>()});
    let body = job.to_string().into_bytes();
    // What one parse of this body costs here, measured the same way the service parses it.
    let parse = {
        let started = Instant::now();
        parse_job(&body, JobType::CreateTokens, 100_000).expect("a valid job");
        started.elapsed()
    };
    let submit = {
        let request = app
            .request(Method::POST, &app.jobs_path())
            .header("content-type", JobType::CREATE_MEDIA_TYPE)
            .body(body);
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    let mut slowest = Duration::ZERO;
    while !submit.is_finished() {
        let started = Instant::now();
        let res = app.get_anonymous("/health/live").await;
        assert_eq!(res.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    assert_eq!(submit.await.unwrap(), 202);
    assert!(
        slowest < parse / 2,
        "a request waited {slowest:?} while a body that takes {parse:?} to parse was parsed"
    );
}
