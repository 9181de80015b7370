//! Prometheus metrics: HTTP requests by route and status, job chunks, items by outcome, runner
//! claims and lease losses, the job backlog and purge, rate-limited requests and the keys the
//! limits remember, and the database pool. One process-wide
//! registry, rendered by `GET /metrics` in the text exposition format, followed by the standard
//! `process_*` metrics (CPU, memory, file descriptors, start time; Linux only) under their usual
//! unprefixed names.

use std::sync::LazyLock;

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
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("oath".into()), None).expect("valid prefix");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by method, route and status",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let job_chunk_duration = HistogramVec::new(
            HistogramOpts::new(
                "job_chunk_duration_seconds",
                "Time to process and commit one job chunk",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["type"],
        )
        .expect("valid metric");
        let job_items = IntCounterVec::new(
            Opts::new("job_items_total", "Job items processed, by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let job_claims =
            IntCounter::new("job_claims_total", "Jobs claimed by this process's runners")
                .expect("valid metric");
        let job_lease_losses = IntCounter::new(
            "job_lease_losses_total",
            "Chunks not written because another runner had taken the job over",
        )
        .expect("valid metric");
        let jobs_purged = IntCounter::new(
            "jobs_purged_total",
            "Finished jobs deleted with their results after their retention, by this process",
        )
        .expect("valid metric");
        // The backlog gauges are the database's (every replica reports the same values),
        // refreshed by a background loop so that rendering never queries.
        let jobs_unfinished = IntGauge::new(
            "jobs_unfinished",
            "Jobs PENDING or IN_PROGRESS, all environments",
        )
        .expect("valid metric");
        let job_oldest_pending_age = Gauge::new(
            "job_oldest_pending_age_seconds",
            "Age of the oldest job not yet started (0 when none waits)",
        )
        .expect("valid metric");
        let otp_validations = IntCounterVec::new(
            Opts::new(
                "otp_validations_total",
                "OTP checks, by operation and outcome",
            ),
            &["operation", "outcome"],
        )
        .expect("valid metric");
        let create_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "create_batch_size",
                "Single creates of one environment committed in one transaction",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 500.0,
            ]),
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests answered 429 REQUEST_LIMITED, by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let rate_limit_keys = IntGaugeVec::new(
            Opts::new(
                "rate_limit_keys",
                "Keys each rate limit remembers (at most limits.rate_limit_keys), by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let db_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections, by state"),
            &["state"],
        )
        .expect("valid metric");
        let db_max_connections = IntGauge::new(
            "db_pool_max_connections",
            "Connections the database pool may open",
        )
        .expect("valid metric");
        for m in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(job_chunk_duration.clone()),
            Box::new(job_items.clone()),
            Box::new(job_claims.clone()),
            Box::new(job_lease_losses.clone()),
            Box::new(jobs_purged.clone()),
            Box::new(jobs_unfinished.clone()),
            Box::new(job_oldest_pending_age.clone()),
            Box::new(otp_validations.clone()),
            Box::new(create_batch_size.clone()),
            Box::new(rate_limited.clone()),
            Box::new(rate_limit_keys.clone()),
            Box::new(db_connections.clone()),
            Box::new(db_max_connections.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric registered once");
        Self {
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
        }
    }

    /// Reads the job backlog gauges from the database (one index scan of the unfinished jobs).
    pub async fn refresh_backlog(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let (unfinished, oldest) = crate::store::jobs::backlog(pool).await?;
        self.jobs_unfinished.set(unfinished);
        self.job_oldest_pending_age.set(oldest);
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
