//! The error model for requests that never reach a handler's logic: unknown paths, wrong methods,
//! bodies that are too large, of the wrong type, or not JSON; and handler panics.

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use reqwest::Method;
use sqlx::PgPool;

use crate::support::app::{
    assert_error, call, expect_error, parts, seed_token, spawn_app, spawn_app_with,
};

#[sqlx::test]
async fn unknown_paths_are_404_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        "/",
        "/v1",
        "/v2/environments",
        "/v1/environments/x/oathTokens/y/z",
        "/nope?x=1",
    ] {
        let (status, body) = app.get_json(path).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
}

#[sqlx::test]
async fn wrong_methods_are_405_json(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tokens = app.tokens_path();
    let one = format!("{tokens}/{}", uuid::Uuid::new_v4());
    for (method, path) in [
        (Method::PUT, tokens.as_str()),
        (Method::DELETE, tokens.as_str()),
        (Method::PUT, one.as_str()),
        (Method::PATCH, tokens.as_str()),
        (Method::POST, one.as_str()),
        (Method::POST, "/health/live"),
    ] {
        let (status, body) = call(app.request(method, path)).await;
        assert_error(status, &body, 405, "METHOD_NOT_ALLOWED");
    }
}

#[sqlx::test]
async fn oversized_bodies_are_413(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.server.max_body_bytes = 4096).await;
    let big = format!("{{\"serialNumber\": \"{}\"}}", "A".repeat(5000));
    // Declared length over the limit.
    let res = app
        .post_body(&app.tokens_path(), "application/json", big.clone())
        .send()
        .await
        .unwrap();
    expect_error(res, 413, "REQUEST_TOO_LARGE").await;
    // Chunked, no declared length.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let res = app
        .post_body(
            &app.tokens_path(),
            "application/json",
            reqwest::Body::wrap_stream(stream),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 413, "REQUEST_TOO_LARGE").await;
}

#[sqlx::test]
async fn wrong_media_types_are_415(pool: PgPool) {
    let app = spawn_app(pool).await;
    let body = seed_token().to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/xml"),
        Some("application/jsonx"),
    ] {
        let mut req = app
            .request(Method::POST, &app.tokens_path())
            .body(body.clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (status, res) = call(req).await;
        assert_error(status, &res, 415, "UNSUPPORTED_MEDIA_TYPE");
    }
    // Parameters and case are accepted.
    let res = app
        .post_body(&app.tokens_path(), "Application/JSON; charset=utf-8", body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[sqlx::test]
async fn bodies_that_are_not_json_are_400_invalid_request(pool: PgPool) {
    let app = spawn_app(pool).await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    for raw in [
        "",
        "{",
        "{\"serialNumber\": }",
        "not json",
        "{\"a\":1}{",
        "\u{0}",
        deep.as_str(),
    ] {
        let res = app
            .post_body(&app.tokens_path(), "application/json", raw.to_string())
            .send()
            .await
            .unwrap();
        expect_error(res, 400, "INVALID_REQUEST").await;
    }
    let res = app
        .post_body(
            &app.tokens_path(),
            "application/json",
            vec![0xff, 0xfe, b'{'],
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}

#[sqlx::test]
async fn responses_carry_a_request_id(pool: PgPool) {
    let app = spawn_app(pool).await;
    let res = app.get_path("/health/live").await;
    assert!(uuid::Uuid::try_parse(res.headers()["x-request-id"].to_str().unwrap()).is_ok());
    let res = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "bad id\twith spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "bad id\twith spaces");
}

#[sqlx::test]
async fn health_endpoints(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in ["/health/live", "/health/ready"] {
        let (status, body) = parts(app.get_anonymous(path).await).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["status"], "UP");
    }
}

#[sqlx::test(migrations = false)]
async fn not_ready_before_migrations(pool: PgPool) {
    let app = spawn_app(pool).await;
    let res = app.get_anonymous("/health/ready").await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(res, 503, "SERVICE_UNAVAILABLE").await;
    oath_service::store::MIGRATOR.run(&app.pool).await.unwrap();
    let res = app.get_anonymous("/health/ready").await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_without_internals() {
    async fn boom() -> &'static str {
        panic!("internal detail: connection string postgres://secret@db")
    }
    // The production middleware in front of a handler that panics, on a real server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new()
            .wrap(from_fn(oath_service::telemetry::request_context))
            .route("/boom", web::get().to(boom))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    let client = reqwest::Client::new();
    for _ in 0..2 {
        // Twice: the worker survives the first panic.
        let res = client
            .get(format!("http://127.0.0.1:{port}/boom"))
            .send()
            .await
            .unwrap();
        assert!(res.headers().contains_key("x-request-id"));
        let body = expect_error(res, 500, "UNEXPECTED_ERROR").await;
        assert!(!body.to_string().contains("internal detail"));
        assert!(!body.to_string().contains("postgres"));
    }
}
