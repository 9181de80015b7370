//! One chunk of a REVOKE_OATH_TOKENS job, inside the chunk's transaction: delete the chunk's
//! tokens (paired ones only with `forceUnpair`), classify each item, write its result row, and
//! consume the items.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use super::queue::{consume, ChunkCounts, ClaimedJob};
use super::ChunkError;
use crate::domain::job::Outcome;
use crate::store::copy::CopyRows;

pub async fn process_chunk(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    first_idx: i32,
    len: i32,
) -> Result<ChunkCounts, ChunkError> {
    let env = job.environment_id;
    let ids = sqlx::query_scalar!(
        r#"select token_ids from oath_job_chunks
           where environment_id = $1 and job_id = $2 and first_idx = $3"#,
        env,
        job.id,
        first_idx,
    )
    .fetch_optional(&mut *tx)
    .await?
    .filter(|ids| ids.len() == len as usize)
    .ok_or(ChunkError::InputMissing)?;

    // Deleting a paired token unpairs it; without forceUnpair paired tokens stay.
    let mut revoked: HashMap<Uuid, String> = sqlx::query!(
        r#"delete from oath_tokens t using unnest($2::uuid[]) u(id)
           where t.environment_id = $1 and t.id = u.id and ($3 or t.status <> 'PAIRED')
           returning t.id, t.serial_number"#,
        env,
        &ids,
        job.force_unpair,
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
    let paired: HashSet<Uuid> = if job.force_unpair || remaining.is_empty() {
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
        sqlx::query!(
            "update environment_usage set token_count = token_count - $2 where environment_id = $1",
            env,
            revoked.len() as i64,
        )
        .execute(&mut *tx)
        .await?;
    }

    let mut counts = ChunkCounts {
        processed: len,
        ..ChunkCounts::default()
    };
    let mut results = CopyRows::with_capacity(ids.len() * 120);
    for (i, id) in ids.iter().enumerate() {
        // A repeated id is revoked once; its later occurrences are not found.
        let (outcome, serial) = match revoked.remove(id) {
            Some(serial) => {
                counts.revoked += 1;
                (Outcome::Revoked, Some(serial))
            }
            None if paired.contains(id) => {
                counts.skipped_paired += 1;
                (Outcome::SkippedPaired, None)
            }
            None => {
                counts.not_found += 1;
                (Outcome::NotFound, None)
            }
        };
        results
            .plain(env)
            .plain(job.id)
            .plain(first_idx + i as i32)
            .plain(id)
            .opt_text(serial.as_deref())
            .text(outcome.as_str())
            .end_row();
    }
    results
        .send(
            tx,
            "job_results (environment_id, job_id, idx, token_id, serial_number, outcome)",
        )
        .await?;
    consume(tx, job, first_idx).await?;
    Ok(counts)
}
