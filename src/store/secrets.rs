//! Moving stored secrets to the active encryption key (`oath-service reencrypt`).

use sqlx::PgPool;

use crate::crypto::SecretCipher;

const BATCH: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
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
