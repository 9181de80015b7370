//! The job runner: claims a runnable job, processes a step of it (up to `jobs.parallel_chunks`
//! chunks, one transaction each, written at once and committed in item order), yields it between
//! steps to environments served less recently, and gives it back on shutdown. Every service
//! process runs `jobs.runners` of them, plus the purge of finished jobs and the backlog gauges;
//! LISTEN/NOTIFY wakes them, polling is the fallback. Tests drive [`Runner::step`] directly.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{create, retention, revoke, ChunkError};
use crate::config::Settings;
use crate::domain::job::JobType;
use crate::metrics::METRICS;
use crate::store::chunks::ChunkKey;
use crate::store::jobs::{self as queue, ChunkCounts, ClaimedJob};
use crate::store::{chunk_transaction, is_conflict, is_unavailable, wait_for_chunk};

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
    /// The job was canceled; nothing was written.
    Canceled { job: Uuid },
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

    /// Processes the next chunks of a job (see `chunk`). The runner holds its job between
    /// steps, but yields it after every step to a runnable job of an environment served less
    /// recently, so a new environment's job starts within about a step even while every runner
    /// is busy.
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
                if is_conflict(&e) || is_unavailable(&e) {
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

    /// Processes the job's next chunk and, for a create job, up to `jobs.parallel_chunks - 1`
    /// chunks after it, each in a transaction of its own on a connection of its own. The chunks
    /// write their tokens at the same time, then commit one after another in item order: each
    /// takes a lock of its own when it begins and, once its tokens are written, waits for the
    /// previous chunk's lock (that is, its commit or rollback) before it fences, takes the quota
    /// and records its results. Every such wait is a lock in the database, where a deadlock
    /// with other writers is found and broken, never a wait in this process.
    async fn chunk(&self, job: &ClaimedJob) -> Result<Step, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let Some(at) = queue::fence(&mut tx, job, self.lease(), None).await? else {
            tx.rollback().await?;
            return self.lost(job).await;
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
        let parallel = match job.job_type {
            // A revoke chunk releases quota as it deletes: a second one would wait for the first.
            JobType::RevokeTokens => 1,
            JobType::CreateTokens => self.settings.jobs.parallel_chunks,
        };
        // Chunks are as the job was stored; `processed` is always at a chunk boundary.
        let chunks: Vec<Chunk> = (at.processed..at.total)
            .step_by(at.chunk_size as usize)
            .take(parallel)
            .map(|first_idx| Chunk {
                key: job.chunk(first_idx),
                len: at.chunk_size.min(at.total - first_idx),
                total: at.total,
            })
            .collect();
        // Each chunk's lock is taken before the next chunk begins, so that the next one's wait
        // for it cannot come first. Not waiting for the WAL flush of every intermediate chunk is
        // safe: a database crash can only lose the latest chunks whole (tokens, results,
        // progress and consumed input together), and they are then processed again. The last
        // chunk, which marks the job DONE, commits synchronously after every earlier one, and so
        // makes them durable too.
        chunk_transaction(&mut tx, chunks[0].key, chunks[0].last()).await?;
        let (lease, limit) = (self.lease(), self.settings.limits.tokens_per_environment);
        let mut running = vec![tokio::spawn(process(
            tx,
            job.clone(),
            chunks[0],
            None,
            lease,
            limit,
        ))];
        for pair in chunks.windows(2) {
            // Without a connection at hand, the chunk is left to the next step.
            let Ok(mut tx) = self.pool.begin().await else {
                break;
            };
            if chunk_transaction(&mut tx, pair[1].key, pair[1].last())
                .await
                .is_err()
            {
                break;
            }
            let after = Some(pair[0].key);
            running.push(tokio::spawn(process(
                tx,
                job.clone(),
                pair[1],
                after,
                lease,
                limit,
            )));
        }
        // In item order: once a chunk did not commit, none after it could. (The first chunk,
        // fenced above, always commits or fails.)
        let mut step = Ok(Step::LeaseLost { job: job.id });
        let mut ended = false;
        for handle in running {
            let outcome = handle.await.unwrap_or_else(|e| {
                Err(ChunkError::Db(sqlx::Error::Protocol(format!(
                    "a job chunk's task ended abnormally: {e}"
                ))))
            });
            if ended {
                continue;
            }
            match outcome {
                Ok(Some(committed)) => step = Ok(committed.step(job)),
                Ok(None) => ended = true,
                Err(e) => {
                    ended = true;
                    step = self.chunk_failed(job, e).await;
                }
            }
        }
        step
    }

    /// The step of a claim whose fence failed: the job was canceled, or another runner took it
    /// over.
    async fn lost(&self, job: &ClaimedJob) -> Result<Step, sqlx::Error> {
        if queue::is_canceled(&self.pool, job).await? {
            tracing::info!(job_id = %job.id, "job canceled");
            return Ok(Step::Canceled { job: job.id });
        }
        METRICS.job_lease_losses.inc();
        tracing::warn!(job_id = %job.id, attempt = job.attempt, "job lease lost");
        Ok(Step::LeaseLost { job: job.id })
    }

    /// What a chunk's error makes of the step: a database error is the step's error; a chunk
    /// whose input is missing fails the job, unless the claim was lost meanwhile (a cancel
    /// deletes the input of the chunks it stops).
    async fn chunk_failed(&self, job: &ClaimedJob, e: ChunkError) -> Result<Step, sqlx::Error> {
        match e {
            ChunkError::Db(e) => Err(e),
            ChunkError::InputMissing => {
                let mut tx = self.pool.begin().await?;
                let failed = fail(
                    &mut tx,
                    job,
                    "The job's stored input could not be read completely; submit the job again.",
                )
                .await?;
                tx.commit().await?;
                if !failed {
                    return self.lost(job).await;
                }
                tracing::error!(job_id = %job.id, "job failed: input items missing");
                Ok(Step::Finished {
                    job: job.id,
                    failed: true,
                })
            }
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

/// One chunk of a step: where it starts and how many items it has.
#[derive(Clone, Copy, Debug)]
struct Chunk {
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
struct Committed {
    processed: i32,
    total: i32,
    done: bool,
}

impl Committed {
    fn step(&self, job: &ClaimedJob) -> Step {
        if self.done {
            Step::Finished {
                job: job.id,
                failed: false,
            }
        } else {
            Step::Progress {
                job: job.id,
                processed: self.processed,
                total: self.total,
            }
        }
    }
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
    /// Tells the runners to stop after their current chunk, without waiting for them.
    pub fn begin_stop(&self) {
        let _ = self.shutdown.send(true);
    }

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
            // A concurrent write took a serial this chunk was about to insert (retrying it sees
            // that serial as a duplicate), or the database broke a deadlock with another writer:
            // the chunk rolled back.
            Err(e) if is_conflict(&e) => {
                tracing::info!(error = %e, "job chunk met a concurrent write; retrying");
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

/// Turns notifications of new jobs into wake-ups. Reconnects after errors, and when the pool
/// moves to another database host (the LISTEN connection is held outside the pool); polling
/// covers what is missed meanwhile.
async fn listen(pool: PgPool, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut switches = crate::database::switches();
    while !*stop.borrow() {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await {
            switches.mark_unchanged();
            if listener.listen(queue::CHANNEL).await.is_ok() {
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(_) => wake.notify_waiters(),
                            Err(_) => break,
                        },
                        _ = switches.changed() => break,
                        _ = stop.changed() => return,
                    }
                }
            }
            // A job stored while no one listened would wait for the poll: look now.
            wake.notify_waiters();
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

/// Deletes finished jobs past `jobs.retention_seconds`, and events past
/// `events.retention_seconds`, every `jobs.purge_interval_seconds`.
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
        tokio::select! {
            r = purge_events(&pool, &settings) => match r {
                Ok(n) if n > 0 => tracing::info!(purged = n, "events past retention purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not purge events"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// Deletes the events older than `events.retention_seconds`, in batches that commit alone.
async fn purge_events(pool: &PgPool, settings: &Settings) -> Result<u64, sqlx::Error> {
    let retention = chrono::Duration::seconds(settings.events.retention_seconds as i64);
    let cutoff = chrono::Utc::now() - retention;
    let mut purged = 0;
    loop {
        let n = crate::store::events::purge(pool, cutoff, retention::RESULT_BATCH.into()).await?;
        purged += n;
        if n < retention::RESULT_BATCH as u64 {
            return Ok(purged);
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
