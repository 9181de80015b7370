//! Stopping: on SIGTERM readiness answers 503 at once while the API is still served for
//! `server.shutdown_delay_seconds`; then the process drains and exits.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::support::app::{spawn_app, wait_until};
use crate::support::service::{database_url, service_env, Service};

#[sqlx::test]
async fn sigterm_turns_readiness_off_then_drains_after_the_delay(pool: PgPool) {
    // Only for its environment's tokens; the process under test is the binary.
    let app = spawn_app(pool.clone()).await;
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__SHUTDOWN_DELAY_SECONDS", "3".to_string()),
        ("OATH__LOG__LEVEL", "info".to_string()),
    ]);
    let log = std::env::temp_dir().join(format!("shutdown-{}.log", app.env));
    let mut service = Service::start(&["serve", "--no-migrate"], &env, log);
    service.wait_ready(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let status = |path: &str| {
        let request = client.get(format!("{}{path}", service.base));
        async move { request.send().await.map(|r| r.status().as_u16()).ok() }
    };
    let tokens = format!("{}{}", service.base, app.tokens_path());
    let bearer = app.all_scopes();

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let signalled = Instant::now();
    wait_until("readiness is off", Duration::from_secs(2), async || {
        status("/health/ready").await == Some(503)
    })
    .await;
    // Still serving: liveness and the API answer while balancers take the instance out.
    assert_eq!(status("/health/live").await, Some(200));
    let listed = client.get(&tokens).bearer_auth(&bearer).send().await;
    assert_eq!(listed.unwrap().status(), 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the checks above took the whole delay: {:?}",
        signalled.elapsed()
    );

    // After the delay the listener closes and the process exits by itself.
    wait_until("the process exits", Duration::from_secs(20), async || {
        service.exited()
    })
    .await;
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "exited before the delay: {:?}\n{}",
        signalled.elapsed(),
        service.output()
    );
    assert!(
        service.output().contains("stop requested"),
        "{}",
        service.output()
    );
}
