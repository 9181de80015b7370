//! Delivery: workers in every service process claim a subscription with events to deliver
//! (`FOR UPDATE SKIP LOCKED` with a lease, like job runners), send the events after its cursor
//! as one signed batch (a JSON array of 1 to [`MAX_BATCH`] events), and on a 2xx move its
//! cursor past them; on anything else, a timeout or a refused connection, retry after a backoff
//! that doubles from 1 s to 1 h. A subscription is held by one worker at a time and its events
//! go out in order, one batch after the other: a receiver never gets an event of a token before
//! every earlier one was acknowledged. One that fails only waits out its own backoff; one that
//! is slow holds one worker for at most `events.delivery_timeout_seconds`.
//!
//! Durability: the cursor moves only after the receiver acknowledged, in a statement fenced on
//! the claim. A worker killed mid-delivery leaves its lease to expire; the next claim sends the
//! same events again (at least once: receivers deduplicate by event id). Events older than
//! `events.max_delivery_age_seconds` are dropped and counted instead of sent. Nothing of a
//! receiver's answer is kept but a short status line ("HTTP 503", "timeout", ...).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::{signature, target, EventView};
use crate::config::Settings;
use crate::crypto::SecretCipher;
use crate::jobs::runner;
use crate::metrics::METRICS;
use crate::store::events::{self as events, Filter, Position};
use crate::store::subscriptions::{self as store, Claimed, Outcome};

/// Events in one delivery, at most.
pub const MAX_BATCH: usize = 100;
/// Events looked at per delivery to a subscription of some types, at most (those of other
/// types are passed over).
const SCAN: i64 = 500;
/// The first and the longest wait after a failed delivery.
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No subscription had events due.
    Idle,
    /// A batch was acknowledged (or there was nothing of the subscription's types to send).
    Delivered { subscription: Uuid, events: usize },
    /// The delivery failed; the subscription waits out its backoff.
    Failed { subscription: Uuid, reason: String },
    /// Another worker claimed the subscription meanwhile (this one's lease expired).
    LeaseLost { subscription: Uuid },
}

/// One delivery worker. Tests drive [`Deliverer::step`] directly.
pub struct Deliverer {
    pool: PgPool,
    settings: Arc<Settings>,
    cipher: Arc<SecretCipher>,
    client: reqwest::Client,
    owner: String,
}

impl Deliverer {
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        cipher: Arc<SecretCipher>,
        owner: String,
    ) -> Result<Self, String> {
        let client = client(&settings)?;
        Ok(Self {
            pool,
            settings,
            cipher,
            client,
            owner,
        })
    }

    fn rules(&self) -> target::Rules {
        target::Rules {
            allow_http: self.settings.events.allow_http,
            allow_private: self.settings.events.allow_private_targets,
        }
    }

    /// Claims a subscription with events due and delivers one batch to it.
    pub async fn step(&self) -> Result<Step, sqlx::Error> {
        let lease = Duration::from_secs(self.settings.events.lease_seconds);
        let Some(claimed) = store::claim(&self.pool, &self.owner, lease).await? else {
            return Ok(Step::Idle);
        };
        let subscription = claimed.id;
        let env = claimed.environment_id;
        // Of every type, the batch is the first events; else it is picked from more.
        let scan = match claimed.included_types {
            None => MAX_BATCH as i64,
            Some(_) => SCAN,
        };
        let scanned =
            events::after(&self.pool, env, claimed.cursor, Filter::default(), scan).await?;
        let oldest_kept = Utc::now()
            - chrono::Duration::seconds(self.settings.events.max_delivery_age_seconds as i64);
        // Events passed over before the first one sent (other types, or too old to send), the
        // batch, and where the cursor stands after the batch.
        let (mut skipped_to, mut dropped) = (claimed.cursor, 0i64);
        let mut batch = Vec::new();
        let mut end = claimed.cursor;
        for event in scanned {
            let wanted = claimed
                .included_types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t == event.event_type.as_str()));
            // Only before the batch: an event dropped once is never counted again.
            if wanted && batch.is_empty() && event.occurred_at < oldest_kept {
                dropped += 1;
            } else if wanted {
                if batch.len() == MAX_BATCH {
                    break;
                }
                end = event.position;
                batch.push(event);
                continue;
            }
            end = event.position;
            if batch.is_empty() {
                skipped_to = event.position;
            }
        }
        if dropped > 0 {
            METRICS
                .event_deliveries
                .with_label_values(&["dropped"])
                .inc_by(dropped as u64);
            tracing::warn!(subscription_id = %subscription, dropped,
                "events older than events.max_delivery_age_seconds dropped undelivered");
        }
        if batch.is_empty() {
            return self
                .finish(&claimed, end, dropped, Outcome::Delivered, 0)
                .await;
        }
        let count = batch.len();
        let views: Vec<EventView> = batch.into_iter().map(|e| EventView::new(env, e)).collect();
        match self.send(&claimed, &views).await {
            Ok(()) => {
                METRICS.event_deliveries.with_label_values(&["ok"]).inc();
                self.finish(&claimed, end, dropped, Outcome::Delivered, count)
                    .await
            }
            Err((outcome, reason)) => {
                METRICS.event_deliveries.with_label_values(&[outcome]).inc();
                let retry_after = backoff(claimed.failures);
                tracing::info!(subscription_id = %subscription, reason = %reason,
                    retry_in_seconds = retry_after.as_secs(), "event delivery failed");
                let failed = Outcome::Failed {
                    reason: &reason,
                    retry_after,
                };
                match self
                    .finish(&claimed, skipped_to, dropped, failed, 0)
                    .await?
                {
                    Step::LeaseLost { subscription } => Ok(Step::LeaseLost { subscription }),
                    _ => Ok(Step::Failed {
                        subscription,
                        reason,
                    }),
                }
            }
        }
    }

    async fn finish(
        &self,
        claimed: &Claimed,
        cursor: Position,
        dropped: i64,
        outcome: Outcome<'_>,
        count: usize,
    ) -> Result<Step, sqlx::Error> {
        if !store::finish(&self.pool, claimed, cursor, dropped, outcome).await? {
            tracing::warn!(subscription_id = %claimed.id, "delivery lease lost");
            return Ok(Step::LeaseLost {
                subscription: claimed.id,
            });
        }
        Ok(Step::Delivered {
            subscription: claimed.id,
            events: count,
        })
    }

    /// POSTs the batch, signed. Err: the outcome label and the short status line.
    async fn send(
        &self,
        claimed: &Claimed,
        batch: &[EventView],
    ) -> Result<(), (&'static str, String)> {
        let error = |m: &str| ("error", m.to_string());
        // The URL as the rules judge it now (they may have changed since it was stored); a
        // name is resolved and judged again by the client's resolver, address by address.
        let url =
            target::parse(&claimed.url, self.rules()).map_err(|_| error("target not allowed"))?;
        let env = claimed.environment_id;
        let secret = self
            .cipher
            .open(
                &claimed.secret.key_id,
                &claimed.secret.ciphertext,
                env,
                claimed.id,
            )
            .map_err(|_| error("signing secret unreadable"))?;
        let values = self
            .cipher
            .open(
                &claimed.headers.key_id,
                &claimed.headers.ciphertext,
                env,
                claimed.id,
            )
            .map_err(|_| error("headers unreadable"))?;
        let values: Vec<String> =
            serde_json::from_slice(values.expose()).map_err(|_| error("headers unreadable"))?;
        let body = serde_json::to_vec(batch).map_err(|_| error("events unserializable"))?;
        let t = Utc::now().timestamp();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("oath-delivery-id", Uuid::new_v4().to_string())
            .header(
                "oath-signature",
                signature::header(secret.expose(), t, &body),
            );
        for (name, value) in claimed.header_names.iter().zip(&values) {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.body(body).send().await.map_err(|e| describe(&e))?;
        // The receiver's body is never read, let alone stored.
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(("error", format!("HTTP {}", status.as_u16())))
        }
    }
}

/// The wait after the `failures + 1`th consecutive failure: 1 s, doubling, at most 1 h.
pub fn backoff(failures: i32) -> Duration {
    let exponent = failures.clamp(0, 12) as u32;
    (MIN_RETRY * 2u32.pow(exponent)).min(MAX_RETRY)
}

/// A failed request as a short status line, and its outcome label.
fn describe(e: &reqwest::Error) -> (&'static str, String) {
    if e.is_timeout() {
        return ("timeout", "timeout".into());
    }
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        chain.push_str(&s.to_string().to_ascii_lowercase());
        chain.push(' ');
        source = s.source();
    }
    let line = if chain.contains("must not be or resolve to") {
        "target not allowed"
    } else if chain.contains("could not be resolved") || chain.contains("dns") {
        "name not resolved"
    } else if chain.contains("refused") {
        "connection refused"
    } else if chain.contains("certificate") || chain.contains("tls") {
        "TLS handshake failed"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ("error", line.into())
}

/// The delivery client: no redirects (a receiver cannot send the service elsewhere), the
/// timeout, the system's CA store plus `events.ca_file`, and names resolved and checked by
/// [`target::CheckedResolver`].
fn client(settings: &Settings) -> Result<reqwest::Client, String> {
    let events = &settings.events;
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(events.delivery_timeout_seconds))
        .connect_timeout(Duration::from_secs(events.delivery_timeout_seconds))
        .user_agent(concat!("oath-service/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .dns_resolver(Arc::new(target::CheckedResolver {
            rules: target::Rules {
                allow_http: events.allow_http,
                allow_private: events.allow_private_targets,
            },
        }));
    if let Some(path) = events.ca_file() {
        let pem =
            std::fs::read(path).map_err(|e| format!("events.ca_file: cannot read {path}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("events.ca_file: {path}: not PEM: {e}"))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("events: cannot build the delivery client: {e}"))
}

/// The delivery workers of one process, the gauges' refresher, and how to stop them.
pub struct DeliveryPool {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DeliveryPool {
    /// Starts `events.runners` workers. Their HTTP clients (which read the system's CA store)
    /// are built on the blocking pool, so that start-up does not wait for them.
    pub fn start(
        pool: PgPool,
        settings: Arc<Settings>,
        cipher: Arc<SecretCipher>,
    ) -> Result<Self, String> {
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(watch_backlog(pool.clone(), stop.clone()))];
        let process = Uuid::new_v4();
        for n in 0..settings.events.runners {
            let (pool, settings, cipher) = (pool.clone(), settings.clone(), cipher.clone());
            let stop = stop.clone();
            let owner = format!("{process}/d{n}");
            tasks.push(tokio::spawn(async move {
                let built = tokio::task::spawn_blocking(move || {
                    Deliverer::new(pool, settings, cipher, owner)
                })
                .await;
                match built {
                    Ok(Ok(worker)) => run(worker, stop).await,
                    Ok(Err(e)) => tracing::error!(error = %e, "delivery worker not started"),
                    Err(e) => tracing::error!(error = %e, "delivery worker not started"),
                }
            }));
        }
        Ok(Self { shutdown, tasks })
    }

    /// Tells the workers to stop after their current delivery, without waiting for them.
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

/// While a step of a bulk job runs in this process, a worker delivers at most one batch this
/// often: the job, which someone waits for, has the cores; its events follow it, with a lag of
/// about its duration, and a stream of jobs still lets a batch a second through.
const GIVE_WAY: Duration = Duration::from_secs(1);
/// How often a worker that gives way looks whether the step has ended.
const GIVE_WAY_CHECK: Duration = Duration::from_millis(10);

async fn run(worker: Deliverer, mut stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(worker.settings.events.poll_interval_ms);
    while !*stop.borrow() {
        let started = tokio::time::Instant::now();
        let idle = match worker.step().await {
            Ok(Step::Idle) => true,
            Ok(_) => {
                give_way(started, &mut stop).await;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "delivery worker: database error");
                true
            }
        };
        if idle {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// After a batch begun at `started`: while a job step runs in this process, waits until
/// [`GIVE_WAY`] has passed since then, the step has ended, or the worker is told to stop.
async fn give_way(started: tokio::time::Instant, stop: &mut watch::Receiver<bool>) {
    while runner::step_under_way() && started.elapsed() < GIVE_WAY {
        tokio::select! {
            _ = tokio::time::sleep(GIVE_WAY_CHECK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// How often the delivery gauges are read from the database.
const BACKLOG_REFRESH: Duration = Duration::from_secs(10);

async fn watch_backlog(pool: PgPool, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = METRICS.refresh_deliveries(&pool).await {
            tracing::debug!(error = %e, "could not read the delivery backlog");
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKLOG_REFRESH) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_an_hour() {
        let waits: Vec<u64> = (0..14).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
        );
        assert_eq!(backoff(i32::MAX).as_secs(), 3600);
    }

    /// Real time, so each bound below that could be missed on a loaded machine has the better
    /// part of a second of slack; waiting is never shorter than asked.
    #[tokio::test]
    async fn a_worker_gives_way_to_a_job_step_for_at_most_a_second_a_batch() {
        use tokio::time::Instant;
        let slack = Duration::from_millis(600);
        let (stopping, mut stop) = watch::channel(false);

        // No step under way: the next batch goes at once.
        let started = Instant::now();
        give_way(started, &mut stop).await;
        assert!(started.elapsed() < slack);

        // A step under way: one batch a second.
        let step = runner::UnderWay::begin();
        let started = Instant::now();
        give_way(started, &mut stop).await;
        let waited = started.elapsed();
        assert!((GIVE_WAY..GIVE_WAY + slack).contains(&waited), "{waited:?}");

        // The step ends 300 ms into a wait: delivery resumes then, not a second after the batch.
        let started = Instant::now();
        let worker = tokio::spawn(async move {
            give_way(started, &mut stop).await;
            (started.elapsed(), stop)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(step);
        let (waited, mut stop) = worker.await.unwrap();
        assert!(
            (Duration::from_millis(300)..GIVE_WAY - Duration::from_millis(100)).contains(&waited),
            "{waited:?}"
        );

        // Told to stop during a wait: it stops waiting then.
        let _step = runner::UnderWay::begin();
        let started = Instant::now();
        let worker = tokio::spawn(async move {
            give_way(started, &mut stop).await;
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopping.send(true).unwrap();
        let waited = worker.await.unwrap();
        assert!(
            (Duration::from_millis(100)..GIVE_WAY - Duration::from_millis(100)).contains(&waited),
            "{waited:?}"
        );
    }
}
