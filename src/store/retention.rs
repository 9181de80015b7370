//! Deleting finished jobs past their retention, with their results, in short transactions. Each
//! transaction first takes a transaction-scoped advisory lock without waiting: batches of two
//! replicas never run at once, and a replica that finds the lock taken ends its pass.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The advisory lock key of the purge ("oathpurg").
pub const PURGE_LOCK: i64 = 0x6f61_7468_7075_7267;

/// A finished job due for deletion.
#[derive(Clone, Copy, Debug)]
pub struct Expired {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub total: i32,
}

/// False when another replica is purging.
async fn lock(tx: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let held = sqlx::query_scalar!(
        r#"select pg_try_advisory_xact_lock($1) as "held!""#,
        PURGE_LOCK
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(held)
}

/// Up to `limit` finished (DONE, FAILED or CANCELED) jobs completed more than `retention` ago, oldest first. None
/// when another replica holds the purge lock.
pub async fn expired(
    pool: &PgPool,
    retention: Duration,
    limit: i64,
) -> Result<Option<Vec<Expired>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !lock(&mut tx).await? {
        return Ok(None);
    }
    let jobs = sqlx::query_as!(
        Expired,
        r#"select environment_id, id, total from oath_jobs
           where status in ('DONE', 'FAILED', 'CANCELED')
             and completed_at < now() - make_interval(secs => $1)
           order by completed_at
           limit $2"#,
        retention.as_secs_f64(),
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(jobs))
}

/// Deletes a finished job's result chunks that start at an item in `[from, from + count)`: one
/// short statement on the primary key's range. None when another replica holds the purge lock.
pub async fn delete_results(
    pool: &PgPool,
    job: &Expired,
    from: i32,
    count: i32,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !lock(&mut tx).await? {
        return Ok(None);
    }
    let deleted = sqlx::query!(
        r#"delete from job_result_chunks
           where environment_id = $1 and job_id = $2
             and first_idx >= $3 and first_idx < $3::bigint + $4::int"#,
        job.environment_id,
        job.id,
        from,
        count,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(deleted))
}

/// Deletes the job row (after its results), and any input left. Some(false) when the job was
/// already gone; None when another replica holds the purge lock.
pub async fn delete_job(pool: &PgPool, job: &Expired) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !lock(&mut tx).await? {
        return Ok(None);
    }
    // A finished job has no input left; this is for rows that a failure left behind.
    sqlx::query!(
        "delete from oath_job_chunks where environment_id = $1 and job_id = $2",
        job.environment_id,
        job.id,
    )
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query!(
        r#"delete from oath_jobs
           where environment_id = $1 and id = $2
             and status in ('DONE', 'FAILED', 'CANCELED')"#,
        job.environment_id,
        job.id,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(deleted == 1))
}
