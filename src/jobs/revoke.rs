//! One chunk of a REVOKE_OATH_TOKENS job, inside the chunk's transaction: delete the chunk's
//! tokens (paired ones only with `forceUnpair`), classify each item, write its result row, and
//! consume the items.

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
) -> Result<ChunkCounts, ChunkError> {
    let env = job.environment_id;
    let items = sqlx::query!(
        r#"select idx, row_number, token_id from oath_job_items
           where environment_id = $1 and job_id = $2 and idx >= $3 and idx < $4
           order by idx"#,
        env,
        job.id,
        lo,
        hi,
    )
    .fetch_all(&mut *tx)
    .await?;
    if items.len() != (hi - lo) as usize {
        return Err(ChunkError::InputMissing);
    }
    let ids: Vec<Uuid> = items.iter().map(|i| i.token_id).collect();

    // Deleting a paired token unpairs it; without forceUnpair paired tokens stay.
    let mut revoked: HashMap<Uuid, String> = sqlx::query!(
        r#"delete from oath_tokens
           where environment_id = $1 and id = any($2) and ($3 or status <> 'PAIRED')
           returning id, serial_number"#,
        env,
        &ids,
        job.force_unpair,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.id, r.serial_number))
    .collect();
    let paired: HashSet<Uuid> = if job.force_unpair {
        HashSet::new()
    } else {
        sqlx::query_scalar!(
            "select id from oath_tokens where environment_id = $1 and id = any($2) and status = 'PAIRED'",
            env,
            &ids,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    if !revoked.is_empty() {
        sqlx::query!(
            "update environment_usage set token_count = token_count - $2 where environment_id = $1",
            env,
            revoked.len() as i64,
        )
        .execute(&mut *tx)
        .await?;
    }

    let mut counts = ChunkCounts {
        processed: items.len() as i32,
        ..ChunkCounts::default()
    };
    let (mut idx, mut row_numbers, mut token_ids, mut serials, mut outcomes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for item in &items {
        // A repeated id is revoked once; its later occurrences are not found.
        let (outcome, serial) = match revoked.remove(&item.token_id) {
            Some(serial) => {
                counts.revoked += 1;
                (Outcome::Revoked, Some(serial))
            }
            None if paired.contains(&item.token_id) => {
                counts.skipped_paired += 1;
                (Outcome::SkippedPaired, None)
            }
            None => {
                counts.not_found += 1;
                (Outcome::NotFound, None)
            }
        };
        idx.push(item.idx);
        row_numbers.push(item.row_number);
        token_ids.push(item.token_id);
        serials.push(serial);
        outcomes.push(outcome.as_str());
    }
    sqlx::query!(
        r#"insert into job_results
               (environment_id, job_id, idx, row_number, token_id, serial_number, outcome)
           select $1, $2, * from unnest($3::int[], $4::bigint[], $5::uuid[], $6::text[], $7::text[])"#,
        env,
        job.id,
        &idx,
        &row_numbers as &[Option<i64>],
        &token_ids,
        &serials as &[Option<String>],
        &outcomes as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    consume(tx, job, lo, hi).await?;
    Ok(counts)
}
