//! Webhook subscriptions: create, read, list, replace, delete; the signing secret shown once,
//! header values never; the per-environment limit; the target rules; isolation.

use base64::Engine as _;
use oath_service::auth::Scope;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{call, environment_path, spawn_app_with, TestApp};

const SECRET_HEADER: &str = "Basic c2llbTpodW50ZXIy";

fn body(url: &str) -> Value {
    json!({
        "name": "siem",
        "enabled": true,
        "httpEndpoint": {"url": url, "headers": {"Authorization": SECRET_HEADER}},
        "filterOptions": {"includedActionTypes": ["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"]}
    })
}

fn path(app: &TestApp) -> String {
    environment_path(app.env, "/subscriptions")
}

#[sqlx::test]
async fn a_subscription_shows_its_secret_once_and_its_header_values_never(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.events.allow_http = true;
        s.events.allow_private_targets = true;
    })
    .await;
    let res = app
        .request(Method::POST, &path(&app))
        .json(&body("http://127.0.0.1:9/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let created: Value = res.json().await.unwrap();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(created["signingSecret"].as_str().unwrap())
        .unwrap();
    assert_eq!(secret.len(), 32);
    assert_eq!(created["_links"]["self"]["href"], location);
    assert_eq!(
        created["httpEndpoint"]["headers"]["Authorization"],
        "<redacted>"
    );
    assert_eq!(created["enabled"], true);
    assert_eq!(created["delivery"]["pending"], 0);
    assert_eq!(
        created["filterOptions"]["includedActionTypes"],
        json!(["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"])
    );
    let id = created["id"].as_str().unwrap();
    let one = format!("{}/{id}", path(&app));

    let (status, read) = app.get_json(&one).await;
    assert_eq!(status, 200);
    assert!(read.get("signingSecret").is_none(), "{read}");
    let (status, list) = app.get_json(&path(&app)).await;
    assert_eq!(status, 200);
    assert_eq!(list["size"], 1);
    assert_eq!(list["_embedded"]["subscriptions"][0]["id"], id);

    let mut changed = body("http://127.0.0.1:9/other");
    changed["name"] = json!("siem-2");
    changed["httpEndpoint"]["headers"] = json!({"X-Token": "another-credential"});
    changed.as_object_mut().unwrap().remove("filterOptions");
    let (status, replaced) = call(app.request(Method::PUT, &one).json(&changed)).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["name"], "siem-2");
    assert_eq!(
        replaced["httpEndpoint"]["headers"],
        json!({"X-Token": "<redacted>"})
    );
    assert!(replaced.get("filterOptions").is_none());
    assert!(replaced.get("signingSecret").is_none());

    for text in [read.to_string(), list.to_string(), replaced.to_string()] {
        assert!(!text.contains(SECRET_HEADER) && !text.contains("another-credential"));
        assert!(!text.contains(created["signingSecret"].as_str().unwrap()));
    }
    // Nor in the database in the clear.
    let clear = app
        .count(
            "select count(*) from subscriptions \
             where position('another-credential'::bytea in headers_ciphertext) > 0",
        )
        .await;
    assert_eq!(clear, 0);

    assert_eq!(app.delete(&one).await.status(), 204);
    let (status, _) = app.get_json(&one).await;
    assert_eq!(status, 404);
    assert_eq!(app.delete(&one).await.status(), 404);
}

#[sqlx::test]
async fn subscriptions_are_limited_checked_and_kept_per_environment(pool: PgPool) {
    let app = spawn_app_with(pool, |s| {
        s.events.max_subscriptions_per_environment = 2;
    })
    .await;
    // The target rules (strict: https only, no internal addresses).
    for url in [
        "http://hooks.example.com/oath",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/",
        "https://[fd00::1]/",
        "https://0.0.0.0/",
        "https://localhost:8443/hook",
        "https://user:pw@hooks.example.com/",
        "not a url",
    ] {
        let (status, error) = app.post_json(&path(&app), &body(url)).await;
        assert_eq!(status, 400, "{url}: {error}");
        assert_eq!(error["code"], "INVALID_DATA");
        assert_eq!(error["details"][0]["target"], "httpEndpoint.url", "{url}");
    }
    // Bad bodies: every problem, with its path; a header value never echoed.
    let (status, error) = app
        .post_json(
            &path(&app),
            &json!({"name": "", "extra": 1, "httpEndpoint": {"url": "https://hooks.example.com/",
                    "headers": {"Oath-Signature": "x", "X-Bad": "line\nbreak secret-value"}},
                    "filterOptions": {"includedActionTypes": ["NOPE"]}}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    let targets: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    for t in [
        "extra",
        "name",
        "httpEndpoint.headers.Oath-Signature",
        "httpEndpoint.headers.X-Bad",
        "filterOptions.includedActionTypes[0]",
    ] {
        assert!(targets.contains(&t), "{t}: {error}");
    }
    assert!(!error.to_string().contains("secret-value"));

    // The limit. (hooks.example.test does not resolve: accepted, delivery checks again.)
    let good = body("https://hooks.example.test/oath");
    for _ in 0..2 {
        let (status, created) = app.post_json(&path(&app), &good).await;
        assert_eq!(status, 201, "{created}");
    }
    let (status, error) = app.post_json(&path(&app), &good).await;
    assert_eq!(status, 400);
    assert_eq!(error["details"][0]["code"], "LIMIT_EXCEEDED", "{error}");

    // Another environment's subscription is not found; a read scope cannot write.
    let (_, list) = app.get_json(&path(&app)).await;
    let id = list["_embedded"]["subscriptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = Uuid::new_v4();
    let theirs = environment_path(other, &format!("/subscriptions/{id}"));
    for method in [Method::GET, Method::DELETE] {
        let (status, _) = call(app.request_in(other, method, &theirs)).await;
        assert_eq!(status, 404);
    }
    let (status, _) = call(app.request_in(other, Method::PUT, &theirs).json(&good)).await;
    assert_eq!(status, 404);
    let (status, page) = app.get_in(other, "/subscriptions").await;
    assert_eq!((status, page["size"].as_u64()), (200, Some(0)));
    let reader = app.token(&[Scope::SubscriptionsRead]);
    let (status, _) = call(
        app.request_as(&reader, Method::POST, &path(&app))
            .json(&good),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(app.request_as(&reader, Method::GET, &path(&app))).await;
    assert_eq!(status, 200);
    let writer = app.token(&[Scope::SubscriptionsWrite]);
    let (status, _) = call(app.request_as(&writer, Method::GET, &path(&app))).await;
    assert_eq!(status, 403);
}
