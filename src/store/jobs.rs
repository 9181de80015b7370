//! `oath_jobs`: a job's row, from submission (insert) through its claims under a lease, the
//! fenced progress of its chunks, to DONE, FAILED or CANCELED; and reading jobs for the API. Rows are read
//! into [`Job`] in one place, [`JobRecord::into_job`], with one column list, [`job_query!`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::chunks::ChunkKey;
use super::decode;
use crate::domain::event::{EventType, Origin};
use crate::domain::job::{JobStatus, JobType};

/// The LISTEN/NOTIFY channel that wakes runners when a job is enqueued.
pub const CHANNEL: &str = "oath_jobs";

/// The channel on which a job that reaches a final status is announced with its id, when its
/// transaction commits (a trigger, in the migration `job_finished_notify`).
pub const FINISHED_CHANNEL: &str = "oath_job_finished";

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub job_type: JobType,
    pub is_async: bool,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub total: i32,
    pub processed: i32,
    pub counts: ChunkCounts,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Item counts: a committed chunk's, or (summed) a job's.
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

/// The columns of `oath_jobs` as read.
struct JobRecord {
    environment_id: Uuid,
    id: Uuid,
    job_type: String,
    is_async: bool,
    status: String,
    reason: Option<String>,
    total: i32,
    processed: i32,
    created: i32,
    duplicates: i32,
    revoked: i32,
    not_found: i32,
    skipped_paired: i32,
    failed: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// An unknown type or status is an error: the row was written by something else.
    fn into_job(self) -> Result<Job, sqlx::Error> {
        Ok(Job {
            environment_id: self.environment_id,
            id: self.id,
            job_type: decode(&self.job_type, JobType::parse, "job type")?,
            is_async: self.is_async,
            status: decode(&self.status, JobStatus::parse, "job status")?,
            reason: self.reason,
            total: self.total,
            processed: self.processed,
            counts: ChunkCounts {
                processed: self.processed,
                created: self.created,
                duplicates: self.duplicates,
                revoked: self.revoked,
                not_found: self.not_found,
                skipped_paired: self.skipped_paired,
                failed: self.failed,
            },
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        })
    }
}

/// `query_as!` into [`JobRecord`] with `oath_jobs`' column list between `$before` and `$after`.
macro_rules! job_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            JobRecord,
            $before
                + "environment_id, id, type as job_type, async as is_async, status, reason, \
                   total, processed, created, duplicates, revoked, not_found, skipped_paired, \
                   failed, created_at, updated_at, completed_at"
                + $after
            $(, $arg)*
        )
    };
}

/// What a new job's row says of it.
#[derive(Clone, Copy, Debug)]
pub struct NewJobRow {
    pub job_type: JobType,
    pub is_async: bool,
    pub force_unpair: bool,
    pub total: i32,
    pub chunk_size: i32,
}

/// Stores a new job (PENDING) in the submitting transaction, with who submitted it (every event
/// the job causes names them), and records `OATH_JOB.CREATED`.
pub async fn insert(
    tx: &mut PgConnection,
    env: Uuid,
    id: Uuid,
    job: NewJobRow,
    origin: &Origin,
) -> Result<Job, sqlx::Error> {
    let job = job_query!(
        "insert into oath_jobs (environment_id, id, type, async, force_unpair, total, chunk_size, \
                                actor, request_id) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning ",
        "",
        env,
        id,
        job.job_type.as_str(),
        job.is_async,
        job.force_unpair,
        job.total,
        job.chunk_size,
        origin.actor,
        origin.request_id,
    )
    .fetch_one(&mut *tx)
    .await?
    .into_job()?;
    super::events::record(&mut *tx, env, EventType::JobCreated, origin, id, None).await?;
    Ok(job)
}

/// The environment's unfinished (PENDING or IN_PROGRESS) jobs, counted under a transaction-scoped
/// lock of the environment's submissions, so that concurrent submissions count one after another
/// and none can pass a limit the count is checked against.
pub async fn lock_and_count_unfinished(
    tx: &mut PgConnection,
    env: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended($1::text, 7353))",
        env.to_string()
    )
    .execute(&mut *tx)
    .await?;
    count_unfinished(&mut *tx, env).await
}

/// The environment's PENDING or IN_PROGRESS jobs.
pub async fn count_unfinished(
    db: impl sqlx::PgExecutor<'_>,
    env: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from oath_jobs
           where environment_id = $1 and status in ('PENDING', 'IN_PROGRESS')"#,
        env,
    )
    .fetch_one(db)
    .await
}

/// Wakes the runners of every process when the transaction commits.
pub async fn notify(tx: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("select pg_notify($1, $2)", CHANNEL, id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub async fn get(pool: &PgPool, env: Uuid, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    job_query!(
        "select ",
        " from oath_jobs where environment_id = $1 and id = $2",
        env,
        id,
    )
    .fetch_optional(pool)
    .await?
    .map(JobRecord::into_job)
    .transpose()
}

/// Newest first (ids are time-ordered), before `before`.
pub async fn list(
    pool: &PgPool,
    env: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Job>, sqlx::Error> {
    job_query!(
        "select ",
        " from oath_jobs where environment_id = $1 and ($2::uuid is null or id < $2) \
         order by id desc limit $3",
        env,
        before,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(JobRecord::into_job)
    .collect()
}

/// A job a runner holds the lease of, under claim number `attempt`.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub job_type: JobType,
    pub attempt: i32,
    /// Claims of this job that took it over from a runner whose lease had expired.
    pub takeovers: i32,
    /// This claim was one of them.
    pub taken_over: bool,
    pub force_unpair: bool,
}

impl ClaimedJob {
    /// The job's chunk whose first item is `first_idx`.
    pub fn chunk(&self, first_idx: i32) -> ChunkKey {
        ChunkKey {
            env: self.environment_id,
            job_id: self.id,
            first_idx,
        }
    }
}

/// Takes a runnable job (pending, running under an expired lease, or given back between
/// chunks) of the environment served least recently, oldest job first within it. With
/// `served_after`, only an environment served strictly less recently than that one's qualifies:
/// a runner holding a job of that environment yields only to another environment's work.
///
/// The claim bumps `attempt`, which fences out whoever held the job before; taking over a lease
/// that a runner still named as its own (it died or stalled) also bumps `takeovers`.
///
/// The candidates are the runnable jobs (the partial index `oath_jobs_runnable_idx` holds only
/// unfinished ones, which `jobs.max_unfinished_per_environment` bounds per environment), each
/// joined by primary key to its environment's schedule row; the sort is over that small set.
/// Ordering by a column of the job would need every job of an environment rewritten whenever
/// it is served.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
    served_after: Option<Uuid>,
) -> Result<Option<ClaimedJob>, sqlx::Error> {
    let row = sqlx::query!(
        r#"update oath_jobs j
           set status = 'IN_PROGRESS', attempt = j.attempt + 1,
               takeovers = j.takeovers + case when next.lease_owner is null then 0 else 1 end,
               lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
               updated_at = now()
           from (select o.environment_id, o.id, o.lease_owner
                 from oath_jobs o
                 left join environment_schedule s on s.environment_id = o.environment_id
                 where (o.status = 'PENDING'
                        or (o.status = 'IN_PROGRESS' and o.lease_expires_at < now()))
                   and ($3::uuid is null or s.last_served_at is null
                        or s.last_served_at < (select last_served_at from environment_schedule
                                               where environment_id = $3))
                 order by s.last_served_at nulls first, o.created_at
                 limit 1
                 for update of o skip locked) next
           where j.environment_id = next.environment_id and j.id = next.id
           returning j.environment_id, j.id, j.type as job_type, j.attempt, j.takeovers,
                     j.force_unpair, next.lease_owner is not null as "taken_over!""#,
        owner,
        lease.as_secs_f64(),
        served_after,
    )
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(ClaimedJob {
            environment_id: r.environment_id,
            id: r.id,
            job_type: decode(&r.job_type, JobType::parse, "job type")?,
            attempt: r.attempt,
            takeovers: r.takeovers,
            taken_over: r.taken_over,
            force_unpair: r.force_unpair,
        })
    })
    .transpose()
}

/// Records, in a chunk's transaction, that the job's environment was served now. Last in the
/// transaction: runners serving one environment wait on its row only for each other's commit.
pub async fn mark_served(tx: &mut PgConnection, env: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"insert into environment_schedule (environment_id, last_served_at)
           values ($1, clock_timestamp())
           on conflict (environment_id) do update
           set last_served_at = greatest(environment_schedule.last_served_at,
                                         excluded.last_served_at)"#,
        env,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Where a job stands, as its chunk transaction sees it.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    pub processed: i32,
    pub total: i32,
    pub chunk_size: i32,
}

/// Renews the lease and locks the job row, but only if this claim still holds it and, with
/// `at`, the job's next chunk starts at item `at`. None when the lease was lost (or the job is
/// elsewhere). The first statement of a chunk's transaction; a chunk written beside the previous
/// one fences after its writes, once that chunk has ended ([`super::wait_for_chunk`]).
pub async fn fence(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    lease: Duration,
    at: Option<i32>,
) -> Result<Option<Position>, sqlx::Error> {
    sqlx::query_as!(
        Position,
        r#"update oath_jobs
           set lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'
             and ($5::integer is null or processed = $5)
           returning processed, total, chunk_size"#,
        job.environment_id,
        job.id,
        job.attempt,
        lease.as_secs_f64(),
        at,
    )
    .fetch_optional(&mut *tx)
    .await
}

/// Adds a committed chunk's counts; the job is DONE when every item is processed. Runs in the
/// chunk's transaction, after [`fence`] locked the row. Returns the items processed and whether
/// the job is done.
pub async fn advance(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    c: &ChunkCounts,
) -> Result<(i32, bool), sqlx::Error> {
    let row = sqlx::query!(
        r#"with j as (
           update oath_jobs
           set processed = processed + $3, created = created + $4, duplicates = duplicates + $5,
               revoked = revoked + $6, not_found = not_found + $7,
               skipped_paired = skipped_paired + $8, failed = failed + $9,
               status = case when processed + $3 >= total then 'DONE' else status end,
               completed_at = case when processed + $3 >= total then now() end,
               lease_owner = case when processed + $3 >= total then null else lease_owner end,
               lease_expires_at = case when processed + $3 >= total then null else lease_expires_at end,
               updated_at = now()
           where environment_id = $1 and id = $2
           returning *
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, job_id, result)
               select environment_id, 'OATH_JOB.COMPLETED', coalesce(actor, 'system'),
                      request_id, id, id,
                      event_job_result(type, created, duplicates, failed, revoked, not_found,
                                       skipped_paired, null)
               from j where status = 'DONE'
           )
           select processed as "processed!", status as "status!" from j"#,
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
    let status = decode(&row.status, JobStatus::parse, "job status")?;
    Ok((row.processed, status == JobStatus::Done))
}

/// Marks a job FAILED with `reason`, if this claim still holds it. False when it does not.
pub async fn fail(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query!(
        r#"with j as (
           update oath_jobs
           set status = 'FAILED', reason = $4, completed_at = now(), updated_at = now(),
               lease_owner = null, lease_expires_at = null
           where environment_id = $1 and id = $2 and attempt = $3 and status = 'IN_PROGRESS'
           returning *
           )
           insert into events
               (environment_id, type, actor, request_id, resource_id, job_id, result)
           select environment_id, 'OATH_JOB.FAILED', coalesce(actor, 'system'), request_id, id,
                  id, event_job_result(type, created, duplicates, failed, revoked, not_found,
                                       skipped_paired, reason)
           from j"#,
        job.environment_id,
        job.id,
        job.attempt,
        reason,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// What a cancel found.
pub enum Cancel {
    /// The job is CANCELED now.
    Canceled(Job),
    /// The job had finished already (DONE, FAILED or CANCELED).
    Finished,
    NotFound,
}

/// Cancels a PENDING or IN_PROGRESS job and deletes its input (and so its sealed secrets).
///
/// The update waits for the row lock of a chunk in flight, which every chunk transaction takes
/// first ([`fence`]), and is then evaluated again on the row that chunk left: after the job's
/// last chunk it finds the job DONE and changes nothing; otherwise the job is CANCELED with the
/// counts of the chunks committed so far, and every later fence of a runner fails, so a chunk
/// written beside the committed one rolls back. Runners take the job row before a chunk's
/// input row too, so the two cannot deadlock.
///
/// Records `OATH_JOB.CANCELED` of `origin`.
pub async fn cancel(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<Cancel, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let canceled = job_query!(
        r#"update oath_jobs
           set status = 'CANCELED', completed_at = now(), updated_at = now(),
               lease_owner = null, lease_expires_at = null
           where environment_id = $1 and id = $2 and status in ('PENDING', 'IN_PROGRESS')
           returning "#,
        "",
        env,
        id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(job) = canceled else {
        tx.rollback().await?;
        let exists = sqlx::query_scalar!(
            r#"select exists(select 1 from oath_jobs where environment_id = $1 and id = $2)
               as "exists!""#,
            env,
            id,
        )
        .fetch_one(pool)
        .await?;
        return Ok(if exists {
            Cancel::Finished
        } else {
            Cancel::NotFound
        });
    };
    super::chunks::delete_all(&mut tx, env, id).await?;
    sqlx::query!(
        r#"insert into events
               (environment_id, type, actor, request_id, resource_id, job_id, result)
           select environment_id, 'OATH_JOB.CANCELED', $3, $4, id, id,
                  event_job_result(type, created, duplicates, failed, revoked, not_found,
                                   skipped_paired, null)
           from oath_jobs where environment_id = $1 and id = $2"#,
        env,
        id,
        origin.actor,
        origin.request_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Cancel::Canceled(job.into_job()?))
}

/// Whether the job is CANCELED: what a runner whose fence failed asks, to tell a cancel from a
/// lost lease.
pub async fn is_canceled(pool: &PgPool, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select exists(select 1 from oath_jobs
                         where environment_id = $1 and id = $2 and status = 'CANCELED')
           as "canceled!""#,
        job.environment_id,
        job.id,
    )
    .fetch_one(pool)
    .await
}

/// Gives a job back (shutdown, or yielding to another environment between chunks) so that any
/// runner can resume it at once instead of waiting for the lease to expire; its next claim is
/// not a takeover.
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

/// The queue's backlog for the gauges: unfinished jobs, and how long the oldest job not yet
/// started has waited (0 when none waits). Both read the partial index of unfinished jobs.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query!(
        r#"select count(*) as "unfinished!",
                  coalesce(extract(epoch from now() - min(created_at)
                                   filter (where status = 'PENDING')), 0)::float8 as "oldest!"
           from oath_jobs where status in ('PENDING', 'IN_PROGRESS')"#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.unfinished, row.oldest.max(0.0)))
}
