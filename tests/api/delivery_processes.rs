//! Delivery by real service processes: one killed with SIGKILL while a receiver holds its
//! request, then two processes sharing the work. Every event reaches every receiver, in order,
//! and no secret reaches a log.

use std::time::Duration;

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::deliveries::{acknowledged_events, apply, service_tokens, subscribe};
use super::events::{read_feed, settle};
use crate::support::app::{create_job, numbered, spawn_app_with, wait_until};
use crate::support::receiver::{Receiver, HOLD};
use crate::support::service::{database_url, service_env, Service};
use crate::support::tls::scratch_dir;

fn start(url: &str, name: &str, dir: &std::path::Path) -> Service {
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", url.to_string()),
        ("OATH__SERVER__WORKERS", "1".into()),
        ("OATH__JOBS__RUNNERS", "0".into()),
        ("OATH__EVENTS__RUNNERS", "2".into()),
        ("OATH__EVENTS__ALLOW_HTTP", "true".into()),
        ("OATH__EVENTS__ALLOW_PRIVATE_TARGETS", "true".into()),
        ("OATH__EVENTS__DELIVERY_TIMEOUT_SECONDS", "2".into()),
        ("OATH__EVENTS__LEASE_SECONDS", "3".into()),
        ("OATH__EVENTS__POLL_INTERVAL_MS", "100".into()),
        ("OATH__LOG__LEVEL", "info".into()),
    ]);
    Service::start(
        &["serve", "--no-migrate"],
        &env,
        dir.join(format!("{name}.log")),
    )
}

#[sqlx::test]
async fn a_kill_9_mid_delivery_loses_nothing_and_two_processes_share_the_work(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let app = spawn_app_with(pool, |s| {
        s.events.allow_http = true;
        s.events.allow_private_targets = true;
        s.jobs.chunk_size = 50;
    })
    .await;
    let dir = scratch_dir("delivery-processes");
    let receivers: Vec<Receiver> = (0..3).map(|_| Receiver::http()).collect();
    // The first receiver holds the first request it gets: the process sending it is killed then.
    receivers[0].script(&[HOLD]);
    let mut secrets = Vec::new();
    for r in &receivers {
        secrets.push(subscribe(&app, &r.url, None).await.1);
    }
    app.create_hotp_tokens(numbered("P", 0..10)).await;
    app.submit_and_run(&create_job(numbered("Q", 0..260))).await;
    let some: Vec<String> = service_tokens(&app).await.into_iter().take(30).collect();
    app.submit_and_run(&json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": some}))
        .await;
    settle(&app).await;
    let (feed, _) = read_feed(&app, None, 1000).await;

    let url = database_url(&connect);
    let killed = start(&url, "delivery-killed", &dir);
    receivers[0].wait_for(1, Duration::from_secs(60)).await;
    drop(killed); // SIGKILL, its request to the first receiver unanswered
    let a = start(&url, "delivery-a", &dir);
    let b = start(&url, "delivery-b", &dir);
    wait_until(
        "every receiver has every event",
        Duration::from_secs(120),
        async || {
            receivers
                .iter()
                .zip(&secrets)
                .all(|(r, s)| acknowledged_events(s, &r.received()).len() == feed.len())
        },
    )
    .await;
    let expected = service_tokens(&app).await;
    for (r, secret) in receivers.iter().zip(&secrets) {
        let events = acknowledged_events(secret, &r.received());
        let ids: Vec<&serde_json::Value> = events.iter().map(|e| &e["id"]).collect();
        let feed_ids: Vec<&serde_json::Value> = feed.iter().map(|e| &e["id"]).collect();
        assert_eq!(ids, feed_ids, "every event, in the feed's order");
        assert_eq!(apply(&events), expected);
    }
    assert_eq!(receivers[0].received()[0].status, HOLD);
    // Neither log holds a secret.
    let logs = [a.output(), b.output()];
    for (name, log) in ["a", "b"].iter().zip(&logs) {
        assert!(
            !log.contains("receiver-credential"),
            "{name}: a header value in the log"
        );
        for secret in &secrets {
            let encoded =
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
            assert!(
                !log.contains(&encoded),
                "{name}: the signing secret in the log"
            );
        }
    }
}
