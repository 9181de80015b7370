//! Bulk jobs over HTTP, with runners driven step by step by the test.

use futures_util::future::join_all;
use oath_service::jobs::runner::{RunnerPool, Step};
use oath_service::store::chunks::ChunkKey;
use oath_service::store::{chunk_transaction, tokens};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::support::app::{
    assert_error, call, create_job, details, expect_error, hotp_token, numbered, parts, send,
    spawn_app, spawn_app_with, wait_until, TestApp, BASE_URL,
};

/// The body of seed 000.
fn seed_000() -> Value {
    json!({"type": "CREATE_OATH_TOKENS", "tokens": [
        {"serialNumber": "2308734700388", "secret": "6EBD59F71A634C48C4619CD33F6C385C9237C9BA",
         "type": "HOTP", "hotp": {"counter": 456789}, "otpLength": 8},
        {"serialNumber": "2399934700388", "secret": "6EBD88F71A634C48C4619CD33F6C385C9237C9BA",
         "type": "TOTP", "totp": {"timeStep": 30}, "otpLength": 6, "hashAlgorithm": "HmacSHA512"},
        {"serialNumber": "2308734700397", "secret": "6EBD59F71A634C48C4619CB44F6C385C9237C9BC",
         "type": "HOTP", "otpLength": 8},
        {"serialNumber": "2308734700412", "secret": "6EBD59F71A634C48C4619CB33F6C356C9237C9BD",
         "type": "HOTP", "otpLength": 8},
        {"serialNumber": "2308734700444", "secret": "6EBD59F71A634C48C4619CB33F6C385C9237C9CA",
         "type": "HOTP", "hotp": {"counter": 456789}, "otpLength": 8},
        {"serialNumber": "2308734700567", "secret": "6EBD59F71A634C48C4619CB33F6C385C9237C9AB",
         "type": "HOTP", "hotp": {"counter": 456789}, "otpLength": 8},
        {"serialNumber": "2300004700388", "secret": "6EBD88F98A634C48C4619CD33F6C385C9237C9BA",
         "type": "TOTP", "totp": {"timeStep": 30}, "otpLength": 6, "hashAlgorithm": "HmacSHA512"},
        {"serialNumber": "2399934700300", "secret": "6EBD88F98A634C48C4619CD33F6C388C9237C9BA",
         "type": "TOTP", "totp": {"timeStep": 60}, "otpLength": 8, "hashAlgorithm": "HmacSHA256"}
    ]})
}

#[sqlx::test]
async fn seed_000_with_two_existing_serials_ends_done_with_masked_duplicates(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tokens = seed_000()["tokens"].as_array().unwrap().clone();
    for i in [3, 6] {
        assert_eq!(app.create_token(&tokens[i]).await.status(), 201);
    }

    let res = app.submit_job(&seed_000()).await;
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let (status, accepted) = parts(res).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    app.assert_links(&accepted, &location, &format!("/jobs/{id}"));
    assert_eq!(accepted["type"], "CREATE_OATH_TOKENS");
    assert_eq!(accepted["async"], true);
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(accepted["result"], json!({"created": 0}));
    assert_eq!(accepted["progress"], json!({"processed": 0, "total": 8}));
    // Accepted before any token is written.
    assert_eq!(app.count("select count(*) from oath_tokens").await, 2);

    let steps = app.run_jobs().await;
    assert!(
        matches!(steps.last(), Some(Step::Finished { failed: false, .. })),
        "{steps:?}"
    );

    let done = app.job(&id).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(
        done["result"],
        json!({"created": 6, "duplicates": [
            {"serialNumber": "2308734700412", "maskedSecret": "6E******"},
            {"serialNumber": "2300004700388", "maskedSecret": "6E******"}
        ]})
    );
    assert_eq!(done["progress"], json!({"processed": 8, "total": 8}));
    assert!(done["completedAt"].is_string());
    assert!(done.get("reason").is_none());
    // The alias path serves the same resource.
    let (_, alias) = app
        .get_json(&format!("/v1/environments/{}/jobs/{id}", app.env))
        .await;
    assert_eq!(alias, done);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 8);
    assert_eq!(
        app.count("select token_count from environment_usage").await,
        8
    );
    // Input secrets are gone once the job is done.
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);

    // Created tokens read back like single ones.
    let path = format!(
        "{}?filter=serialNumber%20eq%20%222399934700300%22",
        app.tokens_path()
    );
    let (_, page) = app.get_json(&path).await;
    let token = &page["_embedded"]["oathTokens"][0];
    assert_eq!(token["totp"], json!({"timeStep": 60, "drift": 0}));
    assert_eq!(token["hashAlgorithm"], "HmacSHA256");
    assert_eq!(token["otpLength"], 8);

    // Per-item results, in item order.
    let (status, results) = app
        .get_json(&format!("{}/{id}/results", app.jobs_path()))
        .await;
    assert_eq!(status, 200, "{results}");
    assert_eq!(results["size"], 8);
    let rows = results["_embedded"]["results"].as_array().unwrap();
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "CREATED",
            "CREATED",
            "CREATED",
            "DUPLICATE",
            "CREATED",
            "CREATED",
            "DUPLICATE",
            "CREATED"
        ]
    );
    assert_eq!(rows[0]["index"], 0);
    assert_eq!(rows[0]["serialNumber"], "2308734700388");
    assert!(rows[0]["tokenId"].is_string());
    assert!(rows[3].get("tokenId").is_none());
    assert_eq!(rows[3]["maskedSecret"], "6E******");
    let (_, dups) = app
        .get_json(&format!(
            "{}/{id}/results?outcome=DUPLICATE",
            app.jobs_path()
        ))
        .await;
    assert_eq!(dups["size"], 2);
}

#[sqlx::test]
async fn seed_002_revoke_round_trips(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ids = app.create_hotp_tokens(numbered("R", 0..3)).await;
    let unknown = Uuid::new_v4().to_string();
    let body = json!({"type": "REVOKE_OATH_TOKENS", "async": true, "forceUnpair": false,
                      "tokenIds": [ids[0], unknown, ids[1], ids[2], ids[0]]});
    let accepted = app.submit(&body).await;
    assert_eq!(accepted["type"], "REVOKE_OATH_TOKENS");
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(accepted["result"], json!({"revoked": 0}));
    let id = accepted["id"].as_str().unwrap();
    app.run_jobs().await;
    let done = app.job(id).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"], json!({"revoked": 3, "notFound": 2}));
    assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
    assert_eq!(
        app.count("select token_count from environment_usage").await,
        0
    );
    let (_, results) = app
        .get_json(&format!("{}/{id}/results", app.jobs_path()))
        .await;
    let outcomes: Vec<&str> = results["_embedded"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["REVOKED", "NOT_FOUND", "REVOKED", "REVOKED", "NOT_FOUND"]
    );
    assert_eq!(
        results["_embedded"]["results"][1]["tokenId"],
        unknown.as_str()
    );
    assert_eq!(results["_embedded"]["results"][0]["serialNumber"], "R0");
}

#[sqlx::test]
async fn revoke_skips_paired_tokens_unless_forced(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let (_, t) = parts(app.create_token(&hotp_token(&format!("P{i}"))).await).await;
        ids.push(Uuid::parse_str(t["id"].as_str().unwrap()).unwrap());
    }
    // Paired through the store, as pairing would.
    sqlx::query("update oath_tokens set status = 'PAIRED', user_id = 'u1' where id = $1")
        .bind(ids[0])
        .execute(&app.pool)
        .await
        .unwrap();
    let body =
        |force: bool| json!({"type": "REVOKE_OATH_TOKENS", "forceUnpair": force, "tokenIds": ids});
    let done = app.submit_and_run(&body(false)).await;
    assert_eq!(done["result"], json!({"revoked": 1, "skippedPaired": 1}));
    let done = app.submit_and_run(&body(true)).await;
    assert_eq!(done["result"], json!({"revoked": 1, "notFound": 1}));
    assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
}

#[sqlx::test]
async fn invalid_items_reject_the_whole_job_and_store_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut body = create_job(numbered("V", 0..5));
    body["tokens"][1]["otpLength"] = json!(7);
    body["tokens"][3]["secret"] = json!("zz");
    body["tokens"][4]["hotp"] = json!({"counter": -1});
    let (status, res) = parts(app.submit_job(&body).await).await;
    assert_error(status, &res, 400, "INVALID_DATA");
    let targets: Vec<String> = details(&res).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        targets,
        [
            "tokens[1].otpLength",
            "tokens[3].secret",
            "tokens[4].hotp.counter"
        ]
    );

    // The type must agree with the media type.
    let res = app
        .request(Method::POST, &app.jobs_path())
        .header(
            "content-type",
            oath_service::domain::job::JobType::REVOKE_MEDIA_TYPE,
        )
        .body(create_job(["X1".to_string()]).to_string())
        .send()
        .await
        .unwrap();
    let res = expect_error(res, 400, "INVALID_DATA").await;
    assert!(details(&res).iter().any(|(_, t)| t == "type"));

    // Plain JSON is not a job media type.
    let res = app
        .request(Method::POST, &app.jobs_path())
        .json(&create_job(["X1".to_string()]))
        .send()
        .await
        .unwrap();
    expect_error(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;

    // Empty, and one more than the limit.
    let (status, res) = parts(
        app.submit_job(&json!({"type": "CREATE_OATH_TOKENS", "tokens": []}))
            .await,
    )
    .await;
    assert_error(status, &res, 400, "INVALID_DATA");
    let too_many = create_job(numbered("M", 0..100_001));
    let (status, res) = parts(app.submit_job(&too_many).await).await;
    assert_error(status, &res, 400, "INVALID_DATA");
    assert_eq!(
        details(&res),
        vec![("INVALID_VALUE".to_string(), "tokens".to_string())]
    );

    app.assert_empty(&["oath_jobs", "oath_job_chunks", "job_results", "oath_tokens"])
        .await;
}

#[sqlx::test]
async fn many_invalid_items_are_capped_at_1000_details(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut body = create_job(numbered("C", 0..1500));
    for t in body["tokens"].as_array_mut().unwrap() {
        t["otpLength"] = json!(5);
    }
    let (status, res) = parts(app.submit_job(&body).await).await;
    assert_error(status, &res, 400, "INVALID_DATA");
    assert_eq!(res["details"].as_array().unwrap().len(), 1000);
    assert!(res["message"].as_str().unwrap().contains("1500"), "{res}");
}

#[sqlx::test]
async fn oversized_job_bodies_are_413(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.max_body_bytes = 2048).await;
    let (status, res) = parts(app.submit_job(&create_job(numbered("B", 0..100))).await).await;
    assert_error(status, &res, 413, "REQUEST_TOO_LARGE");
}

#[sqlx::test]
async fn a_second_identical_job_creates_nothing(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 7;
        s.jobs.parallel_chunks = 2;
    })
    .await;
    let body = create_job(numbered("D", 0..50));
    let first = app.submit(&body).await;
    let second = app.submit(&body).await;
    let steps = app.run_jobs().await;
    // 8 chunks each, two a step.
    assert_eq!(steps.len(), 2 * 4, "{steps:?}");
    let first = app.job(first["id"].as_str().unwrap()).await;
    let second = app.job(second["id"].as_str().unwrap()).await;
    assert_eq!(first["result"], json!({"created": 50}));
    assert_eq!(second["result"]["created"], 0);
    // Not cut, so no count beside the list (as in the reference API's job).
    assert!(second["result"].get("duplicatesCount").is_none());
    assert_eq!(second["result"]["duplicates"].as_array().unwrap().len(), 50);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 50);
}

#[sqlx::test]
async fn repeated_serials_in_one_job_are_duplicates(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 2).await;
    let body = create_job(["A", "B", "A", "C", "C", "A"].map(String::from));
    let done = app.submit_and_run(&body).await;
    assert_eq!(done["result"]["created"], 3);
    assert_eq!(done["result"]["duplicates"].as_array().unwrap().len(), 3);
}

#[sqlx::test]
async fn chunks_written_at_once_keep_item_order_for_repeats_and_the_quota(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 10;
        s.jobs.parallel_chunks = 4;
        s.limits.tokens_per_environment = 45;
    })
    .await;
    // Item 19, 29, ... repeats the serial of item 5, 15, ...: in the chunk before, written at
    // the same time, or in an earlier step.
    let serial = |i: usize| format!("R{}", if i >= 10 && i % 10 == 9 { i - 14 } else { i });
    let accepted = app.submit(&create_job((0..80).map(serial))).await;
    let mut runner = app.runner("r1");
    assert_eq!(
        runner.step().await.unwrap(),
        Step::Progress {
            job: accepted["id"].as_str().unwrap().parse().unwrap(),
            processed: 40,
            total: 80
        }
    );
    app.drain(&mut runner).await;

    let mut created = 0;
    let expected: Vec<&str> = (0..80)
        .map(|i| {
            if i >= 10 && i % 10 == 9 {
                "DUPLICATE"
            } else if created < 45 {
                created += 1;
                "CREATED"
            } else {
                "LIMIT_EXCEEDED"
            }
        })
        .collect();
    let outcomes: Vec<String> = sqlx::query_scalar("select outcome from job_results order by idx")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(outcomes, expected);
    let done = app.job(accepted["id"].as_str().unwrap()).await;
    assert_eq!(done["result"]["created"], 45);
    assert_eq!(done["result"]["failed"], 80 - 45 - 7);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 45);
    assert_eq!(
        app.count("select token_count from environment_usage").await,
        45
    );
}

#[sqlx::test]
async fn a_large_job_sealed_on_two_threads_keeps_ids_and_repeats_in_item_order(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Past the size at which a job is sealed on two threads; every 1,000th item from the
    // second chunk on repeats the serial of the item 900 before it.
    let n = 12_000;
    let repeats = |i: usize| i >= 1000 && i.is_multiple_of(1000);
    let serial = |i: usize| format!("T{:05}", if repeats(i) { i - 900 } else { i });
    let done = app.submit_and_run(&create_job((0..n).map(serial))).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"]["created"], n - 11);
    assert_eq!(done["result"]["duplicates"].as_array().unwrap().len(), 11);
    // Token ids follow item order.
    let by_id: Vec<String> =
        sqlx::query_scalar("select serial_number from oath_tokens order by id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let expected: Vec<String> = (0..n).filter(|&i| !repeats(i)).map(serial).collect();
    assert_eq!(by_id, expected);
}

#[sqlx::test]
async fn concurrent_jobs_never_pass_the_quota(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.limits.tokens_per_environment = 150;
        s.jobs.chunk_size = 10;
    })
    .await;
    let a = app.submit(&create_job(numbered("QA", 0..100))).await;
    let b = app.submit(&create_job(numbered("QB", 0..100))).await;
    // Two runners race over both jobs.
    let (mut r1, mut r2) = (app.runner("r1"), app.runner("r2"));
    let (s1, s2) = tokio::join!(app.drain(&mut r1), app.drain(&mut r2));
    assert!(!s1.is_empty() && !s2.is_empty());
    assert_eq!(app.count("select count(*) from oath_tokens").await, 150);
    assert_eq!(
        app.count("select token_count from environment_usage").await,
        150
    );
    let mut created = 0;
    let mut failed = 0;
    for id in [&a["id"], &b["id"]] {
        let done = app.job(id.as_str().unwrap()).await;
        assert_eq!(done["status"], "DONE");
        created += done["result"]["created"].as_i64().unwrap();
        failed += done["result"]["failed"].as_i64().unwrap_or(0);
    }
    assert_eq!((created, failed), (150, 50));
    assert_eq!(
        app.count("select count(*) from job_results where outcome = 'LIMIT_EXCEEDED'")
            .await,
        50
    );
}

#[sqlx::test]
async fn a_runner_that_lost_its_lease_writes_nothing(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 5;
        s.jobs.parallel_chunks = 2;
    })
    .await;
    let accepted = app.submit(&create_job(numbered("L", 0..30))).await;
    let id = accepted["id"].as_str().unwrap();
    let mut slow = app.runner("slow");
    assert!(matches!(
        slow.step().await.unwrap(),
        Step::Progress { processed: 10, .. }
    ));
    // Its lease runs out; another runner takes the job over.
    app.expire_leases().await;
    let mut fast = app.runner("fast");
    assert!(matches!(
        fast.step().await.unwrap(),
        Step::Progress { processed: 20, .. }
    ));
    assert!(matches!(slow.step().await.unwrap(), Step::LeaseLost { .. }));
    app.drain(&mut fast).await;
    let done = app.job(id).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"], json!({"created": 30}));
    assert_eq!(app.count("select count(*) from job_results").await, 30);
    assert_eq!(app.count("select attempt::bigint from oath_jobs").await, 2);
    // Counted in /metrics (at least: the registry is per process).
    let metrics = app.get_anonymous("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("oath_job_lease_losses_total ") >= 1.0);
    assert!(value("oath_job_claims_total ") >= 2.0);
}

#[sqlx::test]
async fn a_job_whose_input_is_gone_fails_with_a_reason(pool: PgPool) {
    let app = spawn_app(pool).await;
    let accepted = app.submit(&create_job(numbered("F", 0..3))).await;
    sqlx::query("delete from oath_job_chunks where first_idx = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    app.run_jobs().await;
    let failed = app.job(accepted["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "FAILED");
    assert!(failed["reason"]
        .as_str()
        .unwrap()
        .contains("submit the job again"));
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
}

/// A chunk's input damaged at rest or cut short fails its job with a reason, as a missing one
/// does: nothing is written from it.
#[sqlx::test]
async fn a_job_whose_input_is_damaged_fails_with_a_reason(pool: PgPool) {
    let app = spawn_app(pool).await;
    for damage in [
        // A byte of the first token's offset changed.
        "overlay(input placing '\\xff'::bytea from 20 for 1)",
        // The last bytes cut off.
        "substring(input from 1 for length(input) - 10)",
        "''::bytea",
        "'\\x4f544201ffffffff'::bytea",
    ] {
        let accepted = app.submit(&create_job(numbered("D", 0..3))).await;
        let id = accepted["id"].as_str().unwrap();
        sqlx::query(&format!(
            "update oath_job_chunks set input = {damage} where job_id = $1"
        ))
        .bind(Uuid::parse_str(id).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
        let steps = app.run_jobs().await;
        assert!(
            matches!(steps.last(), Some(Step::Finished { failed: true, .. })),
            "{damage}: {steps:?}"
        );
        let failed = app.job(id).await;
        assert_eq!(failed["status"], "FAILED", "{damage}");
        assert!(failed["reason"]
            .as_str()
            .unwrap()
            .contains("submit the job again"));
        assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
        assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
    }
}

/// A job queued before migration 20261208000002 has its create chunks as column arrays: after
/// the upgrade it runs as it would have, beside chunks stored as one value.
#[sqlx::test]
async fn a_job_queued_as_arrays_before_the_upgrade_still_runs(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 10).await;
    // 25 items in three chunks; S3 repeated in the second chunk, S4 in the third, S5 within the
    // first.
    let mut serials: Vec<String> = numbered("S", 0..20).collect();
    serials[12] = "S3".into();
    serials[7] = "S5".into();
    serials.extend(numbered("T", 0..4));
    serials.push("S4".into());
    let accepted = app.submit(&create_job(serials)).await;
    // The first and last chunks as arrays, the second as a value.
    assert_eq!(app.store_chunks_as_arrays(Some(0)).await, 1);
    assert_eq!(app.store_chunks_as_arrays(Some(20)).await, 1);
    assert_eq!(
        app.count("select count(*) from oath_job_chunks where input is null")
            .await,
        2
    );
    let steps = app.run_jobs().await;
    assert!(
        matches!(steps.last(), Some(Step::Finished { failed: false, .. })),
        "{steps:?}"
    );
    let done = app.job(accepted["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"]["created"], 22, "{done}");
    assert_eq!(
        done["result"]["duplicates"].as_array().unwrap().len(),
        3,
        "{done}"
    );
    assert_eq!(app.count("select count(*) from oath_tokens").await, 22);
    assert_eq!(app.count("select count(*) from job_results").await, 25);
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
    // The tokens read back like single ones.
    let path = format!("{}?filter=serialNumber%20eq%20%22T3%22", app.tokens_path());
    let (_, page) = app.get_json(&path).await;
    let token = &page["_embedded"]["oathTokens"][0];
    assert_eq!(token["serialNumber"], "T3", "{page}");
}

#[sqlx::test]
async fn idempotency_key_replays_and_conflicts(pool: PgPool) {
    let app = spawn_app(pool).await;
    let post_job = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            app.request(Method::POST, &app.jobs_path())
                .header(
                    "content-type",
                    oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
                )
                .header("idempotency-key", key)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    let body = create_job(numbered("I", 0..3));
    // Concurrent retries with one key: one job.
    let responses = join_all((0..5).map(|_| post_job("job-key-1", body.clone()))).await;
    let mut bodies = Vec::new();
    for res in responses {
        let (status, b) = parts(res).await;
        assert_eq!(status, 202, "{b}");
        bodies.push(b);
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    assert_eq!(app.count("select count(*) from oath_jobs").await, 1);
    let (status, res) = parts(post_job("job-key-1", create_job(["Other".to_string()])).await).await;
    assert_error(status, &res, 409, "CONFLICT");

    // Single creates too.
    let create = |key: &'static str| {
        let app = &app;
        async move {
            app.request(Method::POST, &app.tokens_path())
                .header("idempotency-key", key)
                .json(&hotp_token("ONE"))
                .send()
                .await
                .unwrap()
        }
    };
    let (s1, b1) = parts(create("tok-key").await).await;
    let (s2, b2) = parts(create("tok-key").await).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(b1, b2);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 1);
    // Without a key the retry is a duplicate.
    let (status, _) = parts(app.create_token(&hotp_token("ONE")).await).await;
    assert_eq!(status, 400);
}

#[sqlx::test]
async fn async_false_waits_for_the_job(pool: PgPool) {
    let app = spawn_app(pool).await;
    let runners = RunnerPool::start(app.pool.clone(), Arc::new(app.settings.clone()));
    let mut body = create_job(numbered("S", 0..20));
    body["async"] = json!(false);
    let (status, done) = parts(app.submit_job(&body).await).await;
    runners.stop().await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["async"], false);
    assert_eq!(done["result"], json!({"created": 20}));
}

/// `"async": false` is answered when its job finishes, however it finishes (the last chunk, or a
/// cancel from another request): the request is woken by the job's announcement, long before its
/// wait of 60 s would run out and read the job again.
#[sqlx::test]
async fn async_false_is_woken_when_its_job_finishes(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.sync_wait_seconds = 60).await;
    for finish in ["DONE", "CANCELED"] {
        let mut body = create_job(numbered(&format!("N{finish}"), 0..5));
        body["async"] = json!(false);
        let waiting = tokio::spawn(send(app.job_request(&body)));
        wait_until("the job is stored", Duration::from_secs(30), async || {
            app.count("select count(*) from oath_jobs where status = 'PENDING'")
                .await
                == 1
        })
        .await;
        let finished_at = std::time::Instant::now();
        if finish == "DONE" {
            app.run_jobs().await;
        } else {
            let id: Uuid = sqlx::query_scalar("select id from oath_jobs where status = 'PENDING'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
            let (status, _) =
                call(app.request(Method::POST, &format!("{}/{id}/cancel", app.jobs_path()))).await;
            assert_eq!(status, 202);
        }
        let (status, answer) = parts(waiting.await.unwrap()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], finish, "{answer}");
        // Far below the 60 s after which a wait that missed the announcement would end.
        assert!(finished_at.elapsed() < Duration::from_secs(30), "{finish}");
    }
}

#[sqlx::test]
async fn async_false_past_the_wait_answers_202_the_job_finishes_and_a_retry_replays(pool: PgPool) {
    // No runner works until the test drives one, so the wait always runs out.
    let app = spawn_app_with(pool, |s| s.jobs.sync_wait_seconds = 1).await;
    let mut body = create_job(numbered("W", 0..5));
    body["async"] = json!(false);
    let post = || async {
        app.request(Method::POST, &app.jobs_path())
            .header(
                "content-type",
                oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
            )
            .header("idempotency-key", "sync-wait-key")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    };
    let asked = std::time::Instant::now();
    let res = post().await;
    // A lower bound only: the request waited for the job before giving up on it.
    assert!(asked.elapsed() >= std::time::Duration::from_secs(1));
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let (status, first) = parts(res).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["async"], false);
    assert!(
        first["status"] == "PENDING" || first["status"] == "IN_PROGRESS",
        "{first}"
    );
    let id = first["id"].as_str().unwrap();
    assert!(location.ends_with(id), "{location}");

    // The job goes on without the request.
    app.run_jobs().await;
    let done = app.job(id).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], json!({"created": 5}));

    // A retry with the same key gets the stored answer, and does nothing again.
    let res = post().await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.headers()["location"].to_str().unwrap(), location);
    let (status, again) = parts(res).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first);
    assert_eq!(app.count("select count(*) from oath_jobs").await, 1);
    assert_eq!(app.count("select count(*) from oath_tokens").await, 5);
}

#[sqlx::test]
async fn a_revoke_job_cannot_reach_another_environment(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Environment B's tokens and a job of its own, through B's path and token.
    let env_b = Uuid::new_v4();
    let bearer_b = app.token_for(env_b, &oath_service::auth::Scope::ALL);
    let b_path = |rest: &str| format!("/v1/environments/{env_b}{rest}");
    let mut b_ids = Vec::new();
    for i in 0..2 {
        let res = send(
            app.request_as(&bearer_b, Method::POST, &b_path("/oathTokens"))
                .json(&hotp_token(&format!("B{i}"))),
        )
        .await;
        let (status, token) = parts(res).await;
        assert_eq!(status, 201, "{token}");
        b_ids.push(token["id"].as_str().unwrap().to_string());
    }
    let res = send(
        app.request_as(&bearer_b, Method::POST, &b_path("/oathJobs"))
            .header(
                "content-type",
                oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
            )
            .body(create_job(["B9".to_string()]).to_string()),
    )
    .await;
    let (status, b_job) = parts(res).await;
    assert_eq!(status, 202, "{b_job}");
    let b_job = b_job["id"].as_str().unwrap().to_string();

    // A's revoke job names B's token ids (and one of A's own, which it does revoke).
    let (_, own) = parts(app.create_token(&hotp_token("A0")).await).await;
    let own = own["id"].as_str().unwrap().to_string();
    let accepted = app
        .submit(&json!({"type": "REVOKE_OATH_TOKENS", "forceUnpair": true,
                "tokenIds": [b_ids[0], own, b_ids[1]]}))
        .await;
    let a_job = accepted["id"].as_str().unwrap();
    app.run_jobs().await;
    let done = app.job(a_job).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], json!({"revoked": 1, "notFound": 2}));
    let (status, results) = app
        .get_json(&format!("{}/{a_job}/results", app.jobs_path()))
        .await;
    assert_eq!(status, 200, "{results}");
    let rows: Vec<(&str, &str)> = results["_embedded"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tokenId"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (b_ids[0].as_str(), "NOT_FOUND"),
            (own.as_str(), "REVOKED"),
            (b_ids[1].as_str(), "NOT_FOUND")
        ]
    );
    // B's results rows never carry B's serial numbers into A's job.
    assert!(!results.to_string().contains("\"B0\""), "{results}");

    // B's tokens are untouched.
    for id in &b_ids {
        let res = send(app.request_as(
            &bearer_b,
            Method::GET,
            &b_path(&format!("/oathTokens/{id}")),
        ))
        .await;
        let (status, token) = parts(res).await;
        assert_eq!(status, 200, "{token}");
        assert_eq!(token["status"], "AVAILABLE");
    }

    // B's job and its results are not found through A's path with A's token.
    for path in [
        format!("{}/{b_job}", app.jobs_path()),
        format!("/v1/environments/{}/jobs/{b_job}", app.env),
        format!("{}/{b_job}/results", app.jobs_path()),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
    let (_, page) = app.get_json(&app.jobs_path()).await;
    let listed: Vec<&str> = page["_embedded"]["oathJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [a_job]);
}

#[sqlx::test]
async fn jobs_list_newest_first_and_are_scoped(pool: PgPool) {
    let app = spawn_app(pool).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let accepted = app.submit(&create_job([format!("J{i}")])).await;
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let (status, page) = app.get_json(&format!("{}?limit=2", app.jobs_path())).await;
    assert_eq!(status, 200, "{page}");
    let first: Vec<&str> = page["_embedded"]["oathJobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[0].as_str(), ids[1].as_str()]);
    let next = page["_links"]["next"]["href"]
        .as_str()
        .unwrap()
        .strip_prefix(BASE_URL)
        .unwrap()
        .to_string();
    let (_, page) = app.get_json(&next).await;
    assert_eq!(page["size"], 1);
    assert_eq!(page["_embedded"]["oathJobs"][0]["id"], ids[2].as_str());
    assert!(page["_links"].get("next").is_none());

    // Another environment's job is not found through that environment's own path and token.
    let other_env = Uuid::new_v4();
    let other = app.token_for(other_env, &oath_service::auth::Scope::ALL);
    for path in [
        format!("/v1/environments/{other_env}/oathJobs/{}", ids[0]),
        format!("/v1/environments/{other_env}/jobs/{}", ids[0]),
        format!("/v1/environments/{other_env}/oathJobs/{}/results", ids[0]),
    ] {
        let res = send(app.request_as(&other, Method::GET, &path)).await;
        expect_error(res, 404, "NOT_FOUND").await;
    }
    let (status, page) = call(app.request_as(
        &other,
        Method::GET,
        &format!("/v1/environments/{other_env}/oathJobs"),
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["size"], 0, "{page}");
    // A token for another environment is 403 on this one's path, before any lookup; so is a
    // missing scope, whether or not the job exists.
    let res = send(app.request_as(
        &other,
        Method::GET,
        &format!("{}/{}", app.jobs_path(), ids[0]),
    ))
    .await;
    assert_eq!(res.status(), 403);
    let read_only = app.token(&[oath_service::auth::Scope::TokensRead]);
    for path in [
        app.jobs_path(),
        format!("{}/{}", app.jobs_path(), ids[0]),
        format!("{}/{}/results", app.jobs_path(), Uuid::new_v4()),
    ] {
        let res = send(app.request_as(&read_only, Method::GET, &path)).await;
        assert_eq!(res.status(), 403, "{path}");
    }
    let res = send(
        app.request_as(&read_only, Method::POST, &app.jobs_path())
            .header(
                "content-type",
                oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
            )
            .body(create_job(["Z".to_string()]).to_string()),
    )
    .await;
    assert_eq!(res.status(), 403);
    let (status, body) = app
        .get_json(&format!("{}/{}", app.jobs_path(), Uuid::new_v4()))
        .await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = app
        .get_json(&format!(
            "{}/{}/results?outcome=NOPE",
            app.jobs_path(),
            ids[0]
        ))
        .await;
    assert_error(status, &body, 400, "INVALID_REQUEST");
}

#[sqlx::test]
async fn results_page_through_every_item(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 4).await;
    let accepted = app.submit(&create_job(numbered("G", 0..11))).await;
    let id = accepted["id"].as_str().unwrap();
    app.run_jobs().await;
    let mut next = Some(format!("{}/{id}/results?limit=5", app.jobs_path()));
    let mut indices = Vec::new();
    while let Some(path) = next {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        indices.extend(
            page["_embedded"]["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["index"].as_i64().unwrap()),
        );
        next = page["_links"]["next"]["href"]
            .as_str()
            .map(|h| h.strip_prefix(BASE_URL).unwrap().to_string());
    }
    assert_eq!(indices, (0..11).collect::<Vec<i64>>());
}

/// The indices of every result that `path` and its `next` links lead to, and the pages read.
async fn result_indices(app: &TestApp, path: String) -> (Vec<i64>, usize) {
    let (mut next, mut indices, mut pages) = (Some(path), Vec::new(), 0);
    while let Some(path) = next {
        let (status, page) = parts(app.get_path(&path).await).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        indices.extend(
            page["_embedded"]["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["index"].as_i64().unwrap()),
        );
        next = page["_links"]["next"]["href"]
            .as_str()
            .map(|h| h.strip_prefix(BASE_URL).unwrap().to_string());
    }
    (indices, pages)
}

/// Results are stored a chunk to a row; pages of one outcome (or all) read the same items in item
/// order whatever the page size and wherever chunk boundaries fall, and the embedded duplicates
/// are in item order.
#[sqlx::test]
async fn results_of_one_outcome_page_across_chunks(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 7).await;
    let serial = |i: i64| format!("P{i:02}");
    app.submit(&create_job((0..60).filter(|i| i % 3 == 0).map(serial)))
        .await;
    app.drain(&mut app.runner("r1")).await;
    let second = app.submit(&create_job((0..60).map(serial))).await;
    app.drain(&mut app.runner("r1")).await;
    let id = second["id"].as_str().unwrap();
    let duplicates: Vec<i64> = (0..60).filter(|i| i % 3 == 0).collect();
    let created: Vec<i64> = (0..60).filter(|i| i % 3 != 0).collect();
    for (query, expected) in [
        ("", (0..60).collect::<Vec<i64>>()),
        ("&outcome=DUPLICATE", duplicates.clone()),
        ("&outcome=CREATED", created),
        ("&outcome=REVOKED", vec![]),
    ] {
        for limit in [1, 3, 7, 8, 20, 1000] {
            let path = format!("{}/{id}/results?limit={limit}{query}", app.jobs_path());
            let (indices, pages) = result_indices(&app, path).await;
            assert_eq!(indices, expected, "limit {limit}{query}");
            assert_eq!(
                pages,
                expected.len().div_ceil(limit).max(1),
                "limit {limit}{query}"
            );
        }
    }
    let done = app.job(id).await;
    let embedded: Vec<&str> = done["result"]["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serialNumber"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = duplicates.into_iter().map(serial).collect();
    assert_eq!(embedded, expected);
    assert!(done["result"].get("duplicatesCount").is_none(), "{done}");
}

#[sqlx::test]
async fn a_100k_job_creates_every_token_and_a_second_one_only_duplicates(pool: PgPool) {
    const N: usize = 100_000;
    let app = spawn_app(pool).await;
    let body = create_job((0..N).map(|i| format!("H{i:06}")));
    let first = app.submit(&body).await;
    let mut runner = app.runner("r1");
    let steps = app.drain(&mut runner).await;
    assert_eq!(steps.len(), N / 1000 / app.settings.jobs.parallel_chunks);
    let first = app.job(first["id"].as_str().unwrap()).await;
    assert_eq!(first["status"], "DONE");
    assert_eq!(first["result"], json!({"created": N}));
    assert_eq!(
        app.count("select count(*) from oath_tokens").await,
        N as i64
    );

    let second = app.submit(&body).await;
    app.drain(&mut runner).await;
    let second = app.job(second["id"].as_str().unwrap()).await;
    assert_eq!(second["status"], "DONE");
    assert_eq!(second["result"]["created"], 0);
    assert_eq!(second["result"]["duplicatesCount"], N);
    let embedded = second["result"]["duplicates"].as_array().unwrap();
    assert_eq!(embedded.len(), 1000);
    // The first thousand, in item order: chunk 0's, not any thousand.
    assert_eq!(embedded[0]["serialNumber"], "H000000");
    assert_eq!(embedded[999]["serialNumber"], "H000999");
    assert_eq!(
        app.count("select count(*) from oath_tokens").await,
        N as i64
    );
    assert_eq!(
        app.count("select count(*) from job_results where outcome = 'DUPLICATE'")
            .await,
        N as i64
    );
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
}

#[sqlx::test]
async fn unreadable_rows_become_invalid_results(pool: PgPool) {
    use oath_service::domain::job::{CreateItem, InvalidRow, NewJob};
    use oath_service::domain::token::TokenSource;
    use oath_service::domain::NewToken;

    let app = spawn_app_with(pool, |s| s.jobs.chunk_size = 2).await;
    let token = |serial: &str| {
        CreateItem::Token(NewToken::parse(&hotp_token(serial), TokenSource::Single).unwrap())
    };
    let invalid = |row_number: i64, serial: Option<&str>| {
        CreateItem::Invalid(InvalidRow {
            row_number,
            serial_number: serial.map(str::to_string),
            message: format!("row {row_number}: secret is not hex"),
        })
    };
    // As a file import would submit it: rows 1-5, two of them unreadable.
    let job = NewJob::Create {
        is_async: true,
        items: vec![
            token("F1"),
            invalid(2, Some("F2")),
            invalid(3, None),
            token("F4"),
            token("F1"),
        ],
    };
    let (active, keys) = app.settings.crypto.decoded_keys().unwrap();
    let cipher =
        std::sync::Arc::new(oath_service::crypto::SecretCipher::new(active, &keys).unwrap());
    let mut tx = app.pool.begin().await.unwrap();
    let id = Uuid::now_v7();
    let origin = oath_service::events::Origin::system();
    oath_service::jobs::queue::enqueue(&mut tx, app.env, id, job, 2, cipher, &origin)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.run_jobs().await;

    let done = app.job(&id.to_string()).await;
    assert_eq!(done["status"], "DONE");
    assert_eq!(done["result"]["created"], 2);
    assert_eq!(done["result"]["duplicates"].as_array().unwrap().len(), 1);
    assert_eq!(done["result"]["failed"], 2);
    let (_, page) = app
        .get_json(&format!("{}/{id}/results", app.jobs_path()))
        .await;
    let rows = page["_embedded"]["results"].as_array().unwrap();
    let outcomes: Vec<&str> = rows
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["CREATED", "INVALID", "INVALID", "CREATED", "DUPLICATE"]
    );
    assert_eq!(rows[1]["rowNumber"], 2);
    assert_eq!(rows[1]["serialNumber"], "F2");
    assert_eq!(rows[1]["message"], "row 2: secret is not hex");
    assert!(rows[2].get("serialNumber").is_none());
    assert_eq!(rows[2]["index"], 2);
}

#[sqlx::test]
async fn a_job_claimed_too_often_fails_with_a_reason(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.jobs.chunk_size = 1;
        s.jobs.parallel_chunks = 2;
        s.jobs.max_attempts = 2;
    })
    .await;
    let accepted = app.submit(&create_job(numbered("A", 0..10))).await;
    // Each runner dies after one chunk: its lease runs out and the next one claims the job.
    for n in 0..2 {
        let mut runner = app.runner(&format!("r{n}"));
        assert!(matches!(
            runner.step().await.unwrap(),
            Step::Progress { .. }
        ));
        app.expire_leases().await;
    }
    let steps = app.drain(&mut app.runner("r3")).await;
    assert!(
        matches!(steps.as_slice(), [Step::Finished { failed: true, .. }]),
        "{steps:?}"
    );
    let failed = app.job(accepted["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "FAILED");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted 2 times"),
        "{failed}"
    );
    assert_eq!(failed["progress"]["processed"], 4);
    // What was committed stays; the rest of the input is gone.
    assert_eq!(app.count("select count(*) from oath_tokens").await, 4);
    assert_eq!(app.count("select count(*) from oath_job_chunks").await, 0);
}

/// A chunk's statements take arrays of 1,000 ids; for such an array the planner's own choice is
/// a hash join over a scan of every token of the environment, so that each chunk would read the
/// whole environment. The chunk's transaction has them probe the index once per id.
#[sqlx::test]
async fn a_revoke_chunk_probes_the_index_instead_of_scanning_the_environment(pool: PgPool) {
    let env = Uuid::new_v4();
    sqlx::query(
        "insert into oath_tokens (environment_id, id, serial_number, type, otp_length,
                                  hash_algorithm, counter, secret_ciphertext, secret_key_id)
         select $1, gen_random_uuid(), 'S' || g, 'HOTP', 6, 'HmacSHA1', 0,
                decode(repeat('00', 60), 'hex'), 'a'
         from generate_series(1, 20000) g",
    )
    .bind(env)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("analyze oath_tokens")
        .execute(&pool)
        .await
        .unwrap();
    let ids: Vec<Uuid> =
        sqlx::query_scalar("select id from oath_tokens order by serial_number limit 1000")
            .fetch_all(&pool)
            .await
            .unwrap();

    let mut tx = pool.begin().await.unwrap();
    let chunk = ChunkKey {
        env,
        job_id: Uuid::new_v4(),
        first_idx: 0,
    };
    chunk_transaction(&mut tx, chunk, false).await.unwrap();
    // Counted before and after: PostgreSQL 15 also reports, as this transaction's, scans of an
    // earlier transaction of the same connection whose statistics it has not flushed yet.
    let scans = "select seq_scan, idx_scan from pg_stat_xact_user_tables \
                 where relname = 'oath_tokens'";
    let (seq_before, index_before): (i64, i64) =
        sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    let (revoked, paired) = tokens::revoke(&mut tx, env, &ids, false).await.unwrap();
    assert_eq!((revoked.len(), paired.len()), (1000, 0));
    let (seq_after, index_after): (i64, i64) =
        sqlx::query_as(scans).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(
        seq_after - seq_before,
        0,
        "index scans: {}",
        index_after - index_before
    );
    assert!(index_after > index_before);
    tx.commit().await.unwrap();
}
