//! Delivery of events to real receivers: signed batches a receiver verifies, in order, retried
//! with backoff while the receiver fails, over HTTPS under a private CA, and one dead receiver
//! delaying no other subscription.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use oath_service::crypto::SecretCipher;
use oath_service::events::delivery::{Deliverer, Step};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use super::events::settle;
use crate::support::app::{create_job, environment_path, numbered, spawn_app_with, TestApp};
use crate::support::receiver::{Received, Receiver};
use crate::support::tls::{scratch_dir, Ca};

/// Creates a subscription to `url`; returns its id and decoded signing secret.
pub async fn subscribe(app: &TestApp, url: &str, types: Option<&[&str]>) -> (String, Vec<u8>) {
    let mut body = json!({
        "name": "receiver",
        "httpEndpoint": {"url": url, "headers": {"Authorization": "Bearer receiver-credential"}},
    });
    if let Some(types) = types {
        body["filterOptions"] = json!({"includedActionTypes": types});
    }
    let (status, created) = app
        .post_json(&environment_path(app.env, "/subscriptions"), &body)
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(created["signingSecret"].as_str().unwrap())
        .unwrap();
    (created["id"].as_str().unwrap().to_string(), secret)
}

pub fn deliverer(app: &TestApp, owner: &str) -> Deliverer {
    let (active, keys) = app.settings.crypto.decoded_keys().unwrap();
    let cipher = Arc::new(SecretCipher::new(active, &keys).unwrap());
    Deliverer::new(
        app.pool.clone(),
        Arc::new(app.settings.clone()),
        cipher,
        owner.into(),
    )
    .unwrap()
}

/// Steps until idle; returns the steps.
async fn drain(d: &Deliverer) -> Vec<Step> {
    let mut steps = Vec::new();
    loop {
        match d.step().await.unwrap() {
            Step::Idle => return steps,
            step => steps.push(step),
        }
    }
}

/// What a receiver does with a request: checks the signature under its secret, as its
/// documentation says (HMAC-SHA256 of "<t>.<body>", hex, constant-time), and reads the events.
pub fn verified_events(secret: &[u8], r: &Received) -> Vec<Value> {
    let header = &r.headers["oath-signature"];
    let (t, v1) = header.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = hex::decode(v1.strip_prefix("v1=").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&v1).expect("the signature verifies");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..300).contains(&age), "a fresh signature");
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(Uuid::try_parse(&r.headers["oath-delivery-id"]).is_ok());
    assert_eq!(r.headers["authorization"], "Bearer receiver-credential");
    let events: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    assert!((1..=100).contains(&events.len()), "{}", events.len());
    events
}

/// The events of the acknowledged requests, each id once, in the order first acknowledged.
pub fn acknowledged_events(secret: &[u8], received: &[Received]) -> Vec<Value> {
    acknowledged(secret, received)
}

fn acknowledged(secret: &[u8], received: &[Received]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut events = Vec::new();
    for r in received.iter().filter(|r| (200..300).contains(&r.status)) {
        for e in verified_events(secret, r) {
            if seen.insert(e["id"].as_str().unwrap().to_string()) {
                events.push(e);
            }
        }
    }
    events
}

pub async fn service_tokens(app: &TestApp) -> BTreeSet<String> {
    sqlx::query_scalar::<_, Uuid>("select id from oath_tokens where environment_id = $1")
        .bind(app.env)
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

/// Applies token events; asserts per-token order (nothing about a token before its creation
/// or after its deletion).
pub fn apply(events: &[Value]) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for e in events {
        let id = e["resource"]["id"].as_str().unwrap().to_string();
        match e["type"].as_str().unwrap() {
            "OATH_TOKEN.CREATED" => assert!(held.insert(id), "{e}"),
            "OATH_TOKEN.DELETED" => assert!(held.remove(&id), "{e}"),
            t if t.starts_with("OATH_TOKEN.") => assert!(held.contains(&id), "{e}"),
            _ => {}
        }
    }
    held
}

fn private(s: &mut oath_service::config::Settings) {
    s.events.allow_http = true;
    s.events.allow_private_targets = true;
    s.events.delivery_timeout_seconds = 2;
    s.events.lease_seconds = 3;
    s.jobs.chunk_size = 50;
}

#[sqlx::test]
async fn a_receiver_gets_every_event_signed_in_batches_in_order(pool: PgPool) {
    let app = spawn_app_with(pool, private).await;
    let receiver = Receiver::http();
    let (id, secret) = subscribe(&app, &receiver.url, None).await;
    let ids = app.create_hotp_tokens(numbered("S", 0..3)).await;
    app.submit_and_run(&create_job(numbered("J", 0..230))).await;
    assert_eq!(
        app.delete(&format!("{}/{}", app.tokens_path(), ids[0]))
            .await
            .status(),
        204
    );
    let revoke: Vec<String> = service_tokens(&app).await.into_iter().take(40).collect();
    app.submit_and_run(&json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": revoke}))
        .await;
    settle(&app).await;
    let d = deliverer(&app, "d1");
    let steps = drain(&d).await;
    assert!(steps.len() >= 3, "{steps:?}");
    let received = receiver.received();
    let events = acknowledged(&secret, &received);
    assert_eq!(apply(&events), service_tokens(&app).await);
    // Exactly the feed, in its order.
    let (feed, _) = super::events::read_feed(&app, None, 1000).await;
    let feed_ids: Vec<&Value> = feed.iter().map(|e| &e["id"]).collect();
    let sent_ids: Vec<&Value> = events.iter().map(|e| &e["id"]).collect();
    assert_eq!(sent_ids, feed_ids);
    assert!(
        received.iter().all(|r| r.status == 200),
        "each batch delivered once"
    );
    let (status, sub) = app
        .get_json(&environment_path(app.env, &format!("/subscriptions/{id}")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sub["delivery"]["pending"], 0, "{sub}");
    assert!(sub["delivery"]["lastSuccessAt"].is_string());
    // No secret in any delivery.
    for r in &received {
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(crate::support::app::RFC_SECRET_HEX));
    }
}

#[sqlx::test]
async fn a_failing_receiver_gets_everything_once_it_recovers_and_delays_no_other(pool: PgPool) {
    let app = spawn_app_with(pool, private).await;
    let flaky = Receiver::http();
    flaky.script(&[503, 500]);
    let healthy = Receiver::http();
    // A port nobody listens on: connection refused.
    let dead_url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/hook", l.local_addr().unwrap().port())
    };
    let (flaky_id, flaky_secret) = subscribe(&app, &flaky.url, None).await;
    let (dead_id, _) = subscribe(&app, &dead_url, None).await;
    let (_, healthy_secret) = subscribe(&app, &healthy.url, Some(&["OATH_TOKEN.CREATED"])).await;
    app.create_hotp_tokens(numbered("T", 0..5)).await;
    settle(&app).await;
    let d = deliverer(&app, "d1");
    let started = Instant::now();
    // The healthy one is served at once, whatever the others do.
    drain(&d).await;
    assert_eq!(acknowledged(&healthy_secret, &healthy.received()).len(), 5);
    let sub = |id: &str| environment_path(app.env, &format!("/subscriptions/{id}"));
    let (_, flaky_now) = app.get_json(&sub(&flaky_id)).await;
    assert_eq!(
        flaky_now["delivery"]["lastFailure"], "HTTP 503",
        "{flaky_now}"
    );
    assert_eq!(flaky_now["delivery"]["pending"], 5);
    let (_, dead_now) = app.get_json(&sub(&dead_id)).await;
    assert_eq!(
        dead_now["delivery"]["lastFailure"], "connection refused",
        "{dead_now}"
    );
    // Backoff: 1 s, then 2 s; then the flaky receiver answers 200.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged(&flaky_secret, &flaky.received()).len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", flaky.received().len());
        drain(&d).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(3), "backed off");
    let statuses: Vec<u16> = flaky.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
    let events = acknowledged(&flaky_secret, &flaky.received());
    let serials: Vec<&str> = events
        .iter()
        .map(|e| e["resource"]["serialNumber"].as_str().unwrap())
        .collect();
    assert_eq!(
        serials,
        ["T0", "T1", "T2", "T3", "T4"],
        "in order, none lost"
    );
    let (_, flaky_now) = app.get_json(&sub(&flaky_id)).await;
    assert_eq!(flaky_now["delivery"]["pending"], 0);
    let metrics = app.metrics().await;
    for outcome in ["ok", "error"] {
        assert!(
            metrics.contains(&format!(
                "oath_event_deliveries_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}"
        );
    }
}

#[sqlx::test]
async fn an_https_receiver_under_a_private_ca_is_trusted_through_the_ca_file(pool: PgPool) {
    let ca = Ca::new("webhook test CA");
    let ca_file = ca.write_pem(
        &scratch_dir("webhook-ca"),
        &format!("{}.pem", Uuid::new_v4()),
    );
    let receiver = Receiver::https(&ca.issue(&["127.0.0.1"]));
    let untrusted = Receiver::https(&Ca::new("other CA").issue(&["127.0.0.1"]));
    let app = spawn_app_with(pool, |s| {
        s.events.allow_private_targets = true;
        s.events.ca_file = Some(ca_file.to_string_lossy().into_owned());
    })
    .await;
    let (_, secret) = subscribe(&app, &receiver.url, None).await;
    let (other, _) = subscribe(&app, &untrusted.url, None).await;
    // http:// is refused without events.allow_http.
    let (status, _) = app
        .post_json(
            &environment_path(app.env, "/subscriptions"),
            &json!({"name": "x", "httpEndpoint": {"url": "http://127.0.0.1:9/"}}),
        )
        .await;
    assert_eq!(status, 400);
    app.create_hotp_tokens(numbered("H", 0..2)).await;
    settle(&app).await;
    drain(&deliverer(&app, "d1")).await;
    assert_eq!(acknowledged(&secret, &receiver.received()).len(), 2);
    assert!(
        untrusted.received().is_empty(),
        "no request past a refused certificate"
    );
    let (_, sub) = app
        .get_json(&environment_path(
            app.env,
            &format!("/subscriptions/{other}"),
        ))
        .await;
    assert_eq!(
        sub["delivery"]["lastFailure"], "TLS handshake failed",
        "{sub}"
    );
}

#[sqlx::test]
async fn delivery_refuses_internal_targets_whatever_was_stored(pool: PgPool) {
    // Written while internal targets were allowed, delivered under the strict rules (as after a
    // configuration change, or a name that now resolves inside).
    let app = spawn_app_with(pool.clone(), private).await;
    let receiver = Receiver::http();
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (literal, _) = subscribe(&app, &receiver.url, None).await;
    let (named, _) = subscribe(&app, &by_name, None).await;
    app.create_hotp_tokens(numbered("X", 0..1)).await;
    settle(&app).await;
    let strict = spawn_app_with(pool, |s| {
        private(s);
        s.events.allow_private_targets = false;
    })
    .await;
    let d = deliverer(&strict, "d1");
    let steps = drain(&d).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        receiver.received().is_empty(),
        "nothing reached the internal receiver"
    );
    for id in [literal, named] {
        let (_, sub) = app
            .get_json(&environment_path(app.env, &format!("/subscriptions/{id}")))
            .await;
        assert_eq!(
            sub["delivery"]["lastFailure"], "target not allowed",
            "{sub}"
        );
    }
}
