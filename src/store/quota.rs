//! The token quota of an environment (`environment_usage`), decided here and nowhere else: the
//! count of tokens, and the named constraint `environment_usage_within_limit` that keeps it within
//! the limit in force when tokens are added. Single creates add their tokens in the statement that
//! inserts them ([`crate::store::tokens::insert`], [`crate::store::tokens::insert_new_counted`]);
//! job chunks, and combined creates near the limit, ask for [`room`] and [`take`] what they
//! created; deletes and revokes [`release`].

use sqlx::PgConnection;
use uuid::Uuid;

/// The constraint an over-quota write fails on.
pub const WITHIN_LIMIT_CONSTRAINT: &str = "environment_usage_within_limit";

/// True when `e` is a write that would have passed the quota.
pub fn is_exceeded(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(WITHIN_LIMIT_CONSTRAINT))
}

/// How many tokens the environment may still add under `limit`. Locks its usage row until the
/// transaction ends, so that concurrent chunks of the environment take turns.
pub async fn room(tx: &mut PgConnection, env: Uuid, limit: i64) -> Result<i64, sqlx::Error> {
    let count = sqlx::query_scalar!(
        r#"insert into environment_usage as u (environment_id, token_count) values ($1, 0)
           on conflict (environment_id) do update set token_count = u.token_count
           returning token_count"#,
        env,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((limit - count).max(0))
}

/// Counts `n` tokens added under `limit`; fails on the constraint past it.
pub async fn take(tx: &mut PgConnection, env: Uuid, n: i64, limit: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"insert into environment_usage as u (environment_id, token_count, token_limit)
           values ($1, $2, $3)
           on conflict (environment_id) do update
               set token_count = u.token_count + excluded.token_count,
                   token_limit = excluded.token_limit"#,
        env,
        n,
        limit,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Gives back the quota of `n` deleted tokens.
pub async fn release(tx: &mut PgConnection, env: Uuid, n: i64) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update environment_usage set token_count = token_count - $2 where environment_id = $1",
        env,
        n,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The environment's token count.
pub async fn tokens(pool: &sqlx::PgPool, env: Uuid) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        "select token_count from environment_usage where environment_id = $1",
        env,
    )
    .fetch_optional(pool)
    .await?
    .unwrap_or(0))
}
