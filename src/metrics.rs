//! Prometheus metrics: the build (`oath_build_info`, value 1), HTTP requests by route and status,
//! job chunks, items by outcome, runner claims and lease losses, the job backlog and purge,
//! rate-limited requests and the keys the limits remember, the database pool and its primary
//! switches. One process-wide
//! registry, rendered by `GET /metrics` in the text exposition format, followed by the standard
//! `process_*` metrics (CPU, memory, file descriptors, start time; Linux only) under their usual
//! unprefixed names.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

use crate::limits::RateLimits;

pub struct Metrics {
    registry: Registry,
    /// Apart from `registry` so that its names keep no `oath_` prefix, as dashboards expect.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub job_chunk_duration: HistogramVec,
    pub job_items: IntCounterVec,
    pub job_claims: IntCounter,
    pub job_lease_losses: IntCounter,
    pub jobs_purged: IntCounter,
    jobs_unfinished: IntGauge,
    job_oldest_pending_age: Gauge,
    pub otp_validations: IntCounterVec,
    pub create_batch_size: Histogram,
    pub rate_limited: IntCounterVec,
    rate_limit_keys: IntGaugeVec,
    db_connections: IntGaugeVec,
    db_max_connections: IntGauge,
    pub database_primary_switches: IntCounter,
    pub trace_spans_lost: IntCounter,
    /// Webhook deliveries by outcome: ok, error, timeout, dropped (events given up on).
    pub event_deliveries: IntCounterVec,
    events_pending: IntGauge,
    event_delivery_lag: Gauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("oath".into()), None).expect("valid prefix");
        let r = &registry;
        const BY_REQUEST: &[&str] = &["method", "route", "status"];
        let http_requests = counter_vec(
            r,
            "http_requests_total",
            "HTTP requests by method, route and status",
            BY_REQUEST,
        );
        let http_duration = histogram_vec(
            r,
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
            BY_REQUEST,
        );
        let job_chunk_duration = histogram_vec(
            r,
            "job_chunk_duration_seconds",
            "Time to process and commit one job chunk",
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            &["type"],
        );
        let job_items = counter_vec(
            r,
            "job_items_total",
            "Job items processed, by outcome",
            &["outcome"],
        );
        let job_claims = counter(
            r,
            "job_claims_total",
            "Jobs claimed by this process's runners",
        );
        let job_lease_losses = counter(
            r,
            "job_lease_losses_total",
            "Chunks not written because another runner had taken the job over",
        );
        let trace_spans_lost = counter(
            r,
            "trace_spans_lost_total",
            "Spans whose export to telemetry.otlp_endpoint failed (the log warns once a minute)",
        );
        let jobs_purged = counter(
            r,
            "jobs_purged_total",
            "Finished jobs deleted with their results after their retention, by this process",
        );
        // The backlog gauges are the database's (every replica reports the same values),
        // refreshed by a background loop so that rendering never queries.
        let jobs_unfinished = register(
            r,
            IntGauge::new(
                "jobs_unfinished",
                "Jobs PENDING or IN_PROGRESS, all environments",
            ),
        );
        let job_oldest_pending_age = register(
            r,
            Gauge::new(
                "job_oldest_pending_age_seconds",
                "Age of the oldest job not yet started (0 when none waits)",
            ),
        );
        let event_deliveries = counter_vec(
            r,
            "event_deliveries_total",
            "Webhook deliveries by outcome (ok, error, timeout; dropped: events given up on)",
            &["outcome"],
        );
        for outcome in ["ok", "error", "timeout", "dropped"] {
            event_deliveries.with_label_values(&[outcome]);
        }
        let events_pending = register(
            r,
            IntGauge::new(
                "events_pending",
                "Events not yet delivered to a subscription, all subscriptions",
            ),
        );
        let event_delivery_lag = register(
            r,
            Gauge::new(
                "event_delivery_lag_seconds",
                "Age of the oldest event not yet delivered to a subscription (0 when none)",
            ),
        );
        let otp_validations = counter_vec(
            r,
            "otp_validations_total",
            "OTP checks, by operation and outcome",
            &["operation", "outcome"],
        );
        let create_batch_size = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "create_batch_size",
                    "Single creates of one environment committed in one transaction",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 500.0,
                ]),
            ),
        );
        let rate_limited = counter_vec(
            r,
            "rate_limited_total",
            "Requests answered 429 REQUEST_LIMITED, by route",
            &["route"],
        );
        let rate_limit_keys = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "rate_limit_keys",
                    "Keys each rate limit remembers (at most limits.rate_limit_keys), by limit",
                ),
                &["limit"],
            ),
        );
        let db_connections = register(
            r,
            IntGaugeVec::new(
                Opts::new("db_pool_connections", "Database pool connections, by state"),
                &["state"],
            ),
        );
        let db_max_connections = register(
            r,
            IntGauge::new(
                "db_pool_max_connections",
                "Connections the database pool may open",
            ),
        );
        let database_primary_switches = counter(
            r,
            "database_primary_switches_total",
            "Times the database host in use changed (a failover), with several hosts in database.url",
        );
        // Constant: its labels say which build answers (a rollout shows as two series).
        let build_info = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "The running build: version and source revision (1)",
                ),
                &["version", "revision"],
            ),
        );
        build_info
            .with_label_values(&[crate::version::VERSION, crate::version::REVISION])
            .set(1);
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        Self {
            event_deliveries,
            events_pending,
            event_delivery_lag,
            registry,
            process,
            http_requests,
            http_duration,
            job_chunk_duration,
            job_items,
            job_claims,
            job_lease_losses,
            jobs_purged,
            jobs_unfinished,
            job_oldest_pending_age,
            otp_validations,
            create_batch_size,
            rate_limited,
            rate_limit_keys,
            db_connections,
            db_max_connections,
            database_primary_switches,
            trace_spans_lost,
        }
    }

    /// Reads the job backlog gauges from the database (one index scan of the unfinished jobs).
    pub async fn refresh_backlog(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let (unfinished, oldest) = crate::store::jobs::backlog(pool).await?;
        self.jobs_unfinished.set(unfinished);
        self.job_oldest_pending_age.set(oldest);
        Ok(())
    }

    /// Reads the delivery backlog gauges from the database.
    pub async fn refresh_deliveries(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let (pending, lag) = crate::store::subscriptions::backlog(pool).await?;
        self.events_pending.set(pending);
        self.event_delivery_lag.set(lag);
        Ok(())
    }

    /// The text exposition of every metric, with the pool's and the rate limits' gauges read now.
    pub fn render(&self, pool: &PgPool, limits: &RateLimits) -> String {
        let (otp_keys, environment_keys) = limits.keys();
        for (limit, keys) in [("otp", otp_keys), ("environment", environment_keys)] {
            self.rate_limit_keys
                .with_label_values(&[limit])
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
        }
        let (size, idle) = (pool.size() as i64, pool.num_idle() as i64);
        self.db_connections.with_label_values(&["idle"]).set(idle);
        self.db_connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        self.db_max_connections
            .set(i64::from(pool.options().get_max_connections()));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers a newly made metric; a name given twice, or an invalid one, is a bug.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}
