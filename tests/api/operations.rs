//! Running the service: `server.admin_addr` (metrics there only, health on both), the process
//! metrics, and `oath-service healthcheck` for container health checks.

use std::time::Duration;

use oath_service::startup::{AppState, Application};
use sqlx::PgPool;

use crate::support::app::{pool_via, spawn_app_with, test_settings, HS256_SECRET};
use crate::support::cluster::free_port;
use crate::support::service::{
    assert_start_up_refused, command, database_url, output, service_env, Service,
};
use crate::support::tls::scratch_dir;

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[sqlx::test]
async fn admin_addr_serves_metrics_alone_and_health_beside_the_api(pool: PgPool) {
    let mut settings = test_settings();
    settings.server.admin_addr = Some("127.0.0.1:0".into());
    let state = AppState::new(settings, pool).await.unwrap();
    let app = Application::build(state).unwrap();
    let public = format!("http://127.0.0.1:{}", app.port());
    let admin = format!(
        "http://127.0.0.1:{}",
        app.admin_port().expect("an admin port")
    );
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    for path in ["/health/live", "/health/ready"] {
        assert_eq!(
            status(&client, &format!("{public}{path}")).await,
            200,
            "{path}"
        );
        assert_eq!(
            status(&client, &format!("{admin}{path}")).await,
            200,
            "{path}"
        );
    }
    assert_eq!(status(&client, &format!("{public}/metrics")).await, 404);
    assert_eq!(
        status(&client, &format!("{public}/openapi.json")).await,
        200
    );
    // The admin listener serves nothing of the API.
    assert_eq!(status(&client, &format!("{admin}/openapi.json")).await, 404);
    let tokens = format!("/v1/environments/{}/oathTokens", uuid::Uuid::new_v4());
    assert_eq!(status(&client, &format!("{admin}{tokens}")).await, 404);
    assert_eq!(status(&client, &format!("{public}{tokens}")).await, 401);

    let res = client.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    // Requests to either listener are counted; the process metrics keep their usual names.
    assert!(
        text.contains(
            r#"oath_http_requests_total{method="GET",route="/health/live",status="200"}"#
        ),
        "{text}"
    );
    for series in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "{series}in {text}"
        );
    }
}

/// `OATH__SERVER__ADMIN_ADDR` as an operator sets it, and a value that cannot work.
#[sqlx::test]
async fn admin_addr_from_the_environment(pool: PgPool) {
    let admin_port = free_port();
    let env = |admin_addr: String| {
        let mut env = service_env();
        env.extend([
            ("DATABASE_URL", database_url(&pool.connect_options())),
            ("OATH__SERVER__WORKERS", "1".to_string()),
            ("OATH__SERVER__ADMIN_ADDR", admin_addr),
            ("OATH__JOBS__RUNNERS", "0".into()),
            ("OATH__LOG__LEVEL", "warn".into()),
        ]);
        env
    };
    let out = command(&env("metrics:9090".into()))
        .args(["serve", "--no-migrate"])
        .output()
        .unwrap();
    let stderr = assert_start_up_refused(&out, "server.admin_addr");
    assert!(stderr.contains("server.admin_addr"), "{stderr}");

    let dir = scratch_dir("admin-env");
    let mut service = Service::start(
        &["serve", "--no-migrate"],
        &env(format!("127.0.0.1:{admin_port}")),
        dir.join("service.log"),
    );
    service.wait_ready(Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{admin_port}");
    assert_eq!(status(&client, &format!("{admin}/metrics")).await, 200);
    assert_eq!(status(&client, &format!("{admin}/health/ready")).await, 200);
    assert_eq!(
        status(&client, &format!("{}/metrics", service.base)).await,
        404
    );
}

/// `oath-service healthcheck [--url BASE]`: 0 when BASE/health/ready answers 200, else 1.
#[sqlx::test]
async fn healthcheck_exits_0_only_when_ready(pool: PgPool) {
    let ready = spawn_app_with(pool, |_| {}).await;
    // Live but not ready: its database is a port where nothing listens.
    let nowhere = pool_via(
        &test_settings(),
        "postgres://postgres@127.0.0.1:9/oath".parse().unwrap(),
    );
    let not_ready = spawn_app_with(nowhere, |_| {}).await;
    let closed = format!("http://127.0.0.1:{}", free_port());

    // Given --url, no configuration at all is needed.
    let healthcheck = |base: &str| {
        let mut cmd = command(&[("OATH_CONFIG_DIR", "/nonexistent".to_string())]);
        cmd.args(["healthcheck", "--url", base]);
        output(cmd)
    };
    let out = healthcheck(&ready.address).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = healthcheck(&format!("{}/", ready.address)).await;
    assert_eq!(out.status.code(), Some(0), "a trailing slash: {out:?}");
    for (base, why) in [
        (not_ready.address.as_str(), "503"),
        (closed.as_str(), "/health/ready"),
        ("127.0.0.1:8080", "--url"),
    ] {
        let out = healthcheck(base).await;
        let stderr = assert_start_up_refused(&out, base);
        assert!(stderr.contains(why), "{base}: {stderr}");
    }

    // Without --url: the port of server.addr, on loopback when the service listens on all.
    let port = ready.address.rsplit(':').next().unwrap();
    for addr in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let mut cmd = command(&[
            ("OATH__SERVER__ADDR", addr.clone()),
            ("OATH__AUTH__HS256_SECRET", HS256_SECRET.into()),
        ]);
        cmd.arg("healthcheck");
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{addr}: {out:?}");
    }
}
