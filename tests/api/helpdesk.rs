//! What a helpdesk does for a user: disable and enable a token (PATCH), unlock it, find a user's
//! tokens, see when a token was last used; and stopping a job submitted by mistake.

use oath_service::domain::HashAlgorithm;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, call, details, hotp_token, numbered, rfc_code, spawn_app, spawn_app_with, TestApp,
};

fn code(counter: u64) -> String {
    rfc_code(HashAlgorithm::Sha1, 6, counter)
}

const WRONG: &str = "000000";

/// Creates an HOTP token (RFC 4226 secret, counter 0); returns its path.
async fn token(app: &TestApp, serial: &str) -> String {
    assert!(!(0..=20).map(code).any(|c| c == WRONG));
    let id = app.create_token_id(&hotp_token(serial)).await;
    format!("{}/{id}", app.tokens_path())
}

async fn patch(app: &TestApp, token: &str, media_type: &str, body: &str) -> (u16, Value) {
    call(
        app.request(Method::PATCH, token)
            .header("content-type", media_type)
            .body(body.to_string()),
    )
    .await
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    call(app.request(Method::POST, path).json(&body)).await
}

async fn validate(app: &TestApp, token: &str, otp: &str) -> String {
    let (status, body) = post(app, &format!("{token}/validate"), json!({"otp": otp})).await;
    assert_eq!(status, 200, "{body}");
    body["status"].as_str().unwrap().to_string()
}

async fn read(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get_json(token).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[sqlx::test]
async fn a_new_token_shows_its_helpdesk_fields(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = token(&app, "H1").await;
    let body = read(&app, &token).await;
    assert_eq!(body["enabled"], true);
    assert_eq!(body["failedAttempts"], 0);
    assert_eq!(body["locked"], false);
    assert!(body.get("lockedUntil").is_none(), "{body}");
    assert!(body.get("lastUsedAt").is_none(), "{body}");

    // A failure counts, and leaves lastUsedAt alone; a valid check sets it.
    assert_eq!(validate(&app, &token, WRONG).await, "INVALID");
    let body = read(&app, &token).await;
    assert_eq!(body["failedAttempts"], 1);
    assert!(body.get("lastUsedAt").is_none(), "{body}");
    assert_eq!(validate(&app, &token, &code(0)).await, "VALID");
    let body = read(&app, &token).await;
    assert_eq!(body["failedAttempts"], 0);
    let used = body["lastUsedAt"].as_str().unwrap().to_string();
    assert!(used.ends_with('Z') && used.len() == 24, "{used}");
    // Again, from the process's memory of the token (one statement): still set.
    assert_eq!(validate(&app, &token, &code(1)).await, "VALID");
    let later = read(&app, &token).await["lastUsedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(later >= used, "{later} < {used}");
}

#[sqlx::test]
async fn a_disabled_token_checks_and_counts_nothing(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.otp_per_token_per_minute = 0).await;
    let token = token(&app, "H1").await;
    // The process remembers the token: disabling must reach its one-statement checks too.
    assert_eq!(validate(&app, &token, &code(0)).await, "VALID");

    let (status, body) = patch(
        &app,
        &token,
        "application/merge-patch+json",
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], false);
    assert_eq!(body["id"], token.rsplit('/').next().unwrap());

    // Right or wrong, the code is not checked and nothing is counted.
    for otp in [code(1), WRONG.to_string()].iter().cycle().take(24) {
        assert_eq!(validate(&app, &token, otp).await, "DISABLED");
    }
    let body = read(&app, &token).await;
    assert_eq!(
        (&body["failedAttempts"], &body["hotp"]["counter"]),
        (&json!(0), &json!(1))
    );
    // No resync, no pairing.
    let (status, body) = post(
        &app,
        &format!("{token}/resync"),
        json!({"otps": [code(1), code(2)]}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, body) = post(
        &app,
        &format!("{token}/pairing"),
        json!({"userId": "alice", "otp": code(1)}),
    )
    .await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(read(&app, &token).await["status"], "AVAILABLE");

    let (status, body) = patch(
        &app,
        &token,
        "application/json; charset=utf-8",
        r#"{"enabled": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true);
    assert_eq!(validate(&app, &token, &code(1)).await, "VALID");
}

#[sqlx::test]
async fn only_enabled_can_be_patched(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = token(&app, "H1").await;
    for (body, target) in [
        (r#"{"enabled": false, "serialNumber": "X"}"#, "serialNumber"),
        (r#"{"status": "PAIRED"}"#, "status"),
        (r#"{"enabled": "no"}"#, "enabled"),
        (r#"{"enabled": null}"#, "enabled"),
        ("{}", "enabled"),
    ] {
        let (status, error) = patch(&app, &token, "application/merge-patch+json", body).await;
        assert_error(status, &error, 400, "INVALID_DATA");
        assert!(
            details(&error).iter().any(|(_, t)| t == target),
            "{body}: {error}"
        );
    }
    let (status, error) = patch(&app, &token, "application/json", "[]").await;
    assert_error(status, &error, 400, "INVALID_REQUEST");
    let (status, error) = patch(&app, &token, "text/plain", r#"{"enabled": false}"#).await;
    assert_error(status, &error, 415, "UNSUPPORTED_MEDIA_TYPE");
    let missing = format!("{}/{}", app.tokens_path(), Uuid::now_v7());
    let (status, error) = patch(&app, &missing, "application/json", r#"{"enabled": false}"#).await;
    assert_error(status, &error, 404, "NOT_FOUND");
    assert_eq!(read(&app, &token).await["enabled"], true, "nothing changed");
}

#[sqlx::test]
async fn unlock_clears_the_lock_and_the_failures(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.otp_per_token_per_minute = 0).await;
    let token = token(&app, "H1").await;
    for _ in 0..10 {
        assert_eq!(validate(&app, &token, WRONG).await, "INVALID");
    }
    assert_eq!(validate(&app, &token, &code(0)).await, "LOCKED");

    let (status, body) = call(app.request(Method::POST, &format!("{token}/unlock"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["locked"], &body["failedAttempts"]),
        (&json!(false), &json!(0))
    );
    assert_eq!(body["hotp"]["counter"], 0, "no code was consumed");
    assert_eq!(validate(&app, &token, &code(0)).await, "VALID");

    // Unlocking an unlocked token changes nothing; an unknown one is 404.
    let (status, _) = call(app.request(Method::POST, &format!("{token}/unlock"))).await;
    assert_eq!(status, 200);
    let missing = format!("{}/{}/unlock", app.tokens_path(), Uuid::now_v7());
    let (status, body) = call(app.request(Method::POST, &missing)).await;
    assert_error(status, &body, 404, "NOT_FOUND");
}

#[sqlx::test]
async fn unlock_ends_a_throttle_delay(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.otp.lockout = oath_service::config::Lockout::Throttle;
        s.limits.otp_per_token_per_minute = 0;
    })
    .await;
    let token = token(&app, "H1").await;
    for _ in 0..10 {
        assert_eq!(validate(&app, &token, WRONG).await, "INVALID");
    }
    assert!(read(&app, &token).await["lockedUntil"].is_string());
    let (status, body) = call(app.request(Method::POST, &format!("{token}/unlock"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("lockedUntil").is_none(), "{body}");
    assert_eq!(body["locked"], false);
    assert_eq!(validate(&app, &token, &code(0)).await, "VALID");
}

#[sqlx::test]
async fn a_users_tokens_are_found_by_user_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut paired = Vec::new();
    for (serial, user) in [("A1", "alice"), ("B1", "bob"), ("A2", "alice"), ("N1", "")] {
        let token = token(&app, serial).await;
        if !user.is_empty() {
            let (status, body) = post(
                &app,
                &format!("{token}/pairing"),
                json!({"userId": user, "otp": code(0)}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        paired.push(token);
    }
    let app = &app;
    let list = |filter: &str, extra: &str| {
        let path = format!("{}?filter={}{extra}", app.tokens_path(), urlencode(filter));
        async move { app.get_json(&path).await }
    };
    let (status, page) = list(r#"user.id eq "alice""#, "").await;
    assert_eq!(status, 200, "{page}");
    let serials: Vec<&str> = page["_embedded"]["oathTokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["serialNumber"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["A1", "A2"]);
    assert!(page["_embedded"]["oathTokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["user"]["id"] == "alice"));

    // Paged, the filter carried in the links.
    let (_, first) = list(r#"user.id EQ "alice""#, "&limit=1").await;
    assert_eq!(first["size"], 1);
    let next = first["_links"]["next"]["href"].as_str().unwrap();
    assert!(next.contains("filter=user.id%20EQ%20%22alice%22"), "{next}");
    let (_, second) = app
        .get_json(next.strip_prefix(crate::support::app::BASE_URL).unwrap())
        .await;
    assert_eq!(second["_embedded"]["oathTokens"][0]["serialNumber"], "A2");
    assert!(second["_links"].get("next").is_none(), "{second}");

    let (_, none) = list(r#"user.id eq "carol""#, "").await;
    assert_eq!(none["size"], 0);
    for bad in [
        r#"user.id eq """#,
        r#"user.id ne "alice""#,
        r#"user eq "alice""#,
    ] {
        let (status, body) = list(bad, "").await;
        assert_error(status, &body, 400, "INVALID_REQUEST");
    }
    // Another environment's user of the same id is not found.
    let (status, other) = app
        .get_in(
            Uuid::new_v4(),
            &format!("/oathTokens?filter={}", urlencode(r#"user.id eq "alice""#)),
        )
        .await;
    assert_eq!((status, &other["size"]), (200, &json!(0)));
}

/// The user filter reads the index on (environment, user, id), whatever the environment holds.
#[sqlx::test]
async fn finding_a_users_tokens_reads_an_index(pool: PgPool) {
    let app = spawn_app(pool).await;
    sqlx::query(
        r#"insert into oath_tokens (environment_id, id, serial_number, type, otp_length,
               hash_algorithm, counter, secret_ciphertext, secret_key_id, status, user_id)
           select $1, gen_random_uuid(), 'S' || g, 'HOTP', 6, 'HmacSHA1', 0, '\x00', 'a',
                  'PAIRED', 'user' || (g % 5000)
           from generate_series(1, 20000) g"#,
    )
    .bind(app.env)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("analyze oath_tokens")
        .execute(&app.pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select id from oath_tokens where environment_id = $1 and user_id = $2 \
         and ($3::uuid is null or id > $3) order by id limit $4",
    )
    .bind(app.env)
    .bind("user7")
    .bind(None::<Uuid>)
    .bind(101_i64)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("oath_tokens_user_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");

    let (status, page) = app
        .get_json(&format!(
            "{}?filter={}",
            app.tokens_path(),
            urlencode(r#"user.id eq "user7""#)
        ))
        .await;
    assert_eq!((status, &page["size"]), (200, &json!(4)), "{page}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- Cancelling jobs -------------------------------------------------------------------------

/// A create job of `n` tokens in chunks of two; returns its id.
async fn small_job(app: &TestApp, prefix: &str, n: usize) -> String {
    let body = crate::support::app::create_job(numbered(prefix, 0..n));
    app.submit(&body).await["id"].as_str().unwrap().to_string()
}

async fn cancel(app: &TestApp, job: &str) -> (u16, Value) {
    call(app.request(Method::POST, &format!("{}/{job}/cancel", app.jobs_path()))).await
}

fn chunks_of_two(s: &mut oath_service::config::Settings) {
    s.jobs.chunk_size = 2;
    s.jobs.parallel_chunks = 1;
    s.jobs.runners = 0;
}

/// A finished job agrees with itself: every processed item has one result, counted once; every
/// created token exists; no input is left.
async fn assert_consistent(app: &TestApp, job: &str) -> Value {
    let body = app.job(job).await;
    let id = Uuid::parse_str(job).unwrap();
    let processed = body["progress"]["processed"].as_i64().unwrap();
    let results = app
        .count_in(id, "select count(*) from job_results where job_id = $1")
        .await;
    let distinct = app
        .count_in(
            id,
            "select count(distinct idx) from job_results where job_id = $1",
        )
        .await;
    assert_eq!((results, distinct), (processed, processed), "{body}");
    let created = app
        .count_in(
            id,
            "select count(*) from job_results where job_id = $1 and outcome = 'CREATED'",
        )
        .await;
    assert_eq!(
        body["result"]["created"].as_i64().unwrap(),
        created,
        "{body}"
    );
    assert_eq!(app.tokens_in(app.env).await, created, "{body}");
    assert_eq!(
        app.count_in(id, "select count(*) from oath_job_chunks where job_id = $1")
            .await,
        0,
        "input left: {body}"
    );
    assert!(body["completedAt"].is_string(), "{body}");
    body
}

#[sqlx::test]
async fn a_pending_job_is_canceled_before_anything_is_written(pool: PgPool) {
    let app = spawn_app_with(pool, chunks_of_two).await;
    let job = small_job(&app, "P", 5).await;
    let (status, body) = cancel(&app, &job).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "CANCELED");
    assert_eq!(body["id"], job);
    assert!(app.run_jobs().await.is_empty(), "nothing left to run");
    let body = assert_consistent(&app, &job).await;
    assert_eq!(body["progress"], json!({"processed": 0, "total": 5}));

    // Finished: a second cancel is a conflict; an unknown job is 404.
    let (status, body) = cancel(&app, &job).await;
    assert_error(status, &body, 409, "CONFLICT");
    let (status, body) = cancel(&app, &Uuid::now_v7().to_string()).await;
    assert_error(status, &body, 404, "NOT_FOUND");
}

#[sqlx::test]
async fn a_running_job_stops_after_its_current_chunk(pool: PgPool) {
    let app = spawn_app_with(pool, chunks_of_two).await;
    let job = small_job(&app, "R", 7).await;
    let mut runner = app.runner("r1");
    for _ in 0..2 {
        runner.step().await.unwrap();
    }
    assert_eq!(app.job(&job).await["progress"]["processed"], 4);

    let (status, body) = cancel(&app, &job).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "CANCELED");
    // The runner holding the job finds it canceled and leaves it; nothing more is written.
    app.drain(&mut runner).await;
    let body = assert_consistent(&app, &job).await;
    assert_eq!(body["status"], "CANCELED");
    assert_eq!(body["progress"], json!({"processed": 4, "total": 7}));
    assert_eq!(body["result"]["created"], 4);
    let (status, results) = app
        .get_json(&format!("{}/{job}/results", app.jobs_path()))
        .await;
    assert_eq!((status, &results["size"]), (200, &json!(4)));

    // A finished job cannot be canceled.
    let done = small_job(&app, "D", 3).await;
    app.run_jobs().await;
    assert_eq!(app.job(&done).await["status"], "DONE");
    let (status, body) = cancel(&app, &done).await;
    assert_error(status, &body, 409, "CONFLICT");
    assert_eq!(app.job(&done).await["status"], "DONE");
}

/// A cancel and the runner's last chunk at once, in both orders: the job ends DONE (and the
/// cancel is 409) or CANCELED (and the chunk wrote nothing), never a mix. The test holds the
/// job's row so that both wait for it, queued in the order it chooses.
#[sqlx::test]
async fn a_cancel_racing_the_last_chunk_ends_in_one_state(pool: PgPool) {
    let app = spawn_app_with(pool, chunks_of_two).await;
    for cancel_first in [false, true, false, true] {
        let job = small_job(
            &app,
            &format!("L{cancel_first}{}", Uuid::now_v7().simple()),
            4,
        )
        .await;
        let mut runner = app.runner("r1");
        runner.step().await.unwrap();
        let id = Uuid::parse_str(&job).unwrap();
        let mut hold = app.pool.begin().await.unwrap();
        sqlx::query("select 1 from oath_jobs where id = $1 for update")
            .bind(id)
            .execute(&mut *hold)
            .await
            .unwrap();
        let waiting_on_row = |n: i64| {
            let pool = app.pool.clone();
            async move {
                crate::support::app::wait_until(
                    "a statement waiting for the job's row",
                    std::time::Duration::from_secs(10),
                    async || {
                        sqlx::query_scalar::<_, i64>(
                            "select count(*) from pg_stat_activity \
                             where wait_event_type = 'Lock' and datname = current_database()",
                        )
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                            >= n
                    },
                )
                .await
            }
        };
        let (first, second) = if cancel_first {
            ("cancel", "chunk")
        } else {
            ("chunk", "cancel")
        };
        // Each task answers the cancel's status and body, or None (the runner's step).
        let mut tasks = Vec::new();
        for (n, what) in [first, second].into_iter().enumerate() {
            let handle = if what == "cancel" {
                let client =
                    app.request(Method::POST, &format!("{}/{job}/cancel", app.jobs_path()));
                tokio::spawn(async move { Some(call(client).await) })
            } else {
                let mut runner = std::mem::replace(&mut runner, app.runner("spare"));
                tokio::spawn(async move {
                    runner.step().await.unwrap();
                    None
                })
            };
            tasks.push(handle);
            waiting_on_row(n as i64 + 1).await;
        }
        hold.commit().await.unwrap();
        let mut answer = None;
        for handle in tasks {
            if let Some(a) = handle.await.unwrap() {
                answer = Some(a);
            }
        }
        let (status, body) = answer.unwrap();
        app.run_jobs().await;
        let job_now = assert_consistent(&app, &job).await;
        if cancel_first {
            assert_eq!(status, 202, "{body}");
            assert_eq!(job_now["status"], "CANCELED", "{job_now}");
            assert_eq!(job_now["progress"]["processed"], 2, "{job_now}");
        } else {
            assert_error(status, &body, 409, "CONFLICT");
            assert_eq!(job_now["status"], "DONE", "{job_now}");
            assert_eq!(job_now["progress"]["processed"], 4, "{job_now}");
        }
        sqlx::query("delete from oath_tokens where environment_id = $1")
            .bind(app.env)
            .execute(&app.pool)
            .await
            .unwrap();
        sqlx::query("update environment_usage set token_count = 0")
            .execute(&app.pool)
            .await
            .unwrap();
    }
}

/// Cancel while two chunks of one step are written at once: the chunk that committed first
/// stays, the one waiting behind it writes nothing; whatever the timing, the job agrees with
/// itself.
#[sqlx::test]
async fn a_cancel_during_parallel_chunks_keeps_what_committed(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        chunks_of_two(s);
        s.jobs.parallel_chunks = 2;
    })
    .await;
    for round in 0..5 {
        let job = small_job(&app, &format!("Q{round}x"), 9).await;
        let mut runner = app.runner("r1");
        let step = tokio::spawn(async move {
            let _ = runner.step().await;
            runner
        });
        let (status, body) = cancel(&app, &job).await;
        assert_eq!(status, 202, "{body}");
        let mut runner = step.await.unwrap();
        app.drain(&mut runner).await;
        let body = assert_consistent(&app, &job).await;
        assert_eq!(body["status"], "CANCELED", "{body}");
        let processed = body["progress"]["processed"].as_i64().unwrap();
        assert!([0, 2, 4].contains(&processed), "{body}");
        sqlx::query("delete from oath_tokens where environment_id = $1")
            .bind(app.env)
            .execute(&app.pool)
            .await
            .unwrap();
        sqlx::query("update environment_usage set token_count = 0")
            .execute(&app.pool)
            .await
            .unwrap();
    }
}

#[sqlx::test]
async fn a_canceled_job_is_finished_for_limits_and_retention(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        chunks_of_two(s);
        s.jobs.max_unfinished_per_environment = 1;
    })
    .await;
    let first = small_job(&app, "F", 3).await;
    let (status, body) =
        call(app.job_request(&crate::support::app::create_job(numbered("G", 0..1)))).await;
    assert_error(status, &body, 429, "REQUEST_LIMITED");
    let (status, _) = cancel(&app, &first).await;
    assert_eq!(status, 202);
    small_job(&app, "G", 1).await;

    // Past its retention, a canceled job is purged like a finished one.
    sqlx::query("update oath_jobs set completed_at = now() - interval '2 hours' where id = $1")
        .bind(Uuid::parse_str(&first).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let purged = oath_service::jobs::retention::purge_once(
        &app.pool,
        std::time::Duration::from_secs(3600),
        10,
    )
    .await
    .unwrap();
    assert_eq!(purged, 1);
    let (status, _) = app.get_json(&format!("{}/{first}", app.jobs_path())).await;
    assert_eq!(status, 404);
}
