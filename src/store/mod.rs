//! SQL, one file per table family. Functions take a pool or a transaction and domain types, and
//! return rows; they decide nothing the database can decide better (uniqueness, quotas).

pub mod batch;
pub mod chunks;
pub mod copy;
pub mod events;
pub mod idempotency;
pub mod jobs;
pub mod otp;
pub mod quota;
pub mod results;
pub mod retention;
pub mod secrets;
pub mod subscriptions;
pub mod tokens;

use std::sync::LazyLock;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgConnection, PgPool};

use chunks::ChunkKey;

/// The migrations of this binary. Migrations applied by a newer release, which this binary does
/// not know, are allowed: within a major version they are additive, so that a rollback to this
/// binary needs no database restore. A known migration applied with other content still
/// refuses to run (sqlx compares checksums).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
});

/// A migration applied to the database that this binary does not know (a newer release's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMigration {
    pub version: i64,
    pub description: String,
}

impl std::fmt::Display for UnknownMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.description)
    }
}

/// Why [`migrate`] failed, as one line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(
        "migration {version} ({description}) was applied to this database with other content \
         than this binary's (its checksum differs): a released migration must never change; \
         find which build migrated the database"
    )]
    Changed { version: i64, description: String },
    #[error("cannot list the applied migrations: {0}")]
    List(#[source] sqlx::Error),
}

/// Applies the migrations of this binary that are pending (once, under PostgreSQL's advisory
/// lock, however many processes run this at once); returns the applied migrations it does not
/// know, oldest first: the database is ahead of this binary, after a rollback.
pub async fn migrate(pool: &PgPool) -> Result<Vec<UnknownMigration>, MigrationError> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        MigrateError::VersionMismatch(version) => MigrationError::Changed {
            version,
            description: MIGRATOR
                .iter()
                .find(|m| m.version == version)
                .map_or_else(String::new, |m| m.description.to_string()),
        },
        e => MigrationError::Migrate(e),
    })?;
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let rows = sqlx::query!(
        r#"select version as "version!", description as "description!"
             from _sqlx_migrations where version <> all($1::bigint[]) order by version"#,
        &known,
    )
    .fetch_all(pool)
    .await
    .map_err(MigrationError::List)?;
    Ok(rows
        .into_iter()
        .map(|r| UnknownMigration {
            version: r.version,
            description: r.description,
        })
        .collect())
}

/// SQLSTATE of a statement on a table that does not exist.
const UNDEFINED_TABLE: &str = "42P01";
/// SQLSTATE of a write on a host that accepts reads only (a standby, or a primary being demoted).
const READ_ONLY_TRANSACTION: &str = "25006";
/// SQLSTATE of a transaction the database chose to end a deadlock.
const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of a transaction that would have broken an order (see `events_check_order`).
const SERIALIZATION_FAILURE: &str = "40001";

/// Begins a job chunk's transaction on `tx`, in one round trip:
/// - the chunk's own lock, held until the transaction ends: a chunk written beside it waits for
///   it ([`wait_for_chunk`]) before it commits, and a runner that took the job over from a
///   stalled one waits for the stalled one's transaction of the same chunk;
/// - generic plans: a chunk's statements take arrays of up to `jobs.chunk_size` ids or serials,
///   and for such an array the planner's own choice is a hash join over a sequential scan of all
///   the environment's tokens (cheaper, by its costs, than as many index probes), so that every
///   chunk would read the whole environment. The generic plan probes the index once per item.
/// - unless `flush`, the transaction commits without waiting for its WAL flush: a database crash
///   may lose it whole, never in part.
pub async fn chunk_transaction(
    tx: &mut PgConnection,
    chunk: ChunkKey,
    flush: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"select pg_advisory_xact_lock(hashtextextended($2::uuid::text, $3)) as "locked!",
                  set_config('plan_cache_mode', 'force_generic_plan', true) as "plans!",
                  case when $1 then null
                       else set_config('synchronous_commit', 'off', true) end as commit"#,
        flush,
        chunk.job_id,
        i64::from(chunk.first_idx),
    )
    .fetch_one(tx)
    .await
    .map(drop)
}

/// Waits until the transaction of the job's chunk `chunk` has ended (committed or rolled back),
/// if one holds its lock ([`chunk_transaction`]).
pub async fn wait_for_chunk(tx: &mut PgConnection, chunk: ChunkKey) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"select pg_advisory_xact_lock_shared(hashtextextended($1::uuid::text, $2)) as "locked!""#,
        chunk.job_id,
        i64::from(chunk.first_idx),
    )
    .fetch_one(tx)
    .await
    .map(drop)
}

/// True when every migration this binary knows has been applied successfully; false too on a
/// database never migrated (no migrations table).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> = match sqlx::query_scalar!(
        r#"select version as "version!" from _sqlx_migrations where success order by version"#
    )
    .fetch_all(pool)
    .await
    {
        Ok(applied) => applied,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(UNDEFINED_TABLE) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .all(|m| applied.binary_search(&m.version).is_ok()))
}

/// Errors of a transaction that met a concurrent one and is worth retrying at once: a unique
/// violation (another writer took a serial first), a deadlock the database broke, or a
/// serialization failure.
pub fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation()
            || matches!(db.code().as_deref(), Some(DEADLOCK_DETECTED | SERIALIZATION_FAILURE)))
}

/// Errors that mean "the database cannot be reached right now", as opposed to a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        // A connection cut mid-handshake (e.g. by a proxy in front of a database that is down)
        // reads as a protocol error: the server is not there, not a bug here.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: shutdown / cannot connect now; 53: resources;
        // 25006: a host that turned read-only in a failover.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == READ_ONLY_TRANSACTION
        }),
        _ => false,
    }
}

/// A text column as a domain value: an unknown value is an error, never a default.
pub(crate) fn decode<T>(
    value: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<T, sqlx::Error> {
    parse(value).ok_or_else(|| {
        sqlx::Error::Decode(format!("unknown {what} {value:?} in the database").into())
    })
}

/// [`decode`] for every value of an array column.
pub(crate) fn decode_all<T>(
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, sqlx::Error> {
    values.iter().map(|v| decode(v, &parse, what)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::job::JobStatus;

    #[test]
    fn unknown_database_values_are_errors_not_defaults() {
        assert_eq!(
            decode("DONE", JobStatus::parse, "job status").unwrap(),
            JobStatus::Done
        );
        let err = decode("done", JobStatus::parse, "job status").unwrap_err();
        assert!(matches!(err, sqlx::Error::Decode(_)), "{err:?}");
        assert!(
            err.to_string().contains("unknown job status \"done\""),
            "{err}"
        );
        assert!(decode_all(
            &["HOTP".to_string(), "XOTP".to_string()],
            crate::domain::TokenType::parse,
            "token type"
        )
        .is_err());
    }
}
