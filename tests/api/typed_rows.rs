//! The store reads rows into domain types: a value no domain type has is an error, never a
//! default that would send a job down the wrong path.

use serde_json::json;
use sqlx::PgPool;

use crate::support::app::{parts, seed_token, spawn_app};

#[sqlx::test]
async fn a_chunk_with_an_unknown_token_type_fails_its_step_instead_of_guessing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, job) = parts(
        app.submit_job(&json!({"type": "CREATE_OATH_TOKENS", "tokens": [seed_token()]}))
            .await,
    )
    .await;
    assert_eq!(status, 202, "{job}");
    // Chunks stored as arrays (a job queued before migration 20261208000002); a chunk stored as
    // one value is checked as it is decoded (`src/store/batch/encoding.rs`).
    assert_eq!(app.store_chunks_as_arrays(None).await, 1);
    sqlx::query("update oath_job_chunks set token_types = '{XOTP}'")
        .execute(&app.pool)
        .await
        .unwrap();
    let err = app.runner("r1").step().await.unwrap_err();
    assert!(
        err.to_string().contains("unknown token type \"XOTP\""),
        "{err}"
    );
    assert_eq!(app.count("select count(*) from oath_tokens").await, 0);
}

#[sqlx::test]
async fn jobs_and_results_read_back_as_their_types(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, job) = parts(
        app.submit_job(
            &json!({"type": "CREATE_OATH_TOKENS", "tokens": [seed_token(), seed_token()]}),
        )
        .await,
    )
    .await;
    app.run_jobs().await;
    let id = job["id"].as_str().unwrap();
    let (_, done) = app.get_json(&format!("{}/{id}", app.jobs_path())).await;
    assert_eq!(done["type"], "CREATE_OATH_TOKENS");
    assert_eq!(done["status"], "DONE");
    let (_, page) = app
        .get_json(&format!(
            "{}/{id}/results?outcome=DUPLICATE",
            app.jobs_path()
        ))
        .await;
    let results = page["_embedded"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["outcome"], "DUPLICATE");
    assert_eq!(results[0]["index"], 1);
}

/// The job list reads every listed job's embedded duplicates in one query; each job still gets
/// its own.
#[sqlx::test]
async fn the_job_list_embeds_each_jobs_own_duplicates(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = |serial: &str| {
        let mut t = seed_token();
        t["serialNumber"] = json!(serial);
        t
    };
    for serials in [vec!["A1", "A1"], vec!["B1", "B2", "B2", "A1"], vec!["C1"]] {
        let tokens: Vec<_> = serials.iter().map(|s| token(s)).collect();
        let (status, _) = parts(
            app.submit_job(&json!({"type": "CREATE_OATH_TOKENS", "tokens": tokens}))
                .await,
        )
        .await;
        assert_eq!(status, 202);
        app.run_jobs().await;
    }
    let (_, page) = app.get_json(&app.jobs_path()).await;
    let jobs = page["_embedded"]["oathJobs"].as_array().unwrap();
    let serials = |j: &serde_json::Value| -> Vec<String> {
        j["result"]["duplicates"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| x["serialNumber"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Newest first.
    assert_eq!(serials(&jobs[0]), Vec::<String>::new());
    assert_eq!(serials(&jobs[1]), ["B2", "A1"]);
    assert_eq!(serials(&jobs[2]), ["A1"]);
}
