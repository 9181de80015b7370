//! Logging and the per-request context: JSON log lines, a request id on every request (taken from a
//! well-formed `X-Request-Id` or generated) that is returned as a header and carried by every log
//! line of the request, with the request's trace id (the caller's, from a valid W3C
//! `traceparent`, or a fresh one), one summary line per request, and panics turned into a 500
//! body. With `telemetry.otlp_endpoint` set, the spans are also exported (`otlp`).

pub mod otlp;
pub mod trace_context;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use futures_util::FutureExt;
use tracing::field::Empty;
use tracing::{Dispatch, Instrument};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry};

use crate::audit;
use crate::config::{LogFormat, LogSettings, TelemetrySettings};
use crate::metrics::METRICS;
use trace_context::TraceId;

pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber writing to stdout. `RUST_LOG` overrides `log.level`.
pub fn init(settings: &LogSettings) {
    init_with_writer(settings, std::io::stdout);
}

/// As [`init`], with any writer (tests capture the log this way). A second call is a no-op.
pub fn init_with_writer<W>(settings: &LogSettings, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(settings))
        .with_writer(writer);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The log of `serve`: as [`init`] when `telemetry.otlp_endpoint` is unset (no exporter, no
/// OpenTelemetry layer); else the same log lines beside the export of spans, which
/// [`otlp::Export::shutdown`] flushes. Runs on the tokio runtime that is to carry the export.
pub fn init_serving(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> Result<Option<otlp::Export>, String> {
    let Some(url) = telemetry.traces_url() else {
        init(log);
        return Ok(None);
    };
    let export = otlp::Export::new(&url, telemetry.sample_ratio)?;
    let dispatch = Arc::new(OnceLock::new());
    let fmt = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };
    let subscriber = Registry::default()
        .with(fmt.with_filter(log_filter(log)))
        .with(export.span_layer())
        .with(export.statement_layer(dispatch.clone()));
    let subscriber = Dispatch::new(subscriber);
    let _ = dispatch.set(subscriber.downgrade());
    if subscriber.try_init().is_ok() {
        otlp::set_active();
    }
    Ok(Some(export))
}

/// `RUST_LOG`, else `log.level`, else `info`.
fn log_filter(settings: &LogSettings) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Middleware: request id, span, summary line, audit event, panic containment.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if !audit::is_audited(req.method()) {
        return handle(req, next, request_id).await;
    }
    req.extensions_mut()
        .insert(audit::RequestId(request_id.clone()));
    // A client that goes away drops this future, and with it a handler in the middle of a
    // change: a change runs on a task of its own instead, to its end and its audit event.
    let request_id_of_panic = request_id.clone();
    actix_web::rt::spawn(handle(req, next, request_id))
        .await
        .unwrap_or_else(|_| {
            Err(HandlerPanicked {
                request_id: request_id_of_panic,
            }
            .into())
        })
}

/// The request under its span: handled, counted, logged and audited.
async fn handle<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
    request_id: String,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let caller = trace_context::TraceParent::of_request(req.headers());
    let exporting = otlp::is_active();
    // Without export the trace id is the caller's or 16 random bytes; with it, the exported
    // span's (recorded by `join_request`).
    let trace_id = (!exporting).then(|| caller.map_or_else(TraceId::random, |c| c.trace_id));
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = trace_id.map(display),
        method,
        path = %req.path(),
        otel.kind = Empty,
    );
    if exporting {
        otlp::join_request(&span, caller);
    }
    let started = Instant::now();

    let outcome = AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    let mut response = match outcome {
        Ok(Ok(res)) => res,
        // The request moved into the panicked handler, so the 500 travels as an error, which
        // the server renders with `ResponseError::error_response`.
        Ok(Err(err)) => return Err(err),
        Err(_) => {
            let _entered = span.enter();
            tracing::error!(status = 500u16, "handler panicked");
            return Err(HandlerPanicked { request_id }.into());
        }
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    record_metrics(&response, elapsed);
    span.in_scope(|| {
        audit::answered(&response, &request_id);
        tracing::info!(status, latency_ms, "request completed");
    });
    if exporting {
        let route = response.request().match_pattern();
        otlp::answered(&span, method, route.as_deref(), status);
    }
    Ok(response)
}

/// Counts the request under its route pattern (never its ids) and status. Every label is from
/// a fixed set, whatever a client sends: a made-up method is `OTHER`, an unknown path
/// `unmatched`.
fn record_metrics<B>(response: &ServiceResponse<B>, seconds: f64) {
    let req = response.request();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let status = response.status();
    let labels = [method, route.as_str(), status.as_str()];
    METRICS.http_requests.with_label_values(&labels).inc();
    METRICS
        .http_duration
        .with_label_values(&labels)
        .observe(seconds);
    if status == actix_web::http::StatusCode::TOO_MANY_REQUESTS {
        METRICS
            .rate_limited
            .with_label_values(&[route.as_str()])
            .inc();
    }
}

/// The method as a metrics (and log) label: a standard method, or `OTHER`.
fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

/// A 500 for a panicked handler: the contract's body (rendered by [`crate::error`]), and the
/// request id header.
#[derive(Debug, thiserror::Error)]
#[error("handler panicked")]
pub struct HandlerPanicked {
    pub request_id: String,
}

/// Echo a caller's id only when it cannot break a log line or a header.
fn is_safe_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}
