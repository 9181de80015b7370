//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction, in two parts:
//! [`write()`] reads the stored chunk (its secrets already sealed for the tokens' ids) and writes
//! the tokens that are new, which may run while the job's previous chunk is still being written;
//! [`finish()`] classifies each item (created, duplicate of an existing serial or of an earlier
//! item, past the quota) in item order, after that chunk committed, and writes the result rows.

use sqlx::PgConnection;

use super::ChunkError;
use crate::domain::event::EventType;
use crate::domain::job::ItemOutcome;
use crate::store::batch::{first_occurrences, take_quota, TokenBatch};
use crate::store::chunks::{self, ChunkKey};
use crate::store::jobs::ChunkCounts;
use crate::store::{events, results, tokens};

/// A create chunk read and its new tokens written, before the quota is taken: the part of a
/// chunk that runs beside the job's previous chunk ([`crate::jobs::runner`]).
pub struct Written {
    chunk: TokenBatch,
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
    let (ids, serials) = chunk.tokens_with(&outcomes, ItemOutcome::Created);
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

    let count_of = |o: ItemOutcome| outcomes.iter().filter(|x| **x == o).count() as i32;
    Ok(ChunkCounts {
        processed: chunk.len() as i32,
        created,
        duplicates: count_of(ItemOutcome::Duplicate),
        failed: count_of(ItemOutcome::LimitExceeded) + chunk.invalid_items() as i32,
        ..ChunkCounts::default()
    })
}
