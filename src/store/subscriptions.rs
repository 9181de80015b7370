//! `subscriptions`: webhook subscriptions (their header values and signing secret sealed), and
//! where each stands in its environment's events: the delivery cursor, backoff and lease.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::events::Position;
use crate::crypto::Sealed;

/// A subscription as stored, with its secrets still sealed.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub url: String,
    pub header_names: Vec<String>,
    pub headers_ciphertext: Vec<u8>,
    pub headers_key_id: String,
    pub secret_ciphertext: Vec<u8>,
    pub secret_key_id: String,
    /// None: every type.
    pub included_types: Option<Vec<String>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_failure: Option<String>,
    pub dropped: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a create or an update writes.
pub struct NewSubscription<'a> {
    pub name: &'a str,
    pub enabled: bool,
    pub url: &'a str,
    pub header_names: &'a [String],
    pub headers: &'a Sealed,
    pub included_types: Option<&'a [String]>,
}

/// `query_as!` into [`Subscription`] with the column list between `$before` and `$after`.
macro_rules! subscription_query {
    ($before:tt, $after:tt $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            Subscription,
            $before
                + r#"environment_id as "environment_id!", id as "id!", name as "name!",
                     enabled as "enabled!", url as "url!", header_names as "header_names!",
                     headers_ciphertext as "headers_ciphertext!",
                     headers_key_id as "headers_key_id!",
                     secret_ciphertext as "secret_ciphertext!", secret_key_id as "secret_key_id!",
                     included_types, last_success_at, last_failure_at, last_failure,
                     dropped as "dropped!", created_at as "created_at!",
                     updated_at as "updated_at!""#
                + $after
            $(, $arg)*
        )
    };
}

/// Stores a new subscription unless the environment has `max` already (counted under a lock of
/// the environment's subscriptions, so that concurrent creates cannot pass it). None when it has.
/// It receives the events of transactions that begin after it.
pub async fn insert(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    new: &NewSubscription<'_>,
    secret: &Sealed,
    max: u32,
) -> Result<Option<Subscription>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended($1::text, 7354))",
        env.to_string()
    )
    .execute(&mut *tx)
    .await?;
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from subscriptions where environment_id = $1"#,
        env
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= i64::from(max) {
        return Ok(None);
    }
    let row = subscription_query!(
        r#"insert into subscriptions
               (environment_id, id, name, enabled, url, header_names, headers_ciphertext,
                headers_key_id, secret_ciphertext, secret_key_id, included_types, cursor_xid)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, pg_current_xact_id())
           returning "#,
        "",
        env,
        id,
        new.name,
        new.enabled,
        new.url,
        new.header_names,
        &new.headers.ciphertext,
        &new.headers.key_id,
        &secret.ciphertext,
        &secret.key_id,
        new.included_types,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

/// Replaces what a PUT replaces; the signing secret and the delivery state stay. None when
/// there is no such subscription.
pub async fn update(
    pool: &PgPool,
    env: Uuid,
    id: Uuid,
    new: &NewSubscription<'_>,
) -> Result<Option<Subscription>, sqlx::Error> {
    subscription_query!(
        r#"update subscriptions
           set name = $3, enabled = $4, url = $5, header_names = $6, headers_ciphertext = $7,
               headers_key_id = $8, included_types = $9, updated_at = now(),
               -- A changed target is tried at once.
               next_attempt_at = now(), failures = 0
           where environment_id = $1 and id = $2
           returning "#,
        "",
        env,
        id,
        new.name,
        new.enabled,
        new.url,
        new.header_names,
        &new.headers.ciphertext,
        &new.headers.key_id,
        new.included_types,
    )
    .fetch_optional(pool)
    .await
}

pub async fn get(pool: &PgPool, env: Uuid, id: Uuid) -> Result<Option<Subscription>, sqlx::Error> {
    subscription_query!(
        "select ",
        " from subscriptions where environment_id = $1 and id = $2",
        env,
        id
    )
    .fetch_optional(pool)
    .await
}

/// One page in id order after `after`.
pub async fn list(
    pool: &PgPool,
    env: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Subscription>, sqlx::Error> {
    subscription_query!(
        "select ",
        " from subscriptions where environment_id = $1 and ($2::uuid is null or id > $2) \
         order by id limit $3",
        env,
        after,
        limit
    )
    .fetch_all(pool)
    .await
}

pub async fn delete(pool: &PgPool, env: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "delete from subscriptions where environment_id = $1 and id = $2",
        env,
        id
    )
    .execute(pool)
    .await?
    .rows_affected()
        > 0)
}

/// Events of the subscription's types after its cursor (committed ones; those of transactions
/// still running are not yet counted).
pub async fn pending(db: &mut PgConnection, env: Uuid, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select coalesce(sum(coalesce(cardinality(e.token_ids), 1)
                               - case when (e.xid, e.seq) = (s.cursor_xid, s.cursor_seq)
                                      then s.cursor_n else 0 end), 0)::int8 as "pending!"
           from subscriptions s
           join events e on e.environment_id = s.environment_id
                        and (e.xid, e.seq) >= (s.cursor_xid, s.cursor_seq)
                        and (s.included_types is null or e.type = any(s.included_types))
           where s.environment_id = $1 and s.id = $2"#,
        env,
        id
    )
    .fetch_one(db)
    .await
}

/// A subscription a delivery worker holds under claim number `attempt`.
pub struct Claimed {
    pub environment_id: Uuid,
    pub id: Uuid,
    pub attempt: i32,
    pub url: String,
    pub header_names: Vec<String>,
    pub headers: Sealed,
    pub secret: Sealed,
    pub included_types: Option<Vec<String>>,
    /// Consecutive failed deliveries.
    pub failures: i32,
    pub cursor: Position,
}

/// Claims and cursor moves commit without waiting for their WAL flush (`synchronous_commit`
/// off for their statement): a database crash can only lose the latest of them, and then the
/// same events are delivered again, which receivers deduplicate. Deliveries then wait for no
/// flush, nor make the token writes beside them wait for theirs.
///
/// Takes an enabled subscription due for a try (its backoff over) that no worker holds (or
/// whose worker's lease expired), with events after its cursor that readers may see; the one
/// due longest first. Every claim bumps `attempt`, which fences out a previous holder.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let row = sqlx::query!(
        r#"with durability as (select set_config('synchronous_commit', 'off', true))
           update subscriptions s
           set attempt = s.attempt + 1, lease_owner = $1,
               lease_expires_at = now() + make_interval(secs => $2)
           from (select c.environment_id, c.id
                 from subscriptions c
                 where c.enabled and c.next_attempt_at <= now()
                   and (c.lease_expires_at is null or c.lease_expires_at < now())
                   and exists (
                       select 1 from events e
                       where e.environment_id = c.environment_id
                         and e.xid < (select events_horizon())
                         and (e.xid, e.seq) >= (c.cursor_xid, c.cursor_seq)
                         and ((e.xid, e.seq) > (c.cursor_xid, c.cursor_seq)
                              or coalesce(cardinality(e.token_ids), 1) > c.cursor_n))
                 order by c.next_attempt_at
                 limit 1
                 for update of c skip locked) next
           where s.environment_id = next.environment_id and s.id = next.id
             and exists (select from durability)
           returning s.environment_id, s.id, s.attempt, s.url, s.header_names,
                     s.headers_ciphertext, s.headers_key_id, s.secret_ciphertext,
                     s.secret_key_id, s.included_types, s.failures,
                     s.cursor_xid::text::int8 as "cursor_xid!", s.cursor_seq, s.cursor_n"#,
        owner,
        lease.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Claimed {
        environment_id: r.environment_id,
        id: r.id,
        attempt: r.attempt,
        url: r.url,
        header_names: r.header_names,
        headers: Sealed {
            key_id: r.headers_key_id,
            ciphertext: r.headers_ciphertext,
        },
        secret: Sealed {
            key_id: r.secret_key_id,
            ciphertext: r.secret_ciphertext,
        },
        included_types: r.included_types,
        failures: r.failures,
        cursor: Position {
            xid: r.cursor_xid,
            seq: r.cursor_seq,
            n: r.cursor_n,
        },
    }))
}

/// How a claimed delivery ended.
pub enum Outcome<'a> {
    /// Acknowledged (or nothing was to be sent): the cursor moves to `cursor`.
    Delivered,
    /// Not acknowledged: tried again after the backoff; the cursor moves only past what was
    /// not to be sent.
    Failed {
        reason: &'a str,
        retry_after: Duration,
    },
}

/// Ends a claim: moves the cursor to `cursor`, counts `dropped` events, records the outcome and
/// gives the subscription back. Fenced: false when another worker has claimed it since.
pub async fn finish(
    pool: &PgPool,
    claimed: &Claimed,
    cursor: Position,
    dropped: i64,
    outcome: Outcome<'_>,
) -> Result<bool, sqlx::Error> {
    let (failed, reason, retry_after) = match outcome {
        Outcome::Delivered => (false, None, 0.0),
        Outcome::Failed {
            reason,
            retry_after,
        } => (true, Some(reason), retry_after.as_secs_f64()),
    };
    let updated = sqlx::query!(
        r#"with durability as (select set_config('synchronous_commit', 'off', true))
           update subscriptions
           set cursor_xid = $4::int8::text::xid8, cursor_seq = $5, cursor_n = $6,
               dropped = dropped + $7,
               failures = case when $8 then failures + 1 else 0 end,
               next_attempt_at = now() + make_interval(secs => $9),
               last_success_at = case when $8 then last_success_at else now() end,
               last_failure_at = case when $8 then now() else last_failure_at end,
               last_failure = case when $8 then $10 else last_failure end,
               lease_owner = null, lease_expires_at = null
           where environment_id = $1 and id = $2 and attempt = $3
             and exists (select from durability)"#,
        claimed.environment_id,
        claimed.id,
        claimed.attempt,
        cursor.xid,
        cursor.seq,
        cursor.n,
        dropped,
        failed,
        retry_after,
        reason,
    )
    .execute(pool)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// The delivery backlog of every enabled subscription: events not yet delivered, and the age in
/// seconds of the oldest of them (0 when none).
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query!(
        r#"select coalesce(sum(p.pending), 0)::int8 as "pending!",
                  coalesce(extract(epoch from now() - min(p.oldest)), 0)::float8 as "lag!"
           from subscriptions s
           cross join lateral (
               select sum(coalesce(cardinality(e.token_ids), 1)
                          - case when (e.xid, e.seq) = (s.cursor_xid, s.cursor_seq)
                                 then s.cursor_n else 0 end) as pending,
                      min(e.occurred_at) as oldest
               from events e
               where e.environment_id = s.environment_id
                 and (e.xid, e.seq) >= (s.cursor_xid, s.cursor_seq)
                 and not ((e.xid, e.seq) = (s.cursor_xid, s.cursor_seq)
                          and coalesce(cardinality(e.token_ids), 1) <= s.cursor_n)
                 and (s.included_types is null or e.type = any(s.included_types))
           ) p
           where s.enabled"#
    )
    .fetch_one(pool)
    .await?;
    Ok((row.pending, row.lag.max(0.0)))
}
