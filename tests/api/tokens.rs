//! Create, read, list and delete single tokens.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    assert_error, call, details, expect_error, hotp_token, numbered, parts, seed_token, send,
    spawn_app, spawn_app_with, BASE_URL,
};

#[sqlx::test]
async fn create_seed_token_has_the_seed_shape(pool: PgPool) {
    let app = spawn_app(pool).await;
    let res = app.create_token(&seed_token()).await;
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let (status, body) = parts(res).await;
    assert_eq!(status, 201, "{body}");

    let id = body["id"].as_str().unwrap();
    Uuid::try_parse(id).unwrap();
    app.assert_links(&body, &location, &format!("/oathTokens/{id}"));
    assert_eq!(body["serialNumber"], "2333734700388");
    assert_eq!(body["type"], "HOTP");
    assert_eq!(body["hotp"], json!({"counter": 456789}));
    assert_eq!(body["otpLength"], 8);
    assert_eq!(body["hashAlgorithm"], "HmacSHA1");
    assert_eq!(body["status"], "AVAILABLE");
    assert!(
        body.get("secret").is_none() && body.get("totp").is_none() && body.get("user").is_none()
    );
    for field in ["createdAt", "updatedAt"] {
        let ts = body[field].as_str().unwrap();
        // RFC 3339 UTC with milliseconds: 2024-12-02T12:10:41.616Z
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        chrono::DateTime::parse_from_rfc3339(ts).unwrap();
    }
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // The seed's eleven, and the helpdesk's (lockedUntil and lastUsedAt only when they apply).
    assert_eq!(
        (&body["enabled"], &body["failedAttempts"], &body["locked"]),
        (&json!(true), &json!(0), &json!(false))
    );
    assert_eq!(keys.len(), 14, "unexpected fields: {keys:?}");

    // Reading it back gives the same representation.
    let (status, read) = app.get_json(&format!("{}/{id}", app.tokens_path())).await;
    assert_eq!(status, 200);
    assert_eq!(read, body);
}

#[sqlx::test]
async fn totp_token_carries_time_step_and_drift(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = parts(
        app.create_token(
            &json!({"serialNumber": "T1", "secret": "3132333435363738393031323334353637383930",
                                  "type": "TOTP", "otpLength": 6, "hashAlgorithm": "HmacSHA256",
                                  "totp": {"timeStep": 60}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["totp"], json!({"timeStep": 60, "drift": 0}));
    assert_eq!(body["hashAlgorithm"], "HmacSHA256");
    assert!(body.get("hotp").is_none());

    let (status, body) = parts(
        app.create_token(
            &json!({"serialNumber": "T2", "secret": "3132333435363738393031323334353637383930",
                                  "type": "TOTP", "otpLength": 8}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["totp"], json!({"timeStep": 30, "drift": 0}));
}

#[sqlx::test]
async fn duplicate_serial_is_a_uniqueness_violation(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.create_token(&seed_token()).await.status(), 201);
    let (status, body) = parts(app.create_token(&seed_token()).await).await;
    assert_error(status, &body, 400, "INVALID_DATA");
    assert_eq!(
        details(&body),
        vec![("UNIQUENESS_VIOLATION".into(), "serialNumber".into())]
    );
    assert_eq!(app.count("select count(*) from oath_tokens").await, 1);
    let usage = app.count("select token_count from environment_usage").await;
    assert_eq!(usage, 1, "a rejected duplicate must not consume quota");
}

#[sqlx::test]
async fn same_serial_in_another_environment_is_fine_and_invisible(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, created) = parts(app.create_token(&seed_token()).await).await;
    let other = Uuid::new_v4();
    let token = app.token_for(other, &oath_service::auth::Scope::ALL);
    let res = send(
        app.request_as(
            &token,
            Method::POST,
            &format!("/v1/environments/{other}/oathTokens"),
        )
        .json(&seed_token()),
    )
    .await;
    assert_eq!(res.status(), 201);
    // The first environment's token is not found through the other environment.
    let res = send(app.request_as(
        &token,
        Method::GET,
        &format!(
            "/v1/environments/{other}/oathTokens/{}",
            created["id"].as_str().unwrap()
        ),
    ))
    .await;
    expect_error(res, 404, "NOT_FOUND").await;
}

#[sqlx::test]
async fn delete_then_get_is_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (_, body) = parts(app.create_token(&seed_token()).await).await;
    let path = format!("{}/{}", app.tokens_path(), body["id"].as_str().unwrap());
    let res = app.delete(&path).await;
    assert_eq!(res.status(), 204);
    assert!(res.text().await.unwrap().is_empty());
    let (status, body) = app.get_json(&path).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    let (status, body) = parts(app.delete(&path).await).await;
    assert_error(status, &body, 404, "NOT_FOUND");
    // The serial can be used again.
    assert_eq!(app.create_token(&seed_token()).await.status(), 201);
}

#[sqlx::test]
async fn unknown_and_malformed_ids_are_404(pool: PgPool) {
    let app = spawn_app(pool).await;
    for path in [
        format!("{}/{}", app.tokens_path(), Uuid::new_v4()),
        format!("{}/not-a-uuid", app.tokens_path()),
        "/v1/environments/not-a-uuid/oathTokens".to_string(),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_error(status, &body, 404, "NOT_FOUND");
    }
}

#[sqlx::test]
async fn list_filters_by_serial_and_pages_with_next_links(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ids = app.create_hotp_tokens(numbered("SN", 0..7)).await;

    // Filter.
    let path = format!("{}?filter=serialNumber%20eq%20%22SN3%22", app.tokens_path());
    let (status, body) = app.get_json(&path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size"], 1);
    assert_eq!(body["_embedded"]["oathTokens"][0]["serialNumber"], "SN3");
    assert!(body["_links"].get("next").is_none());
    let path = format!(
        "{}?filter=serialNumber%20eq%20%22NOPE%22",
        app.tokens_path()
    );
    let (_, body) = app.get_json(&path).await;
    assert_eq!(body["size"], 0);
    assert_eq!(body["_embedded"]["oathTokens"], json!([]));

    // Pages of 3 follow `next` until it is absent, visiting each token once, in creation order.
    let mut seen = Vec::new();
    let mut next = Some(format!("{BASE_URL}{}?limit=3", app.tokens_path()));
    let mut pages = 0;
    while let Some(href) = next {
        let path = href.strip_prefix(BASE_URL).unwrap().to_string();
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200, "{body}");
        let items = body["_embedded"]["oathTokens"].as_array().unwrap();
        assert_eq!(body["size"], items.len());
        assert!(body["_links"]["self"]["href"]
            .as_str()
            .unwrap()
            .starts_with(BASE_URL));
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_string()));
        next = body["_links"]["next"]["href"].as_str().map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // Default page holds all seven.
    let (_, body) = app.get_json(&app.tokens_path()).await;
    assert_eq!(body["size"], 7);
}

#[sqlx::test]
async fn list_rejects_bad_limits_filters_and_cursors(pool: PgPool) {
    let app = spawn_app(pool).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "filter=type%20eq%20%22HOTP%22",
        "filter=serialNumber%20eq%20SN1",
        "filter=serialNumber%20eq%20%22a%20b%22",
        "cursor=garbage",
        "cursor=djE6bm90LWEtdXVpZA",
    ] {
        let (status, body) = app
            .get_json(&format!("{}?{query}", app.tokens_path()))
            .await;
        assert_error(status, &body, 400, "INVALID_REQUEST");
    }
}

#[sqlx::test]
async fn quota_holds_under_concurrent_creates(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.tokens_per_environment = 5).await;
    let requests = (0..24).map(|i| {
        let app = &app;
        async move { parts(app.create_token(&hotp_token(&format!("Q{i}"))).await).await }
    });
    let results = join_all(requests).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 5);
    for (status, body) in results.iter().filter(|(s, _)| *s != 201) {
        assert_error(*status, body, 400, "INVALID_DATA");
        assert_eq!(details(body)[0].0, "LIMIT_EXCEEDED");
    }
    let count = app.count("select count(*) from oath_tokens").await;
    assert_eq!(count, 5);

    // Deleting one frees one place.
    let (_, page) = app
        .get_json(&format!("{}?limit=1", app.tokens_path()))
        .await;
    let id = page["_embedded"]["oathTokens"][0]["id"].as_str().unwrap();
    let res = app.delete(&format!("{}/{id}", app.tokens_path())).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.create_token(&hotp_token("QX")).await.status(), 201);
    assert_eq!(app.create_token(&hotp_token("QY")).await.status(), 400);
}

/// Concurrent creates of one environment commit together: each still gets its own answer, a
/// serial number sent twice is created once (whichever arrives first) and the other is its
/// duplicate, and the quota counts exactly the tokens created.
#[sqlx::test]
async fn concurrent_creates_with_repeated_serials_get_their_own_answers(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.limits.tokens_per_environment = 12).await;
    assert_eq!(app.create_token(&hotp_token("D0")).await.status(), 201);
    // 30 requests for 15 serial numbers (D0 already exists): 14 new ones, room for 11.
    let requests = (0..30).map(|i| {
        let app = &app;
        async move { parts(app.create_token(&hotp_token(&format!("D{}", i % 15))).await).await }
    });
    let results = join_all(requests).await;
    let mut created = std::collections::HashSet::new();
    let (mut duplicates, mut limited) = (0, 0);
    for (status, body) in &results {
        if *status == 201 {
            let serial = body["serialNumber"].as_str().unwrap().to_string();
            assert!(created.insert(serial), "created twice: {body}");
            continue;
        }
        assert_error(*status, body, 400, "INVALID_DATA");
        match details(body)[0].0.as_str() {
            "UNIQUENESS_VIOLATION" => duplicates += 1,
            "LIMIT_EXCEEDED" => limited += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(created.len(), 11);
    assert!(!created.contains("D0"));
    // Each of the 15 serials is sent twice: both D0 requests and one of each created pair are
    // duplicates; the rest found no room.
    assert_eq!(duplicates + limited, 19, "{results:?}");
    assert!(duplicates >= 2 + 11, "{results:?}");
    let (tokens, usage): (i64, i64) = sqlx::query_as(
        "select (select count(*) from oath_tokens), \
                (select token_count from environment_usage)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((tokens, usage), (12, 12));
}

#[sqlx::test]
async fn create_with_an_idempotency_key_replays_and_conflicts(pool: PgPool) {
    let app = spawn_app(pool).await;
    let with_key = |body: Value| {
        app.request(Method::POST, &app.tokens_path())
            .header("idempotency-key", "token-1")
            .json(&body)
            .send()
    };
    let first = with_key(hotp_token("I1")).await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let (status, created) = parts(first).await;
    assert_eq!(status, 201, "{created}");

    let again = with_key(hotp_token("I1")).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let (status, replayed) = parts(again).await;
    assert_eq!((status, &replayed), (201, &created));

    let (status, body) = parts(with_key(hotp_token("I2")).await.unwrap()).await;
    assert_error(status, &body, 409, "CONFLICT");
    // A rejected request is not remembered: the key stays usable after a duplicate.
    let (status, _) = call(
        app.request(Method::POST, &app.tokens_path())
            .header("idempotency-key", "token-2")
            .json(&hotp_token("I1")),
    )
    .await;
    assert_eq!(status, 400);
    app.assert_counts(&[
        ("select count(*) from oath_tokens", 1),
        ("select token_count from environment_usage", 1),
    ])
    .await;
}
