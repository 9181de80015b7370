//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction, in two parts:
//! [`write()`] reads the stored chunk (its secrets already sealed for the tokens' ids) and writes
//! the tokens that are new, which may run while the job's previous chunk is still being written;
//! [`finish()`] classifies each item (created, duplicate of an existing serial or of an earlier
//! item, past the quota) in item order, after that chunk committed, and writes the result rows.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::ChunkError;
use crate::domain::job::Outcome;
use crate::events::EventType;
use crate::store::chunks::{self, ChunkKey, CreateChunk};
use crate::store::jobs::ChunkCounts;
use crate::store::{events, quota, results, tokens};

/// A create chunk read and its new tokens written, before the quota is taken: the part of a
/// chunk that runs beside the job's previous chunk ([`crate::jobs::runner`]).
pub struct Written {
    chunk: CreateChunk,
    new: Vec<usize>,
}

/// Reads the chunk at `key` and writes its tokens whose serial the environment and the job do
/// not have yet. Takes no lock another chunk of the job needs: a job's repeated serials are
/// never written, and the quota row is left to [`finish()`].
pub async fn write(tx: &mut PgConnection, key: ChunkKey, len: i32) -> Result<Written, ChunkError> {
    let chunk = chunks::read_create(tx, key, len as usize)
        .await?
        .ok_or(ChunkError::InputMissing)?;
    let new = tokens::insert_new_from_chunk(tx, key.env, &chunk, first_occurrences(&chunk)).await?;
    Ok(Written { chunk, new })
}

/// The rest of the chunk, once the job's previous chunk has committed: the quota (items past
/// the limit are taken out again), the result rows, and the chunk's input consumed.
pub async fn finish(
    tx: &mut PgConnection,
    key: ChunkKey,
    written: Written,
    limit: i64,
) -> Result<ChunkCounts, ChunkError> {
    let Written { chunk, new } = written;
    let (outcomes, created) = take_quota(tx, key.env, &chunk, new, limit).await?;
    results::write_create(tx, key, &chunk, &outcomes).await?;
    let (ids, serials): (Vec<Uuid>, Vec<&str>) = (0..chunk.tokens())
        .filter(|&i| outcomes[i] == Outcome::Created)
        .map(|i| (chunk.token_ids[i], chunk.serial_numbers[i].as_str()))
        .unzip();
    events::record_chunk(
        tx,
        key.env,
        key.job_id,
        EventType::TokenCreated,
        &ids,
        &serials,
    )
    .await?;
    chunks::consume(tx, key).await?;

    let count_of = |o: Outcome| outcomes.iter().filter(|x| **x == o).count() as i32;
    Ok(ChunkCounts {
        processed: chunk.len() as i32,
        created,
        duplicates: count_of(Outcome::Duplicate),
        failed: count_of(Outcome::LimitExceeded) + chunk.invalid_offsets.len() as i32,
        ..ChunkCounts::default()
    })
}

/// Writes the tokens of `chunk` that are new and within the quota, and counts them against it.
/// Returns each token's outcome (created, duplicate, past the limit) and how many were created.
/// Combined single creates ([`crate::create_batch`]) near the limit.
pub async fn write_tokens(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &CreateChunk,
    limit: i64,
) -> Result<(Vec<Outcome>, i32), sqlx::Error> {
    let new = tokens::insert_new_from_chunk(tx, env, chunk, first_occurrences(chunk)).await?;
    take_quota(tx, env, chunk, new, limit).await
}

/// Counts the tokens just written (`new`, positions in `chunk`) against the quota. The quota is
/// taken last (after the token locks, as single creates do): items past the limit are deleted
/// again, in item order.
async fn take_quota(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &CreateChunk,
    mut new: Vec<usize>,
    limit: i64,
) -> Result<(Vec<Outcome>, i32), sqlx::Error> {
    let room = quota::room(tx, env, limit).await? as usize;
    let mut outcomes = vec![Outcome::Duplicate; chunk.tokens()];
    new.sort_unstable();
    for (n, &i) in new.iter().enumerate() {
        outcomes[i] = if n < room {
            Outcome::Created
        } else {
            Outcome::LimitExceeded
        };
    }
    if new.len() > room {
        let over: Vec<_> = new[room..].iter().map(|&i| chunk.token_ids[i]).collect();
        tokens::delete_written(tx, env, &over).await?;
    }
    let created = new.len().min(room) as i32;
    if created > 0 {
        quota::take(tx, env, i64::from(created), limit).await?;
    }
    Ok((outcomes, created))
}

/// The positions of the chunk's tokens whose serial number no earlier item of the job (or of
/// the chunk) has: a repeat is a duplicate of its first occurrence.
pub fn first_occurrences(chunk: &CreateChunk) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(chunk.tokens());
    (0..chunk.tokens())
        .filter(|&i| {
            seen.insert(chunk.serial_numbers[i].as_str())
                && chunk.repeated.binary_search(&(i as i32)).is_err()
        })
        .collect()
}
