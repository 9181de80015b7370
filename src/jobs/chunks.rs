//! The chunks of one runner step: planned from where the job stands, then begun each in a
//! transaction of its own on a connection of its own, written at once and committed in item order
//! (a create job's; a revoke job's run one at a time). Each job kind's file processes one chunk.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{create, revoke, ChunkError};
use crate::domain::job::JobType;
use crate::metrics::METRICS;
use crate::store::chunks::ChunkKey;
use crate::store::jobs::{self as queue, ChunkCounts, ClaimedJob, Position};
use crate::store::{chunk_transaction, wait_for_chunk};
use crate::telemetry;

/// A chunk's task: what its commit left, None when it did not commit (see [`process`]).
pub(super) type ChunkTask = JoinHandle<Result<Option<Committed>, ChunkError>>;

/// One chunk of a step: where it starts and how many items it has.
#[derive(Clone, Copy, Debug)]
pub(super) struct Chunk {
    key: ChunkKey,
    len: i32,
    /// The job's items.
    total: i32,
}

impl Chunk {
    fn last(&self) -> bool {
        self.key.first_idx + self.len >= self.total
    }
}

/// A chunk that committed, and where its commit left the job.
pub(super) struct Committed {
    pub(super) processed: i32,
    pub(super) total: i32,
    pub(super) done: bool,
}

/// The step's chunks, from where the job stands (`at`): at most `parallel` of them.
pub(super) fn plan(job: &ClaimedJob, at: &Position, parallel: usize) -> Vec<Chunk> {
    // Chunks are as the job was stored; `processed` is always at a chunk boundary.
    (at.processed..at.total)
        .step_by(at.chunk_size as usize)
        .take(parallel)
        .map(|first_idx| Chunk {
            key: job.chunk(first_idx),
            len: at.chunk_size.min(at.total - first_idx),
            total: at.total,
        })
        .collect()
}

/// Begins the `chunks` of a step, the first in `tx` (fenced), each further one in a transaction
/// of its own, and returns their tasks in item order. Without a connection at hand, a chunk and
/// those after it are left to the next step.
pub(super) async fn start(
    pool: &PgPool,
    mut tx: Transaction<'static, Postgres>,
    job: &ClaimedJob,
    chunks: &[Chunk],
    lease: Duration,
    limit: i64,
) -> Result<Vec<ChunkTask>, sqlx::Error> {
    // Each chunk's lock is taken before the next chunk begins, so that the next one's wait
    // for it cannot come first. Not waiting for the WAL flush of every intermediate chunk is
    // safe: a database crash can only lose the latest chunks whole (tokens, results,
    // progress and consumed input together), and they are then processed again. The last
    // chunk, which marks the job DONE, commits synchronously after every earlier one, and so
    // makes them durable too.
    chunk_transaction(&mut tx, chunks[0].key, chunks[0].last()).await?;
    let mut running = vec![tokio::spawn(
        process(tx, job.clone(), chunks[0], None, lease, limit)
            .instrument(chunk_span(job, chunks[0])),
    )];
    for pair in chunks.windows(2) {
        // Without a connection at hand, the chunk is left to the next step.
        let Ok(mut tx) = pool.begin().await else {
            break;
        };
        if chunk_transaction(&mut tx, pair[1].key, pair[1].last())
            .await
            .is_err()
        {
            break;
        }
        let after = Some(pair[0].key);
        running.push(tokio::spawn(
            process(tx, job.clone(), pair[1], after, lease, limit)
                .instrument(chunk_span(job, pair[1])),
        ));
    }
    Ok(running)
}

/// The span of one chunk: its log lines name the job, and with trace export each chunk is a
/// trace of its own, with its database statements.
fn chunk_span(job: &ClaimedJob, chunk: Chunk) -> tracing::Span {
    let span = tracing::info_span!(
        "job_chunk",
        job_id = %job.id,
        job_type = job.job_type.as_str(),
        first_item = chunk.key.first_idx,
        items = chunk.len,
        trace_id = tracing::field::Empty,
    );
    telemetry::otlp::start_root(&span);
    span
}

/// Processes `chunk` in `tx` and commits it. `tx` has been fenced, unless the chunk comes
/// `after` another one of the step: then it writes its tokens, waits for that chunk to end and
/// fences only then; None when that chunk did not commit (or the claim was lost meanwhile).
async fn process(
    mut tx: Transaction<'static, Postgres>,
    job: ClaimedJob,
    chunk: Chunk,
    after: Option<ChunkKey>,
    lease: Duration,
    limit: i64,
) -> Result<Option<Committed>, ChunkError> {
    let started = std::time::Instant::now();
    let key = chunk.key;
    let counts = match job.job_type {
        JobType::CreateTokens => {
            let written = create::write(&mut tx, key, chunk.len).await?;
            if let Some(previous) = after {
                wait_for_chunk(&mut tx, previous).await?;
                if queue::fence(&mut tx, &job, lease, Some(key.first_idx))
                    .await?
                    .is_none()
                {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
            create::finish(&mut tx, key, written, limit).await?
        }
        JobType::RevokeTokens => {
            debug_assert!(after.is_none(), "revoke chunks run one at a time");
            revoke::process_chunk(&mut tx, key, chunk.len, job.force_unpair).await?
        }
    };
    let (processed, done) = queue::advance(&mut tx, &job, &counts).await?;
    queue::mark_served(&mut tx, job.environment_id).await?;
    tx.commit().await?;
    record_chunk(job.job_type, &counts, started.elapsed());
    let total = chunk.total;
    tracing::debug!(
        job_id = %job.id, processed, total,
        chunk_ms = started.elapsed().as_secs_f64() * 1000.0,
        "job chunk committed"
    );
    if done {
        tracing::info!(job_id = %job.id, total, "job done");
    }
    Ok(Some(Committed {
        processed,
        total,
        done,
    }))
}

/// Ends a job that cannot finish: FAILED with a reason a user can act on, its remaining input
/// (and secrets) deleted. Fenced like a chunk: nothing changes if the claim was lost.
pub(super) async fn fail(
    tx: &mut sqlx::PgConnection,
    job: &ClaimedJob,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let failed = queue::fail(tx, job, reason).await?;
    if failed {
        crate::store::chunks::delete_all(tx, job.environment_id, job.id).await?;
    }
    Ok(failed)
}

fn record_chunk(job_type: JobType, c: &ChunkCounts, took: Duration) {
    METRICS
        .job_chunk_duration
        .with_label_values(&[job_type.as_str()])
        .observe(took.as_secs_f64());
    for (outcome, n) in [
        ("CREATED", c.created),
        ("DUPLICATE", c.duplicates),
        ("REVOKED", c.revoked),
        ("NOT_FOUND", c.not_found),
        ("SKIPPED_PAIRED", c.skipped_paired),
        ("FAILED", c.failed),
    ] {
        if n > 0 {
            METRICS
                .job_items
                .with_label_values(&[outcome])
                .inc_by(n as u64);
        }
    }
}
