//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction: read the stored chunk
//! (its secrets are already sealed for the tokens' ids), classify each item (created, duplicate
//! of an existing serial or of an earlier item, past the quota), and have the store write the
//! tokens, the quota, the result rows and consume the chunk.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::ChunkError;
use crate::domain::job::Outcome;
use crate::store::chunks::{self, ChunkKey, CreateChunk};
use crate::store::jobs::ChunkCounts;
use crate::store::{quota, results, tokens};

pub async fn process_chunk(
    tx: &mut PgConnection,
    key: ChunkKey,
    len: i32,
    limit: i64,
) -> Result<ChunkCounts, ChunkError> {
    let env = key.env;
    let chunk = chunks::read_create(tx, key, len as usize)
        .await?
        .ok_or(ChunkError::InputMissing)?;
    let (outcomes, created) = write_tokens(tx, env, &chunk, limit).await?;
    results::write_create(tx, key, &chunk, &outcomes).await?;
    chunks::consume(tx, key).await?;

    let count_of = |o: Outcome| outcomes.iter().filter(|x| **x == o).count() as i32;
    Ok(ChunkCounts {
        processed: len,
        created,
        duplicates: count_of(Outcome::Duplicate),
        failed: count_of(Outcome::LimitExceeded) + chunk.invalid_offsets.len() as i32,
        ..ChunkCounts::default()
    })
}

/// Writes the tokens of `chunk` that are new and within the quota, and counts them against it.
/// Returns each token's outcome (created, duplicate, past the limit) and how many were created.
/// Job chunks and combined single creates ([`crate::create_batch`]) alike.
pub async fn write_tokens(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &CreateChunk,
    limit: i64,
) -> Result<(Vec<Outcome>, i32), sqlx::Error> {
    let mut new = tokens::insert_new_from_chunk(tx, env, chunk, first_occurrences(chunk)).await?;

    // The quota, taken last (after the token locks, as single creates do): items past the
    // limit are taken out again, in item order.
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

/// The positions of the chunk's tokens whose serial number no earlier token of the chunk has:
/// a repeat is a duplicate of its first occurrence.
pub fn first_occurrences(chunk: &CreateChunk) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(chunk.tokens());
    (0..chunk.tokens())
        .filter(|&i| seen.insert(chunk.serial_numbers[i].as_str()))
        .collect()
}
