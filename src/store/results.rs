//! `job_result_chunks`: what happened to each item of a job, one row of column arrays per chunk,
//! written in the chunk's transaction (as `oath_job_chunks` stores its input) and read back in
//! item order, a page at a time. Item `first_idx + i` is element `i` of every array; an array
//! that would hold only nulls is stored as null.

use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::batch::TokenBatch;
use super::chunks::ChunkKey;
use crate::domain::job::ItemOutcome;

/// Duplicates embedded in a create job's representation; all of them are in its results.
pub const EMBEDDED_DUPLICATES: i64 = 1000;

/// What happened to one item of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// The item's position in the job, from 0.
    pub idx: i32,
    pub row_number: Option<i64>,
    pub serial_number: Option<String>,
    pub token_id: Option<Uuid>,
    pub outcome: ItemOutcome,
    pub masked_secret: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Duplicate {
    pub serial_number: String,
    pub masked_secret: String,
}

const OUTCOME_CODES: [(ItemOutcome, u8); 7] = [
    (ItemOutcome::Created, b'C'),
    (ItemOutcome::Duplicate, b'D'),
    (ItemOutcome::Revoked, b'R'),
    (ItemOutcome::NotFound, b'N'),
    (ItemOutcome::SkippedPaired, b'P'),
    (ItemOutcome::LimitExceeded, b'L'),
    (ItemOutcome::Invalid, b'I'),
];

/// An outcome as stored: one `"char"`.
fn code(outcome: ItemOutcome) -> i8 {
    let (_, c) = OUTCOME_CODES
        .iter()
        .find(|(o, _)| *o == outcome)
        .expect("every outcome has a code");
    *c as i8
}

fn outcome_of(code: i8) -> Result<ItemOutcome, sqlx::Error> {
    OUTCOME_CODES
        .iter()
        .find(|(_, c)| *c as i8 == code)
        .map(|(o, _)| *o)
        .ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown job result outcome {code} in the database").into())
        })
}

/// One chunk's results as column arrays, in item order.
struct ResultChunk<'a> {
    outcomes: Vec<i8>,
    token_ids: Vec<Option<Uuid>>,
    serial_numbers: Vec<Option<&'a str>>,
    row_numbers: Vec<Option<i64>>,
    masked_secrets: Vec<Option<&'a str>>,
    messages: Vec<Option<&'a str>>,
}

impl<'a> ResultChunk<'a> {
    fn new(len: usize) -> Self {
        Self {
            outcomes: vec![0; len],
            token_ids: vec![None; len],
            serial_numbers: vec![None; len],
            row_numbers: vec![None; len],
            masked_secrets: vec![None; len],
            messages: vec![None; len],
        }
    }

    /// Item `at` of the chunk is `outcome`; its other columns are set by the caller.
    fn item(&mut self, at: i32, outcome: ItemOutcome) -> Result<usize, sqlx::Error> {
        let at = usize::try_from(at)
            .ok()
            .filter(|&at| self.outcomes.get(at) == Some(&0))
            .ok_or_else(|| {
                sqlx::Error::Decode(format!("job chunk item offset {at} out of place").into())
            })?;
        self.outcomes[at] = code(outcome);
        Ok(at)
    }

    async fn insert(&self, tx: &mut PgConnection, key: ChunkKey) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"insert into job_result_chunks
                   (environment_id, job_id, first_idx, outcomes, token_ids, serial_numbers,
                    row_numbers, masked_secrets, messages)
               values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
            key.env,
            key.job_id,
            key.first_idx,
            &self.outcomes,
            unless_all_null(&self.token_ids) as Option<&[Option<Uuid>]>,
            unless_all_null(&self.serial_numbers) as Option<&[Option<&str>]>,
            unless_all_null(&self.row_numbers) as Option<&[Option<i64>]>,
            unless_all_null(&self.masked_secrets) as Option<&[Option<&str>]>,
            unless_all_null(&self.messages) as Option<&[Option<&str>]>,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// None (a null array) when every value is null.
fn unless_all_null<T>(values: &[Option<T>]) -> Option<&[Option<T>]> {
    values.iter().any(Option::is_some).then_some(values)
}

/// The results of a create chunk: `outcomes[i]` is the outcome of the chunk's token `i` (its
/// token id is kept only when it was created), then its invalid items.
pub async fn write_create(
    tx: &mut PgConnection,
    key: ChunkKey,
    chunk: &TokenBatch,
    outcomes: &[ItemOutcome],
) -> Result<(), sqlx::Error> {
    let mut r = ResultChunk::new(chunk.len());
    for (i, &outcome) in outcomes.iter().enumerate() {
        let at = r.item(chunk.offsets[i], outcome)?;
        r.token_ids[at] = (outcome == ItemOutcome::Created).then_some(chunk.token_ids[i]);
        r.serial_numbers[at] = Some(&chunk.serial_numbers[i]);
        r.row_numbers[at] = chunk.row_numbers[i];
        r.masked_secrets[at] = Some(&chunk.masked_secrets[i]);
    }
    for (i, &offset) in chunk.invalid_offsets.iter().enumerate() {
        let at = r.item(offset, ItemOutcome::Invalid)?;
        r.serial_numbers[at] = chunk.invalid_serials[i].as_deref();
        r.row_numbers[at] = Some(chunk.invalid_row_numbers[i]);
        r.messages[at] = Some(&chunk.invalid_messages[i]);
    }
    r.insert(tx, key).await
}

/// One revoke item's result: the token id asked for, its serial when it was revoked.
pub struct RevokeResult {
    pub token_id: Uuid,
    pub serial_number: Option<String>,
    pub outcome: ItemOutcome,
}

/// The results of a revoke chunk, item `i` at `first_idx + i`.
pub async fn write_revoke(
    tx: &mut PgConnection,
    key: ChunkKey,
    results: &[RevokeResult],
) -> Result<(), sqlx::Error> {
    let mut r = ResultChunk::new(results.len());
    for (i, result) in results.iter().enumerate() {
        r.outcomes[i] = code(result.outcome);
        r.token_ids[i] = Some(result.token_id);
        r.serial_numbers[i] = result.serial_number.as_deref();
    }
    r.insert(tx, key).await
}

/// The first [`EMBEDDED_DUPLICATES`] duplicates of each of `jobs`, in item order, in one query.
/// Only the chunks holding a duplicate are read, and of them only those up to the one that holds
/// the last duplicate wanted are unpacked (each chunk's count is that of its outcome codes).
pub async fn duplicates(
    pool: &PgPool,
    env: Uuid,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Duplicate>>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select j.id as "job_id!", d.serial_number as "serial_number!",
                  d.masked_secret as "masked_secret!"
           from unnest($2::uuid[]) j(id)
           cross join lateral (
               select r.serial_number, r.masked_secret, c.first_idx, r.n
               from (
                   select first_idx, outcomes, serial_numbers, masked_secrets,
                          coalesce(sum(found) over (order by first_idx
                              rows between unbounded preceding and 1 preceding), 0) as before
                   from (
                       select first_idx, outcomes, serial_numbers, masked_secrets,
                              cardinality(array_positions(outcomes, $3)) as found
                       from job_result_chunks
                       where environment_id = $1 and job_id = j.id
                         and $3::"char" = any(outcomes)) f
               ) c
               cross join lateral unnest(c.outcomes, c.serial_numbers, c.masked_secrets)
                   with ordinality r(outcome, serial_number, masked_secret, n)
               where c.before < $4 and r.outcome = $3
               order by c.first_idx, r.n
               limit $4) d
           order by j.id, d.first_idx, d.n"#,
        env,
        jobs,
        code(ItemOutcome::Duplicate),
        EMBEDDED_DUPLICATES,
    )
    .fetch_all(pool)
    .await?;
    let mut by_job: HashMap<Uuid, Vec<Duplicate>> = HashMap::new();
    for r in rows {
        by_job.entry(r.job_id).or_default().push(Duplicate {
            serial_number: r.serial_number,
            masked_secret: r.masked_secret,
        });
    }
    Ok(by_job)
}

/// One page of results in item order, after item `after`, optionally of one outcome. Reads the
/// chunks from the one holding item `after + 1` (with `outcome`, only those holding it), and
/// unpacks only as many of them as the page needs: at most `limit` items plus one chunk are
/// sorted, whatever the job's size.
pub async fn page(
    pool: &PgPool,
    env: Uuid,
    job: Uuid,
    after: Option<i32>,
    outcome: Option<ItemOutcome>,
    limit: i64,
) -> Result<Vec<ItemResult>, sqlx::Error> {
    // The first item wanted; none follows the last index there can be.
    let Some(from) = after.map_or(Some(0), |a| a.checked_add(1)) else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query!(
        r#"select c.first_idx + (r.n - 1)::int as "idx!", r.row_number, r.serial_number,
                  r.token_id, r.outcome as "outcome!", r.masked_secret, r.message
           from (
               select *, coalesce(sum(found) over (order by first_idx
                             rows between unbounded preceding and 1 preceding), 0) as before
               from (
                   select first_idx, outcomes, token_ids, serial_numbers, row_numbers,
                          masked_secrets, messages,
                          -- The chunk's items wanted: from item $3 on, of outcome $4.
                          case when $4::"char" is null
                                   then cardinality(outcomes) - greatest($3 - first_idx, 0)
                               when first_idx >= $3
                                   then cardinality(array_positions(outcomes, $4))
                               else (select count(*) from unnest(array_positions(outcomes, $4)) p
                                     where first_idx + p - 1 >= $3)::int
                          end as found
                   from job_result_chunks
                   where environment_id = $1 and job_id = $2
                     and first_idx >= coalesce(
                         (select max(first_idx) from job_result_chunks
                          where environment_id = $1 and job_id = $2 and first_idx <= $3), 0)
                     and ($4::"char" is null or $4 = any(outcomes))) f
           ) c
           cross join lateral unnest(c.outcomes, c.row_numbers, c.serial_numbers, c.token_ids,
                                     c.masked_secrets, c.messages)
               with ordinality r(outcome, row_number, serial_number, token_id, masked_secret,
                                 message, n)
           where c.before < $5
             and c.first_idx + (r.n - 1)::int >= $3
             and ($4::"char" is null or r.outcome = $4)
           order by c.first_idx, r.n
           limit $5"#,
        env,
        job,
        from,
        outcome.map(code),
        limit,
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ItemResult {
                idx: r.idx,
                row_number: r.row_number,
                serial_number: r.serial_number,
                token_id: r.token_id,
                outcome: outcome_of(r.outcome)?,
                masked_secret: r.masked_secret,
                message: r.message,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_code() {
        for (outcome, _) in OUTCOME_CODES {
            assert_eq!(outcome_of(code(outcome)).unwrap(), outcome);
        }
        assert!(outcome_of(b'X' as i8).is_err());
        assert!(outcome_of(0).is_err());
    }
}
