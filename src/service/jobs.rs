//! Bulk jobs: submit, wait for, cancel and read them. Running them is [`crate::jobs`]'s.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::{OrNotFound, ServiceError, Services};
use crate::domain::job::{ItemOutcome, NewJob};
use crate::events::Origin;
use crate::jobs::queue;
use crate::store::jobs::{self as store, Cancel, Job};
use crate::store::results::{self, Duplicate, ItemResult};

/// A job with the first of its duplicates, as a job is shown.
pub struct JobView {
    pub job: Job,
    pub duplicates: Vec<Duplicate>,
}

/// Refuses early, before a submission is parsed, when the environment has its limit of
/// unfinished jobs. [`submit`] decides again under a lock.
pub async fn check_room(services: &Services, env: Uuid) -> Result<(), ServiceError> {
    let limit = services.settings.jobs.max_unfinished_per_environment;
    if store::count_unfinished(&services.db, env).await? >= i64::from(limit) {
        return Err(over_the_unfinished_limit(limit));
    }
    Ok(())
}

/// Stores a validated job and its input in `tx` (the caller commits), within the environment's
/// limit of unfinished jobs; runners are notified when it commits.
pub async fn submit(
    services: &Services,
    tx: &mut PgConnection,
    env: Uuid,
    job: NewJob,
    origin: &Origin,
) -> Result<JobView, ServiceError> {
    let settings = &services.settings.jobs;
    let limit = settings.max_unfinished_per_environment;
    if store::lock_and_count_unfinished(tx, env).await? >= i64::from(limit) {
        return Err(over_the_unfinished_limit(limit));
    }
    let cipher = services.cipher.clone();
    let id = Uuid::now_v7();
    let job = queue::enqueue(tx, env, id, job, settings.chunk_size, cipher, origin).await?;
    tracing::info!(job_id = %job.id, job_type = job.job_type.as_str(), total = job.total, "job accepted");
    Ok(JobView {
        job,
        duplicates: Vec::new(),
    })
}

/// The job once it has finished, or as it is when `jobs.sync_wait_seconds` have passed.
pub async fn wait(services: &Services, env: Uuid, id: Uuid) -> Result<JobView, ServiceError> {
    let wait = Duration::from_secs(services.settings.jobs.sync_wait_seconds);
    let deadline = Instant::now() + wait;
    // Subscribed before the first read: a job that finishes in between is announced to it.
    let mut finished = services.finished_jobs.subscribe();
    loop {
        let job = store::get(&services.db, env, id)
            .await?
            .ok_or_else(|| ServiceError::Internal("submitted job vanished".into()))?;
        if job.status.is_final() || Instant::now() >= deadline {
            return view(services, job).await;
        }
        finished.until(id, deadline).await;
    }
}

/// Cancels a PENDING or IN_PROGRESS job once the chunk being written, if any, has committed.
pub async fn cancel(
    services: &Services,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<JobView, ServiceError> {
    let job = match store::cancel(&services.db, env, id, origin).await? {
        Cancel::Canceled(job) => job,
        Cancel::Finished => {
            return Err(ServiceError::Conflict(
                "The job has finished; only a PENDING or IN_PROGRESS job can be canceled.".into(),
            ))
        }
        Cancel::NotFound => return Err(ServiceError::NotFound),
    };
    tracing::info!(job_id = %id, processed = job.processed, total = job.total, "job canceled");
    view(services, job).await
}

pub async fn get(services: &Services, env: Uuid, id: Uuid) -> Result<JobView, ServiceError> {
    let job = store::get(&services.db, env, id).await?.or_not_found()?;
    view(services, job).await
}

/// One page of the environment's jobs, newest first after `after`, at most `limit`.
pub async fn list(
    services: &Services,
    env: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobView>, ServiceError> {
    let jobs = store::list(&services.db, env, after, limit).await?;
    views(services, env, jobs).await
}

/// One page of a job's results in item order after item `after`, at most `limit`, only those
/// with `outcome` when given.
pub async fn results(
    services: &Services,
    env: Uuid,
    id: Uuid,
    after: Option<i32>,
    outcome: Option<ItemOutcome>,
    limit: i64,
) -> Result<Vec<ItemResult>, ServiceError> {
    let db = &services.db;
    store::get(db, env, id).await?.or_not_found()?;
    Ok(results::page(db, env, id, after, outcome, limit).await?)
}

async fn view(services: &Services, job: Job) -> Result<JobView, ServiceError> {
    let env = job.environment_id;
    let mut all = views(services, env, vec![job]).await?;
    all.pop()
        .ok_or_else(|| ServiceError::Internal("a job viewed as nothing".into()))
}

/// Jobs with their embedded duplicates, read in one query for all of them.
async fn views(
    services: &Services,
    env: Uuid,
    jobs: Vec<Job>,
) -> Result<Vec<JobView>, ServiceError> {
    let with_duplicates: Vec<Uuid> = jobs
        .iter()
        .filter(|j| j.counts.duplicates > 0)
        .map(|j| j.id)
        .collect();
    let mut duplicates = if with_duplicates.is_empty() {
        HashMap::new()
    } else {
        results::duplicates(&services.db, env, &with_duplicates).await?
    };
    Ok(jobs
        .into_iter()
        .map(|job| JobView {
            duplicates: duplicates.remove(&job.id).unwrap_or_default(),
            job,
        })
        .collect())
}

fn over_the_unfinished_limit(limit: u32) -> ServiceError {
    ServiceError::Limited {
        message: format!(
            "The environment has {limit} unfinished jobs, its limit; submit this one when one of them has finished."
        ),
        retry_after_seconds: LIMITED_RETRY_AFTER_SECONDS,
    }
}

/// Seconds a submission over the unfinished-job limit is told to wait: about a chunk's time on a
/// busy deployment, after which a job of the environment may well have finished.
const LIMITED_RETRY_AFTER_SECONDS: u32 = 5;

/// The announcements of finished jobs ([`store::FINISHED_CHANNEL`]), from one LISTEN connection
/// per process, opened when the first `"async": false` submission waits.
pub struct FinishedJobs {
    db: PgPool,
    /// A job id, or `None` when announcements may have been missed (the connection was lost).
    sender: broadcast::Sender<Option<Uuid>>,
    listening: OnceLock<watch::Sender<bool>>,
}

impl FinishedJobs {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            sender: broadcast::channel(256).0,
            listening: OnceLock::new(),
        }
    }

    fn subscribe(&self) -> Finished {
        self.listening.get_or_init(|| {
            let (stop, stopped) = watch::channel(false);
            tokio::spawn(listen(self.db.clone(), self.sender.clone(), stopped));
            stop
        });
        Finished(self.sender.subscribe())
    }
}

impl Drop for FinishedJobs {
    fn drop(&mut self) {
        if let Some(stop) = self.listening.get() {
            let _ = stop.send(true);
        }
    }
}

/// One waiter's view of the announcements.
struct Finished(broadcast::Receiver<Option<Uuid>>);

impl Finished {
    /// Returns when `id` is announced, when announcements may have been missed, or at `deadline`.
    async fn until(&mut self, id: Uuid, deadline: Instant) {
        loop {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Ok(Some(done))) if done != id => continue,
                _ => return,
            }
        }
    }
}

/// Relays announcements until stopped. Reconnects after errors, and when the pool moves to
/// another database host (the connection is held outside the pool); each reconnection tells
/// the waiters to read their job again.
async fn listen(
    pool: PgPool,
    sender: broadcast::Sender<Option<Uuid>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut switches = crate::database::switches();
    while !*stop.borrow() {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await {
            switches.mark_unchanged();
            if listener.listen(store::FINISHED_CHANNEL).await.is_ok() {
                let _ = sender.send(None);
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(n) => { let _ = sender.send(Uuid::try_parse(n.payload()).ok()); }
                            Err(_) => break,
                        },
                        _ = switches.changed() => break,
                        _ = stop.changed() => return,
                    }
                }
            }
            let _ = sender.send(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
