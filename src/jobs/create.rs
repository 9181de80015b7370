//! One chunk of a CREATE_OATH_TOKENS job, inside the chunk's transaction: read the stored chunk
//! (its secrets are already sealed for the tokens' ids), skip serials the environment has or the
//! chunk repeats, COPY the new tokens in, apply the quota, COPY the result rows, consume the
//! chunk.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::queue::{consume, ChunkCounts, ClaimedJob};
use super::ChunkError;
use crate::domain::job::Outcome;
use crate::store::copy::CopyRows;

/// A stored create chunk: the tokens' columns, and the unreadable rows.
struct ChunkRow {
    offsets: Vec<i32>,
    token_ids: Vec<Uuid>,
    row_numbers: Vec<Option<i64>>,
    serial_numbers: Vec<String>,
    token_types: Vec<String>,
    otp_lengths: Vec<i16>,
    hash_algorithms: Vec<String>,
    counters: Vec<Option<i64>>,
    time_steps: Vec<Option<i32>>,
    drifts: Vec<i32>,
    secret_ciphertexts: Vec<Vec<u8>>,
    secret_key_ids: Vec<String>,
    masked_secrets: Vec<String>,
    invalid_offsets: Vec<i32>,
    invalid_row_numbers: Vec<i64>,
    invalid_serials: Vec<Option<String>>,
    invalid_messages: Vec<String>,
}

pub async fn process_chunk(
    tx: &mut PgConnection,
    job: &ClaimedJob,
    first_idx: i32,
    len: i32,
    limit: i64,
) -> Result<ChunkCounts, ChunkError> {
    let (env, job_id) = (job.environment_id, job.id);
    let chunk = sqlx::query_as!(
        ChunkRow,
        r#"select offsets, token_ids, row_numbers as "row_numbers: Vec<Option<i64>>",
                  serial_numbers as "serial_numbers!", token_types as "token_types!",
                  otp_lengths as "otp_lengths!", hash_algorithms as "hash_algorithms!",
                  counters as "counters!: Vec<Option<i64>>",
                  time_steps as "time_steps!: Vec<Option<i32>>", drifts,
                  secret_ciphertexts as "secret_ciphertexts!", secret_key_ids as "secret_key_ids!",
                  masked_secrets as "masked_secrets!", invalid_offsets, invalid_row_numbers,
                  invalid_serials as "invalid_serials: Vec<Option<String>>", invalid_messages
           from oath_job_chunks
           where environment_id = $1 and job_id = $2 and first_idx = $3"#,
        env,
        job_id,
        first_idx,
    )
    .fetch_optional(&mut *tx)
    .await?
    .filter(|c| {
        let tokens = c.token_ids.len();
        c.offsets.len() == tokens
            && c.serial_numbers.len() == tokens
            && c.drifts.len() == tokens
            && tokens + c.invalid_offsets.len() == len as usize
    })
    .ok_or(ChunkError::InputMissing)?;
    let tokens = chunk.token_ids.len();

    // Repeats within the chunk are duplicates of their first occurrence.
    let mut seen = HashSet::with_capacity(tokens);
    let firsts: Vec<usize> = (0..tokens)
        .filter(|&i| seen.insert(chunk.serial_numbers[i].as_str()))
        .collect();
    // Optimistically COPY them all: in a first import no serial exists yet. If one does (an
    // earlier chunk, another job, a single create), the COPY fails on the unique constraint; then
    // roll back to the savepoint, look the existing serials up, and COPY the rest. A concurrent
    // insert after that lookup fails the chunk, which is retried and then sees it.
    sqlx::query("savepoint chunk_copy")
        .execute(&mut *tx)
        .await?;
    let mut new = firsts.clone();
    if let Err(e) = copy_tokens(tx, env, &chunk, &mut new).await {
        if !matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
            return Err(e.into());
        }
        sqlx::query("rollback to savepoint chunk_copy")
            .execute(&mut *tx)
            .await?;
        let existing: HashSet<String> = sqlx::query_scalar!(
            // A join on the unique index, one probe per serial, whatever the statistics say.
            r#"select t.serial_number from unnest($2::text[]) s(serial)
               join oath_tokens t on t.environment_id = $1 and t.serial_number = s.serial"#,
            env,
            &chunk.serial_numbers,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        new = firsts
            .into_iter()
            .filter(|&i| !existing.contains(&chunk.serial_numbers[i]))
            .collect();
        copy_tokens(tx, env, &chunk, &mut new).await?;
    }

    // The quota, taken last (after the token locks, as single creates do) on the environment's
    // usage row: items past the limit are taken out again, in item order.
    let count = sqlx::query_scalar!(
        r#"insert into environment_usage as u (environment_id, token_count) values ($1, 0)
           on conflict (environment_id) do update set token_count = u.token_count
           returning token_count"#,
        env,
    )
    .fetch_one(&mut *tx)
    .await?;
    let room = (limit - count).max(0) as usize;
    // Indexed like the chunk's token arrays; the quota goes to tokens in item order.
    let mut outcomes = vec![Outcome::Duplicate; tokens];
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
        sqlx::query!(
            "delete from oath_tokens where environment_id = $1 and id = any($2)",
            env,
            &over,
        )
        .execute(&mut *tx)
        .await?;
    }
    let created = new.len().min(room) as i32;
    if created > 0 {
        sqlx::query!(
            "update environment_usage set token_count = token_count + $2 where environment_id = $1",
            env,
            i64::from(created),
        )
        .execute(&mut *tx)
        .await?;
    }

    let mut results = CopyRows::with_capacity(len as usize * 160);
    for (i, outcome) in outcomes.iter().enumerate() {
        let token_id = (*outcome == Outcome::Created).then_some(chunk.token_ids[i]);
        results
            .plain(env)
            .plain(job_id)
            .plain(first_idx + chunk.offsets[i])
            .opt(chunk.row_numbers[i])
            .text(&chunk.serial_numbers[i])
            .opt(token_id)
            .text(outcome.as_str())
            .text(&chunk.masked_secrets[i])
            .null()
            .end_row();
    }
    for (i, offset) in chunk.invalid_offsets.iter().enumerate() {
        results
            .plain(env)
            .plain(job_id)
            .plain(first_idx + offset)
            .plain(chunk.invalid_row_numbers[i])
            .opt_text(chunk.invalid_serials.get(i).and_then(Option::as_deref))
            .null()
            .text(Outcome::Invalid.as_str())
            .null()
            .opt_text(chunk.invalid_messages.get(i).map(String::as_str))
            .end_row();
    }
    results
        .send(
            tx,
            "job_results (environment_id, job_id, idx, row_number, serial_number, token_id, \
             outcome, masked_secret, message)",
        )
        .await?;
    consume(tx, job, first_idx).await?;

    let count_of = |o: Outcome| outcomes.iter().filter(|x| **x == o).count() as i32;
    Ok(ChunkCounts {
        processed: len,
        created,
        duplicates: count_of(Outcome::Duplicate),
        failed: count_of(Outcome::LimitExceeded) + chunk.invalid_offsets.len() as i32,
        ..ChunkCounts::default()
    })
}

/// COPYs the tokens at `positions` (sorted here by serial, so that concurrent jobs take
/// unique-index locks in one order) into `oath_tokens`.
async fn copy_tokens(
    tx: &mut PgConnection,
    env: Uuid,
    chunk: &ChunkRow,
    positions: &mut [usize],
) -> Result<(), sqlx::Error> {
    if positions.is_empty() {
        return Ok(());
    }
    positions.sort_unstable_by(|&a, &b| chunk.serial_numbers[a].cmp(&chunk.serial_numbers[b]));
    let mut rows = CopyRows::with_capacity(positions.len() * 200);
    for &i in positions.iter() {
        rows.plain(env)
            .plain(chunk.token_ids[i])
            .text(&chunk.serial_numbers[i])
            .text(&chunk.token_types[i])
            .plain(chunk.otp_lengths[i])
            .text(&chunk.hash_algorithms[i])
            .opt(chunk.counters[i])
            .opt(chunk.time_steps[i])
            .plain(chunk.drifts[i])
            .bytea(&chunk.secret_ciphertexts[i])
            .text(&chunk.secret_key_ids[i])
            .end_row();
    }
    rows.send(
        tx,
        "oath_tokens (environment_id, id, serial_number, type, otp_length, hash_algorithm, \
         counter, time_step, drift, secret_ciphertext, secret_key_id)",
    )
    .await?;
    Ok(())
}
