//! Secrets at rest: the database holds only ciphertext, sealed for its own row.

use oath_service::crypto::SecretCipher;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{
    create_job, numbered, parts, seed_token, spawn_app, spawn_app_with, SEED_SECRET,
};

#[sqlx::test]
async fn the_database_holds_no_plaintext_secret(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (status, body) = parts(app.create_token(&seed_token()).await).await;
    assert_eq!(status, 201);
    assert!(!body.to_string().to_uppercase().contains(SEED_SECRET));

    let secret = hex::decode(SEED_SECRET).unwrap();
    // Every column of every row, as text and as raw bytes.
    let dump: Vec<String> = sqlx::query_scalar("select row_to_json(t)::text from oath_tokens t")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(dump.len(), 1);
    let text = dump[0].to_uppercase();
    assert!(!text.contains(SEED_SECRET), "hex of the secret in {text}");
    let (ciphertext, key_id, env, id): (Vec<u8>, String, Uuid, Uuid) = sqlx::query_as(
        "select secret_ciphertext, secret_key_id, environment_id, id from oath_tokens",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!ciphertext
        .windows(secret.len())
        .any(|w| w == secret.as_slice()));
    assert_eq!(key_id, "a");

    // It is the real secret, sealed for this environment and token id.
    let (active, keys) = app.settings.crypto.decoded_keys().unwrap();
    let cipher = SecretCipher::new(active, &keys).unwrap();
    let opened = cipher.open(&key_id, &ciphertext, env, id).unwrap();
    assert_eq!(opened.expose(), secret.as_slice());
    assert!(cipher
        .open(&key_id, &ciphertext, Uuid::new_v4(), id)
        .is_err());
}

#[sqlx::test]
async fn reencrypt_moves_secrets_to_the_active_key(pool: PgPool) {
    let app = spawn_app(pool).await;
    assert_eq!(app.create_token(&seed_token()).await.status(), 201);
    let mut keys = app.settings.crypto.decoded_keys().unwrap().1;
    keys.insert("b".into(), zeroize::Zeroizing::new([7u8; 32]));
    let rotated = SecretCipher::new("b".into(), &keys).unwrap();
    let moved = oath_service::store::secrets::reencrypt_all(&app.pool, &rotated)
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let (ciphertext, key_id, env, id): (Vec<u8>, String, Uuid, Uuid) = sqlx::query_as(
        "select secret_ciphertext, secret_key_id, environment_id, id from oath_tokens",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(key_id, "b");
    let opened = rotated.open(&key_id, &ciphertext, env, id).unwrap();
    assert_eq!(
        opened.expose(),
        hex::decode(SEED_SECRET).unwrap().as_slice()
    );
    // Nothing left to move.
    assert_eq!(
        oath_service::store::secrets::reencrypt_all(&app.pool, &rotated)
            .await
            .unwrap(),
        0
    );
}

/// Queued job items are counted per key and moved to the active key whether their chunk is
/// stored as one value or, queued before migration 20261208000002, as arrays; an unreadable
/// value stops the command with the job it belongs to.
#[sqlx::test]
async fn reencrypt_moves_queued_items_of_either_chunk_form(pool: PgPool) {
    use oath_service::store::secrets::{key_uses, reencrypt_queued, KeyUse, ReencryptError};

    let app = spawn_app_with(pool.clone(), |s| s.jobs.chunk_size = 2).await;
    let job = app.submit(&create_job(numbered("Q", 0..5))).await;
    assert_eq!(app.store_chunks_as_arrays(Some(2)).await, 1);
    let queued = |key_id: &str| {
        vec![KeyUse {
            key_id: key_id.into(),
            token_secrets: 0,
            queued_job_items: 5,
            subscription_secrets: 0,
        }]
    };
    assert_eq!(key_uses(&app.pool).await.unwrap(), queued("a"));

    let mut keys = app.settings.crypto.decoded_keys().unwrap().1;
    keys.insert("b".into(), zeroize::Zeroizing::new([7u8; 32]));
    let rotated = SecretCipher::new("b".into(), &keys).unwrap();
    assert_eq!(reencrypt_queued(&app.pool, &rotated).await.unwrap(), 5);
    assert_eq!(reencrypt_queued(&app.pool, &rotated).await.unwrap(), 0);
    assert_eq!(key_uses(&app.pool).await.unwrap(), queued("b"));
    // Each chunk keeps its form.
    assert_eq!(
        app.count("select count(*) from oath_job_chunks where input is null")
            .await,
        1
    );

    // The moved items open under b alone: a runner with key b only creates every token.
    let b_only = spawn_app_with(pool, |s| {
        s.crypto.active_key_id = Some("b".into());
        s.crypto.keys = [(
            "b".to_string(),
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".to_string(),
        )]
        .into();
    })
    .await;
    b_only.run_jobs().await;
    let done = app.job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"], serde_json::json!({"created": 5}));
    assert_eq!(
        app.count("select count(*) from oath_tokens where secret_key_id = 'b'")
            .await,
        5
    );

    // A value damaged at rest cannot be re-sealed: the command names its job.
    let damaged = app.submit(&create_job(numbered("X", 0..1))).await;
    let damaged_id = Uuid::parse_str(damaged["id"].as_str().unwrap()).unwrap();
    sqlx::query("update oath_job_chunks set input = substring(input from 2) where job_id = $1")
        .bind(damaged_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let err = reencrypt_queued(&app.pool, &rotated).await.unwrap_err();
    assert!(
        matches!(err, ReencryptError::UnreadableChunk { job_id, .. } if job_id == damaged_id),
        "{err}"
    );
}
