//! Keeps the pool on the writable host of a multi-host `database.url`. sqlx connects to one host
//! (the pool's connect options, which it reads anew for every connection it opens), so a watcher
//! finds the host to use, points the pool at it with `Pool::set_connect_options`, and keeps one
//! connection of its own to that host, asking it every `database.primary_check_interval_ms`
//! whether it still accepts writes (libpq's `read-write`: `transaction_read_only` is off, so the
//! host is neither in recovery nor read-only by default). When that connection breaks or the
//! host turns read-only, the watcher tries the hosts in their order until one is writable, and
//! points the pool there. Meanwhile requests get 503 instead of reaching a host that cannot
//! write:
//!
//! - every new pooled connection is checked as it is made (`after_connect`), and one to a host
//!   that is read-only is refused (the pool then tries again, with the options of the moment)
//!   and wakes the watcher;
//! - a pooled connection opened before the latest switch is closed instead of being handed out
//!   (`before_acquire`, by its age), so that none stays on the former primary, whatever state
//!   that host is in;
//! - [`switches`] tells holders of a connection outside the pool (the job runners' LISTEN) to
//!   take a new one.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::{watch, Notify};

use super::url::{DatabaseUrl, SessionAttrs};
use crate::metrics::METRICS;

/// Waits between rounds of tries while no host qualifies: short at first (a promotion takes a
/// moment), longer while it lasts.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Counts the switches of this process; holders of a connection outside the pool watch it.
static SWITCHES: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

/// Changes whenever a pool of this process moves to another host.
pub fn switches() -> watch::Receiver<u64> {
    SWITCHES.subscribe()
}

pub struct Primary {
    url: DatabaseUrl,
    /// How often the watcher asks its host whether it still qualifies.
    check_interval: Duration,
    /// How long a connection to one host, or a check, may take.
    timeout: Duration,
    /// When the pool last moved to another host.
    switched_at: Mutex<Option<Instant>>,
    /// A pooled connection met a host that does not qualify: check now.
    recheck: Notify,
}

impl Primary {
    pub fn new(url: DatabaseUrl, check_interval: Duration, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            url,
            check_interval,
            timeout,
            switched_at: Mutex::new(None),
            recheck: Notify::new(),
        })
    }

    /// The options the pool starts with: the first host's, until the watcher has found one.
    pub fn first_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.url.hosts[0].options.clone()
    }

    /// `after_connect`: refuses a new connection to a read-only host when writes are wanted.
    pub async fn check_new(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.qualifies(conn).await? {
            return Ok(());
        }
        self.recheck.notify_one();
        Err(sqlx::Error::Protocol(
            "the database host is read-only (in recovery, or read-only by default) and \
             database.url wants target_session_attrs=read-write"
                .into(),
        ))
    }

    /// `before_acquire`: whether a pooled connection of this age was opened before the pool
    /// last moved to another host (and so may be on the former one).
    pub fn predates_switch(&self, age: Duration) -> bool {
        let switched_at = *self.lock();
        switched_at.is_some_and(|at| age > at.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.switched_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the host of `conn` is one this service may use.
    async fn qualifies(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        qualifies(self.url.attrs, conn).await
    }

    /// The first host, in the URL's order, that answers and qualifies, with the connection that
    /// showed it.
    async fn find(&self) -> Option<(usize, PgConnection)> {
        for (index, host) in self.url.hosts.iter().enumerate() {
            let attempt = async {
                let mut conn = host.options.connect().await?;
                let qualifies = self.qualifies(&mut conn).await?;
                Ok::<_, sqlx::Error>((conn, qualifies))
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok((conn, true))) => return Some((index, conn)),
                Ok(Ok((conn, false))) => {
                    tracing::debug!(host = %host.name, "database host read-only");
                    let _ = conn.close().await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %host.name, error = %e, "database host unavailable")
                }
                Err(_) => {
                    tracing::debug!(host = %host.name, "database host did not answer in time")
                }
            }
        }
        None
    }

    /// Finds the host to use, points `pool` at it, and watches it; again whenever it is lost.
    /// Ends when the pool is closed.
    pub async fn watch(self: Arc<Self>, pool: PgPool) {
        let mut current: Option<usize> = None;
        let mut retry = RETRY_FIRST;
        let mut lost_at: Option<Instant> = None;
        while !pool.is_closed() {
            let Some((index, mut conn)) = self.find().await else {
                if retry == RETRY_FIRST {
                    tracing::warn!(hosts = %self.url.host_names(), "no database host qualifies; trying again");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            };
            retry = RETRY_FIRST;
            let name = &self.url.hosts[index].name;
            if current != Some(index) {
                pool.set_connect_options(self.url.hosts[index].options.clone());
                *self.lock() = Some(Instant::now());
                match current {
                    Some(previous) => {
                        METRICS.database_primary_switches.inc();
                        SWITCHES.send_modify(|n| *n += 1);
                        tracing::warn!(
                            primary = %name,
                            previous = %self.url.hosts[previous].name,
                            searched_ms = lost_at.map(|t| t.elapsed().as_millis() as u64),
                            "database primary switched to {name}"
                        );
                    }
                    None => tracing::info!(primary = %name, "database primary found"),
                }
                current = Some(index);
            } else if lost_at.is_some() {
                tracing::warn!(primary = %name, "database primary back");
            }
            // Watch it until it breaks or no longer qualifies.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(self.check_interval) => {}
                    _ = self.recheck.notified() => {}
                }
                if pool.is_closed() {
                    return;
                }
                let check = tokio::time::timeout(self.timeout, self.qualifies(&mut conn)).await;
                if !matches!(check, Ok(Ok(true))) {
                    break;
                }
            }
            tracing::warn!(primary = %name, "database primary lost; looking for one");
            lost_at = Some(Instant::now());
            // Dropped, not closed: the host may not answer a goodbye.
            drop(conn);
        }
    }
}

/// Whether the host of `conn` is one a service with these session attributes may use.
pub async fn qualifies(attrs: SessionAttrs, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    match attrs {
        SessionAttrs::Any => Ok(true),
        // libpq's read-write: neither in recovery nor read-only by default. The second matters:
        // a standby just promoted may stay read-only for a while (pg_auto_failover keeps it so
        // until the former primary is known to have stopped).
        SessionAttrs::ReadWrite => {
            let read_only: String = sqlx::query_scalar("show transaction_read_only")
                .fetch_one(conn)
                .await?;
            Ok(read_only == "off")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opened_before_a_switch_are_not_handed_out() {
        let url = DatabaseUrl::parse("postgres://u@a:1,b:2/db").unwrap();
        let primary = Primary::new(url, Duration::from_millis(500), Duration::from_secs(1));
        assert!(
            !primary.predates_switch(Duration::from_secs(3600)),
            "no switch yet"
        );
        let switched = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        *primary.lock() = Some(switched);
        assert!(primary.predates_switch(Duration::from_secs(11)));
        assert!(!primary.predates_switch(Duration::from_secs(9)));
    }
}
