//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction: insert the chunk's
//! tokens straight from the job items (their secrets are already sealed for their ids), classify
//! each item, write its result row, and consume the items.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use super::queue::{consume, ChunkCounts, ClaimedJob};
use super::ChunkError;
use crate::domain::job::Outcome;

pub async fn process_chunk(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    lo: i32,
    hi: i32,
    limit: i64,
) -> Result<ChunkCounts, ChunkError> {
    let (env, job_id) = (job.environment_id, job.id);
    let items = sqlx::query!(
        r#"select idx, token_id, serial_number as "serial_number!"
           from oath_job_items
           where environment_id = $1 and job_id = $2 and idx >= $3 and idx < $4
           order by idx"#,
        env,
        job_id,
        lo,
        hi,
    )
    .fetch_all(&mut *tx)
    .await?;
    if items.len() != (hi - lo) as usize {
        return Err(ChunkError::InputMissing);
    }

    // A serial seen earlier in this chunk is a duplicate; earlier chunks' serials are in
    // oath_tokens already and are caught by the unique constraint below.
    let mut seen = HashSet::with_capacity(items.len());
    let repeated: Vec<i32> = items
        .iter()
        .filter(|i| !seen.insert(i.serial_number.as_str()))
        .map(|i| i.idx)
        .collect();

    // Sorted by serial so that concurrent jobs take unique-index locks in one order.
    let inserted: HashSet<Uuid> = sqlx::query_scalar!(
        r#"insert into oath_tokens
               (environment_id, id, serial_number, type, otp_length, hash_algorithm, counter,
                time_step, secret_ciphertext, secret_key_id)
           select environment_id, token_id, serial_number, token_type, otp_length, hash_algorithm,
                  counter, time_step, secret_ciphertext, secret_key_id
           from oath_job_items
           where environment_id = $1 and job_id = $2 and idx >= $3 and idx < $4
             and idx <> all($5)
           order by serial_number
           on conflict (environment_id, serial_number) do nothing
           returning id"#,
        env,
        job_id,
        lo,
        hi,
        &repeated,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    // The quota, taken last (after the token locks, like single creates) on the environment's
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
    let mut outcomes = Vec::with_capacity(items.len());
    let mut over_limit = Vec::new();
    for item in &items {
        let outcome = if !inserted.contains(&item.token_id) {
            Outcome::Duplicate
        } else if room > 0 {
            room -= 1;
            Outcome::Created
        } else {
            over_limit.push(item.token_id);
            Outcome::LimitExceeded
        };
        outcomes.push(outcome);
    }
    if !over_limit.is_empty() {
        sqlx::query!(
            "delete from oath_tokens where environment_id = $1 and id = any($2)",
            env,
            &over_limit,
        )
        .execute(&mut *tx)
        .await?;
    }
    let counts = tally(&outcomes);
    if counts.created > 0 {
        sqlx::query!(
            "update environment_usage set token_count = token_count + $2 where environment_id = $1",
            env,
            i64::from(counts.created),
        )
        .execute(&mut *tx)
        .await?;
    }

    let idx: Vec<i32> = items.iter().map(|i| i.idx).collect();
    let outcome_names: Vec<&str> = outcomes.iter().map(|o| o.as_str()).collect();
    sqlx::query!(
        r#"insert into job_results
               (environment_id, job_id, idx, row_number, serial_number, token_id, outcome,
                masked_secret)
           select i.environment_id, i.job_id, i.idx, i.row_number, i.serial_number,
                  case when o.outcome = 'CREATED' then i.token_id end, o.outcome, i.masked_secret
           from oath_job_items i
           join unnest($3::int[], $4::text[]) as o(idx, outcome) on o.idx = i.idx
           where i.environment_id = $1 and i.job_id = $2"#,
        env,
        job_id,
        &idx,
        &outcome_names as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    consume(tx, job, lo, hi).await?;
    Ok(counts)
}

fn tally(outcomes: &[Outcome]) -> ChunkCounts {
    let mut by: HashMap<Outcome, i32> = HashMap::new();
    for o in outcomes {
        *by.entry(*o).or_default() += 1;
    }
    let n = |o| by.get(&o).copied().unwrap_or(0);
    ChunkCounts {
        processed: outcomes.len() as i32,
        created: n(Outcome::Created),
        duplicates: n(Outcome::Duplicate),
        failed: n(Outcome::LimitExceeded) + n(Outcome::Invalid),
        ..ChunkCounts::default()
    }
}
