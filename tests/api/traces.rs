//! Tracing, as an operator runs it: the binary with `OATH__TELEMETRY__OTLP_ENDPOINT` pointing at
//! an OTLP/HTTP receiver in the test (a real HTTP server decoding the protobuf it is sent) gets
//! the spans of requests joined to the caller's `traceparent`, of their database statements and
//! of job chunks, flushed at shutdown; without the setting nothing reaches the receiver. Either
//! way the log lines of a request carry its trace id.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;
use sqlx::PgPool;

use crate::support::app::{create_job, metric_value, numbered, spawn_app, wait_until, TestApp};
use crate::support::cluster::free_port;
use crate::support::service::{
    assert_start_up_refused, command, database_url, service_env, Service,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// Not a traceparent: its would-be trace id must not be taken.
const MALFORMED: &str = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";

fn traceparent(sampled: bool) -> String {
    format!("00-{TRACE}-{CALLER_SPAN}-0{}", u8::from(sampled))
}

/// One POST the receiver got.
struct Post {
    path: String,
    content_type: String,
    body: ExportTraceServiceRequest,
}

/// An OTLP/HTTP receiver: every POST decoded as an `ExportTraceServiceRequest`.
struct Receiver {
    base: String,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::from(posts.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(receive))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self { base, posts }
    }

    fn count(&self) -> usize {
        self.posts.lock().unwrap().len()
    }

    /// Every span received, each with its resource's attributes.
    fn spans(&self) -> Vec<(HashMap<String, String>, Span)> {
        let posts = self.posts.lock().unwrap();
        let mut spans = Vec::new();
        for post in posts.iter() {
            assert_eq!(post.path, "/v1/traces");
            assert_eq!(post.content_type, "application/x-protobuf");
            for resource_spans in &post.body.resource_spans {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push((resource.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    posts: web::Data<Mutex<Vec<Post>>>,
) -> HttpResponse {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP protobuf body");
    posts.lock().unwrap().push(Post {
        path: req.path().to_string(),
        content_type,
        body,
    });
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

/// String, integer and boolean attributes as text.
fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Any::StringValue(s) => s.clone(),
                Any::IntValue(i) => i.to_string(),
                Any::BoolValue(b) => b.to_string(),
                Any::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    attributes(&span.attributes).remove(key)
}

/// The request span with this `X-Request-Id`.
fn request_span(spans: &[(HashMap<String, String>, Span)], request_id: &str) -> Span {
    let found: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| attr(s, "request_id").as_deref() == Some(request_id))
        .collect();
    assert_eq!(found.len(), 1, "one span of request {request_id}");
    found[0].clone()
}

/// The database statement spans whose parent is `parent`.
fn statements_of<'a>(spans: &'a [(HashMap<String, String>, Span)], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .filter(|s| attr(s, "db.system.name").as_deref() == Some("postgresql"))
        .collect()
}

/// The trace ids of the log lines of the request with this `X-Request-Id` (at least one line).
fn logged_trace_ids(log: &str, request_id: &str) -> Vec<String> {
    let ids: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["span"]["request_id"] == request_id)
        .map(|l| {
            l["span"]["trace_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a line of {request_id} without trace_id: {l}"))
                .to_string()
        })
        .collect();
    assert!(!ids.is_empty(), "no log line of {request_id}:\n{log}");
    ids
}

fn is_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id != "0".repeat(32)
}

/// The service binary on `pool`'s database with `extra` settings.
async fn start_service(
    app: &TestApp,
    pool: &PgPool,
    name: &str,
    extra: &[(&str, String)],
) -> Service {
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__SHUTDOWN_DELAY_SECONDS", "0".to_string()),
        ("OATH__LOG__LEVEL", "info".to_string()),
    ]);
    env.extend(extra.iter().cloned());
    let log = std::env::temp_dir().join(format!("tracing-{name}-{}.log", app.env));
    let mut service = Service::start(&["serve", "--no-migrate"], &env, log);
    service.wait_ready(Duration::from_secs(60)).await;
    service
}

/// A GET of the environment's tokens with this request id and, when given, `traceparent`.
async fn list_tokens(
    service: &Service,
    app: &TestApp,
    request_id: &str,
    traceparent: Option<&str>,
) {
    let mut request = reqwest::Client::new()
        .get(format!("{}{}", service.base, app.tokens_path()))
        .bearer_auth(app.all_scopes())
        .header("x-request-id", request_id);
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let res = request.send().await.unwrap();
    assert_eq!(res.status(), 200, "{request_id}");
    assert_eq!(res.headers()["x-request-id"], request_id);
}

/// Submits a create job of three tokens to the service and waits until it is done; its id.
async fn run_job(service: &Service, app: &TestApp) -> String {
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}{}", service.base, app.jobs_path()))
        .bearer_auth(app.all_scopes())
        .header(
            "content-type",
            oath_service::domain::job::JobType::CREATE_MEDIA_TYPE,
        )
        .body(create_job(numbered("TR", 0..3)).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let url = format!("{}{}/{id}", service.base, app.jobs_path());
    wait_until("the job is done", Duration::from_secs(30), async || {
        let res = client.get(&url).bearer_auth(app.all_scopes()).send().await;
        let job: Value = res.unwrap().json().await.unwrap();
        job["status"] == "DONE"
    })
    .await;
    id
}

/// SIGTERM, and the process's exit (after flushing its spans).
async fn stop(service: &mut Service) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the process exits", Duration::from_secs(30), async || {
        service.exited()
    })
    .await;
}

#[sqlx::test]
async fn spans_join_the_callers_trace_and_reach_the_collector(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let receiver = Receiver::start();
    let endpoint = ("OATH__TELEMETRY__OTLP_ENDPOINT", receiver.base.clone());
    let mut service = start_service(&app, &pool, "export", &[endpoint]).await;

    list_tokens(&service, &app, "joined", Some(&traceparent(true))).await;
    list_tokens(&service, &app, "malformed", Some(MALFORMED)).await;
    let job = run_job(&service, &app).await;
    // Spans are sent in batches every few seconds: these go at shutdown.
    stop(&mut service).await;
    let spans = receiver.spans();
    let log = service.output();

    // The request joined the caller's trace, under the caller's span, as a server span.
    let joined = request_span(&spans, "joined");
    assert_eq!(hex::encode(&joined.trace_id), TRACE);
    assert_eq!(hex::encode(&joined.parent_span_id), CALLER_SPAN);
    assert_eq!(joined.kind, SpanKind::Server as i32);
    assert_eq!(
        joined.name, "GET /v1/environments/{env_id}/oathTokens",
        "named after its route"
    );
    assert_eq!(
        attr(&joined, "http.response.status_code").as_deref(),
        Some("200")
    );
    for (resource, _) in &spans {
        assert_eq!(resource["service.name"], "oath-service");
        assert_eq!(resource["service.version"], env!("CARGO_PKG_VERSION"));
    }
    // Its database statements are client spans below it.
    let statements = statements_of(&spans, &joined);
    assert!(!statements.is_empty(), "no statement span of the request");
    for statement in &statements {
        assert_eq!(statement.kind, SpanKind::Client as i32);
        let text = attr(statement, "db.query.text").unwrap();
        assert!(!text.is_empty() && statement.end_time_unix_nano >= statement.start_time_unix_nano);
        assert!(
            statement.start_time_unix_nano >= joined.start_time_unix_nano,
            "{text}"
        );
    }
    // Every log line of the request carries the caller's trace id.
    for id in logged_trace_ids(&log, "joined") {
        assert_eq!(id, TRACE);
    }

    // A malformed traceparent is ignored: a trace of the request's own, no parent.
    let own = request_span(&spans, "malformed");
    let own_trace = hex::encode(&own.trace_id);
    assert!(is_trace_id(&own_trace) && own_trace != TRACE, "{own_trace}");
    assert!(own.parent_span_id.is_empty());
    for id in logged_trace_ids(&log, "malformed") {
        assert_eq!(id, own_trace);
    }

    // Each job chunk is a trace of its own, with its statements.
    let chunks: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "job_chunk" && attr(s, "job_id").as_deref() == Some(job.as_str()))
        .collect();
    assert_eq!(chunks.len(), 1, "one chunk of three tokens");
    assert_eq!(
        attr(chunks[0], "job_type").as_deref(),
        Some("CREATE_OATH_TOKENS")
    );
    assert!(chunks[0].parent_span_id.is_empty());
    let written = statements_of(&spans, chunks[0]);
    assert!(
        written
            .iter()
            .any(|s| attr(s, "db.operation.name").as_deref() == Some("INSERT")),
        "the chunk's statements: {:?}",
        written
            .iter()
            .map(|s| attr(s, "db.query.text"))
            .collect::<Vec<_>>()
    );
    assert!(log.contains("traces flushed"), "{log}");
}

#[sqlx::test]
async fn without_an_endpoint_nothing_is_exported_and_logs_still_carry_trace_ids(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let receiver = Receiver::start();
    // The SDK's own variable does not turn export on: the service's setting alone does.
    let standard = ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.clone());
    let mut service = start_service(&app, &pool, "off", &[standard]).await;

    list_tokens(&service, &app, "joined", Some(&traceparent(true))).await;
    list_tokens(&service, &app, "fresh", None).await;
    list_tokens(&service, &app, "malformed", Some(MALFORMED)).await;
    run_job(&service, &app).await;
    stop(&mut service).await;
    let log = service.output();

    assert_eq!(receiver.count(), 0, "nothing may be exported");
    for id in logged_trace_ids(&log, "joined") {
        assert_eq!(id, TRACE);
    }
    let fresh = logged_trace_ids(&log, "fresh");
    let malformed = logged_trace_ids(&log, "malformed");
    for ids in [&fresh, &malformed] {
        assert!(
            ids.iter()
                .all(|id| id == &ids[0] && is_trace_id(id) && id != TRACE),
            "{ids:?}"
        );
    }
    assert_ne!(fresh[0], malformed[0]);
    assert!(!log.contains("traces flushed"), "{log}");
}

#[sqlx::test]
async fn the_sample_ratio_drops_traces_started_here_never_a_callers(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let receiver = Receiver::start();
    let settings = [
        ("OATH__TELEMETRY__OTLP_ENDPOINT", receiver.base.clone()),
        ("OATH__TELEMETRY__SAMPLE_RATIO", "0".to_string()),
    ];
    let mut service = start_service(&app, &pool, "ratio", &settings).await;

    list_tokens(&service, &app, "sampled", Some(&traceparent(true))).await;
    list_tokens(&service, &app, "unsampled", Some(&traceparent(false))).await;
    list_tokens(&service, &app, "fresh", None).await;
    stop(&mut service).await;
    let spans = receiver.spans();
    let log = service.output();

    let sampled = request_span(&spans, "sampled");
    assert!(!statements_of(&spans, &sampled).is_empty());
    // Every span received belongs to the caller's sampled trace.
    assert!(spans.iter().all(|(_, s)| hex::encode(&s.trace_id) == TRACE));
    assert!(spans
        .iter()
        .all(|(_, s)| attr(s, "request_id").as_deref() != Some("unsampled")));
    // Logs carry the trace ids all the same.
    for id in logged_trace_ids(&log, "unsampled") {
        assert_eq!(id, TRACE);
    }
    assert!(logged_trace_ids(&log, "fresh")
        .iter()
        .all(|id| is_trace_id(id) && id != TRACE));
}

#[sqlx::test]
async fn an_unreachable_collector_costs_requests_nothing(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    // Nothing listens there: every export is refused.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let settings = [
        ("OATH__TELEMETRY__OTLP_ENDPOINT", closed),
        // Batches every 100 ms, so that several exports fail while requests go on.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    let mut service = start_service(&app, &pool, "unreachable", &settings).await;
    let lost = async || {
        let res = reqwest::get(format!("{}/metrics", service.base)).await;
        metric_value(
            &res.unwrap().text().await.unwrap(),
            "oath_trace_spans_lost_total",
        )
    };
    for n in 0..10 {
        list_tokens(&service, &app, &format!("r{n}"), Some(&traceparent(true))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lost spans are counted whatever the log says.
    wait_until(
        "spans of several batches are lost",
        Duration::from_secs(20),
        async || lost().await >= 10.0,
    )
    .await;
    let counted = lost().await;
    list_tokens(&service, &app, "after", None).await;
    stop(&mut service).await;
    let log = service.output();

    // One warning, with the spans of the first failed batch; the later ones are counted only.
    let warnings: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "trace export failed; spans lost")
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert_eq!(warnings[0]["level"], "WARN");
    let warned = warnings[0]["fields"]["lost_spans"].as_f64().unwrap();
    assert!(
        warned > 0.0 && warned < counted,
        "{warned} of {counted}: {log}"
    );
}

/// The settings as an operator gives them: checked (naming the key, never echoing a
/// credential), shown by `config check`, and a misspelt key refused with the right one.
#[test]
fn telemetry_settings_are_checked_shown_and_known() {
    let mut env = service_env();
    env.extend([
        (
            "OATH__TELEMETRY__OTLP_ENDPOINT",
            "https://collector.invalid:4318".to_string(),
        ),
        ("OATH__TELEMETRY__SAMPLE_RATIO", "0.25".to_string()),
    ]);
    let out = command(&env).args(["config", "check"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let shown: toml::Table = stdout.parse().expect("TOML");
    assert_eq!(
        shown["telemetry"]["otlp_endpoint"].as_str(),
        Some("https://collector.invalid:4318")
    );
    assert_eq!(shown["telemetry"]["sample_ratio"].as_float(), Some(0.25));

    let password = "collector-pw-81ad";
    for (key, value, says) in [
        (
            "OATH__TELEMETRY__OTLP_ENDPOINT",
            "collector:4318".to_string(),
            "telemetry.otlp_endpoint must be an http(s) URL",
        ),
        (
            "OATH__TELEMETRY__OTLP_ENDPOINT",
            format!("https://svc:{password}@collector.invalid:4318"),
            "telemetry.otlp_endpoint must not carry credentials; give them as a header with OTEL_EXPORTER_OTLP_HEADERS",
        ),
        (
            "OATH__TELEMETRY__SAMPLE_RATIO",
            "2".to_string(),
            "telemetry.sample_ratio must be from 0.0 to 1.0",
        ),
        (
            "OATH__TELEMETRY__OTLP_ENDPONT",
            "http://collector:4318".to_string(),
            "unknown setting telemetry.otlp_endpont from OATH__TELEMETRY__OTLP_ENDPONT (did you mean telemetry.otlp_endpoint?)",
        ),
    ] {
        let mut env = service_env();
        env.push((key, value));
        let out = command(&env)
            .args(["serve", "--no-migrate"])
            .output()
            .unwrap();
        let stderr = assert_start_up_refused(&out, key);
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains(password), "{stderr}");
    }
}
