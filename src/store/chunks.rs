//! `oath_job_chunks`: a job's input, one row per chunk of items, written when the job is
//! submitted and deleted when the chunk commits. A create chunk is a [`TokenBatch`] stored as one
//! value (`input`, [`TokenBatch::encode`]; chunks stored before migration 20261208000002 are
//! column arrays, still read); a revoke chunk is its token ids.

use sqlx::PgConnection;
use uuid::Uuid;

use super::batch::TokenBatch;
use crate::domain::{HashAlgorithm, TokenType};

/// Names one chunk of a job: the job, and the index of the chunk's first item in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkKey {
    pub env: Uuid,
    pub job_id: Uuid,
    pub first_idx: i32,
}

/// Stores the create chunk `c` at `key` as one value ([`TokenBatch::encode`]).
pub async fn insert_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    c: &TokenBatch,
) -> Result<(), sqlx::Error> {
    let (key_ids, key_items) = c.key_counts();
    sqlx::query!(
        r#"insert into oath_job_chunks
               (environment_id, job_id, first_idx, input, input_key_ids, input_key_items)
           values ($1, $2, $3, $4, $5, $6)"#,
        key.env,
        key.job_id,
        key.first_idx,
        &c.encode(),
        &key_ids,
        &key_items,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Stores the create chunk `c` at `key` as column arrays, the form of chunks stored before
/// migration 20261208000002 (a job queued before that upgrade), which [`read_create`] still
/// reads. Not used by the service: tests write it to stand for such a job.
#[doc(hidden)]
pub async fn insert_create_arrays(
    tx: &mut PgConnection,
    key: ChunkKey,
    c: &TokenBatch,
) -> Result<(), sqlx::Error> {
    let token_types: Vec<&str> = c.token_types.iter().map(|t| t.as_str()).collect();
    let hash_algorithms: Vec<&str> = c.hash_algorithms.iter().map(|h| h.as_str()).collect();
    sqlx::query!(
        r#"insert into oath_job_chunks
               (environment_id, job_id, first_idx, offsets, token_ids, row_numbers,
                serial_numbers, token_types, otp_lengths, hash_algorithms, counters,
                time_steps, secret_ciphertexts, secret_key_ids, masked_secrets,
                invalid_offsets, invalid_row_numbers, invalid_serials,
                invalid_messages, drifts, repeated)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                   $16, $17, $18, $19, $20, $21)"#,
        key.env,
        key.job_id,
        key.first_idx,
        &c.offsets,
        &c.token_ids,
        &c.row_numbers as &[Option<i64>],
        &c.serial_numbers,
        &token_types as &[&str],
        &c.otp_lengths,
        &hash_algorithms as &[&str],
        &c.counters as &[Option<i64>],
        &c.time_steps as &[Option<i32>],
        &c.secret_ciphertexts,
        &c.secret_key_ids,
        &c.masked_secrets,
        &c.invalid_offsets,
        &c.invalid_row_numbers,
        &c.invalid_serials as &[Option<String>],
        &c.invalid_messages,
        &c.drifts,
        &c.repeated,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn insert_revoke(
    tx: &mut PgConnection,
    key: ChunkKey,
    token_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    let row_numbers = vec![None::<i64>; token_ids.len()];
    let offsets: Vec<i32> = (0..token_ids.len() as i32).collect();
    sqlx::query!(
        r#"insert into oath_job_chunks
               (environment_id, job_id, first_idx, offsets, token_ids, row_numbers)
           values ($1, $2, $3, $4, $5, $6)"#,
        key.env,
        key.job_id,
        key.first_idx,
        &offsets,
        token_ids,
        &row_numbers as &[Option<i64>],
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The create chunk of `len` items at `key`, if it is stored whole: None when it is missing, of
/// another length, its value unreadable or its arrays do not line up; an error when its arrays
/// hold a value no token can have. A chunk is stored as one value ([`insert_create`]) or, if it
/// was stored before migration 20261208000002, as column arrays.
pub async fn read_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    len: usize,
) -> Result<Option<TokenBatch>, sqlx::Error> {
    let Some(r) = sqlx::query!(
        r#"select input, offsets, token_ids, row_numbers as "row_numbers: Vec<Option<i64>>",
                  serial_numbers, token_types, otp_lengths, hash_algorithms,
                  counters as "counters: Vec<Option<i64>>",
                  time_steps as "time_steps: Vec<Option<i32>>", drifts,
                  secret_ciphertexts, secret_key_ids, masked_secrets, invalid_offsets,
                  invalid_row_numbers, invalid_serials as "invalid_serials: Vec<Option<String>>",
                  invalid_messages, repeated
           from oath_job_chunks
           where environment_id = $1 and job_id = $2 and first_idx = $3"#,
        key.env,
        key.job_id,
        key.first_idx,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let chunk = if let Some(input) = r.input {
        match TokenBatch::decode(&input) {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::error!(
                    job_id = %key.job_id,
                    first_idx = key.first_idx,
                    bytes = input.len(),
                    "{e}"
                );
                return Ok(None);
            }
        }
    } else {
        let (
            Some(offsets),
            Some(token_ids),
            Some(row_numbers),
            Some(serial_numbers),
            Some(token_types),
            Some(otp_lengths),
            Some(hash_algorithms),
            Some(counters),
            Some(time_steps),
            Some(drifts),
            Some(secret_ciphertexts),
            Some(secret_key_ids),
            Some(masked_secrets),
            Some(invalid_offsets),
            Some(invalid_row_numbers),
            Some(invalid_serials),
            Some(invalid_messages),
            Some(repeated),
        ) = (
            r.offsets,
            r.token_ids,
            r.row_numbers,
            r.serial_numbers,
            r.token_types,
            r.otp_lengths,
            r.hash_algorithms,
            r.counters,
            r.time_steps,
            r.drifts,
            r.secret_ciphertexts,
            r.secret_key_ids,
            r.masked_secrets,
            r.invalid_offsets,
            r.invalid_row_numbers,
            r.invalid_serials,
            r.invalid_messages,
            r.repeated,
        )
        else {
            return Ok(None);
        };
        TokenBatch {
            offsets,
            token_ids,
            row_numbers,
            serial_numbers,
            token_types: super::decode_all(&token_types, TokenType::parse, "token type")?,
            otp_lengths,
            hash_algorithms: super::decode_all(
                &hash_algorithms,
                HashAlgorithm::parse,
                "hash algorithm",
            )?,
            counters,
            time_steps,
            drifts,
            secret_ciphertexts,
            secret_key_ids,
            masked_secrets,
            invalid_offsets,
            invalid_row_numbers,
            invalid_serials,
            invalid_messages,
            repeated,
        }
    };
    Ok((chunk.is_consistent() && chunk.len() == len).then_some(chunk))
}

/// The token ids of the revoke chunk at `key`, if it is stored and of `len` items.
pub async fn read_revoke(
    tx: &mut PgConnection,
    key: ChunkKey,
    len: usize,
) -> Result<Option<Vec<Uuid>>, sqlx::Error> {
    let ids = sqlx::query_scalar!(
        r#"select token_ids from oath_job_chunks
           where environment_id = $1 and job_id = $2 and first_idx = $3"#,
        key.env,
        key.job_id,
        key.first_idx,
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(ids.flatten().filter(|ids| ids.len() == len))
}

/// Deletes a processed chunk's input (and with it the sealed secrets it carried).
pub async fn consume(tx: &mut PgConnection, key: ChunkKey) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from oath_job_chunks where environment_id = $1 and job_id = $2 and first_idx = $3",
        key.env,
        key.job_id,
        key.first_idx,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes whatever input a job has left.
pub async fn delete_all(tx: &mut PgConnection, env: Uuid, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "delete from oath_job_chunks where environment_id = $1 and job_id = $2",
        env,
        job_id
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}
