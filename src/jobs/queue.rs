//! The job queue in Postgres: enqueue (job row + input items in one transaction), claim with
//! `FOR UPDATE SKIP LOCKED` under a lease, fence each chunk on the claim's attempt number,
//! advance progress, and release or fail a job.

use std::fmt::Write as _;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::SecretCipher;
use crate::domain::job::{JobType, NewJob};
use crate::domain::{NewToken, TokenKind};
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

/// Stores a validated job and its items, sealing create items' secrets for the token ids they
/// will have, and notifies runners on commit. Nothing is written to `oath_tokens` here.
pub async fn enqueue(
    tx: &mut PgConnection,
    env: Uuid,
    job_id: Uuid,
    job: &NewJob,
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
        r#"insert into oath_jobs (environment_id, id, type, async, force_unpair, total)
           values ($1, $2, $3, $4, $5, $6)
           returning environment_id, id, type as job_type, async as is_async, status, reason,
                     total, processed, created, duplicates, revoked, not_found, skipped_paired,
                     failed, created_at, updated_at, completed_at"#,
        env,
        job_id,
        job.job_type().as_str(),
        job.is_async(),
        force_unpair,
        job.len() as i32,
    )
    .fetch_one(&mut *tx)
    .await?;

    let mut copy = tx
        .copy_in_raw(
            "copy oath_job_items (environment_id, job_id, idx, row_number, token_id, serial_number,
                 token_type, otp_length, hash_algorithm, counter, time_step, secret_ciphertext,
                 secret_key_id, masked_secret) from stdin",
        )
        .await?;
    let mut buf = String::with_capacity(COPY_BATCH_BYTES + 1024);
    for idx in 0..job.len() {
        match job {
            NewJob::Create { tokens, .. } => {
                write_create_item(&mut buf, env, job_id, idx, &tokens[idx], cipher)
            }
            NewJob::Revoke { token_ids, .. } => {
                let _ = writeln!(
                    buf,
                    "{env}\t{job_id}\t{idx}\t\\N\t{}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N",
                    token_ids[idx]
                );
            }
        }
        if buf.len() >= COPY_BATCH_BYTES {
            copy.send(buf.as_bytes()).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        copy.send(buf.as_bytes()).await?;
    }
    copy.finish().await?;

    sqlx::query!("select pg_notify($1, $2)", CHANNEL, job_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(row)
}

const COPY_BATCH_BYTES: usize = 1 << 20;

/// One COPY text-format line. Serial numbers are ASCII alphanumerics and the other text columns
/// are fixed vocabularies, so only the key id can need escaping.
fn write_create_item(
    buf: &mut String,
    env: Uuid,
    job_id: Uuid,
    idx: usize,
    token: &NewToken,
    cipher: &SecretCipher,
) {
    let token_id = Uuid::now_v7();
    let sealed = cipher.seal(&token.secret, env, token_id);
    let (counter, time_step) = match token.kind {
        TokenKind::Hotp { counter } => (counter.to_string(), "\\N".to_string()),
        TokenKind::Totp { time_step } => ("\\N".to_string(), time_step.to_string()),
    };
    let row_number = token
        .row_number
        .map_or("\\N".to_string(), |n| n.to_string());
    let _ = write!(
        buf,
        "{env}\t{job_id}\t{idx}\t{row_number}\t{token_id}\t{}\t{}\t{}\t{}\t{counter}\t{time_step}\t\\\\x{}\t",
        token.serial_number.as_str(),
        token.kind.token_type().as_str(),
        token.otp_length.get(),
        token.hash_algorithm.as_str(),
        hex::encode(&sealed.ciphertext),
    );
    copy_escape(buf, &sealed.key_id);
    let _ = writeln!(buf, "\t{}", token.secret.masked());
}

fn copy_escape(buf: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
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

/// First statement of every chunk transaction: renews the lease and locks the job row, but only
/// if this claim still holds it. Returns `(processed, total)`, or None when the lease was lost.
pub async fn fence(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    lease: Duration,
) -> Result<Option<(i32, i32)>, sqlx::Error> {
    let row = sqlx::query!(
        r#"update oath_jobs
           set lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'
           returning processed, total"#,
        job.environment_id,
        job.id,
        job.attempt,
        lease.as_secs_f64(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.map(|r| (r.processed, r.total)))
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
            "delete from oath_job_items where environment_id = $1 and job_id = $2",
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

/// Deletes the chunk's input items (and with them the sealed secrets they carried).
pub async fn consume(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    lo: i32,
    hi: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from oath_job_items where environment_id = $1 and job_id = $2 and idx >= $3 and idx < $4",
        job.environment_id,
        job.id,
        lo,
        hi,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
