//! `events`: the outbox every token and job change writes in its own transaction, read as the
//! activity feed and by the delivery runners in one order, (transaction id, sequence), and only
//! as far as every older transaction of the database has ended (`events_horizon()`, see the
//! migration): a reader that saved its
//! position never misses an event that committed late. A job chunk's tokens are one row with
//! arrays, one event per element.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::event::{EventType, Origin};

/// Where a reader stands: after element `n` (from 1; 0: before the first) of the row at
/// (`xid`, `seq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
    pub n: i32,
}

/// One event as read, with its position.
#[derive(Clone, Debug)]
pub struct Event {
    pub position: Position,
    pub id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub request_id: Option<String>,
    pub resource_id: Uuid,
    pub serial_number: Option<String>,
    pub job_id: Option<Uuid>,
    pub result: Option<serde_json::Value>,
}

/// Records one event of one token or job.
pub async fn record(
    db: impl PgExecutor<'_>,
    env: Uuid,
    event_type: EventType,
    origin: &Origin,
    resource_id: Uuid,
    serial_number: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into events (environment_id, type, actor, request_id, resource_id, serial_number) \
         values ($1, $2, $3, $4, $5, $6)",
        env,
        event_type.as_str(),
        origin.actor,
        origin.request_id,
        resource_id,
        serial_number,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records one event per token, each with its own origin (tokens of several requests written
/// together).
pub async fn record_each(
    db: impl PgExecutor<'_>,
    env: Uuid,
    event_type: EventType,
    tokens: &[(Uuid, &str, &Origin)],
) -> Result<(), sqlx::Error> {
    if tokens.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = tokens.iter().map(|t| t.0).collect();
    let serials: Vec<&str> = tokens.iter().map(|t| t.1).collect();
    let actors: Vec<&str> = tokens.iter().map(|t| t.2.actor.as_str()).collect();
    let requests: Vec<Option<&str>> = tokens.iter().map(|t| t.2.request_id.as_deref()).collect();
    sqlx::query!(
        "insert into events (environment_id, type, actor, request_id, resource_id, serial_number) \
         select $1, $2, t.actor, t.request_id, t.id, t.serial \
         from unnest($3::uuid[], $4::text[], $5::text[], $6::text[]) \
              with ordinality t(id, serial, actor, request_id, n) order by t.n",
        env,
        event_type.as_str(),
        &ids,
        &serials as &[&str],
        &actors as &[&str],
        &requests as &[Option<&str>],
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records the events of the tokens a job's chunk created or revoked, as one row, with the
/// job's submitter as their actor.
pub async fn record_chunk(
    tx: &mut PgConnection,
    env: Uuid,
    job_id: Uuid,
    event_type: EventType,
    ids: &[Uuid],
    serials: &[&str],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "insert into events (environment_id, type, actor, request_id, job_id, token_ids, \
                             serial_numbers) \
         select environment_id, $3, coalesce(actor, 'system'), request_id, id, $4, $5 \
         from oath_jobs where environment_id = $1 and id = $2",
        env,
        job_id,
        event_type.as_str(),
        ids,
        serials as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Fails with a serialization failure (retried) when a token of `ids` has an event of a
/// transaction younger than this one: this one's events of them would be ordered first.
pub async fn check_order(
    tx: &mut PgConnection,
    env: Uuid,
    ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!("select events_check_order($1, $2)", env, ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Filters of a read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub event_type: Option<EventType>,
    pub resource_id: Option<Uuid>,
}

/// The environment's events after `after`, oldest first, at most `limit`: only events of
/// transactions older than every transaction still running.
pub async fn after(
    db: impl PgExecutor<'_>,
    env: Uuid,
    after: Position,
    filter: Filter,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    // The rows after the position, in order, counting their events without reading their
    // arrays; then of each only the slice of elements the page needs (a job chunk's row holds a
    // thousand). With a resource filter every element of a row is looked at.
    let rows = sqlx::query!(
        r#"with r as (
               select e.xid, e.seq, e.len,
                      case when (e.xid, e.seq) = ($2::int8::text::xid8, $3::int8) then $4::int4
                           else 0 end as skip
               from events e
               where e.environment_id = $1
                 and e.xid < (select events_horizon())
                 and (e.xid, e.seq) >= ($2::int8::text::xid8, $3::int8)
                 and ($5::text is null or e.type = $5)
                 and ($6::uuid is null or e.resource_id = $6 or e.token_ids @> array[$6])
               order by e.xid, e.seq
               limit $7
           ), w as (
               select r.*,
                      coalesce(sum(r.len - r.skip) over (order by r.xid, r.seq
                          rows between unbounded preceding and 1 preceding), 0) as before
               from r
           )
           select e.xid::text::int8 as "xid!", e.seq as "seq!", (w.skip + u.k)::int4 as "n!",
                  case when e.token_ids is null then e.id
                       else md5(e.id::text || '/' || (w.skip + u.k))::uuid end as "id!",
                  e.type as "event_type!", e.occurred_at as "occurred_at!", e.actor as "actor!",
                  e.request_id, u.resource_id as "resource_id!", u.serial_number, e.job_id,
                  e.result::text as result
           from w
           join events e on e.environment_id = $1 and e.xid = w.xid and e.seq = w.seq
           cross join lateral unnest(
                   coalesce(e.token_ids[w.skip + 1 : case when $6::uuid is null
                                                          then w.skip + ($7 - w.before)
                                                          else w.len end],
                            array[e.resource_id]),
                   coalesce(e.serial_numbers[w.skip + 1 : case when $6::uuid is null
                                                               then w.skip + ($7 - w.before)
                                                               else w.len end],
                            array[e.serial_number]))
                with ordinality as u(resource_id, serial_number, k)
           where w.skip < w.len
             and ($6::uuid is null or u.resource_id = $6)
             and ($6::uuid is not null or w.before < $7)
           order by e.xid, e.seq, u.k
           limit $7"#,
        env,
        after.xid,
        after.seq,
        after.n,
        filter.event_type.map(EventType::as_str),
        filter.resource_id,
        limit,
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Event {
                position: Position {
                    xid: r.xid,
                    seq: r.seq,
                    n: r.n,
                },
                id: r.id,
                event_type: super::decode(&r.event_type, EventType::parse, "event type")?,
                occurred_at: r.occurred_at,
                actor: r.actor,
                request_id: r.request_id,
                resource_id: r.resource_id,
                serial_number: r.serial_number,
                job_id: r.job_id,
                result: r
                    .result
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            })
        })
        .collect()
}

/// Deletes up to `batch` events that occurred before `cutoff`; returns how many.
pub async fn purge(pool: &PgPool, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "delete from events where ctid = any(array( \
             select ctid from events where occurred_at < $1 order by occurred_at limit $2))",
        cutoff,
        batch,
    )
    .execute(pool)
    .await?
    .rows_affected())
}
