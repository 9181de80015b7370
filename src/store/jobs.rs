//! Reading jobs and their results for the API. Writing them is the queue's job (`jobs::queue`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// Duplicates embedded in a create job's representation; all of them are in its results.
pub const EMBEDDED_DUPLICATES: i64 = 1000;

#[derive(Debug, Clone)]
pub struct JobRow {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub job_type: String,
    pub is_async: bool,
    pub status: String,
    pub reason: Option<String>,
    pub total: i32,
    pub processed: i32,
    pub created: i32,
    pub duplicates: i32,
    pub revoked: i32,
    pub not_found: i32,
    pub skipped_paired: i32,
    pub failed: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct ResultRow {
    pub idx: i32,
    pub row_number: Option<i64>,
    pub serial_number: Option<String>,
    pub token_id: Option<Uuid>,
    pub outcome: String,
    pub masked_secret: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Duplicate {
    pub serial_number: String,
    pub masked_secret: String,
}

pub async fn get(pool: &PgPool, env: Uuid, id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"select environment_id, id, type as job_type, async as is_async, status, reason, total,
                  processed, created, duplicates, revoked, not_found, skipped_paired, failed,
                  created_at, updated_at, completed_at
           from oath_jobs where environment_id = $1 and id = $2"#,
        env,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Newest first (ids are time-ordered), before `before`.
pub async fn list(
    pool: &PgPool,
    env: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"select environment_id, id, type as job_type, async as is_async, status, reason, total,
                  processed, created, duplicates, revoked, not_found, skipped_paired, failed,
                  created_at, updated_at, completed_at
           from oath_jobs
           where environment_id = $1 and ($2::uuid is null or id < $2)
           order by id desc
           limit $3"#,
        env,
        before,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// The first duplicates of a create job, in item order.
pub async fn duplicates(
    pool: &PgPool,
    env: Uuid,
    job: Uuid,
) -> Result<Vec<Duplicate>, sqlx::Error> {
    sqlx::query_as!(
        Duplicate,
        r#"select serial_number as "serial_number!", masked_secret as "masked_secret!"
           from job_results
           where environment_id = $1 and job_id = $2 and outcome = 'DUPLICATE'
           order by idx
           limit $3"#,
        env,
        job,
        EMBEDDED_DUPLICATES,
    )
    .fetch_all(pool)
    .await
}

/// One page of results in item order, after item `after`, optionally of one outcome.
pub async fn results(
    pool: &PgPool,
    env: Uuid,
    job: Uuid,
    after: Option<i32>,
    outcome: Option<&str>,
    limit: i64,
) -> Result<Vec<ResultRow>, sqlx::Error> {
    sqlx::query_as!(
        ResultRow,
        r#"select idx, row_number, serial_number, token_id, outcome, masked_secret, message
           from job_results
           where environment_id = $1 and job_id = $2
             and ($3::int is null or idx > $3)
             and ($4::text is null or outcome = $4)
           order by idx
           limit $5"#,
        env,
        job,
        after,
        outcome,
        limit,
    )
    .fetch_all(pool)
    .await
}
