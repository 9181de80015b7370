//! Replicas deployed at once against one empty database: three real processes, started together,
//! each apply the pending migrations on start. Each migration is applied once, and every process
//! either applies it or waits for the one that does, then goes on.

use std::time::Duration;

use oath_service::store::MIGRATOR;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::support::app::spawn_app;
use crate::support::service::{command, database_url, output, service_env, Service};
use crate::support::tls::scratch_dir;

/// Asserts that `_sqlx_migrations` holds every migration of the binary exactly once, each
/// applied successfully.
async fn assert_migrated_once(pool: &PgPool) {
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("select version, success from _sqlx_migrations order by version")
            .fetch_all(pool)
            .await
            .unwrap();
    let expected: Vec<(i64, bool)> = MIGRATOR.iter().map(|m| (m.version, true)).collect();
    assert!(!expected.is_empty());
    assert_eq!(rows, expected);
}

async fn empty(pool: &PgPool) -> bool {
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_schema = 'public'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    tables == 0
}

#[sqlx::test(migrations = false)]
async fn three_migrate_commands_at_once_apply_each_migration_once(pool: PgPool) {
    assert!(empty(&pool).await, "the database starts empty");
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__LOG__LEVEL", "info".into()),
    ]);
    let runs = (0..3).map(|_| {
        let mut cmd = command(&env);
        cmd.arg("migrate");
        output(cmd)
    });
    for out in futures_util::future::join_all(runs).await {
        assert!(
            out.status.success(),
            "{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_migrated_once(&pool).await;
}

#[sqlx::test(migrations = false)]
async fn three_replicas_starting_at_once_on_an_empty_database_all_serve(
    _opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect.clone())
        .await
        .unwrap();
    assert!(empty(&pool).await, "the database starts empty");
    let dir = scratch_dir("replicas");
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&connect)),
        ("OATH__SERVER__WORKERS", "1".into()),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__LOG__LEVEL", "warn".into()),
    ]);
    let mut replicas: Vec<Service> = (0..3)
        .map(|n| Service::start(&["serve"], &env, dir.join(format!("replica-{n}.log"))))
        .collect();
    for replica in &mut replicas {
        replica.wait_ready(Duration::from_secs(120)).await;
    }
    assert_migrated_once(&pool).await;

    // The schema they made serves: a token created through one replica is read through another.
    let app = spawn_app(pool.clone()).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}{}", replicas[0].base, app.tokens_path()))
        .bearer_auth(app.all_scopes())
        .json(&crate::support::app::hotp_token("REPLICA1"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let listed = client
        .get(format!("{}{}", replicas[2].base, app.tokens_path()))
        .bearer_auth(app.all_scopes())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let body: serde_json::Value = listed.json().await.unwrap();
    assert_eq!(body["size"], 1, "{body}");
    for replica in &mut replicas {
        replica.assert_running();
    }
    pool.close().await;
}
