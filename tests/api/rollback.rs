//! Rollback: this binary against a database one release ahead. A newer release's migrations are
//! additive within a major version, so the binary, started as an operator would (`serve`, which
//! applies pending migrations), still starts and serves on a schema it does not fully know. A
//! migration it knows that was applied with other content still stops start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oath_service::auth::{self, Scope};
use oath_service::domain::HashAlgorithm;
use oath_service::store::MIGRATOR;
use serde_json::{json, Value};
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{environment_path, hotp_token, rfc_code, test_settings};
use crate::support::service::{
    assert_start_up_refused, command, database_url, output, service_env, Service,
};
use crate::support::tls::scratch_dir;

/// The version of the newer release's migration: after every migration of this binary.
const NEWER_VERSION: i64 = 20991231000001;

/// A newer release's additive migration: a nullable column, a defaulted one, an index and a
/// table of its own, as the upgrade rules allow within a major version.
const NEWER_MIGRATION: &str = "\
alter table oath_tokens add column label text;
alter table oath_tokens add column archived boolean not null default false;
create index oath_tokens_label on oath_tokens (environment_id, label) where label is not null;
create table token_notes (
    environment_id uuid not null,
    token_id uuid not null,
    note text not null,
    foreign key (environment_id, token_id) references oath_tokens (environment_id, id)
        on delete cascade
);
";

/// A directory with the migrations of this checkout, the last one changed by `edit`, and, if
/// given, one more migration `(file name, sql)`.
fn migrations_dir(
    name: &str,
    edit: impl Fn(&str) -> String,
    extra: Option<(&str, &str)>,
) -> PathBuf {
    let dir = scratch_dir(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let last = files.last().cloned().expect("migrations");
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        let sql = if *file == last { edit(&sql) } else { sql };
        std::fs::write(dir.join(file.file_name().unwrap()), sql).unwrap();
    }
    if let Some((file, sql)) = extra {
        std::fs::write(dir.join(file), sql).unwrap();
    }
    dir
}

/// Migrates `pool` as another build would: with the migrations of `dir`.
async fn migrate_with(pool: &PgPool, dir: &Path) {
    let migrator = Migrator::new(dir).await.unwrap();
    migrator.run(pool).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn this_binary_serves_a_database_one_release_ahead(pool: PgPool) {
    let dir = migrations_dir(
        "rollback",
        str::to_string,
        Some((
            &format!("{NEWER_VERSION}_newer_release.sql"),
            NEWER_MIGRATION,
        )),
    );
    migrate_with(&pool, &dir).await;
    assert!(MIGRATOR.iter().all(|m| m.version < NEWER_VERSION));
    let env = Uuid::new_v4();

    let mut service_env = service_env();
    service_env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__SERVER__WORKERS", "1".into()),
        ("OATH__JOBS__RUNNERS", "1".into()),
        ("OATH__LOG__LEVEL", "info".into()),
    ]);
    let mut service = Service::start(&["serve"], &service_env, dir.join("service.log"));
    service.wait_ready(Duration::from_secs(120)).await;
    let log = service.output();
    assert!(
        log.contains("the database is ahead of this binary")
            && log.contains(&format!("{NEWER_VERSION} (newer release)")),
        "the log names the unknown migration:\n{log}"
    );

    // It serves: a token created, read back, and an OTP validated against it.
    let settings = test_settings();
    let scopes: Vec<String> = Scope::ALL.iter().map(|s| s.as_str().to_string()).collect();
    let bearer =
        auth::mint_dev_token(&settings.auth, env, &scopes, Duration::from_secs(300)).unwrap();
    let client = reqwest::Client::new();
    let tokens = format!("{}{}", service.base, environment_path(env, "/oathTokens"));
    let res = client
        .post(&tokens)
        .bearer_auth(&bearer)
        .json(&hotp_token("ROLLBACK1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let created: Value = res.json().await.unwrap();
    let id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    let token = format!("{tokens}/{id}");
    // What the newer release would have written: its column and its table, filled.
    sqlx::query("update oath_tokens set label = 'desk 12' where id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into token_notes (environment_id, token_id, note) values ($1, $2, 'spare')",
    )
    .bind(env)
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let res = client
        .get(&token)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let read: Value = res.json().await.unwrap();
    assert_eq!(read["serialNumber"], "ROLLBACK1", "{read}");
    let res = client
        .post(format!("{token}/validate"))
        .bearer_auth(&bearer)
        .json(&json!({"otp": rfc_code(HashAlgorithm::Sha1, 6, 0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let validated: Value = res.json().await.unwrap();
    assert_eq!(validated["status"], "VALID", "{validated}");
    service.assert_running();

    // The newer release's migration is still recorded once; nothing was undone.
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from _sqlx_migrations where version = $1 and success")
            .bind(NEWER_VERSION)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, 1);
}

#[sqlx::test(migrations = false)]
async fn a_known_migration_applied_with_other_content_stops_start_up(pool: PgPool) {
    let dir = migrations_dir(
        "changed-migration",
        |sql| format!("{sql}\n-- edited after its release\n"),
        None,
    );
    migrate_with(&pool, &dir).await;
    let last = MIGRATOR.iter().last().unwrap();
    let mut env = service_env();
    env.push(("DATABASE_URL", database_url(&pool.connect_options())));
    for args in [&["serve"][..], &["migrate"]] {
        let mut cmd = command(&env);
        cmd.args(args);
        let line = assert_start_up_refused(&output(cmd).await, &args.join(" "));
        assert!(
            line.starts_with("oath-service: cannot apply migrations: ")
                && line.contains(&format!(
                    "migration {} ({})",
                    last.version, last.description
                ))
                && line.contains("checksum differs"),
            "{line}"
        );
    }
}
