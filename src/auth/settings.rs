//! The `[auth]` settings and what start-up checks of them.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Shortest HS256 secret accepted: 256 bits, the HMAC-SHA256 output size.
pub(super) const MIN_HS256_SECRET_BYTES: usize = 32;
/// Clock leeway beyond this would keep expired tokens alive for too long.
const MAX_LEEWAY_SECONDS: u64 = 300;

pub(super) fn default_leeway_seconds() -> u64 {
    60
}

pub(super) fn default_jwks_cache_seconds() -> u64 {
    300
}

pub(super) fn default_jwks_refresh_min_seconds() -> u64 {
    30
}

pub(super) fn default_token_cache_size() -> usize {
    10_000
}

/// Largest `auth.token_cache_size`: a few hundred bytes a token.
const MAX_TOKEN_CACHE_SIZE: usize = 10_000_000;

/// The `[auth]` section of the configuration.
#[derive(Clone, Deserialize, Serialize)]
pub struct AuthSettings {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Audience that the `aud` claim must contain.
    pub audience: String,
    /// JWKS file read once at start-up.
    #[serde(default)]
    pub jwks_path: Option<PathBuf>,
    /// JWKS URL fetched at start-up (best effort), then cached and refreshed. https:// only,
    /// unless `allow_http_jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM file of CA certificates trusted for `jwks_url`, besides the system's CA store.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Allows an `http://` `jwks_url` (development only: the keys would travel unprotected).
    #[serde(default)]
    pub allow_http_jwks: bool,
    /// Enables HS256 with this shared secret (development only; at least 32 bytes).
    #[serde(default)]
    pub hs256_secret: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// How long a fetched JWKS is used before it is fetched again.
    #[serde(default = "default_jwks_cache_seconds")]
    pub jwks_cache_seconds: u64,
    /// Minimum interval between two JWKS fetches, whatever triggers them.
    #[serde(default = "default_jwks_refresh_min_seconds")]
    pub jwks_refresh_min_seconds: u64,
    /// Verified tokens remembered, by the SHA-256 of the token, until their `exp`; 0: none.
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_path", &self.jwks_path)
            .field("jwks_url", &self.jwks_url)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("allow_http_jwks", &self.allow_http_jwks)
            // The secret signs tokens; it must never reach logs or panic messages.
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("leeway_seconds", &self.leeway_seconds)
            .field("jwks_cache_seconds", &self.jwks_cache_seconds)
            .field("jwks_refresh_min_seconds", &self.jwks_refresh_min_seconds)
            .field("token_cache_size", &self.token_cache_size)
            .finish()
    }
}

impl AuthSettings {
    /// Validates the settings; the message names the offending key.
    pub fn check(&self) -> Result<(), String> {
        if self.issuer.trim().is_empty() {
            return Err("auth.issuer must not be empty".into());
        }
        if self.audience.trim().is_empty() {
            return Err("auth.audience must not be empty".into());
        }
        if self.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(format!(
                "auth.leeway_seconds must be at most {MAX_LEEWAY_SECONDS}"
            ));
        }
        if self.token_cache_size == 1 || self.token_cache_size > MAX_TOKEN_CACHE_SIZE {
            return Err(format!(
                "auth.token_cache_size must be 0 (off) or from 2 to {MAX_TOKEN_CACHE_SIZE}"
            ));
        }
        if self.jwks_path.is_none() && self.jwks_url.is_none() && self.hs256_secret.is_none() {
            return Err("auth.jwks_path, auth.jwks_url or auth.hs256_secret must be set".into());
        }
        if let Some(url) = &self.jwks_url {
            // Neither message repeats the URL: it may carry credentials.
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("https") => {}
                Some("http") if self.allow_http_jwks => {}
                Some("http") => {
                    return Err("auth.jwks_url must be an https:// URL \
                                (http:// only with auth.allow_http_jwks = true, for development)"
                        .into())
                }
                _ => return Err("auth.jwks_url must be an https:// URL".into()),
            }
        }
        if let Some(secret) = &self.hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err("auth.hs256_secret must be at least 32 bytes".into());
            }
        }
        Ok(())
    }
}
