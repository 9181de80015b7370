//! `oath_tokens`: insert under the quota, read, list by keyset (all, by serial, by user), enable
//! or disable, unlock, delete.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::batch::TokenBatch;
use super::copy::CopyRows;
use super::otp::LockoutRule;
use super::{decode, events, quota};
use crate::crypto::Sealed;
use crate::domain::event::{EventType, Origin};
use crate::domain::{HashAlgorithm, NewToken, OtpLength, TokenKind, TokenStatus, TokenType};

/// The unique constraint that decides duplicate serials (see the migration).
pub const SERIAL_UNIQUE_CONSTRAINT: &str = "oath_tokens_serial_number_key";

/// A token as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub serial_number: String,
    pub kind: TokenKind,
    /// TOTP: the clock offset in time steps.
    pub drift: i32,
    pub otp_length: OtpLength,
    pub hash_algorithm: HashAlgorithm,
    pub status: TokenStatus,
    pub user_id: Option<String>,
    /// False: every check answers DISABLED, and resync and pairing are refused.
    pub enabled: bool,
    /// Consecutive failed checks.
    pub failed_attempts: i32,
    /// Lockout policy `throttle`: checks are refused until then.
    pub locked_until: Option<DateTime<Utc>>,
    /// The last check the token passed.
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of `oath_tokens` as read (every query lists them with [`token_query!`]).
pub(crate) struct TokenRecord {
    pub(crate) environment_id: Uuid,
    pub(crate) id: Uuid,
    pub(crate) serial_number: String,
    pub(crate) token_type: String,
    pub(crate) otp_length: i16,
    pub(crate) hash_algorithm: String,
    pub(crate) counter: Option<i64>,
    pub(crate) time_step: Option<i32>,
    pub(crate) drift: i32,
    pub(crate) status: String,
    pub(crate) user_id: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) fail_count: i32,
    pub(crate) locked_until: Option<DateTime<Utc>>,
    pub(crate) last_used_at: Option<DateTime<Utc>>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl TokenRecord {
    /// The one conversion of a token row: a value no token can have is an error.
    pub(crate) fn into_token(self) -> Result<Token, sqlx::Error> {
        let invalid = |what: &str| {
            sqlx::Error::Decode(format!("token {} has an invalid {what}", self.id).into())
        };
        let kind = match (
            decode(&self.token_type, TokenType::parse, "token type")?,
            self.counter,
            self.time_step,
        ) {
            (TokenType::Hotp, Some(counter), None) => TokenKind::Hotp { counter },
            (TokenType::Totp, None, Some(time_step)) => TokenKind::Totp { time_step },
            _ => return Err(invalid("moving factor")),
        };
        Ok(Token {
            environment_id: self.environment_id,
            id: self.id,
            otp_length: u64::try_from(self.otp_length)
                .ok()
                .and_then(OtpLength::new)
                .ok_or_else(|| invalid("otp length"))?,
            hash_algorithm: decode(&self.hash_algorithm, HashAlgorithm::parse, "hash algorithm")?,
            status: decode(&self.status, TokenStatus::parse, "token status")?,
            serial_number: self.serial_number,
            kind,
            drift: self.drift,
            user_id: self.user_id,
            enabled: self.enabled,
            failed_attempts: self.fail_count,
            locked_until: self.locked_until,
            last_used_at: self.last_used_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// `query_as!` into [`TokenRecord`] with the token column list between `$before` and `$after`.
/// The list marks every column that cannot be null, so that it also reads a CTE's rows.
macro_rules! token_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            $crate::store::tokens::TokenRecord,
            $before
                + r#"environment_id as "environment_id!", id as "id!",
                     serial_number as "serial_number!", type as "token_type!",
                     otp_length as "otp_length!", hash_algorithm as "hash_algorithm!", counter,
                     time_step, drift as "drift!", status as "status!", user_id,
                     enabled as "enabled!", fail_count as "fail_count!", locked_until,
                     last_used_at, created_at as "created_at!", updated_at as "updated_at!""#
                + $after
            $(, $arg)*
        )
    };
}
pub(crate) use token_query;

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("serial number already exists in the environment")]
    Duplicate,
    #[error("the environment's token limit is reached")]
    LimitExceeded,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The transaction that was to commit this insert with others failed.
    #[error("{0}")]
    Shared(std::sync::Arc<sqlx::Error>),
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
    origin: &Origin,
) -> Result<Token, InsertError> {
    let (counter, time_step) = match token.kind {
        TokenKind::Hotp { counter } => (Some(counter), None),
        TokenKind::Totp { time_step } => (None, Some(time_step)),
    };
    // The token first, then the quota row (the order job chunks take them in, so the two never
    // deadlock). Past the limit, the quota's constraint fails the statement, which undoes the
    // insert.
    let row = token_query!(
        r#"with token as (
               insert into oath_tokens
                   (environment_id, id, serial_number, type, otp_length, hash_algorithm,
                    counter, time_step, secret_ciphertext, secret_key_id)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               returning *
           ), usage as (
               insert into environment_usage as u (environment_id, token_count, token_limit)
               select environment_id, 1, $11::bigint from token
               on conflict (environment_id) do update
                   set token_count = u.token_count + 1, token_limit = excluded.token_limit
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select environment_id, 'OATH_TOKEN.CREATED', $12, $13, id, serial_number
               from token
           )
           select "#,
        " from token",
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
        origin.actor,
        origin.request_id,
    )
    .fetch_one(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(SERIAL_UNIQUE_CONSTRAINT) => {
            InsertError::Duplicate
        }
        e if quota::is_exceeded(e) => InsertError::LimitExceeded,
        _ => InsertError::Db(e),
    })?;
    Ok(row.into_token()?)
}

/// Inserts the tokens of `chunk` at `positions` (first occurrences of their serials) that are
/// new, and counts them in the quota, in one statement and its own transaction: the tokens first
/// (in serial order, as [`insert_new_from_chunk`] takes them), then the quota row, the order every
/// write takes them in. Returns the rows written; a serial that exists already is skipped. Fails
/// on the quota's constraint when the new tokens do not all fit: then nothing is written.
///
/// Each token written has its `OATH_TOKEN.CREATED` event, of `origins` (one per token of the
/// chunk), in the same statement.
pub async fn insert_new_counted(
    pool: &PgPool,
    env: Uuid,
    chunk: &TokenBatch,
    positions: &[usize],
    limit: i64,
    origins: &[Origin],
) -> Result<Vec<Token>, sqlx::Error> {
    token_query!(
        r#"with token as (
               insert into oath_tokens
                   (environment_id, id, serial_number, type, otp_length, hash_algorithm,
                    counter, time_step, drift, secret_ciphertext, secret_key_id)
               select $1, t.* from unnest($2::uuid[], $3::text[], $4::text[], $5::int2[],
                   $6::text[], $7::int8[], $8::int4[], $9::int4[], $10::bytea[], $11::text[])
                   as t(id, serial_number, type, otp_length, hash_algorithm, counter, time_step,
                        drift, secret_ciphertext, secret_key_id)
               order by t.serial_number
               on conflict (environment_id, serial_number) do nothing
               returning *
           ), usage as (
               insert into environment_usage as u (environment_id, token_count, token_limit)
               select $1, count(*), $12::bigint from token having count(*) > 0
               on conflict (environment_id) do update
                   set token_count = u.token_count + excluded.token_count,
                       token_limit = excluded.token_limit
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select $1, 'OATH_TOKEN.CREATED', o.actor, o.request_id, t.id, t.serial_number
               from token t
               join unnest($13::uuid[], $14::text[], $15::text[]) o(id, actor, request_id)
                   on o.id = t.id
               order by t.id
           )
           select "#,
        " from token",
        env,
        &pick(positions, |i| chunk.token_ids[i]),
        &pick(positions, |i| chunk.serial_numbers[i].as_str()) as &[&str],
        &pick(positions, |i| chunk.token_types[i].as_str()) as &[&str],
        &pick(positions, |i| chunk.otp_lengths[i]),
        &pick(positions, |i| chunk.hash_algorithms[i].as_str()) as &[&str],
        &pick(positions, |i| chunk.counters[i]) as &[Option<i64>],
        &pick(positions, |i| chunk.time_steps[i]) as &[Option<i32>],
        &pick(positions, |i| chunk.drifts[i]),
        &pick(positions, |i| chunk.secret_ciphertexts[i].as_slice()) as &[&[u8]],
        &pick(positions, |i| chunk.secret_key_ids[i].as_str()) as &[&str],
        limit,
        &pick(positions, |i| chunk.token_ids[i]),
        &pick(positions, |i| origins[i].actor.as_str()) as &[&str],
        &pick(positions, |i| origins[i].request_id.as_deref()) as &[Option<&str>],
    )
    .fetch_all(pool)
    .await
    .and_then(into_tokens)
}

/// Token rows as tokens: an error if any row holds a value no token can have.
fn into_tokens(records: Vec<TokenRecord>) -> Result<Vec<Token>, sqlx::Error> {
    records.into_iter().map(TokenRecord::into_token).collect()
}

/// The values `f` gives for `positions`, in their order: a column of some of a chunk's tokens.
fn pick<T>(positions: &[usize], f: impl Fn(usize) -> T) -> Vec<T> {
    positions.iter().map(|&i| f(i)).collect()
}

/// The tokens of `ids` in the environment, in no particular order.
pub async fn get_many(
    tx: &mut PgConnection,
    env: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Token>, sqlx::Error> {
    token_query!(
        "select ",
        " from oath_tokens where environment_id = $1 and id = any($2)",
        env,
        ids,
    )
    .fetch_all(&mut *tx)
    .await
    .and_then(into_tokens)
}

pub async fn get(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<Token>, sqlx::Error> {
    token_query!(
        "select ",
        " from oath_tokens where environment_id = $1 and id = $2",
        env,
        id,
    )
    .fetch_optional(db)
    .await?
    .map(TokenRecord::into_token)
    .transpose()
}

/// One page in id order (ids are time-ordered UUIDv7), after `after`, at most `limit` rows.
pub async fn list(
    pool: &PgPool,
    env: Uuid,
    serial_number: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Token>, sqlx::Error> {
    token_query!(
        "select ",
        " from oath_tokens where environment_id = $1 \
         and ($2::text is null or serial_number = $2) and ($3::uuid is null or id > $3) \
         order by id limit $4",
        env,
        serial_number,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
    .and_then(into_tokens)
}

/// One page of the tokens paired to `user`, in id order, after `after`: a range of the index on
/// (environment, user, id).
pub async fn list_by_user(
    pool: &PgPool,
    env: Uuid,
    user: &str,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Token>, sqlx::Error> {
    token_query!(
        "select ",
        " from oath_tokens where environment_id = $1 and user_id = $2 \
         and ($3::uuid is null or id > $3) order by id limit $4",
        env,
        user,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
    .and_then(into_tokens)
}

/// Enables or disables a token; a change records `OATH_TOKEN.ENABLED` or `DISABLED`. None when
/// there is no such token.
pub async fn set_enabled(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    enabled: bool,
    origin: &Origin,
) -> Result<Option<Token>, sqlx::Error> {
    // The row as locked (its latest version), to tell a change from none.
    token_query!(
        r#"with old as (
               select id, enabled as was from oath_tokens
               where environment_id = $1 and id = $2 for update
           ), t as (
               update oath_tokens t set enabled = $3, updated_at = now()
               from old where t.environment_id = $1 and t.id = old.id
               returning t.*, old.was
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select $1, case when $3 then 'OATH_TOKEN.ENABLED' else 'OATH_TOKEN.DISABLED' end,
                      $4, $5, id, serial_number
               from t where was <> $3
           )
           select "#,
        " from t",
        env,
        id,
        enabled,
        origin.actor,
        origin.request_id,
    )
    .fetch_optional(pool)
    .await?
    .map(TokenRecord::into_token)
    .transpose()
}

/// Clears a token's failed attempts and lock, whichever the lockout policy; records
/// `OATH_TOKEN.UNLOCKED` when the token was locked under `rule`. None when there is no such
/// token.
pub async fn unlock(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    rule: LockoutRule,
    origin: &Origin,
) -> Result<Option<Token>, sqlx::Error> {
    token_query!(
        r#"with old as (
               select id,
                      case when $3 then coalesce(locked_until > now(), false)
                           else fail_count >= $4::bigint end as was_locked
               from oath_tokens where environment_id = $1 and id = $2 for update
           ), t as (
               update oath_tokens t set fail_count = 0, locked_until = null, updated_at = now()
               from old where t.environment_id = $1 and t.id = old.id
               returning t.*, old.was_locked
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select $1, 'OATH_TOKEN.UNLOCKED', $5, $6, id, serial_number
               from t where was_locked
           )
           select "#,
        " from t",
        env,
        id,
        rule.throttle,
        i64::from(rule.max_failures),
        origin.actor,
        origin.request_id,
    )
    .fetch_optional(pool)
    .await?
    .map(TokenRecord::into_token)
    .transpose()
}

/// Deletes a token (paired or not), releases its quota and records `OATH_TOKEN.DELETED`. False
/// when there was none.
pub async fn delete(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query_scalar!(
        "delete from oath_tokens where environment_id = $1 and id = $2 returning serial_number",
        env,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(serial) = deleted else {
        return Ok(false);
    };
    quota::release(&mut tx, env, 1).await?;
    events::record(
        &mut *tx,
        env,
        EventType::TokenDeleted,
        origin,
        id,
        Some(&serial),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Writes the chunk's tokens at `positions` (the first occurrence of each serial) and returns
/// the positions written: all of them, except serials the environment already has.
///
/// Optimistically COPYs them all: in a first import no serial exists yet. If one does (an earlier
/// chunk, another job, a single create), the COPY fails on the unique constraint; then it rolls
/// back to a savepoint, looks the existing serials up, and COPYs the rest. A concurrent insert
/// after that lookup fails the chunk, which is retried and then sees it.
pub async fn insert_new_from_chunk(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &TokenBatch,
    positions: Vec<usize>,
) -> Result<Vec<usize>, sqlx::Error> {
    sqlx::query("savepoint chunk_copy")
        .execute(&mut *tx)
        .await?;
    let mut new = positions.clone();
    match copy_from_chunk(tx, env, chunk, &mut new).await {
        Ok(()) => return Ok(new),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {}
        Err(e) => return Err(e),
    }
    sqlx::query("rollback to savepoint chunk_copy")
        .execute(&mut *tx)
        .await?;
    let existing: HashSet<String> = sqlx::query_scalar!(
        // A join on the unique index, one probe per serial, whatever the statistics say.
        r#"select t.serial_number from unnest($2::text[]) s(serial)
           join oath_tokens t on t.environment_id = $1 and t.serial_number = s.serial"#,
        env,
        &chunk.serial_numbers,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut new: Vec<usize> = positions
        .into_iter()
        .filter(|&i| !existing.contains(&chunk.serial_numbers[i]))
        .collect();
    copy_from_chunk(tx, env, chunk, &mut new).await?;
    Ok(new)
}

/// COPYs the chunk's tokens at `positions` (sorted here by serial, so that concurrent jobs take
/// unique-index locks in one order) into `oath_tokens`.
async fn copy_from_chunk(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &TokenBatch,
    positions: &mut [usize],
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    positions.sort_unstable_by(|&a, &b| chunk.serial_numbers[a].cmp(&chunk.serial_numbers[b]));
    let mut rows = CopyRows::with_capacity(positions.len() * 200);
    for &i in positions.iter() {
        rows.plain(env)
            .plain(chunk.token_ids[i])
            .text(&chunk.serial_numbers[i])
            .text(chunk.token_types[i].as_str())
            .plain(chunk.otp_lengths[i])
            .text(chunk.hash_algorithms[i].as_str())
            .opt(chunk.counters[i])
            .opt(chunk.time_steps[i])
            .plain(chunk.drifts[i])
            .bytea(&chunk.secret_ciphertexts[i])
            .text(&chunk.secret_key_ids[i])
            .end_row();
    }
    rows.send(
        tx,
        "oath_tokens (environment_id, id, serial_number, type, otp_length, hash_algorithm, \
         counter, time_step, drift, secret_ciphertext, secret_key_id)",
    )
    .await?;
    Ok(())
}

/// Deletes tokens just written (those past the quota) in the writing transaction.
pub async fn delete_written(
    tx: &mut PgConnection,
    env: Uuid,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from oath_tokens where environment_id = $1 and id = any($2)",
        env,
        ids,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Revokes the tokens of `ids` (paired ones only with `force_unpair`: deleting a paired token
/// unpairs it) and releases their quota. Returns the revoked ids with their serials, and the
/// paired ids left alone.
pub async fn revoke(
    tx: &mut PgConnection,
    env: Uuid,
    ids: &[Uuid],
    force_unpair: bool,
) -> Result<(HashMap<Uuid, String>, HashSet<Uuid>), sqlx::Error> {
    let revoked: HashMap<Uuid, String> = sqlx::query!(
        r#"delete from oath_tokens t using unnest($2::uuid[]) u(id)
           where t.environment_id = $1 and t.id = u.id and ($3 or t.status <> 'PAIRED')
           returning t.id, t.serial_number"#,
        env,
        ids,
        force_unpair,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.id, r.serial_number))
    .collect();
    // Only ids that were not revoked can be paired tokens left alone.
    let remaining: Vec<Uuid> = ids
        .iter()
        .filter(|id| !revoked.contains_key(id))
        .copied()
        .collect();
    let paired: HashSet<Uuid> = if force_unpair || remaining.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar!(
            "select id from oath_tokens where environment_id = $1 and id = any($2) and status = 'PAIRED'",
            env,
            &remaining,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    if !revoked.is_empty() {
        quota::release(tx, env, revoked.len() as i64).await?;
    }
    Ok((revoked, paired))
}
