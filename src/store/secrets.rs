//! The key ids of stored secrets (`oath-service keys status`, the start-up check), and moving
//! stored secrets, of tokens, of queued job items and of webhook subscriptions, to the active
//! encryption key (`oath-service reencrypt`).

use sqlx::PgPool;

use crate::crypto::SecretCipher;

const BATCH: i64 = 500;

/// What one key id seals in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key_id: String,
    /// Secrets of tokens.
    pub token_secrets: i64,
    /// Secrets of job items not processed yet (their chunks are deleted as they commit).
    pub queued_job_items: i64,
    /// Sealed values of webhook subscriptions: each one's signing secret and its header values.
    pub subscription_secrets: i64,
}

/// Every key id that seals something in the database, with what it seals; sorted by id. Reads
/// every token (a sequential scan): for commands and start-up, not requests.
pub async fn key_uses(pool: &PgPool) -> Result<Vec<KeyUse>, sqlx::Error> {
    sqlx::query_as!(
        KeyUse,
        r#"select key_id as "key_id!",
                  sum(tokens)::bigint as "token_secrets!",
                  sum(items)::bigint as "queued_job_items!",
                  sum(subscriptions)::bigint as "subscription_secrets!"
           from (select secret_key_id as key_id, count(*) as tokens, 0::bigint as items,
                        0::bigint as subscriptions
                   from oath_tokens group by secret_key_id
                 union all
                 select k, 0, count(*), 0
                   from oath_job_chunks, unnest(secret_key_ids) as k group by k
                 union all
                 select k, 0, sum(n), 0
                   from oath_job_chunks, unnest(input_key_ids, input_key_items) as u(k, n)
                   group by k
                 union all
                 select k, 0, 0, count(*)
                   from subscriptions, unnest(array[secret_key_id, headers_key_id]) as k
                   group by k) as uses
           group by key_id
           order by key_id"#
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("a queued item of job {job_id} of environment {environment_id}: {source}")]
    QueuedItem {
        environment_id: uuid::Uuid,
        job_id: uuid::Uuid,
        source: crate::crypto::CryptoError,
    },
    #[error(
        "the queued items of job {job_id} of environment {environment_id} from item {first_idx}: \
         {source}; the job fails when a runner reaches them (or cancel it), then run this again"
    )]
    UnreadableChunk {
        environment_id: uuid::Uuid,
        job_id: uuid::Uuid,
        first_idx: i32,
        source: super::batch::Unreadable,
    },
    #[error("subscription {subscription_id} of environment {environment_id}: {source}")]
    Subscription {
        environment_id: uuid::Uuid,
        subscription_id: uuid::Uuid,
        source: crate::crypto::CryptoError,
    },
    #[error("token {token_id} of environment {environment_id}: {source}")]
    Crypto {
        environment_id: uuid::Uuid,
        token_id: uuid::Uuid,
        source: crate::crypto::CryptoError,
    },
}

/// Re-seals, batch by batch, every secret not sealed with the active key. Returns how many moved.
/// Safe to run beside the service: each batch is one short transaction over rows it has locked.
pub async fn reencrypt_all(pool: &PgPool, cipher: &SecretCipher) -> Result<u64, ReencryptError> {
    let active = cipher.active_key_id().to_string();
    let mut moved = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query!(
            r#"select environment_id, id, secret_ciphertext, secret_key_id
               from oath_tokens
               where secret_key_id <> $1
               limit $2
               for update skip locked"#,
            active,
            BATCH,
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let (mut envs, mut ids, mut ciphertexts) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let secret = cipher
                .open(
                    &row.secret_key_id,
                    &row.secret_ciphertext,
                    row.environment_id,
                    row.id,
                )
                .map_err(|source| ReencryptError::Crypto {
                    environment_id: row.environment_id,
                    token_id: row.id,
                    source,
                })?;
            ciphertexts.push(cipher.seal(&secret, row.environment_id, row.id).ciphertext);
            envs.push(row.environment_id);
            ids.push(row.id);
        }
        let updated = sqlx::query!(
            r#"update oath_tokens t
               set secret_ciphertext = v.ciphertext, secret_key_id = $4
               from unnest($1::uuid[], $2::uuid[], $3::bytea[]) as v(environment_id, id, ciphertext)
               where t.environment_id = v.environment_id and t.id = v.id"#,
            &envs,
            &ids,
            &ciphertexts,
            active,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        moved += updated;
    }
}

/// Re-seals the secrets of queued job items (chunks not processed yet) that are not sealed with
/// the active key, a chunk per transaction. Returns how many items moved. Safe beside running
/// jobs: a chunk a runner holds is skipped (`skip locked`) and left for the next run, and one
/// that commits meanwhile is deleted, so it is not found. A chunk stored as one value is decoded,
/// re-sealed and encoded again; one stored as arrays (before migration 20261208000002) keeps
/// its arrays.
pub async fn reencrypt_queued(pool: &PgPool, cipher: &SecretCipher) -> Result<u64, ReencryptError> {
    let active = cipher.active_key_id().to_string();
    let mut moved = 0u64;
    let mut after: Option<(uuid::Uuid, uuid::Uuid, i32)> = None;
    loop {
        let mut tx = pool.begin().await?;
        let (env0, job0, idx0) = after.unwrap_or((uuid::Uuid::nil(), uuid::Uuid::nil(), -1));
        let Some(chunk) = sqlx::query!(
            r#"select environment_id, job_id, first_idx, input, token_ids, secret_ciphertexts,
                      secret_key_ids
               from oath_job_chunks
               where (environment_id, job_id, first_idx) > ($2, $3, $4)
                 and (exists (select 1 from unnest(secret_key_ids) as k where k <> $1)
                      or exists (select 1 from unnest(input_key_ids) as k where k <> $1))
               order by environment_id, job_id, first_idx
               limit 1
               for update skip locked"#,
            active,
            env0,
            job0,
            idx0,
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(moved);
        };
        after = Some((chunk.environment_id, chunk.job_id, chunk.first_idx));
        let (env, job_id) = (chunk.environment_id, chunk.job_id);
        let reseal = |key_id: &str, ciphertext: &[u8], id: uuid::Uuid| {
            let secret = cipher.open(key_id, ciphertext, env, id).map_err(|source| {
                ReencryptError::QueuedItem {
                    environment_id: env,
                    job_id,
                    source,
                }
            })?;
            Ok::<_, ReencryptError>(cipher.seal(&secret, env, id).ciphertext)
        };
        if let Some(input) = chunk.input {
            let mut batch = super::batch::TokenBatch::decode(&input).map_err(|source| {
                ReencryptError::UnreadableChunk {
                    environment_id: env,
                    job_id,
                    first_idx: chunk.first_idx,
                    source,
                }
            })?;
            for i in 0..batch.tokens() {
                if batch.secret_key_ids[i] == active {
                    continue;
                }
                batch.secret_ciphertexts[i] = reseal(
                    &batch.secret_key_ids[i],
                    &batch.secret_ciphertexts[i],
                    batch.token_ids[i],
                )?;
                batch.secret_key_ids[i].clone_from(&active);
                moved += 1;
            }
            let (key_ids, key_items) = batch.key_counts();
            sqlx::query!(
                "update oath_job_chunks set input = $4, input_key_ids = $5, input_key_items = $6
                 where environment_id = $1 and job_id = $2 and first_idx = $3",
                env,
                job_id,
                chunk.first_idx,
                &batch.encode(),
                &key_ids,
                &key_items,
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            continue;
        }
        let token_ids = chunk.token_ids.unwrap_or_default();
        let old_ciphertexts = chunk.secret_ciphertexts.unwrap_or_default();
        let old_key_ids = chunk.secret_key_ids.unwrap_or_default();
        let mut ciphertexts = Vec::with_capacity(old_ciphertexts.len());
        let mut key_ids = Vec::with_capacity(old_key_ids.len());
        for ((id, ciphertext), key_id) in token_ids.iter().zip(&old_ciphertexts).zip(&old_key_ids) {
            if *key_id == active {
                ciphertexts.push(ciphertext.clone());
                key_ids.push(key_id.clone());
                continue;
            }
            ciphertexts.push(reseal(key_id, ciphertext, *id)?);
            key_ids.push(active.clone());
            moved += 1;
        }
        sqlx::query!(
            "update oath_job_chunks set secret_ciphertexts = $4, secret_key_ids = $5
             where environment_id = $1 and job_id = $2 and first_idx = $3",
            env,
            job_id,
            chunk.first_idx,
            &ciphertexts,
            &key_ids,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
}

/// Re-seals the signing secrets and header values of webhook subscriptions that are not sealed
/// with the active key, a batch per transaction. Returns how many subscriptions moved. Safe
/// beside delivery: a delivery opens what it claimed under either key, both being configured.
pub async fn reencrypt_subscriptions(
    pool: &PgPool,
    cipher: &SecretCipher,
) -> Result<u64, ReencryptError> {
    let active = cipher.active_key_id().to_string();
    let mut moved = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query!(
            r#"select environment_id, id, secret_ciphertext, secret_key_id, headers_ciphertext,
                      headers_key_id
               from subscriptions
               where secret_key_id <> $1 or headers_key_id <> $1
               limit $2
               for update skip locked"#,
            active,
            BATCH,
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let (mut envs, mut ids, mut secrets, mut headers) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (env, id) = (row.environment_id, row.id);
            let reseal = |key_id: &str, ciphertext: &[u8]| {
                let value = cipher.open(key_id, ciphertext, env, id).map_err(|source| {
                    ReencryptError::Subscription {
                        environment_id: env,
                        subscription_id: id,
                        source,
                    }
                })?;
                Ok::<_, ReencryptError>(cipher.seal(&value, env, id).ciphertext)
            };
            secrets.push(reseal(&row.secret_key_id, &row.secret_ciphertext)?);
            headers.push(reseal(&row.headers_key_id, &row.headers_ciphertext)?);
            envs.push(env);
            ids.push(id);
        }
        let updated = sqlx::query!(
            r#"update subscriptions s
               set secret_ciphertext = v.secret, secret_key_id = $5,
                   headers_ciphertext = v.headers, headers_key_id = $5
               from unnest($1::uuid[], $2::uuid[], $3::bytea[], $4::bytea[])
                    as v(environment_id, id, secret, headers)
               where s.environment_id = v.environment_id and s.id = v.id"#,
            &envs,
            &ids,
            &secrets,
            &headers,
            active,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        moved += updated;
    }
}
