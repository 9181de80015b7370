//! Responses of POST requests that carried an `Idempotency-Key`, kept for 24 hours.
//!
//! The key is claimed first in the request's own transaction, so a concurrent retry waits for the
//! first request to commit and then finds its response; a request that fails rolls its claim back
//! and leaves the key free.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// How long a key is remembered.
pub const TTL_HOURS: i32 = 24;

#[derive(Debug, Clone)]
pub struct Stored {
    pub request_hash: Vec<u8>,
    pub status: i16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// The response stored under `key`, if it is younger than the TTL.
pub async fn find(pool: &PgPool, env: Uuid, key: &str) -> Result<Option<Stored>, sqlx::Error> {
    sqlx::query_as!(
        Stored,
        r#"select request_hash, status, location, body from idempotency_keys
           where environment_id = $1 and key = $2
             and created_at > now() - make_interval(hours => $3)"#,
        env,
        key,
        TTL_HOURS,
    )
    .fetch_optional(pool)
    .await
}

/// Claims `key` for this request inside its transaction. False when the key is taken (by a
/// committed request younger than the TTL): the caller rolls back and replays.
pub async fn claim(
    tx: &mut PgConnection,
    env: Uuid,
    key: &str,
    request_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"insert into idempotency_keys as k (environment_id, key, request_hash, status, body)
           values ($1, $2, $3, 0, '')
           on conflict (environment_id, key) do update
               set request_hash = excluded.request_hash, status = 0, location = null, body = '',
                   created_at = now()
               where k.created_at <= now() - make_interval(hours => $4)
           returning 1"#,
        env,
        key,
        request_hash,
        TTL_HOURS,
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(claimed.is_some())
}

/// Records the response of the request that claimed `key`.
pub async fn record(
    conn: &mut PgConnection,
    env: Uuid,
    key: &str,
    status: u16,
    location: Option<&str>,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update idempotency_keys set status = $3, location = $4, body = $5
         where environment_id = $1 and key = $2",
        env,
        key,
        status as i16,
        location,
        body,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets keys past the TTL.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "delete from idempotency_keys where created_at <= now() - make_interval(hours => $1)",
        TTL_HOURS
    )
    .execute(pool)
    .await?
    .rows_affected())
}
