//! Submitting a job: the job row and its input, cut into chunks of `chunk_size` items (each
//! create item's secret sealed for the token id it will have, repeated serials marked), in the
//! submitting transaction; runners are notified when it commits. Claiming, fencing and progress
//! are in [`crate::store::jobs`], driven by the runner.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::SecretCipher;
use crate::domain::job::{CreateItem, NewJob};
use crate::store::chunks::{self, ChunkKey, CreateChunk};
use crate::store::jobs::{self, Job, NewJobRow};

/// Stores a validated job and its input. Nothing is written to `oath_tokens` here.
pub async fn enqueue(
    tx: &mut PgConnection,
    env: Uuid,
    job_id: Uuid,
    job: &NewJob,
    chunk_size: usize,
    cipher: &SecretCipher,
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
    let stored = jobs::insert(tx, env, job_id, row).await?;
    let key = |n: usize| ChunkKey {
        env,
        job_id,
        first_idx: (n * chunk_size) as i32,
    };
    match job {
        NewJob::Create { items, .. } => {
            let mut serials = HashSet::with_capacity(items.len());
            for (n, chunk) in items.chunks(chunk_size).enumerate() {
                let sealed = seal(env, chunk, cipher, &mut serials);
                chunks::insert_create(tx, key(n), &sealed).await?;
            }
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

/// A create chunk's items as column arrays, each token's secret sealed for the id it will have,
/// and the tokens whose serial an earlier item of the job has (in `serials`, the job's so far).
fn seal<'a>(
    env: Uuid,
    items: &'a [CreateItem],
    cipher: &SecretCipher,
    serials: &mut HashSet<&'a str>,
) -> CreateChunk {
    let mut c = CreateChunk::default();
    for (offset, item) in items.iter().enumerate() {
        let token = match item {
            CreateItem::Token(token) => token,
            CreateItem::Invalid(row) => {
                c.invalid_offsets.push(offset as i32);
                c.invalid_row_numbers.push(row.row_number);
                c.invalid_serials.push(row.serial_number.clone());
                c.invalid_messages.push(row.message.clone());
                continue;
            }
        };
        if !serials.insert(token.serial_number.as_str()) {
            c.repeated.push(c.tokens() as i32);
        }
        let id = Uuid::now_v7();
        let sealed = cipher.seal(&token.secret, env, id);
        c.push_token(offset as i32, id, token, sealed);
    }
    c
}
