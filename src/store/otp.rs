//! The OTP state of `oath_tokens`: the moving factor (`counter`, or `drift` and `last_time_step`),
//! the consecutive-failure count and lock, whether the token is enabled, and the pairing.
//!
//! Validation reads the row without a lock and then applies its result with one conditional
//! `UPDATE` ([`accept`]), which Postgres re-evaluates on the latest row version when concurrent
//! updates queue on the row lock: of several validations of one code, exactly one finds the
//! condition still true. A validation may skip the read when it knows the moving factor the row
//! had (`seen`): its `UPDATE` then also requires the row to have that factor still, so that it
//! writes only what a read would have decided. Resync and pairing, which are rare, lock the row
//! for a short transaction ([`get_for_update`], then [`apply`]).
//!
//! Both writes of a check also require the token to be enabled and not locked under the
//! [`LockoutRule`], judged by the database's clock on the row as it is when the write runs: of
//! checks sent in the same instant once a throttle delay is over, the first failure written
//! starts the next delay and every other one finds the row locked and writes nothing.

use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::decode;
use super::tokens::{token_query, Token};
use crate::crypto::Sealed;
use crate::domain::event::{EventType, Origin};
use crate::domain::{HashAlgorithm, OtpLength, TokenStatus, UserId};
use crate::otp::{Advance, MovingFactor};

/// What a check needs of a token: its parameters and moving factor as the engine takes them,
/// its failures and pairing, and its sealed secret.
pub struct OtpState {
    pub otp_length: OtpLength,
    pub hash_algorithm: HashAlgorithm,
    pub factor: MovingFactor,
    pub fail_count: i32,
    /// Lockout policy `throttle`: whole seconds (rounded up) until checks are accepted again,
    /// by the database's clock; zero or less when not throttled.
    pub throttled_for: Option<i64>,
    pub enabled: bool,
    pub status: TokenStatus,
    pub secret: Sealed,
}

/// What the statements of a check need of the lockout policy: after `max_failures` consecutive
/// failures a token is locked (until a resync or an unlock) or, when `throttle`, refuses checks
/// for `base_seconds`, doubled with each further failure up to `max_seconds`.
#[derive(Clone, Copy, Debug)]
pub struct LockoutRule {
    pub throttle: bool,
    pub max_failures: u32,
    pub base_seconds: u32,
    pub max_seconds: u32,
}

/// The OTP columns of `oath_tokens` as read.
struct OtpRecord {
    otp_length: i16,
    hash_algorithm: String,
    counter: Option<i64>,
    time_step: Option<i32>,
    drift: i32,
    last_time_step: Option<i64>,
    fail_count: i32,
    locked_for: Option<i64>,
    enabled: bool,
    status: String,
    secret_ciphertext: Vec<u8>,
    secret_key_id: String,
}

impl OtpRecord {
    /// The one conversion of a token's OTP state: a value no token can have is an error.
    fn into_state(self, id: Uuid) -> Result<OtpState, sqlx::Error> {
        let invalid =
            |what: &str| sqlx::Error::Decode(format!("token {id} has an invalid {what}").into());
        let factor = match (self.counter, self.time_step) {
            (Some(counter), None) => MovingFactor::Hotp {
                counter: u64::try_from(counter).map_err(|_| invalid("counter"))?,
            },
            (None, Some(time_step)) => MovingFactor::Totp {
                time_step: u32::try_from(time_step)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid("time step"))?,
                drift: self.drift,
                last_step: self
                    .last_time_step
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| invalid("last time step"))?,
            },
            _ => return Err(invalid("moving factor")),
        };
        Ok(OtpState {
            otp_length: u64::try_from(self.otp_length)
                .ok()
                .and_then(OtpLength::new)
                .ok_or_else(|| invalid("otp length"))?,
            hash_algorithm: decode(&self.hash_algorithm, HashAlgorithm::parse, "hash algorithm")?,
            factor,
            fail_count: self.fail_count,
            throttled_for: self.locked_for,
            enabled: self.enabled,
            status: decode(&self.status, TokenStatus::parse, "token status")?,
            secret: Sealed {
                key_id: self.secret_key_id,
                ciphertext: self.secret_ciphertext,
            },
        })
    }
}

/// `query_as!` into [`OtpRecord`] of one token, with `$lock` after the condition.
macro_rules! otp_query {
    ($lock:tt, $env:expr, $id:expr) => {
        sqlx::query_as!(
            OtpRecord,
            "select otp_length, hash_algorithm, counter, time_step, drift, last_time_step, \
             fail_count, ceil(extract(epoch from locked_until - now()))::int8 as locked_for, \
             enabled, status, secret_ciphertext, secret_key_id \
             from oath_tokens where environment_id = $1 and id = $2"
                + $lock,
            $env,
            $id,
        )
    };
}

pub async fn get(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<OtpState>, sqlx::Error> {
    otp_query!("", env, id)
        .fetch_optional(db)
        .await?
        .map(|r| r.into_state(id))
        .transpose()
}

/// As [`get`], holding the row lock until the transaction ends.
pub async fn get_for_update(
    tx: &mut Transaction<'_, Postgres>,
    env: Uuid,
    id: Uuid,
) -> Result<Option<OtpState>, sqlx::Error> {
    otp_query!(" for update", env, id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.into_state(id))
        .transpose()
}

/// Applies a successful check unless, since the row was read, the codes were consumed (the
/// counter moved past them, or a step at or after them was accepted), the token was disabled or
/// locked, or, when the check was made against a factor `seen` earlier instead of a read, the
/// row no longer has that factor. Clears the failures and the lock, and records the use. False
/// when the condition no longer held.
pub async fn accept(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
    advance: Advance,
    rule: LockoutRule,
    seen: Option<&MovingFactor>,
) -> Result<bool, sqlx::Error> {
    let max_failures = i64::from(rule.max_failures);
    let seen = SeenFactor::of(seen);
    let updated = match advance {
        Advance::Hotp { last } => {
            sqlx::query!(
                r#"update oath_tokens
                   set counter = $3 + 1, fail_count = 0, locked_until = null,
                       last_used_at = now(), updated_at = now()
                   where environment_id = $1 and id = $2
                     and counter <= $3 and enabled
                     and case when $6 then locked_until is null or locked_until <= now()
                              else fail_count < $4::bigint end
                     and ($5::bigint is null or counter = $5)"#,
                env,
                id,
                counter_value(last),
                max_failures,
                seen.counter,
                rule.throttle,
            )
            .execute(db)
            .await?
        }
        Advance::Totp { step, drift } => {
            sqlx::query!(
                r#"update oath_tokens
                   set last_time_step = $3, drift = $4, fail_count = 0, locked_until = null,
                       last_used_at = now(), updated_at = now()
                   where environment_id = $1 and id = $2 and time_step is not null
                     and (last_time_step is null or last_time_step < $3)
                     and enabled
                     and case when $8 then locked_until is null or locked_until <= now()
                              else fail_count < $5::bigint end
                     and ($6::int4 is null
                          or (drift = $6 and last_time_step is not distinct from $7::bigint))"#,
                env,
                id,
                counter_value(step),
                drift,
                max_failures,
                seen.drift,
                seen.last_step,
                rule.throttle,
            )
            .execute(db)
            .await?
        }
    };
    Ok(updated.rows_affected() == 1)
}

/// Counts one failed check: under `lock`, up to `max_failures`; under `throttle`, from the
/// `max_failures`th failure on, also refuses checks for a delay that doubles with each failure
/// (the exponent is capped so that the arithmetic stays finite; the delay is capped anyway).
/// Returns the new count, or `None` when the token was already locked, disabled or gone, or no
/// longer has the factor `seen` the check was made against.
///
/// The failure that locks the token (under `lock`, the `max_failures`th; under `throttle`, each
/// that starts a delay) records `OATH_TOKEN.LOCKED` of `origin` in the same statement: a check
/// stays one round trip, and one that locks nothing writes no event.
pub async fn record_failure(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
    rule: LockoutRule,
    seen: Option<&MovingFactor>,
    origin: &Origin,
) -> Result<Option<i32>, sqlx::Error> {
    let seen = SeenFactor::of(seen);
    let max_failures = i64::from(rule.max_failures);
    // One statement per policy: the default `lock` is the hot path of a guessed code and pays
    // for no throttle arithmetic. The failure that locks the token writes its event.
    if !rule.throttle {
        return sqlx::query_scalar!(
            r#"with f as (
                   update oath_tokens
                   set fail_count = fail_count + 1
                   where environment_id = $1 and id = $2 and enabled and fail_count < $3::bigint
                     and ($4::bigint is null or counter = $4)
                     and ($5::int4 is null
                          or (drift = $5 and last_time_step is not distinct from $6::bigint))
                   returning id, serial_number, fail_count
               ), event as (
                   insert into events
                       (environment_id, type, actor, request_id, resource_id, serial_number)
                   select $1, 'OATH_TOKEN.LOCKED', $7, $8, id, serial_number from f
                   where fail_count = $3::bigint
               )
               select fail_count as "fail_count!" from f"#,
            env,
            id,
            max_failures,
            seen.counter,
            seen.drift,
            seen.last_step,
            origin.actor,
            origin.request_id,
        )
        .fetch_optional(db)
        .await;
    }
    sqlx::query_scalar!(
        r#"with f as (
               update oath_tokens
               set fail_count = fail_count + 1,
                   locked_until = case
                       when fail_count + 1 >= $3::bigint
                       then now() + make_interval(secs => least(
                           $7::float8 * power(2::float8, least(fail_count + 1 - $3::bigint, 30)),
                           $8::float8))
                       else locked_until end
               where environment_id = $1 and id = $2 and enabled
                 and (locked_until is null or locked_until <= now())
                 and ($4::bigint is null or counter = $4)
                 and ($5::int4 is null
                      or (drift = $5 and last_time_step is not distinct from $6::bigint))
               returning id, serial_number, fail_count
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select $1, 'OATH_TOKEN.LOCKED', $9, $10, id, serial_number from f
               where fail_count >= $3::bigint
           )
           select fail_count as "fail_count!" from f"#,
        env,
        id,
        max_failures,
        seen.counter,
        seen.drift,
        seen.last_step,
        f64::from(rule.base_seconds),
        f64::from(rule.max_seconds),
        origin.actor,
        origin.request_id,
    )
    .fetch_optional(db)
    .await
}

/// A factor seen earlier as the statements above compare it: the counter of a HOTP token, the
/// drift and last step of a TOTP token; all null when none was seen.
#[derive(Default)]
struct SeenFactor {
    counter: Option<i64>,
    drift: Option<i32>,
    last_step: Option<i64>,
}

impl SeenFactor {
    fn of(seen: Option<&MovingFactor>) -> Self {
        match seen {
            None => Self::default(),
            Some(MovingFactor::Hotp { counter }) => Self {
                counter: Some(counter_value(*counter)),
                ..Self::default()
            },
            Some(MovingFactor::Totp {
                drift, last_step, ..
            }) => Self {
                drift: Some(*drift),
                last_step: last_step.map(counter_value),
                ..Self::default()
            },
        }
    }
}

/// Stores a new moving factor on a row locked by [`get_for_update`], clears the failures and
/// the lock, records the use, pairs the token with `pair_with` when given, and records the
/// `events` of the change.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    env: Uuid,
    id: Uuid,
    advance: Advance,
    pair_with: Option<&UserId>,
    events: &[EventType],
    origin: &Origin,
) -> Result<Token, sqlx::Error> {
    let (next_counter, step, drift) = match advance {
        Advance::Hotp { last } => (Some(counter_value(last) + 1), None, None),
        Advance::Totp { step, drift } => (None, Some(counter_value(step)), Some(drift)),
    };
    let token = token_query!(
        r#"update oath_tokens
           set counter = coalesce($3, counter),
               last_time_step = coalesce($4, last_time_step),
               drift = coalesce($5, drift),
               fail_count = 0,
               locked_until = null,
               last_used_at = now(),
               status = case when $6::text is null then status else 'PAIRED' end,
               user_id = coalesce($6, user_id),
               updated_at = now()
           where environment_id = $1 and id = $2
           returning "#,
        "",
        env,
        id,
        next_counter,
        step,
        drift,
        pair_with.map(UserId::as_str),
    )
    .fetch_one(&mut **tx)
    .await?
    .into_token()?;
    for event in events {
        super::events::record(
            &mut **tx,
            env,
            *event,
            origin,
            id,
            Some(&token.serial_number),
        )
        .await?;
    }
    Ok(token)
}

/// Unpairs a token. `None` when there is no such token; unpairing an unpaired token changes
/// nothing and is not an error.
///
/// Unpairing a paired token records `OATH_TOKEN.UNPAIRED` of `origin`.
pub async fn unpair(
    db: impl PgExecutor<'_>,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<Option<bool>, sqlx::Error> {
    // One statement: the update touches only a paired row; the outer select sees the token either
    // way, so "not found" and "was not paired" are told apart without a second round trip.
    let row = sqlx::query!(
        r#"with unpaired as (
               update oath_tokens set status = 'AVAILABLE', user_id = null, updated_at = now()
               where environment_id = $1 and id = $2 and status = 'PAIRED'
               returning id, serial_number
           ), event as (
               insert into events
                   (environment_id, type, actor, request_id, resource_id, serial_number)
               select $1, 'OATH_TOKEN.UNPAIRED', $3, $4, id, serial_number from unpaired
           )
           select exists(select 1 from unpaired) as "was_paired!"
           from oath_tokens
           where environment_id = $1 and id = $2"#,
        env,
        id,
        origin.actor,
        origin.request_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.was_paired))
}

/// Counters and time steps come from the engine, which never produces one above `MAX_COUNTER`.
fn counter_value(n: u64) -> i64 {
    i64::try_from(n).expect("the engine bounds counters and steps to i64")
}
