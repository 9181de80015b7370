//! The encryption keys as an operator rotates them: `oath-service keys status` counts what each
//! key id seals (token secrets, queued job items and the sealed values of webhook
//! subscriptions), `reencrypt` moves all of them to the active key, and `serve` refuses a
//! database that holds a key id it is not configured with.

use std::time::Duration;

use oath_service::events::delivery::Step;
use serde_json::{json, Value};
use sqlx::PgPool;

use super::deliveries::{deliverer, subscribe, verified_events};
use crate::support::app::{create_job, numbered, spawn_app_with, KEY_A};
use crate::support::receiver::Receiver;
use crate::support::service::{
    assert_start_up_refused, command, database_url, output, service_env,
};

/// Base64 of 32 bytes of 7: key `b`.
const KEY_B: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// Runs the binary with `args` on `pool`'s database and the keys `keys` (id, base64), the first
/// one active.
async fn run(pool: &PgPool, keys: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut env: Vec<(String, String)> = service_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("OATH__CRYPTO__"))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("DATABASE_URL".into(), database_url(&pool.connect_options())));
    env.push(("OATH__CRYPTO__ACTIVE_KEY_ID".into(), keys[0].0.into()));
    for (id, key) in keys {
        env.push((
            format!("OATH__CRYPTO__KEYS__{}", id.to_uppercase()),
            (*key).into(),
        ));
    }
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut cmd = command(&env);
    cmd.args(args);
    output(cmd).await
}

/// `keys status --json`: the exit code and the keys.
async fn status(pool: &PgPool, keys: &[(&str, &str)]) -> (Option<i32>, Vec<Value>) {
    let out = run(pool, keys, &["keys", "status", "--json"]).await;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "JSON on stdout: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc["keys"].as_array().unwrap().clone())
}

#[sqlx::test]
async fn rotation_moves_every_sealed_value_and_status_counts_them(pool: PgPool) {
    let private = |s: &mut oath_service::config::Settings| {
        s.events.allow_http = true;
        s.events.allow_private_targets = true;
    };
    let app = spawn_app_with(pool.clone(), private).await;
    assert_eq!(app.create_hotp_tokens(numbered("K", 0..3)).await.len(), 3);
    // A job no runner has taken: its 5 items wait, sealed under key a.
    let res = app.submit_job(&create_job(numbered("Q", 0..5))).await;
    assert_eq!(res.status(), 202);
    // A subscription: its signing secret and its header values, sealed under key a.
    let receiver = Receiver::http();
    let (_, signing_secret) = subscribe(&app, &receiver.url, None).await;

    let a_only = [("a", KEY_A)];
    let (code, keys) = status(&pool, &a_only).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        keys,
        [json!({"id": "a", "active": true, "configured": true,
                "tokenSecrets": 3, "queuedJobItems": 5, "subscriptionSecrets": 2})]
    );

    // Rotation: b becomes active, a stays configured; reencrypt moves everything to b.
    let rotated = [("b", KEY_B), ("a", KEY_A)];
    let out = run(&pool, &rotated, &["reencrypt"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, keys) = status(&pool, &rotated).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        keys,
        [
            json!({"id": "a", "active": false, "configured": true,
                   "tokenSecrets": 0, "queuedJobItems": 0, "subscriptionSecrets": 0}),
            json!({"id": "b", "active": true, "configured": true,
                   "tokenSecrets": 3, "queuedJobItems": 5, "subscriptionSecrets": 2}),
        ]
    );

    // The queued items open under b: a runner configured with b alone creates every token.
    let b_only = spawn_app_with(pool.clone(), |s| {
        private(s);
        s.crypto.active_key_id = Some("b".into());
        s.crypto.keys = [("b".to_string(), KEY_B.to_string())].into();
    })
    .await;
    b_only.run_jobs().await;
    // The subscription's secrets open under b: the events arrive signed with the secret shown
    // at its creation, with its header.
    let worker = deliverer(&b_only, "keys-test");
    loop {
        match worker.step().await.unwrap() {
            Step::Idle => break,
            step => assert!(matches!(step, Step::Delivered { .. }), "{step:?}"),
        }
    }
    let received = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(received.iter().all(|r| r.status == 200));
    let delivered: usize = received
        .iter()
        .map(|r| verified_events(&signing_secret, r).len())
        .sum();
    // The job's tokens and its COMPLETED: what happened after the subscription was created.
    assert_eq!(delivered, 5 + 1);
    let created = app
        .count_in(
            app.env,
            "select count(*) from oath_tokens where environment_id = $1 and secret_key_id = 'b'",
        )
        .await;
    assert_eq!(created, 8);

    // Key a can now be retired; a database that still needed it would be refused.
    let (code, keys) = status(&pool, &[("b", KEY_B)]).await;
    assert_eq!((code, keys.len()), (Some(0), 1));
    let c_only = [("c", KEY_A)];
    let (code, keys) = status(&pool, &c_only).await;
    assert_eq!(code, Some(1));
    assert_eq!(keys[0]["id"], "b");
    assert_eq!(keys[0]["configured"], false);
    let out = run(&pool, &c_only, &["serve"]).await;
    let line = assert_start_up_refused(&out, "serve without key b");
    assert!(line.contains("key id(s) b "), "{line}");
}
