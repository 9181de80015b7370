//! SQL, one file per table family. Functions take a pool or a transaction and domain types, and
//! return rows; they decide nothing the database can decide better (uniqueness, quotas).

pub mod copy;
pub mod idempotency;
pub mod jobs;
pub mod otp;
pub mod secrets;
pub mod tokens;

use sqlx::migrate::Migrator;
use sqlx::PgPool;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// True when every migration this binary knows has been applied successfully.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> = sqlx::query_scalar!(
        r#"select version as "version!" from _sqlx_migrations where success order by version"#
    )
    .fetch_all(pool)
    .await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.binary_search(&m.version).is_ok()))
}
