//! Development tokens: HS256, signed with `auth.hs256_secret` (`oath-service dev-token`).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use uuid::Uuid;

use super::settings::MIN_HS256_SECRET_BYTES;
use super::AuthSettings;

/// Mint an HS256 token for development (`oath-service dev-token`): iss/aud from settings, `env`, `scope` (space-joined), `sub` = "dev", iat, nbf = now, exp = now + ttl. Errors when hs256_secret is not configured.
pub fn mint_dev_token(
    settings: &AuthSettings,
    env: Uuid,
    scopes: &[String],
    ttl: std::time::Duration,
) -> Result<String, String> {
    let secret = settings
        .hs256_secret
        .as_ref()
        .ok_or("auth.hs256_secret must be set to mint development tokens")?;
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err("auth.hs256_secret must be at least 32 bytes".into());
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.is_empty() || s.contains(|c: char| c.is_whitespace()))
    {
        return Err(format!(
            "invalid scope {bad:?}: scopes cannot be empty or contain spaces"
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "system clock is before 1970")?
        .as_secs();
    let claims = serde_json::json!({
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": "dev",
        "env": env.to_string(),
        "scope": scopes.join(" "),
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(ttl.as_secs()),
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign development token: {e}"))
}
