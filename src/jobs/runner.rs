//! The job runner: claims a runnable job, processes a step of it (up to `jobs.parallel_chunks`
//! chunks, one transaction each, written at once and committed in item order: `chunks.rs`),
//! yields it between steps to environments served less recently, and gives it back on shutdown.
//! Every service process runs `jobs.runners` of them, beside the housekeeping tasks
//! (`housekeeping.rs`); LISTEN/NOTIFY wakes them, polling is the fallback. Tests drive
//! [`Runner::step`] directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::chunks::{self, Committed};
use super::{housekeeping, ChunkError};
use crate::config::Settings;
use crate::domain::job::JobType;
use crate::metrics::METRICS;
use crate::store::jobs::{self as queue, ClaimedJob};
use crate::store::{is_conflict, is_unavailable};

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

impl Step {
    /// Where a committed chunk left the job.
    fn committed(job: &ClaimedJob, chunk: &Committed) -> Self {
        if chunk.done {
            Step::Finished {
                job: job.id,
                failed: false,
            }
        } else {
            Step::Progress {
                job: job.id,
                processed: chunk.processed,
                total: chunk.total,
            }
        }
    }
}

/// Steps of this process's runners under way.
static STEPS_UNDER_WAY: AtomicUsize = AtomicUsize::new(0);

/// Whether a runner of this process is processing a step of a job now. Work that can wait
/// (event delivery) gives way to the bulk job while it runs.
pub fn step_under_way() -> bool {
    STEPS_UNDER_WAY.load(Ordering::Relaxed) > 0
}

/// Counts a step as under way for as long as it lives.
pub(crate) struct UnderWay;

impl UnderWay {
    pub(crate) fn begin() -> Self {
        STEPS_UNDER_WAY.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        STEPS_UNDER_WAY.fetch_sub(1, Ordering::Relaxed);
    }
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
        let _under_way = UnderWay::begin();
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
            chunks::fail(&mut tx, job, &reason).await?;
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
        let planned = chunks::plan(job, &at, parallel);
        let (lease, limit) = (self.lease(), self.settings.limits.tokens_per_environment);
        let running = chunks::start(&self.pool, tx, job, &planned, lease, limit).await?;
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
                Ok(Some(committed)) => step = Ok(Step::committed(job, &committed)),
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
                let failed = chunks::fail(
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

/// The runners of one process, and how to stop them.
pub struct RunnerPool {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunnerPool {
    /// Starts `jobs.runners` runners, one LISTEN task that wakes them, and the housekeeping.
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
        tasks.extend(housekeeping::start(&pool, &settings, &stop));
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
