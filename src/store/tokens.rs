//! `oath_tokens` and `environment_usage`: insert under the quota, read, list by keyset, delete.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::domain::{NewToken, TokenKind};

/// The unique constraint that decides duplicate serials (see the migration).
pub const SERIAL_UNIQUE_CONSTRAINT: &str = "oath_tokens_serial_number_key";

/// A token as read back, without its secret.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub serial_number: String,
    pub token_type: String,
    pub otp_length: i16,
    pub hash_algorithm: String,
    pub counter: Option<i64>,
    pub time_step: Option<i32>,
    pub drift: i32,
    pub status: String,
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("serial number already exists in the environment")]
    Duplicate,
    #[error("the environment's token limit is reached")]
    LimitExceeded,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Inserts one token and counts it against the environment's quota, in one statement: on a
/// connection of its own it commits at once, holding the quota row's lock only while it commits;
/// in a transaction, the caller rolls back on error.
pub async fn insert<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    env: Uuid,
    id: Uuid,
    token: &NewToken,
    sealed: &Sealed,
    limit: i64,
) -> Result<TokenRow, InsertError> {
    let (counter, time_step) = match token.kind {
        TokenKind::Hotp { counter } => (Some(counter), None),
        TokenKind::Totp { time_step } => (None, Some(time_step)),
    };
    // The token first, then the quota row (the order job chunks take them in, so the two never
    // deadlock). Over the quota, `usage` is empty and the division by zero fails the statement,
    // which undoes the insert.
    let row = sqlx::query_as!(
        TokenRow,
        r#"with token as (
               insert into oath_tokens
                   (environment_id, id, serial_number, type, otp_length, hash_algorithm,
                    counter, time_step, secret_ciphertext, secret_key_id)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               returning environment_id, id, serial_number, type, otp_length, hash_algorithm,
                         counter, time_step, drift, status, user_id, created_at, updated_at
           ), usage as (
               insert into environment_usage as u (environment_id, token_count)
               select environment_id, 1 from token where 1 <= $11::bigint
               on conflict (environment_id) do update
                   set token_count = u.token_count + 1
                   where u.token_count + 1 <= $11::bigint
               returning token_count
           )
           select environment_id as "environment_id!", id as "id!",
                  serial_number as "serial_number!", type as "token_type!",
                  otp_length as "otp_length!", hash_algorithm as "hash_algorithm!", counter,
                  time_step, drift as "drift!", status as "status!", user_id,
                  created_at as "created_at!", updated_at as "updated_at!"
           from token
           where 1 / (select count(*)::integer from usage) = 1"#,
        env,
        id,
        token.serial_number.as_str(),
        token.kind.token_type().as_str(),
        i16::from(token.otp_length.get()),
        token.hash_algorithm.as_str(),
        counter,
        time_step,
        &sealed.ciphertext,
        &sealed.key_id,
        limit,
    )
    .fetch_one(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(SERIAL_UNIQUE_CONSTRAINT) => {
            InsertError::Duplicate
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some(DIVISION_BY_ZERO) => {
            InsertError::LimitExceeded
        }
        _ => InsertError::Db(e),
    })?;
    Ok(row)
}

/// SQLSTATE of the quota guard in [`insert`].
const DIVISION_BY_ZERO: &str = "22012";

/// Adds `n` to the environment's token count if the result stays within `limit`. Returns false
/// (and changes nothing) otherwise. The row lock it takes serialises concurrent reservations.
pub async fn reserve(
    tx: &mut PgConnection,
    env: Uuid,
    n: i64,
    limit: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query_scalar!(
        r#"insert into environment_usage as u (environment_id, token_count)
           select $1::uuid, $2::bigint where $2::bigint <= $3::bigint
           on conflict (environment_id) do update
               set token_count = u.token_count + excluded.token_count
               where u.token_count + excluded.token_count <= $3::bigint
           returning token_count"#,
        env,
        n,
        limit,
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(updated.is_some())
}

pub async fn get(pool: &PgPool, env: Uuid, id: Uuid) -> Result<Option<TokenRow>, sqlx::Error> {
    sqlx::query_as!(
        TokenRow,
        r#"select environment_id, id, serial_number, type as token_type, otp_length,
                  hash_algorithm, counter, time_step, drift, status, user_id,
                  created_at, updated_at
           from oath_tokens
           where environment_id = $1 and id = $2"#,
        env,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// One page in id order (ids are time-ordered UUIDv7), after `after`, at most `limit` rows.
pub async fn list(
    pool: &PgPool,
    env: Uuid,
    serial_number: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as!(
        TokenRow,
        r#"select environment_id, id, serial_number, type as token_type, otp_length,
                  hash_algorithm, counter, time_step, drift, status, user_id,
                  created_at, updated_at
           from oath_tokens
           where environment_id = $1
             and ($2::text is null or serial_number = $2)
             and ($3::uuid is null or id > $3)
           order by id
           limit $4"#,
        env,
        serial_number,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Deletes a token (paired or not) and releases its quota. False when there was none.
pub async fn delete(pool: &PgPool, env: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query!(
        "delete from oath_tokens where environment_id = $1 and id = $2",
        env,
        id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted > 0 {
        sqlx::query!(
            "update environment_usage set token_count = token_count - $2
             where environment_id = $1",
            env,
            deleted as i64,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(deleted > 0)
}
