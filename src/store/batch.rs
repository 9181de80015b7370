//! [`TokenBatch`]: tokens to create together, sealed, in item order; and the one way a batch is
//! created within the environment's quota, in item order ([`create_within_quota`]).

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::domain::job::{InvalidRow, ItemOutcome};
use crate::domain::{HashAlgorithm, NewToken, TokenKind, TokenType};

mod encoding;

pub use encoding::Unreadable;

/// Tokens to create together, in item order, each with the id it will have and its secret
/// already sealed for that id, and the items that are not tokens (unreadable file rows): a job's
/// chunk, or single creates committed together. Held as the column arrays the statements bind
/// (index `i` of every token array is one token), which only the store sees; a job's chunk is
/// stored as one value ([`TokenBatch::encode`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TokenBatch {
    /// Position within the chunk of each token.
    pub(super) offsets: Vec<i32>,
    pub(super) token_ids: Vec<Uuid>,
    pub(super) row_numbers: Vec<Option<i64>>,
    pub(super) serial_numbers: Vec<String>,
    pub(super) token_types: Vec<TokenType>,
    pub(super) otp_lengths: Vec<i16>,
    pub(super) hash_algorithms: Vec<HashAlgorithm>,
    pub(super) counters: Vec<Option<i64>>,
    pub(super) time_steps: Vec<Option<i32>>,
    pub(super) drifts: Vec<i32>,
    pub(super) secret_ciphertexts: Vec<Vec<u8>>,
    pub(super) secret_key_ids: Vec<String>,
    pub(super) masked_secrets: Vec<String>,
    pub(super) invalid_offsets: Vec<i32>,
    pub(super) invalid_row_numbers: Vec<i64>,
    pub(super) invalid_serials: Vec<Option<String>>,
    pub(super) invalid_messages: Vec<String>,
    /// Positions (in the token arrays) of tokens whose serial number an earlier item of the job
    /// has: duplicates, never written. Found when a job is stored; repeats within one chunk are
    /// also found when it is processed ([`first_occurrences`]).
    pub(super) repeated: Vec<i32>,
}

impl TokenBatch {
    /// Adds `token` at item `offset`, with the id it will have and its secret sealed for it;
    /// `repeated` when an earlier item of the job has its serial number.
    pub fn push_token(
        &mut self,
        offset: i32,
        id: Uuid,
        token: &NewToken,
        sealed: Sealed,
        repeated: bool,
    ) {
        if repeated {
            self.repeated.push(self.tokens() as i32);
        }
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

    /// Adds the item at `offset` that is not a token.
    pub fn push_invalid(&mut self, offset: i32, row: &InvalidRow) {
        self.invalid_offsets.push(offset);
        self.invalid_row_numbers.push(row.row_number);
        self.invalid_serials.push(row.serial_number.clone());
        self.invalid_messages.push(row.message.clone());
    }

    /// The tokens' ids, in item order.
    pub fn token_ids(&self) -> &[Uuid] {
        &self.token_ids
    }

    /// The ids and serial numbers of the tokens whose outcome (in `outcomes`, one per token) is
    /// `outcome`, in item order.
    pub fn tokens_with(
        &self,
        outcomes: &[ItemOutcome],
        outcome: ItemOutcome,
    ) -> (Vec<Uuid>, Vec<&str>) {
        outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == outcome)
            .map(|(i, _)| (self.token_ids[i], self.serial_numbers[i].as_str()))
            .unzip()
    }

    /// Items that are not tokens.
    pub fn invalid_items(&self) -> usize {
        self.invalid_offsets.len()
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
    pub(super) fn is_consistent(&self) -> bool {
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

/// Writes the tokens of `chunk` that are new and within the quota, in item order, and counts
/// them against it. Returns each token's outcome (created, duplicate, past the limit) and how
/// many were created. Combined single creates ([`crate::service::create_batch`]) near the limit.
pub async fn create_within_quota(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &TokenBatch,
    limit: i64,
) -> Result<(Vec<ItemOutcome>, i32), sqlx::Error> {
    let new =
        super::tokens::insert_new_from_chunk(tx, env, chunk, first_occurrences(chunk)).await?;
    take_quota(tx, env, chunk, new, limit).await
}

/// Counts the tokens of `chunk` just written (`new`, positions in it) against the quota. The quota is
/// taken last (after the token locks, as single creates do): items past the limit are deleted
/// again, in item order.
pub async fn take_quota(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &TokenBatch,
    mut new: Vec<usize>,
    limit: i64,
) -> Result<(Vec<ItemOutcome>, i32), sqlx::Error> {
    let room = super::quota::room(tx, env, limit).await? as usize;
    let mut outcomes = vec![ItemOutcome::Duplicate; chunk.tokens()];
    new.sort_unstable();
    for (n, &i) in new.iter().enumerate() {
        outcomes[i] = if n < room {
            ItemOutcome::Created
        } else {
            ItemOutcome::LimitExceeded
        };
    }
    if new.len() > room {
        let over: Vec<_> = new[room..].iter().map(|&i| chunk.token_ids[i]).collect();
        super::tokens::delete_written(tx, env, &over).await?;
    }
    let created = new.len().min(room) as i32;
    if created > 0 {
        super::quota::take(tx, env, i64::from(created), limit).await?;
    }
    Ok((outcomes, created))
}

/// The positions of the chunk's tokens whose serial number no earlier item of the job (or of
/// the chunk) has: a repeat is a duplicate of its first occurrence.
pub fn first_occurrences(chunk: &TokenBatch) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(chunk.tokens());
    (0..chunk.tokens())
        .filter(|&i| {
            seen.insert(chunk.serial_numbers[i].as_str())
                && chunk.repeated.binary_search(&(i as i32)).is_err()
        })
        .collect()
}
