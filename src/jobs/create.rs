//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction: insert the chunk's
//! tokens straight from the stored chunk (their secrets are already sealed for their ids),
//! classify each item, write its result row, and consume the chunk. The data stays in the
//! database; only ids and outcomes cross the wire.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::queue::{consume, ChunkCounts, ClaimedJob};
use super::ChunkError;
use crate::domain::job::Outcome;

pub async fn process_chunk(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    first_idx: i32,
    len: i32,
    limit: i64,
) -> Result<ChunkCounts, ChunkError> {
    let (env, job_id) = (job.environment_id, job.id);
    let token_ids = sqlx::query_scalar!(
        r#"select token_ids from oath_job_chunks
           where environment_id = $1 and job_id = $2 and first_idx = $3"#,
        env,
        job_id,
        first_idx,
    )
    .fetch_optional(&mut *tx)
    .await?
    .filter(|ids| ids.len() == len as usize)
    .ok_or(ChunkError::InputMissing)?;

    // The first occurrence of a serial in the chunk is inserted; later ones, and serials already
    // in the environment (from earlier chunks too), are duplicates. Inserting in serial order
    // makes concurrent jobs take unique-index locks in one order.
    let inserted: HashSet<Uuid> = sqlx::query_scalar!(
        r#"insert into oath_tokens
               (environment_id, id, serial_number, type, otp_length, hash_algorithm, counter,
                time_step, secret_ciphertext, secret_key_id)
           select distinct on (t.serial) $1::uuid, t.id, t.serial, t.type, t.len, t.hash,
                  t.counter, t.step, t.secret, t.key_id
           from oath_job_chunks c,
                unnest(c.token_ids, c.serial_numbers, c.token_types, c.otp_lengths,
                       c.hash_algorithms, c.counters, c.time_steps, c.secret_ciphertexts,
                       c.secret_key_ids)
                    with ordinality as t(id, serial, type, len, hash, counter, step, secret,
                                         key_id, ord)
           where c.environment_id = $1 and c.job_id = $2 and c.first_idx = $3
           order by t.serial, t.ord
           on conflict (environment_id, serial_number) do nothing
           returning id"#,
        env,
        job_id,
        first_idx,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    // The quota, taken last (after the token locks, as single creates do) on the environment's
    // usage row: items past the limit are taken out again, in item order.
    let count = sqlx::query_scalar!(
        r#"insert into environment_usage as u (environment_id, token_count) values ($1, 0)
           on conflict (environment_id) do update set token_count = u.token_count
           returning token_count"#,
        env,
    )
    .fetch_one(&mut *tx)
    .await?;
    let mut room = (limit - count).max(0) as usize;
    let mut counts = ChunkCounts {
        processed: len,
        ..ChunkCounts::default()
    };
    let mut over_limit = Vec::new();
    let outcomes: Vec<&str> = token_ids
        .iter()
        .map(|id| {
            let outcome = if !inserted.contains(id) {
                counts.duplicates += 1;
                Outcome::Duplicate
            } else if room > 0 {
                room -= 1;
                counts.created += 1;
                Outcome::Created
            } else {
                counts.failed += 1;
                over_limit.push(*id);
                Outcome::LimitExceeded
            };
            outcome.as_str()
        })
        .collect();
    if !over_limit.is_empty() {
        sqlx::query!(
            "delete from oath_tokens where environment_id = $1 and id = any($2)",
            env,
            &over_limit,
        )
        .execute(&mut *tx)
        .await?;
    }
    if counts.created > 0 {
        sqlx::query!(
            "update environment_usage set token_count = token_count + $2 where environment_id = $1",
            env,
            i64::from(counts.created),
        )
        .execute(&mut *tx)
        .await?;
    }

    sqlx::query!(
        r#"insert into job_results
               (environment_id, job_id, idx, row_number, serial_number, token_id, outcome,
                masked_secret)
           select $1::uuid, $2::uuid, $3 + t.ord::int - 1, t.row_number, t.serial,
                  case when t.outcome = 'CREATED' then t.id end, t.outcome, t.masked
           from oath_job_chunks c,
                unnest(c.token_ids, c.row_numbers, c.serial_numbers, c.masked_secrets, $4::text[])
                    with ordinality as t(id, row_number, serial, masked, outcome, ord)
           where c.environment_id = $1 and c.job_id = $2 and c.first_idx = $3"#,
        env,
        job_id,
        first_idx,
        &outcomes as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    consume(tx, job, first_idx).await?;
    Ok(counts)
}
