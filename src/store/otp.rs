//! The OTP state of `oath_tokens`: the moving factor (`counter`, or `drift` and `last_time_step`),
//! the consecutive-failure count, and the pairing.
//!
//! Validation reads the row without a lock and then applies its result with one conditional
//! `UPDATE` ([`accept`]), which Postgres re-evaluates on the latest row version when concurrent
//! updates queue on the row lock: of several validations of one code, exactly one finds the
//! condition still true. Resync and pairing, which are rare, lock the row for a short transaction
//! ([`get_for_update`], then [`apply`]).

use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::UserId;
use crate::otp::Advance;
use crate::store::tokens::TokenRow;

/// What a check needs: the token's parameters, moving factor, failures and sealed secret.
#[derive(Debug)]
pub struct OtpRow {
    pub otp_length: i16,
    pub hash_algorithm: String,
    pub counter: Option<i64>,
    pub time_step: Option<i32>,
    pub drift: i32,
    pub last_time_step: Option<i64>,
    pub fail_count: i32,
    pub status: String,
    pub secret_ciphertext: Vec<u8>,
    pub secret_key_id: String,
}

pub async fn get(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<OtpRow>, sqlx::Error> {
    sqlx::query_as!(
        OtpRow,
        r#"select otp_length, hash_algorithm, counter, time_step, drift,
                  last_time_step, fail_count, status, secret_ciphertext, secret_key_id
           from oath_tokens
           where environment_id = $1 and id = $2"#,
        env,
        id,
    )
    .fetch_optional(db)
    .await
}

/// As [`get`], holding the row lock until the transaction ends.
pub async fn get_for_update(
    tx: &mut Transaction<'_, Postgres>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<OtpRow>, sqlx::Error> {
    sqlx::query_as!(
        OtpRow,
        r#"select otp_length, hash_algorithm, counter, time_step, drift,
                  last_time_step, fail_count, status, secret_ciphertext, secret_key_id
           from oath_tokens
           where environment_id = $1 and id = $2
           for update"#,
        env,
        id,
    )
    .fetch_optional(&mut **tx)
    .await
}

/// Applies a successful check unless, since the row was read, the codes were consumed (the
/// counter moved past them, or a step at or after them was accepted) or the token was locked.
/// Clears the failure count. False when the condition no longer held.
pub async fn accept(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
    advance: Advance,
    max_failures: u32,
) -> Result<bool, sqlx::Error> {
    let max_failures = i64::from(max_failures);
    let updated = match advance {
        Advance::Hotp { last } => {
            sqlx::query!(
                r#"update oath_tokens
                   set counter = $3 + 1, fail_count = 0, updated_at = now()
                   where environment_id = $1 and id = $2
                     and counter <= $3 and fail_count < $4::bigint"#,
                env,
                id,
                counter_value(last),
                max_failures,
            )
            .execute(db)
            .await?
        }
        Advance::Totp { step, drift } => {
            sqlx::query!(
                r#"update oath_tokens
                   set last_time_step = $3, drift = $4, fail_count = 0, updated_at = now()
                   where environment_id = $1 and id = $2 and time_step is not null
                     and (last_time_step is null or last_time_step < $3)
                     and fail_count < $5::bigint"#,
                env,
                id,
                counter_value(step),
                drift,
                max_failures,
            )
            .execute(db)
            .await?
        }
    };
    Ok(updated.rows_affected() == 1)
}

/// Counts one failed check, up to `max_failures`. Returns the new count, or `None` when the token
/// was already locked (or is gone).
pub async fn record_failure(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
    max_failures: u32,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"update oath_tokens set fail_count = fail_count + 1
           where environment_id = $1 and id = $2 and fail_count < $3::bigint
           returning fail_count"#,
        env,
        id,
        i64::from(max_failures),
    )
    .fetch_optional(db)
    .await
}

/// Stores a new moving factor on a row locked by [`get_for_update`], clears the failure count
/// (unlocking the token), and pairs the token with `pair_with` when given.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    env: Uuid,
    id: Uuid,
    advance: Advance,
    pair_with: Option<&UserId>,
) -> Result<TokenRow, sqlx::Error> {
    let (next_counter, step, drift) = match advance {
        Advance::Hotp { last } => (Some(counter_value(last) + 1), None, None),
        Advance::Totp { step, drift } => (None, Some(counter_value(step)), Some(drift)),
    };
    sqlx::query_as!(
        TokenRow,
        r#"update oath_tokens
           set counter = coalesce($3, counter),
               last_time_step = coalesce($4, last_time_step),
               drift = coalesce($5, drift),
               fail_count = 0,
               status = case when $6::text is null then status else 'PAIRED' end,
               user_id = coalesce($6, user_id),
               updated_at = now()
           where environment_id = $1 and id = $2
           returning environment_id, id, serial_number, type as token_type, otp_length,
                     hash_algorithm, counter, time_step, drift, status, user_id,
                     created_at, updated_at"#,
        env,
        id,
        next_counter,
        step,
        drift,
        pair_with.map(UserId::as_str),
    )
    .fetch_one(&mut **tx)
    .await
}

/// Unpairs a token. `None` when there is no such token; unpairing an unpaired token changes
/// nothing and is not an error.
pub async fn unpair(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<bool>, sqlx::Error> {
    // One statement: the update touches only a paired row; the outer select sees the token either
    // way, so "not found" and "was not paired" are told apart without a second round trip.
    let row = sqlx::query!(
        r#"with unpaired as (
               update oath_tokens set status = 'AVAILABLE', user_id = null, updated_at = now()
               where environment_id = $1 and id = $2 and status = 'PAIRED'
               returning id
           )
           select exists(select 1 from unpaired) as "was_paired!"
           from oath_tokens
           where environment_id = $1 and id = $2"#,
        env,
        id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.was_paired))
}

/// Counters and time steps come from the engine, which never produces one above `MAX_COUNTER`.
fn counter_value(n: u64) -> i64 {
    i64::try_from(n).expect("the engine bounds counters and steps to i64")
}
