//! Submitting a job: the job row and its input, cut into chunks of `chunk_size` items (each
//! create item's secret sealed for the token id it will have, repeated serials marked), in the
//! submitting transaction; runners are notified when it commits. Claiming, fencing and progress
//! are in [`crate::store::jobs`], driven by the runner.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::PgConnection;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::crypto::SecretCipher;
use crate::domain::event::Origin;
use crate::domain::job::{CreateItem, NewJob, PARALLEL_ITEMS};
use crate::parallel;
use crate::store::batch::TokenBatch;
use crate::store::chunks::{self, ChunkKey};
use crate::store::jobs::{self, Job, NewJobRow};

/// Stores a validated job and its input. Nothing is written to `oath_tokens` here.
///
/// A create job's secrets are sealed on the blocking pool, a group of chunks ahead of the
/// statements that store them: sealing 100,000 secrets is a fraction of a second of CPU that
/// would otherwise stall every request sharing this worker thread.
pub async fn enqueue(
    tx: &mut PgConnection,
    env: Uuid,
    job_id: Uuid,
    job: NewJob,
    chunk_size: usize,
    cipher: Arc<SecretCipher>,
    origin: &Origin,
) -> Result<Job, sqlx::Error> {
    let row = NewJobRow {
        job_type: job.job_type(),
        is_async: job.is_async(),
        force_unpair: matches!(
            job,
            NewJob::Revoke {
                force_unpair: true,
                ..
            }
        ),
        total: job.len() as i32,
        chunk_size: chunk_size as i32,
    };
    let stored = jobs::insert(tx, env, job_id, row, origin).await?;
    let key = |n: usize| ChunkKey {
        env,
        job_id,
        first_idx: (n * chunk_size) as i32,
    };
    match job {
        NewJob::Create { items, .. } => {
            let (sealed_tx, mut sealed) = mpsc::channel(SEALED_AT_ONCE);
            let sealer = tokio::task::spawn_blocking(move || {
                seal_chunks(env, &items, chunk_size, &cipher, |n, chunk| {
                    // The receiver is gone when an insert failed: stop sealing.
                    sealed_tx.blocking_send((n, chunk)).is_ok()
                })
            });
            while let Some((n, chunk)) = sealed.recv().await {
                chunks::insert_create(tx, key(n), &chunk).await?;
            }
            sealer.await.map_err(|e| {
                sqlx::Error::Protocol(format!("sealing a job's chunks failed: {e}"))
            })?;
        }
        NewJob::Revoke { token_ids, .. } => {
            for (n, chunk) in token_ids.chunks(chunk_size).enumerate() {
                chunks::insert_revoke(tx, key(n), chunk).await?;
            }
        }
    }
    jobs::notify(tx, job_id).await?;
    Ok(stored)
}

/// Seals `items` chunk by chunk and hands each chunk, in order, to `send` (false: stop).
fn seal_chunks(
    env: Uuid,
    items: &[CreateItem],
    chunk_size: usize,
    cipher: &SecretCipher,
    mut send: impl FnMut(usize, TokenBatch) -> bool,
) {
    // Ids drawn in item order, so that a job's tokens list in that order (an invalid file row
    // leaves its id unused).
    let ids: Vec<Uuid> = items.iter().map(|_| Uuid::now_v7()).collect();
    let repeats = repeats(items);
    let chunks: Vec<(usize, &[CreateItem])> = items.chunks(chunk_size).enumerate().collect();
    let split_from = if items.len() >= PARALLEL_ITEMS {
        2
    } else {
        usize::MAX
    };
    // A few chunks at a time, so that the job is held sealed only a few chunks at once.
    for group in chunks.chunks(SEALED_AT_ONCE) {
        let sealed = parallel::map(group, split_from, |_, &(n, chunk)| {
            let at = n * chunk_size..n * chunk_size + chunk.len();
            seal(env, chunk, &ids[at.clone()], &repeats[at], cipher)
        });
        for (&(n, _), chunk) in group.iter().zip(sealed) {
            if !send(n, chunk) {
                return;
            }
        }
    }
}

/// Create chunks sealed before they are stored, per group (on two threads when the job is large).
const SEALED_AT_ONCE: usize = 16;

/// For each item, whether a token before it in the job has its serial number.
fn repeats(items: &[CreateItem]) -> Vec<bool> {
    let mut serials = HashSet::with_capacity(items.len());
    items
        .iter()
        .map(|item| match item {
            CreateItem::Token(token) => !serials.insert(token.serial_number.as_str()),
            CreateItem::Invalid(_) => false,
        })
        .collect()
}

/// A create chunk's items as a batch, each token's secret sealed for its id in `ids`, and
/// the tokens that `repeated` marks. `ids` and `repeated` are the chunk's items' own.
fn seal(
    env: Uuid,
    items: &[CreateItem],
    ids: &[Uuid],
    repeated: &[bool],
    cipher: &SecretCipher,
) -> TokenBatch {
    let mut c = TokenBatch::default();
    for (offset, item) in items.iter().enumerate() {
        let token = match item {
            CreateItem::Token(token) => token,
            CreateItem::Invalid(row) => {
                c.push_invalid(offset as i32, row);
                continue;
            }
        };
        let id = ids[offset];
        let sealed = cipher.seal(&token.secret, env, id);
        c.push_token(offset as i32, id, token, sealed, repeated[offset]);
    }
    c
}
