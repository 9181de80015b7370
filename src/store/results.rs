//! `job_results`: one row per job item, written by the item's chunk (COPY) and read back in item
//! order, a page at a time.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::chunks::{ChunkKey, CreateChunk};
use super::copy::CopyRows;
use crate::domain::job::Outcome;

/// Duplicates embedded in a create job's representation; all of them are in its results.
pub const EMBEDDED_DUPLICATES: i64 = 1000;

/// What happened to one item of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The item's position in the job, from 0.
    pub idx: i32,
    pub row_number: Option<i64>,
    pub serial_number: Option<String>,
    pub token_id: Option<Uuid>,
    pub outcome: Outcome,
    pub masked_secret: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Duplicate {
    pub serial_number: String,
    pub masked_secret: String,
}

/// The results of the create chunk at `key`: `outcomes[i]` is the outcome of the chunk's token `i` (its
/// token id is kept only when it was created), then its invalid items.
pub async fn write_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    chunk: &CreateChunk,
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    let mut rows = CopyRows::with_capacity(chunk.len() * 160);
    for (i, outcome) in outcomes.iter().enumerate() {
        let token_id = (*outcome == Outcome::Created).then_some(chunk.token_ids[i]);
        item_row(&mut rows, key, chunk.offsets[i])
            .opt(chunk.row_numbers[i])
            .text(&chunk.serial_numbers[i])
            .opt(token_id)
            .text(outcome.as_str())
            .text(&chunk.masked_secrets[i])
            .null()
            .end_row();
    }
    for (i, offset) in chunk.invalid_offsets.iter().enumerate() {
        item_row(&mut rows, key, *offset)
            .plain(chunk.invalid_row_numbers[i])
            .opt_text(chunk.invalid_serials[i].as_deref())
            .null()
            .text(Outcome::Invalid.as_str())
            .null()
            .text(&chunk.invalid_messages[i])
            .end_row();
    }
    rows.send(
        tx,
        "job_results (environment_id, job_id, idx, row_number, serial_number, token_id, \
         outcome, masked_secret, message)",
    )
    .await?;
    Ok(())
}

/// Starts the result row of the item at `offset` in the chunk at `key`: its environment, job
/// and index in the job.
fn item_row(rows: &mut CopyRows, key: ChunkKey, offset: i32) -> &mut CopyRows {
    rows.plain(key.env)
        .plain(key.job_id)
        .plain(key.first_idx + offset)
}

/// One revoke item's result: the token id asked for, its serial when it was revoked.
pub struct RevokeResult {
    pub token_id: Uuid,
    pub serial_number: Option<String>,
    pub outcome: Outcome,
}

/// The results of the revoke chunk at `key`, item `i` at `first_idx + i`.
pub async fn write_revoke(
    tx: &mut PgConnection,
    key: ChunkKey,
    results: &[RevokeResult],
) -> Result<(), sqlx::Error> {
    let mut rows = CopyRows::with_capacity(results.len() * 120);
    for (i, r) in results.iter().enumerate() {
        item_row(&mut rows, key, i as i32)
            .plain(r.token_id)
            .opt_text(r.serial_number.as_deref())
            .text(r.outcome.as_str())
            .end_row();
    }
    rows.send(
        tx,
        "job_results (environment_id, job_id, idx, token_id, serial_number, outcome)",
    )
    .await?;
    Ok(())
}

/// The first [`EMBEDDED_DUPLICATES`] duplicates of each of `jobs`, in item order, in one query.
pub async fn duplicates(
    pool: &PgPool,
    env: Uuid,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Duplicate>>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select j.id as "job_id!", d.serial_number as "serial_number!",
                  d.masked_secret as "masked_secret!"
           from unnest($2::uuid[]) j(id)
           cross join lateral (
               select serial_number, masked_secret, idx from job_results
               where environment_id = $1 and job_id = j.id and outcome = 'DUPLICATE'
               order by idx
               limit $3) d
           order by j.id, d.idx"#,
        env,
        jobs,
        EMBEDDED_DUPLICATES,
    )
    .fetch_all(pool)
    .await?;
    let mut by_job: HashMap<Uuid, Vec<Duplicate>> = HashMap::new();
    for r in rows {
        by_job.entry(r.job_id).or_default().push(Duplicate {
            serial_number: r.serial_number,
            masked_secret: r.masked_secret,
        });
    }
    Ok(by_job)
}

/// One page of results in item order, after item `after`, optionally of one outcome.
pub async fn page(
    pool: &PgPool,
    env: Uuid,
    job: Uuid,
    after: Option<i32>,
    outcome: Option<Outcome>,
    limit: i64,
) -> Result<Vec<JobResult>, sqlx::Error> {
    let rows = sqlx::query!(
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
        outcome.map(Outcome::as_str),
        limit,
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(JobResult {
                idx: r.idx,
                row_number: r.row_number,
                serial_number: r.serial_number,
                token_id: r.token_id,
                outcome: super::decode(&r.outcome, Outcome::parse, "job result outcome")?,
                masked_secret: r.masked_secret,
                message: r.message,
            })
        })
        .collect()
}
