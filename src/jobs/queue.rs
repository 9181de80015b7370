//! The job queue in Postgres: enqueue (job row + input items in one transaction), claim with
//! `FOR UPDATE SKIP LOCKED` under a lease, fence each chunk on the claim's attempt number,
//! advance progress, and release or fail a job.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::SecretCipher;
use crate::domain::job::{CreateItem, JobType, NewJob};
use crate::domain::TokenKind;
use crate::store::jobs::JobRow;

/// The LISTEN/NOTIFY channel that wakes runners when a job is enqueued.
pub const CHANNEL: &str = "oath_jobs";

/// A job this runner holds the lease of, under claim number `attempt`.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub job_type: JobType,
    pub attempt: i32,
    pub force_unpair: bool,
}

/// Per-chunk counts, added to the job's totals when the chunk commits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    pub processed: i32,
    pub created: i32,
    pub duplicates: i32,
    pub revoked: i32,
    pub not_found: i32,
    pub skipped_paired: i32,
    pub failed: i32,
}

/// Stores a validated job and its input in chunks of `chunk_size` items, sealing create items'
/// secrets for the token ids they will have, and notifies runners on commit. Nothing is written
/// to `oath_tokens` here.
pub async fn enqueue(
    tx: &mut PgConnection,
    env: Uuid,
    job_id: Uuid,
    job: &NewJob,
    chunk_size: usize,
    cipher: &SecretCipher,
) -> Result<JobRow, sqlx::Error> {
    let force_unpair = matches!(
        job,
        NewJob::Revoke {
            force_unpair: true,
            ..
        }
    );
    let row = sqlx::query_as!(
        JobRow,
        r#"insert into oath_jobs (environment_id, id, type, async, force_unpair, total, chunk_size)
           values ($1, $2, $3, $4, $5, $6, $7)
           returning environment_id, id, type as job_type, async as is_async, status, reason,
                     total, processed, created, duplicates, revoked, not_found, skipped_paired,
                     failed, created_at, updated_at, completed_at"#,
        env,
        job_id,
        job.job_type().as_str(),
        job.is_async(),
        force_unpair,
        job.len() as i32,
        chunk_size as i32,
    )
    .fetch_one(&mut *tx)
    .await?;

    match job {
        NewJob::Create { items, .. } => {
            for (n, chunk) in items.chunks(chunk_size).enumerate() {
                let c = CreateChunk::seal(env, chunk, cipher);
                sqlx::query!(
                    r#"insert into oath_job_chunks
                           (environment_id, job_id, first_idx, offsets, token_ids, row_numbers,
                            serial_numbers, token_types, otp_lengths, hash_algorithms, counters,
                            time_steps, secret_ciphertexts, secret_key_ids, masked_secrets,
                            invalid_offsets, invalid_row_numbers, invalid_serials,
                            invalid_messages, drifts)
                       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                               $16, $17, $18, $19, $20)"#,
                    env,
                    job_id,
                    (n * chunk_size) as i32,
                    &c.offsets,
                    &c.token_ids,
                    &c.row_numbers as &[Option<i64>],
                    &c.serial_numbers,
                    &c.token_types as &[&str],
                    &c.otp_lengths,
                    &c.hash_algorithms as &[&str],
                    &c.counters as &[Option<i64>],
                    &c.time_steps as &[Option<i32>],
                    &c.secret_ciphertexts,
                    &c.secret_key_ids,
                    &c.masked_secrets,
                    &c.invalid_offsets,
                    &c.invalid_row_numbers,
                    &c.invalid_serials as &[Option<String>],
                    &c.invalid_messages,
                    &c.drifts,
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        NewJob::Revoke { token_ids, .. } => {
            for (n, chunk) in token_ids.chunks(chunk_size).enumerate() {
                let row_numbers = vec![None::<i64>; chunk.len()];
                let offsets: Vec<i32> = (0..chunk.len() as i32).collect();
                sqlx::query!(
                    r#"insert into oath_job_chunks
                           (environment_id, job_id, first_idx, offsets, token_ids, row_numbers)
                       values ($1, $2, $3, $4, $5, $6)"#,
                    env,
                    job_id,
                    (n * chunk_size) as i32,
                    &offsets,
                    chunk,
                    &row_numbers as &[Option<i64>],
                )
                .execute(&mut *tx)
                .await?;
            }
        }
    }

    sqlx::query!("select pg_notify($1, $2)", CHANNEL, job_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(row)
}

/// A create chunk as column arrays, each token's secret sealed for the id it will have.
#[derive(Default)]
struct CreateChunk {
    offsets: Vec<i32>,
    token_ids: Vec<Uuid>,
    row_numbers: Vec<Option<i64>>,
    serial_numbers: Vec<String>,
    token_types: Vec<&'static str>,
    otp_lengths: Vec<i16>,
    hash_algorithms: Vec<&'static str>,
    counters: Vec<Option<i64>>,
    time_steps: Vec<Option<i32>>,
    drifts: Vec<i32>,
    secret_ciphertexts: Vec<Vec<u8>>,
    secret_key_ids: Vec<String>,
    masked_secrets: Vec<String>,
    invalid_offsets: Vec<i32>,
    invalid_row_numbers: Vec<i64>,
    invalid_serials: Vec<Option<String>>,
    invalid_messages: Vec<String>,
}

impl CreateChunk {
    fn seal(env: Uuid, items: &[CreateItem], cipher: &SecretCipher) -> Self {
        let mut c = Self::default();
        for (offset, item) in items.iter().enumerate() {
            let token = match item {
                CreateItem::Token(token) => token,
                CreateItem::Invalid(row) => {
                    c.invalid_offsets.push(offset as i32);
                    c.invalid_row_numbers.push(row.row_number);
                    c.invalid_serials.push(row.serial_number.clone());
                    c.invalid_messages.push(row.message.clone());
                    continue;
                }
            };
            let id = Uuid::now_v7();
            let sealed = cipher.seal(&token.secret, env, id);
            let (counter, time_step) = match token.kind {
                TokenKind::Hotp { counter } => (Some(counter), None),
                TokenKind::Totp { time_step } => (None, Some(time_step)),
            };
            c.offsets.push(offset as i32);
            c.token_ids.push(id);
            c.row_numbers.push(token.row_number);
            c.serial_numbers
                .push(token.serial_number.as_str().to_string());
            c.token_types.push(token.kind.token_type().as_str());
            c.otp_lengths.push(i16::from(token.otp_length.get()));
            c.hash_algorithms.push(token.hash_algorithm.as_str());
            c.counters.push(counter);
            c.time_steps.push(time_step);
            c.drifts.push(token.drift);
            c.secret_ciphertexts.push(sealed.ciphertext);
            c.secret_key_ids.push(sealed.key_id);
            c.masked_secrets.push(token.secret.masked());
        }
        c
    }
}

/// Takes the oldest runnable job: pending, or running under an expired lease. The claim bumps
/// `attempt`, which fences out whoever held the job before.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<ClaimedJob>, sqlx::Error> {
    let row = sqlx::query!(
        r#"update oath_jobs j
           set status = 'IN_PROGRESS', attempt = j.attempt + 1, lease_owner = $1,
               lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
           from (select environment_id, id from oath_jobs
                 where status = 'PENDING'
                    or (status = 'IN_PROGRESS' and lease_expires_at < now())
                 order by created_at
                 limit 1
                 for update skip locked) next
           where j.environment_id = next.environment_id and j.id = next.id
           returning j.environment_id, j.id, j.type as job_type, j.attempt, j.force_unpair"#,
        owner,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| ClaimedJob {
        environment_id: r.environment_id,
        id: r.id,
        job_type: JobType::parse(&r.job_type).unwrap_or(JobType::CreateTokens),
        attempt: r.attempt,
        force_unpair: r.force_unpair,
    }))
}

/// Where a job stands, as its chunk transaction sees it.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    pub processed: i32,
    pub total: i32,
    pub chunk_size: i32,
}

/// First statement of every chunk transaction: renews the lease and locks the job row, but only
/// if this claim still holds it. None when the lease was lost.
pub async fn fence(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    lease: Duration,
) -> Result<Option<Position>, sqlx::Error> {
    sqlx::query_as!(
        Position,
        r#"update oath_jobs
           set lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'
           returning processed, total, chunk_size"#,
        job.environment_id,
        job.id,
        job.attempt,
        lease.as_secs_f64(),
    )
    .fetch_optional(&mut *tx)
    .await
}

/// Adds a committed chunk's counts; the job is DONE when every item is processed. Runs in the
/// chunk's transaction, after [`fence`] locked the row.
pub async fn advance(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    c: &ChunkCounts,
) -> Result<(i32, bool), sqlx::Error> {
    let row = sqlx::query!(
        r#"update oath_jobs
           set processed = processed + $3, created = created + $4, duplicates = duplicates + $5,
               revoked = revoked + $6, not_found = not_found + $7,
               skipped_paired = skipped_paired + $8, failed = failed + $9,
               status = case when processed + $3 >= total then 'DONE' else status end,
               completed_at = case when processed + $3 >= total then now() end,
               lease_owner = case when processed + $3 >= total then null else lease_owner end,
               lease_expires_at = case when processed + $3 >= total then null else lease_expires_at end,
               updated_at = now()
           where environment_id = $1 and id = $2
           returning processed, status"#,
        job.environment_id,
        job.id,
        c.processed,
        c.created,
        c.duplicates,
        c.revoked,
        c.not_found,
        c.skipped_paired,
        c.failed,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((row.processed, row.status == "DONE"))
}

/// Ends a job that cannot finish: FAILED with a reason a user can act on; its remaining input
/// (and secrets) are deleted. Fenced like a chunk.
pub async fn fail(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"update oath_jobs
           set status = 'FAILED', reason = $4, completed_at = now(), updated_at = now(),
               lease_owner = null, lease_expires_at = null
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'"#,
        job.environment_id,
        job.id,
        job.attempt,
        reason,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        sqlx::query!(
            "delete from oath_job_chunks where environment_id = $1 and job_id = $2",
            job.environment_id,
            job.id
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(updated == 1)
}

/// Gives a job back on shutdown so another runner can resume it at once instead of waiting for
/// the lease to expire.
pub async fn release(pool: &PgPool, job: &ClaimedJob) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"update oath_jobs set lease_expires_at = now(), lease_owner = null, updated_at = now()
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'"#,
        job.environment_id,
        job.id,
        job.attempt,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes a processed chunk's input (and with it the sealed secrets it carried).
pub async fn consume(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    first_idx: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from oath_job_chunks where environment_id = $1 and job_id = $2 and first_idx = $3",
        job.environment_id,
        job.id,
        first_idx,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
