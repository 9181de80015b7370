//! Trace export over OTLP/HTTP (protobuf), installed only when `telemetry.otlp_endpoint` is set:
//! the spans of requests (joined to the caller's trace), of job chunks, and of every database
//! statement run inside one of them, batched on the tokio runtime and flushed at shutdown. An
//! export that fails loses its spans and is reported at warn, at most once a minute: requests
//! never wait for the collector nor fail because of it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::trace_context::{TraceId, TraceParent};

/// Whether spans are exported: set once the exporting subscriber is installed.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The target of sqlx's event for each statement it ran (with its text and duration).
const STATEMENT_TARGET: &str = "sqlx::query";

/// How long an unreachable collector takes to be given up on, per batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// At most one warning about failed exports per this time.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

pub(super) fn set_active() {
    ACTIVE.store(true, Ordering::Relaxed);
}

/// The exporter and its batch queue; [`Export::shutdown`] sends what is queued.
pub struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Export {
    /// Builds the exporter to `traces_url`, on the current tokio runtime.
    pub fn new(traces_url: &str, sample_ratio: f64) -> Result<Self, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: cannot export to it: {e}"))?;
        let exporter = Reporting {
            inner: exporter,
            lost: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        };
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        // The operator's OTEL_RESOURCE_ATTRIBUTES (e.g. deployment.environment) are kept.
        let resource = Resource::builder()
            .with_service_name("oath-service")
            .with_attribute(KeyValue::new("service.version", crate::version::VERSION))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("oath-service");
        Ok(Self { provider, tracer })
    }

    /// The layer that turns the service's spans into OpenTelemetry spans: its own spans only
    /// (requests, job chunks), and its errors, which mark their span failed.
    pub(super) fn span_layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|meta: &Metadata<'_>| {
                is_own(meta) && (meta.is_span() || *meta.level() == Level::ERROR)
            }))
    }

    /// The layer that exports a span for each database statement run inside an exported span.
    /// `dispatch` is filled in once the subscriber is built.
    pub(super) fn statement_layer<S>(&self, dispatch: Arc<OnceLock<WeakDispatch>>) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        Statements {
            tracer: self.tracer.clone(),
            dispatch,
        }
        .with_filter(filter_fn(|meta: &Metadata<'_>| {
            (meta.is_span() && is_own(meta))
                || (meta.is_event() && meta.target() == STATEMENT_TARGET)
        }))
    }

    /// Exports what is queued (within the export timeout) and stops the exporter.
    pub async fn shutdown(self) {
        ACTIVE.store(false, Ordering::Relaxed);
        // The processor waits for its task on the runtime: not on a thread of the runtime.
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => tracing::info!("traces flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "traces not flushed at shutdown"),
            Err(e) => tracing::warn!(error = %e, "traces not flushed at shutdown"),
        }
    }
}

fn is_own(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("oath_service")
}

/// Joins a request's `span` to the caller's trace (when it sent a valid `traceparent`) as a
/// server span; returns the span's trace id, also recorded for the log lines.
pub fn join_request(span: &Span, caller: Option<TraceParent>) -> TraceId {
    span.record("otel.kind", "server");
    if let Some(caller) = caller {
        let flags = if caller.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes(caller.trace_id.to_bytes()),
            SpanId::from_bytes(caller.parent_id.to_be_bytes()),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    record_trace_id(span)
}

/// Starts `span` (of a job chunk) as the root of a trace; its trace id, also recorded for the
/// log lines, when it has one.
pub fn start_root(span: &Span) -> Option<TraceId> {
    is_active().then(|| record_trace_id(span))
}

fn record_trace_id(span: &Span) -> TraceId {
    let bytes = span.context().span().span_context().trace_id().to_bytes();
    // The SDK never makes an all-zero id; one would mean the span was not exported.
    let id = TraceId::from_bytes(bytes).unwrap_or_else(TraceId::random);
    span.record("trace_id", tracing::field::display(id));
    id
}

/// Names the request's span after its route (`GET /v1/environments/{environmentId}/...`) and
/// records its answer; a 5xx marks it failed.
pub fn answered(span: &Span, method: &'static str, route: Option<&str>, status: u16) {
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let cx = span.context();
    cx.span().update_name(name);
    if let Some(route) = route {
        span.set_attribute("http.route", route.to_string());
    }
    span.set_attribute("http.request.method", method);
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(Status::error(status.to_string()));
    }
}

/// Makes a client span of each sqlx statement event that happens inside an exported span: sqlx
/// has no span of its own, but tells each statement's text and duration when it ends.
pub struct Statements {
    tracer: SdkTracer,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<S> Layer<S> for Statements
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != STATEMENT_TARGET {
            return;
        }
        // Statements outside a request or a job chunk (polling, LISTEN, purges) are not traced.
        let Some(current) = ctx.lookup_current() else {
            return;
        };
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        let Some(parent) =
            tracing_opentelemetry::get_otel_context(&mut current.extensions_mut(), &dispatch)
        else {
            return;
        };
        if !parent.span().span_context().is_sampled() {
            return;
        }
        let mut statement = Statement::default();
        event.record(&mut statement);
        let end = SystemTime::now();
        let took = Duration::try_from_secs_f64(statement.elapsed_secs).unwrap_or_default();
        let text = if statement.text.trim().is_empty() {
            statement.summary.clone()
        } else {
            statement.text.trim().to_string()
        };
        let operation = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let name = match operation.as_str() {
            "" => Cow::Borrowed("postgresql"),
            _ => Cow::Owned(operation.clone()),
        };
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(end.checked_sub(took).unwrap_or(end))
            .with_attributes([
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.operation.name", operation),
                KeyValue::new("db.query.text", text),
                KeyValue::new("db.response.returned_rows", statement.rows_returned),
                KeyValue::new("db.response.affected_rows", statement.rows_affected),
            ])
            .start_with_context(&self.tracer, &parent);
        span.end_with_timestamp(end);
    }
}

/// The fields of sqlx's statement event.
#[derive(Default)]
struct Statement {
    summary: String,
    text: String,
    elapsed_secs: f64,
    rows_returned: i64,
    rows_affected: i64,
}

impl Visit for Statement {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.trim_end_matches(" …").to_string(),
            "db.statement" => self.text = value.to_string(),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        match field.name() {
            "rows_returned" => self.rows_returned = value,
            "rows_affected" => self.rows_affected = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// The OTLP exporter, reporting its failures: counted (`oath_trace_spans_lost_total`) and
/// logged at warn, at most once per [`WARN_EVERY`], with the spans lost since the last warning.
#[derive(Debug)]
struct Reporting {
    inner: opentelemetry_otlp::SpanExporter,
    lost: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl SpanExporter for Reporting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            crate::metrics::METRICS.trace_spans_lost.inc_by(spans);
            let lost = self.lost.fetch_add(spans, Ordering::Relaxed) + spans;
            let now = Instant::now();
            let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
                *last = Some(now);
                self.lost.fetch_sub(lost, Ordering::Relaxed);
                tracing::warn!(error = %e, lost_spans = lost, "trace export failed; spans lost");
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
