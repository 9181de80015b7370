//! `oath_job_chunks`: a job's input, one row of column arrays per chunk of items, written when the
//! job is submitted and deleted when the chunk commits. [`CreateChunk`] is the one shape of a
//! create chunk, written and read alike; a revoke chunk is its token ids.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::domain::{HashAlgorithm, NewToken, TokenKind, TokenType};

/// A create chunk as column arrays: the tokens (index `i` of every token array), each secret
/// already sealed for its token's id, and the items that are not tokens (unreadable file rows).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CreateChunk {
    /// Position within the chunk of each token.
    pub offsets: Vec<i32>,
    pub token_ids: Vec<Uuid>,
    pub row_numbers: Vec<Option<i64>>,
    pub serial_numbers: Vec<String>,
    pub token_types: Vec<TokenType>,
    pub otp_lengths: Vec<i16>,
    pub hash_algorithms: Vec<HashAlgorithm>,
    pub counters: Vec<Option<i64>>,
    pub time_steps: Vec<Option<i32>>,
    pub drifts: Vec<i32>,
    pub secret_ciphertexts: Vec<Vec<u8>>,
    pub secret_key_ids: Vec<String>,
    pub masked_secrets: Vec<String>,
    pub invalid_offsets: Vec<i32>,
    pub invalid_row_numbers: Vec<i64>,
    pub invalid_serials: Vec<Option<String>>,
    pub invalid_messages: Vec<String>,
    /// Positions (in the token arrays) of tokens whose serial number an earlier item of the job
    /// has: duplicates, never written. Found when a job is stored; repeats within one chunk are
    /// also found when it is processed ([`crate::jobs::create::first_occurrences`]).
    pub repeated: Vec<i32>,
}

impl CreateChunk {
    /// Adds `token` at item `offset`, with the id it will have and its secret sealed for it.
    pub fn push_token(&mut self, offset: i32, id: Uuid, token: &NewToken, sealed: Sealed) {
        let (counter, time_step) = match token.kind {
            TokenKind::Hotp { counter } => (Some(counter), None),
            TokenKind::Totp { time_step } => (None, Some(time_step)),
        };
        self.offsets.push(offset);
        self.token_ids.push(id);
        self.row_numbers.push(token.row_number);
        self.serial_numbers
            .push(token.serial_number.as_str().to_string());
        self.token_types.push(token.kind.token_type());
        self.otp_lengths.push(i16::from(token.otp_length.get()));
        self.hash_algorithms.push(token.hash_algorithm);
        self.counters.push(counter);
        self.time_steps.push(time_step);
        self.drifts.push(token.drift);
        self.secret_ciphertexts.push(sealed.ciphertext);
        self.secret_key_ids.push(sealed.key_id);
        self.masked_secrets.push(token.secret.masked());
    }

    /// Tokens in the chunk (not counting the invalid items).
    pub fn tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Items in the chunk: tokens and invalid items.
    pub fn len(&self) -> usize {
        self.tokens() + self.invalid_offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every token array has one entry per token, and every invalid array one per invalid item.
    fn is_consistent(&self) -> bool {
        let n = self.tokens();
        let m = self.invalid_offsets.len();
        [
            self.offsets.len(),
            self.row_numbers.len(),
            self.serial_numbers.len(),
            self.token_types.len(),
            self.otp_lengths.len(),
            self.hash_algorithms.len(),
            self.counters.len(),
            self.time_steps.len(),
            self.drifts.len(),
            self.secret_ciphertexts.len(),
            self.secret_key_ids.len(),
            self.masked_secrets.len(),
        ]
        .iter()
        .all(|len| *len == n)
            && [
                self.invalid_row_numbers.len(),
                self.invalid_serials.len(),
                self.invalid_messages.len(),
            ]
            .iter()
            .all(|len| *len == m)
            && self.repeated.iter().all(|&i| (0..n as i32).contains(&i))
            && self.repeated.windows(2).all(|w| w[0] < w[1])
    }
}

/// Names one chunk of a job: the job, and the index of the chunk's first item in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkKey {
    pub env: Uuid,
    pub job_id: Uuid,
    pub first_idx: i32,
}

pub async fn insert_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    c: &CreateChunk,
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
/// another length or its arrays do not line up; an error when it holds a value no token can have.
pub async fn read_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    len: usize,
) -> Result<Option<CreateChunk>, sqlx::Error> {
    let Some(r) = sqlx::query!(
        r#"select offsets, token_ids, row_numbers as "row_numbers: Vec<Option<i64>>",
                  serial_numbers as "serial_numbers!", token_types as "token_types!",
                  otp_lengths as "otp_lengths!", hash_algorithms as "hash_algorithms!",
                  counters as "counters!: Vec<Option<i64>>",
                  time_steps as "time_steps!: Vec<Option<i32>>", drifts,
                  secret_ciphertexts as "secret_ciphertexts!", secret_key_ids as "secret_key_ids!",
                  masked_secrets as "masked_secrets!", invalid_offsets, invalid_row_numbers,
                  invalid_serials as "invalid_serials: Vec<Option<String>>", invalid_messages,
                  repeated
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
    let chunk = CreateChunk {
        offsets: r.offsets,
        token_ids: r.token_ids,
        row_numbers: r.row_numbers,
        serial_numbers: r.serial_numbers,
        token_types: super::decode_all(&r.token_types, TokenType::parse, "token type")?,
        otp_lengths: r.otp_lengths,
        hash_algorithms: super::decode_all(
            &r.hash_algorithms,
            HashAlgorithm::parse,
            "hash algorithm",
        )?,
        counters: r.counters,
        time_steps: r.time_steps,
        drifts: r.drifts,
        secret_ciphertexts: r.secret_ciphertexts,
        secret_key_ids: r.secret_key_ids,
        masked_secrets: r.masked_secrets,
        invalid_offsets: r.invalid_offsets,
        invalid_row_numbers: r.invalid_row_numbers,
        invalid_serials: r.invalid_serials,
        invalid_messages: r.invalid_messages,
        repeated: r.repeated,
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
    Ok(ids.filter(|ids| ids.len() == len))
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
