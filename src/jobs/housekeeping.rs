//! Housekeeping each service process runs beside its job runners, every task a loop that ends
//! with the runners' stop signal: expired Idempotency-Keys are forgotten, finished jobs past their
//! retention purged ([`super::retention`]), and the backlog gauges kept current.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::retention;
use crate::config::Settings;
use crate::metrics::METRICS;

/// Starts the housekeeping tasks; each ends once `stop` changes.
pub(super) fn start(
    pool: &PgPool,
    settings: &Arc<Settings>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(purge_idempotency_keys(pool.clone(), stop.clone())),
        tokio::spawn(purge_finished_jobs(
            pool.clone(),
            settings.clone(),
            stop.clone(),
        )),
        tokio::spawn(watch_backlog(pool.clone(), stop.clone())),
    ]
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
