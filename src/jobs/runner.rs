//! The job runner: claims a runnable job, processes it one chunk (one transaction) per step,
//! yields it between chunks to environments served less recently, and gives it back on
//! shutdown. Every service process runs `jobs.runners` of them, plus the purge of finished jobs
//! and the backlog gauges; LISTEN/NOTIFY wakes them, polling is the fallback. Tests drive
//! [`Runner::step`] directly.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{create, retention, revoke, ChunkError};
use crate::config::Settings;
use crate::domain::job::JobType;
use crate::metrics::METRICS;
use crate::store::jobs::{self as queue, ChunkCounts, ClaimedJob};
use crate::store::{chunk_transaction, is_unavailable};

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Idle,
    /// A chunk committed; the job goes on.
    Progress {
        job: Uuid,
        processed: i32,
        total: i32,
    },
    /// The job ended (DONE, or FAILED with a reason).
    Finished { job: Uuid, failed: bool },
    /// Another runner took the job over (this one's lease expired); nothing was written.
    LeaseLost { job: Uuid },
}

pub struct Runner {
    pool: PgPool,
    settings: Arc<Settings>,
    owner: String,
    current: Option<ClaimedJob>,
}

impl Runner {
    pub fn new(pool: PgPool, settings: Arc<Settings>, owner: String) -> Self {
        Self {
            pool,
            settings,
            owner,
            current: None,
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.jobs.lease_seconds)
    }

    /// Processes one chunk. The runner holds its job between steps, but yields it after every
    /// committed chunk to a runnable job of an environment served less recently, so a new
    /// environment's job starts within about a chunk even while every runner is busy.
    pub async fn step(&mut self) -> Result<Step, sqlx::Error> {
        let job = match self.next_job().await? {
            Some(job) => job,
            None => return Ok(Step::Idle),
        };
        match self.chunk(&job).await {
            Ok(step) => {
                if matches!(step, Step::Progress { .. }) {
                    self.current = Some(job);
                }
                Ok(step)
            }
            Err(e) => {
                // Retry at once what another writer or a database outage caused. Anything else
                // may happen again: leave the job to its lease, so that it is taken over anew and
                // counts against jobs.max_attempts instead of failing here forever.
                let unique = matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation());
                if unique || is_unavailable(&e) {
                    self.current = Some(job);
                }
                Err(e)
            }
        }
    }

    /// The job to take the next chunk from: the held one, unless another environment served
    /// less recently has runnable work; then that job, and the held one is given back.
    async fn next_job(&mut self) -> Result<Option<ClaimedJob>, sqlx::Error> {
        let held = self.current.take();
        let served_after = held.as_ref().map(|job| job.environment_id);
        let claimed = match queue::claim(&self.pool, &self.owner, self.lease(), served_after).await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                self.current = held;
                return Err(e);
            }
        };
        let Some(job) = claimed else {
            return Ok(held);
        };
        METRICS.job_claims.inc();
        if job.taken_over {
            tracing::warn!(job_id = %job.id, attempt = job.attempt, takeovers = job.takeovers,
                "job taken over from an expired lease");
        } else if job.attempt == 1 {
            tracing::info!(job_id = %job.id, "job claimed");
        } else {
            // Resumed after another runner yielded it: routine with many environments.
            tracing::debug!(job_id = %job.id, attempt = job.attempt, "job resumed");
        }
        if let Some(held) = held {
            tracing::debug!(job_id = %held.id, to = %job.id, "job yielded to another environment");
            if let Err(e) = queue::release(&self.pool, &held).await {
                // Its lease runs out instead; the next claim then counts as a takeover.
                tracing::warn!(job_id = %held.id, error = %e, "could not give the job back");
            }
        }
        Ok(Some(job))
    }

    async fn chunk(&self, job: &ClaimedJob) -> Result<Step, sqlx::Error> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        let Some(at) = queue::fence(&mut tx, job, self.lease()).await? else {
            tx.rollback().await?;
            METRICS.job_lease_losses.inc();
            tracing::warn!(job_id = %job.id, attempt = job.attempt, "job lease lost");
            return Ok(Step::LeaseLost { job: job.id });
        };
        // Only takeovers count: giving a job back between chunks is no failure.
        if job.takeovers >= self.settings.jobs.max_attempts {
            let reason = format!(
                "The job was interrupted {} times and could not finish; submit it again.",
                job.takeovers
            );
            fail(&mut tx, job, &reason).await?;
            tx.commit().await?;
            tracing::warn!(job_id = %job.id, attempt = job.attempt, "job failed: too many attempts");
            return Ok(Step::Finished {
                job: job.id,
                failed: true,
            });
        }
        // Chunks are as the job was stored; `processed` is always at a chunk boundary.
        let len = at.chunk_size.min(at.total - at.processed);
        // Not waiting for the WAL flush of every intermediate chunk is safe: a database crash
        // can only lose the latest chunks whole (tokens, results, progress and consumed input
        // together), and they are then processed again. The last chunk, which marks the job
        // DONE, commits synchronously and so makes every earlier one durable too.
        chunk_transaction(&mut tx, at.processed + len >= at.total).await?;
        let key = job.chunk(at.processed);
        let outcome = match job.job_type {
            JobType::CreateTokens => {
                let limit = self.settings.limits.tokens_per_environment;
                create::process_chunk(&mut tx, key, len, limit).await
            }
            JobType::RevokeTokens => {
                revoke::process_chunk(&mut tx, key, len, job.force_unpair).await
            }
        };
        let counts = match outcome {
            Ok(counts) => counts,
            Err(ChunkError::Db(e)) => return Err(e),
            Err(ChunkError::InputMissing) => {
                // Roll back the partial chunk, then fail the job in a transaction of its own.
                tx.rollback().await?;
                let mut tx = self.pool.begin().await?;
                fail(
                    &mut tx,
                    job,
                    "The job's stored input could not be read completely; submit the job again.",
                )
                .await?;
                tx.commit().await?;
                tracing::error!(job_id = %job.id, "job failed: input items missing");
                return Ok(Step::Finished {
                    job: job.id,
                    failed: true,
                });
            }
        };
        let (processed, done) = queue::advance(&mut tx, job, &counts).await?;
        queue::mark_served(&mut tx, job.environment_id).await?;
        tx.commit().await?;
        record_chunk(job.job_type, &counts, started.elapsed());
        let total = at.total;
        tracing::debug!(
            job_id = %job.id, processed, total,
            chunk_ms = started.elapsed().as_secs_f64() * 1000.0,
            "job chunk committed"
        );
        if done {
            tracing::info!(job_id = %job.id, total, "job done");
            Ok(Step::Finished {
                job: job.id,
                failed: false,
            })
        } else {
            Ok(Step::Progress {
                job: job.id,
                processed,
                total,
            })
        }
    }

    /// Gives the current job back (shutdown), so another runner resumes it without waiting.
    pub async fn release(&mut self) {
        if let Some(job) = self.current.take() {
            if let Err(e) = queue::release(&self.pool, &job).await {
                tracing::warn!(job_id = %job.id, error = %e, "could not release job lease");
            }
        }
    }
}

/// Ends a job that cannot finish: FAILED with a reason a user can act on, its remaining input
/// (and secrets) deleted. Fenced like a chunk: nothing changes if the claim was lost.
async fn fail(
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

/// The runners of one process, and how to stop them.
pub struct RunnerPool {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunnerPool {
    /// Starts `jobs.runners` runners and one LISTEN task that wakes them.
    pub fn start(pool: PgPool, settings: Arc<Settings>) -> Self {
        let (shutdown, stop) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        if settings.jobs.runners > 0 {
            tasks.push(tokio::spawn(listen(
                pool.clone(),
                wake.clone(),
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(purge_idempotency_keys(
            pool.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(purge_finished_jobs(
            pool.clone(),
            settings.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(watch_backlog(pool.clone(), stop.clone())));
        let process = Uuid::new_v4();
        for n in 0..settings.jobs.runners {
            let runner = Runner::new(pool.clone(), settings.clone(), format!("{process}/{n}"));
            tasks.push(tokio::spawn(run(runner, wake.clone(), stop.clone())));
        }
        Self { shutdown, tasks }
    }

    /// Stops claiming, lets each runner finish its current chunk and release its job.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn run(mut runner: Runner, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(runner.settings.jobs.poll_interval_ms);
    while !*stop.borrow() {
        let idle = match runner.step().await {
            Ok(Step::Idle) => true,
            Ok(_) => false,
            // A concurrent write took a serial this chunk was about to insert: the chunk rolled
            // back; retrying it sees that serial as a duplicate.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                tracing::info!("job chunk met a concurrent insert of the same serial; retrying");
                false
            }
            Err(e) => {
                if is_unavailable(&e) {
                    tracing::warn!(error = %e, "job runner: database unavailable");
                } else {
                    tracing::error!(error = %e, "job runner: chunk failed");
                }
                true
            }
        };
        if idle {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
    runner.release().await;
}

/// Turns notifications of new jobs into wake-ups. Reconnects after errors; polling covers what
/// is missed meanwhile.
async fn listen(pool: PgPool, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await {
            if listener.listen(queue::CHANNEL).await.is_ok() {
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(_) => wake.notify_waiters(),
                            Err(_) => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Forgets expired Idempotency-Keys, hourly.
async fn purge_idempotency_keys(pool: PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        match crate::store::idempotency::purge_expired(&pool).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Deletes finished jobs past `jobs.retention_seconds`, every `jobs.purge_interval_seconds`.
async fn purge_finished_jobs(
    pool: PgPool,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) {
    let retention = Duration::from_secs(settings.jobs.retention_seconds);
    let interval = Duration::from_secs(settings.jobs.purge_interval_seconds);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        // A pass stopped by shutdown is resumed by the next one: each batch commits alone.
        tokio::select! {
            r = retention::purge_once(&pool, retention, retention::RESULT_BATCH) => match r {
                Ok(n) if n > 0 => tracing::info!(purged = n, "finished jobs past retention purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not purge finished jobs"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// How often the backlog gauges are read from the database.
const BACKLOG_REFRESH: Duration = Duration::from_secs(10);

/// Keeps `oath_jobs_unfinished` and `oath_job_oldest_pending_age_seconds` current, so that
/// rendering /metrics reads no database.
async fn watch_backlog(pool: PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = METRICS.refresh_backlog(&pool).await {
            tracing::debug!(error = %e, "could not read the job backlog");
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKLOG_REFRESH) => {}
            _ = stop.changed() => return,
        }
    }
}
