//! One chunk of a REVOKE_OATH_TOKENS job, inside the chunk's transaction: have the store revoke
//! the chunk's tokens (paired ones only with `forceUnpair`), classify each item, and write the
//! result rows and consume the chunk.

use sqlx::PgConnection;
use uuid::Uuid;

use super::ChunkError;
use crate::domain::event::EventType;
use crate::domain::job::ItemOutcome;
use crate::store::chunks::{self, ChunkKey};
use crate::store::jobs::ChunkCounts;
use crate::store::results::RevokeResult;
use crate::store::{events, results, tokens};

pub async fn process_chunk(
    tx: &mut PgConnection,
    key: ChunkKey,
    len: i32,
    force_unpair: bool,
) -> Result<ChunkCounts, ChunkError> {
    let ids = chunks::read_revoke(tx, key, len as usize)
        .await?
        .ok_or(ChunkError::InputMissing)?;
    let (mut revoked, paired) = tokens::revoke(tx, key.env, &ids, force_unpair).await?;
    // In item order, each revoked token once (a repeated id is revoked at its first occurrence).
    let mut gone = std::collections::HashSet::new();
    let (deleted, serials): (Vec<Uuid>, Vec<&str>) = ids
        .iter()
        .filter_map(|id| Some((*id, revoked.get(id)?.as_str())))
        .filter(|(id, _)| gone.insert(*id))
        .unzip();
    if !deleted.is_empty() {
        events::check_order(tx, key.env, &deleted).await?;
        events::record_chunk(
            tx,
            key.env,
            key.job_id,
            EventType::TokenDeleted,
            &deleted,
            &serials,
        )
        .await?;
    }

    let mut counts = ChunkCounts {
        processed: len,
        ..ChunkCounts::default()
    };
    let rows: Vec<RevokeResult> = ids
        .iter()
        .map(|&token_id| {
            // A repeated id is revoked once; its later occurrences are not found.
            let (serial_number, outcome) = match revoked.remove(&token_id) {
                Some(serial) => {
                    counts.revoked += 1;
                    (Some(serial), ItemOutcome::Revoked)
                }
                None if paired.contains(&token_id) => {
                    counts.skipped_paired += 1;
                    (None, ItemOutcome::SkippedPaired)
                }
                None => {
                    counts.not_found += 1;
                    (None, ItemOutcome::NotFound)
                }
            };
            RevokeResult {
                token_id,
                serial_number,
                outcome,
            }
        })
        .collect();
    results::write_revoke(tx, key, &rows).await?;
    chunks::consume(tx, key).await?;
    Ok(counts)
}
