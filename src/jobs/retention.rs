//! Retention: finished jobs (DONE, FAILED, CANCELED) whose completion is older than
//! `jobs.retention_seconds` are deleted with their results, results first, the result chunks of a
//! few thousand items per statement, each statement its own short transaction; afterwards the job
//! is 404. One replica purges at a time (see [`crate::store::retention`]).

use std::time::Duration;

use sqlx::PgPool;

use crate::metrics::METRICS;
use crate::store::retention;

/// Items whose results are deleted per statement: the result chunks starting in a range of this
/// many items (five chunks of the default 1,000 items).
pub const RESULT_BATCH: i32 = 5_000;
/// Jobs looked up per query.
const JOB_BATCH: i64 = 100;

/// One purge pass: every job past `retention`, deleting the results of `batch` items per
/// statement (the chunks that start among them).
/// Returns the jobs deleted; stops early, without error, when another replica is purging.
pub async fn purge_once(
    pool: &PgPool,
    retention: Duration,
    batch: i32,
) -> Result<u64, sqlx::Error> {
    let batch = batch.max(1);
    let mut purged = 0;
    loop {
        let Some(jobs) = retention::expired(pool, retention, JOB_BATCH).await? else {
            return Ok(purged);
        };
        if jobs.is_empty() {
            return Ok(purged);
        }
        for job in &jobs {
            let mut from = 0;
            while from < job.total {
                if retention::delete_results(pool, job, from, batch)
                    .await?
                    .is_none()
                {
                    return Ok(purged);
                }
                from = from.saturating_add(batch);
            }
            match retention::delete_job(pool, job).await? {
                None => return Ok(purged),
                Some(true) => {
                    purged += 1;
                    METRICS.jobs_purged.inc();
                }
                Some(false) => {}
            }
        }
    }
}
