//! Secrets at rest: the database holds only ciphertext, sealed for its own row.

use oath_service::crypto::SecretCipher;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{parts, seed_token, spawn_app, SEED_SECRET};

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
