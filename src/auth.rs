//! Bearer-token authentication for the OATH API.
//!
//! Every API call carries `Authorization: Bearer <JWT>`. This module verifies the JWT and turns it
//! into a [`Principal`]: the tenant environment (`env` claim, a UUID) plus the OAuth scopes it was
//! granted (space-separated `scope` claim). Handlers then call [`Principal::require`] with the
//! environment in the URL and the [`Scope`] the operation needs.
//!
//! Accepted tokens:
//! * asymmetric RS256, ES256 or EdDSA, verified with keys from a JWKS file (`auth.jwks_path`) and/or
//!   a JWKS URL (`auth.jwks_url`). A token with a `kid` uses the key with that `kid`; a token without
//!   a `kid` is accepted only if exactly one known key is for the token's `alg`. Each key allows one
//!   algorithm: its JWK `alg`, or else RSA→RS256, EC P-256→ES256, OKP Ed25519→EdDSA. JWKs that are
//!   not for signatures or of another type are skipped with a warning. Keys embedded in the token
//!   (`jwk`, `jku`, `x5u`, `x5c`) are never used.
//! * HS256, only when `auth.hs256_secret` is set (development and `oath-service dev-token`).
//!
//! Required claims: `iss` (the configured issuer), `aud` (string or array containing the configured
//! audience), `exp`, `env`; `nbf` is checked when present; `exp`/`nbf` allow `leeway_seconds`.
//!
//! The URL key set is fetched over HTTPS, trusting the system's CA store plus `jwks_ca_file`
//! (plain HTTP only with `allow_http_jwks`), cached for `jwks_cache_seconds` and refetched early when a token names an
//! unknown `kid`; fetches happen at most once per `jwks_refresh_min_seconds` and one at a time.
//! A stale set is still used while the URL is unreachable; with nothing cached the error is
//! [`AuthError::KeySetUnavailable`].
//!
//! A missing header is [`AuthError::Missing`]; every other rejected token is [`AuthError::Invalid`]
//! with a distinct reason meant for logs only: it never contains the token, a secret or key
//! material, so callers may log it as-is (and must not show it to clients).

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use uuid::Uuid;

/// Tokens larger than this are refused before any parsing; real access tokens are a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A JWKS document larger than this is refused so a misbehaving URL cannot exhaust memory.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Upper bound on one JWKS fetch, so a slow identity provider cannot hold requests for long.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest HS256 secret accepted: 256 bits, the HMAC-SHA256 output size.
const MIN_HS256_SECRET_BYTES: usize = 32;
/// Clock leeway beyond this would keep expired tokens alive for too long.
const MAX_LEEWAY_SECONDS: u64 = 300;
/// RSA keys below this size are refused when loading a key set.
const MIN_RSA_MODULUS_BYTES: usize = 256;

fn default_leeway_seconds() -> u64 {
    60
}

fn default_jwks_cache_seconds() -> u64 {
    300
}

fn default_jwks_refresh_min_seconds() -> u64 {
    30
}

/// The `[auth]` section of the configuration.
#[derive(Clone, Deserialize)]
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

/// OAuth scopes understood by the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    TokensRead,
    TokensWrite,
    JobsRead,
    JobsWrite,
    OtpValidate,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::TokensRead,
        Scope::TokensWrite,
        Scope::JobsRead,
        Scope::JobsWrite,
        Scope::OtpValidate,
    ];

    /// The scope as it appears in the `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TokensRead => "oath:tokens:read",
            Scope::TokensWrite => "oath:tokens:write",
            Scope::JobsRead => "oath:jobs:read",
            Scope::JobsWrite => "oath:jobs:write",
            Scope::OtpValidate => "oath:otp:validate",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Tenant environment the token was issued for.
    pub env: Uuid,
    /// `sub` claim, when present (for audit logs).
    pub subject: Option<String>,
    scopes: Vec<String>,
}

impl Principal {
    /// Builds a principal directly, e.g. for handler tests that bypass token verification.
    pub fn new<I, S>(env: Uuid, subject: Option<String>, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Principal {
            env,
            subject,
            scopes: scopes.into_iter().map(Into::into).collect(),
        }
    }

    /// All scopes granted by the token, including ones this service does not know.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    pub fn has_scope(&self, s: Scope) -> bool {
        self.scopes.iter().any(|g| g == s.as_str())
    }

    /// Scope first, then environment; both -> AuthError::Forbidden with a user-facing message.
    pub fn require(&self, env: Uuid, scope: Scope) -> Result<(), AuthError> {
        if !self.has_scope(scope) {
            return Err(AuthError::Forbidden(format!(
                "the access token lacks the scope {}",
                scope.as_str()
            )));
        }
        if self.env != env {
            return Err(AuthError::Forbidden(
                "the access token is not valid for this environment".into(),
            ));
        }
        Ok(())
    }
}

/// Why a request was not authenticated or not authorised.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No Authorization header: 401 with `WWW-Authenticate: Bearer`.
    #[error("missing bearer token")]
    Missing,
    /// Rejected token: 401 with `error="invalid_token"`. The reason is for logs only.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Authenticated but not allowed: 403 with this user-facing message.
    #[error("{0}")]
    Forbidden(String),
    /// The JWKS URL is unreachable and no key set is cached: 503.
    #[error("key set unavailable: {0}")]
    KeySetUnavailable(String),
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::Invalid(reason.into())
}

/// Makes an attacker-controlled header value safe and short enough to put in a log line.
fn loggable(value: &str) -> String {
    let mut out: String = value.chars().take(64).collect();
    out.retain(|c| c.is_ascii_graphic());
    out
}

/// A verification key and the single algorithm it may be used with.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
}

/// Only the `keys` array is parsed strictly, so one odd JWK cannot make the whole set unusable.
#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document; `source` names it in warnings.
    fn parse(bytes: &[u8], source: &str) -> Result<KeySet, String> {
        let raw: RawJwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
        let mut keys = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            match verify_key_from_jwk(value) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!(source, index, "ignoring JWK: {why}"),
            }
        }
        if keys.is_empty() {
            return Err("no usable signature key (RS256, ES256 or EdDSA)".into());
        }
        Ok(KeySet { keys })
    }
}

fn verify_key_from_jwk(value: serde_json::Value) -> Result<VerifyKey, String> {
    let kid = value.get("kid").and_then(|k| k.as_str()).map(loggable);
    let label = kid.as_deref().unwrap_or("(no kid)").to_owned();
    let jwk: Jwk = serde_json::from_value(value)
        .map_err(|_| format!("{label}: unsupported key type or malformed JWK"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err(format!("{label}: not a signature key (use)")),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Err(format!("{label}: key_ops does not include verify"));
        }
    }
    let derived = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| format!("{label}: RSA modulus is not base64url"))?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(format!("{label}: RSA key shorter than 2048 bits"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Shared secrets must never come from a key set: that is the HS256-confusion door.
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!("{label}: symmetric keys are not accepted"))
        }
        _ => return Err(format!("{label}: unsupported curve")),
    };
    let alg = match jwk.common.key_algorithm {
        None => derived,
        Some(KeyAlgorithm::RS256) if derived == Algorithm::RS256 => derived,
        Some(KeyAlgorithm::ES256) if derived == Algorithm::ES256 => derived,
        Some(KeyAlgorithm::EdDSA) if derived == Algorithm::EdDSA => derived,
        Some(other) => {
            return Err(format!(
                "{label}: alg {other:?} is not supported for this key type"
            ))
        }
    };
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|_| format!("{label}: invalid key parameters"))?;
    Ok(VerifyKey { kid, alg, key })
}

/// What the key lookup for one token found.
enum Selection {
    Use(VerifyKey),
    /// The token's kid names a key for another algorithm (algorithm confusion).
    WrongAlg(String),
    NotFound,
    /// No kid and several keys for the algorithm: refusing beats guessing.
    Ambiguous(usize),
}

fn select(sets: &[Arc<KeySet>], kid: Option<&str>, alg: Algorithm) -> Selection {
    let all = sets.iter().flat_map(|s| s.keys.iter());
    match kid {
        Some(kid) => {
            let mut named = all.filter(|k| k.kid.as_deref() == Some(kid)).peekable();
            if named.peek().is_none() {
                return Selection::NotFound;
            }
            match named.find(|k| k.alg == alg) {
                Some(k) => Selection::Use(k.clone()),
                None => Selection::WrongAlg(kid.to_owned()),
            }
        }
        None => {
            let matching: Vec<&VerifyKey> = all.filter(|k| k.alg == alg).collect();
            match matching.as_slice() {
                [] => Selection::NotFound,
                [one] => Selection::Use((*one).clone()),
                many => Selection::Ambiguous(many.len()),
            }
        }
    }
}

#[derive(Default)]
struct RemoteState {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The JWKS URL, its cache and the fetch rate limiter.
struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    cache_ttl: Duration,
    refresh_min: Duration,
    /// Short, non-async critical sections only, so a std lock is enough.
    state: RwLock<RemoteState>,
    /// Held across a fetch so that at most one is in flight.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl RemoteJwks {
    fn snapshot(&self) -> (Option<Arc<KeySet>>, bool) {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let fresh = st.fetched_at.is_some_and(|t| t.elapsed() < self.cache_ttl);
        (st.keys.clone(), fresh)
    }

    fn unavailable(&self) -> AuthError {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let why = st.last_error.as_deref().unwrap_or("no fetch attempted");
        AuthError::KeySetUnavailable(format!("no JWKS cached from auth.jwks_url ({why})"))
    }

    /// The key set for normal lookups: cached, refreshed after the TTL when the rate limit allows.
    async fn current(&self) -> Result<Arc<KeySet>, AuthError> {
        match self.snapshot() {
            (Some(keys), true) => Ok(keys),
            // Stale keys beat waiting: only refresh if nobody else is fetching right now.
            (Some(stale), false) => match self.fetch_lock.try_lock() {
                Ok(_guard) => Ok(self.refresh_locked().await.unwrap_or(stale)),
                Err(_) => Ok(stale),
            },
            (None, _) => {
                let _guard = self.fetch_lock.lock().await;
                self.refresh_locked()
                    .await
                    .ok_or_else(|| self.unavailable())
            }
        }
    }

    /// Fetches now unless rate-limited: at start-up, and when a token names a kid we do not know
    /// (the provider may have rotated keys).
    async fn refresh(&self) -> Result<Arc<KeySet>, AuthError> {
        // Waiting here lets a request reuse the result of a fetch already in flight.
        let _guard = self.fetch_lock.lock().await;
        self.refresh_locked()
            .await
            .ok_or_else(|| self.unavailable())
    }

    /// Fetches unless one happened within `refresh_min`; the caller holds `fetch_lock`.
    async fn refresh_locked(&self) -> Option<Arc<KeySet>> {
        {
            let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if st
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.refresh_min)
            {
                return st.keys.clone();
            }
        }
        let result = self.fetch().await;
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        st.last_attempt = Some(now);
        match result {
            Ok(keys) => {
                tracing::debug!(keys = keys.keys.len(), "fetched JWKS from auth.jwks_url");
                st.keys = Some(Arc::new(keys));
                st.fetched_at = Some(now);
                st.last_error = None;
            }
            Err(why) => {
                tracing::warn!(
                    cached = st.keys.is_some(),
                    "fetching JWKS from auth.jwks_url failed: {why}"
                );
                st.last_error = Some(why);
            }
        }
        st.keys.clone()
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            // The URL may carry credentials in its query: keep it out of the message.
            .map_err(|e| format!("request failed: {}", error_chain(e.without_url())))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading body failed: {}", error_chain(e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS document larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body, "auth.jwks_url")
    }
}

/// The CA certificates of `auth.jwks_ca_file`; errors name the key.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("auth.jwks_ca_file: cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("auth.jwks_ca_file: {}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "auth.jwks_ca_file: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The client for `auth.jwks_url`: rustls, the system's CA store plus `extra_roots`, and no
/// plain HTTP (not even through a redirect) unless `allow_http`.
fn jwks_client(
    extra_roots: Vec<reqwest::Certificate>,
    allow_http: bool,
) -> Result<reqwest::Client, String> {
    let has_extra_roots = !extra_roots.is_empty();
    let mut builder = reqwest::Client::builder()
        .timeout(JWKS_FETCH_TIMEOUT)
        .connect_timeout(JWKS_FETCH_TIMEOUT)
        .user_agent(concat!("oath-service/", env!("CARGO_PKG_VERSION")))
        .https_only(!allow_http);
    for cert in extra_roots {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| {
        // The CA file is the likeliest cause: its certificates are parsed only here.
        let key = if has_extra_roots {
            "auth.jwks_ca_file"
        } else {
            "auth.jwks_url"
        };
        format!("{key}: cannot build the HTTPS client: {}", error_chain(e))
    })
}

/// reqwest's top-level message ("error sending request") hides the cause an operator needs.
pub(crate) fn error_chain(error: reqwest::Error) -> String {
    let mut out = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Claims this module reads besides the registered ones checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    env: Option<serde_json::Value>,
    #[serde(default)]
    sub: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<serde_json::Value>,
}

/// Verifies bearer tokens. Cheap to share behind an `Arc`.
pub struct Authenticator {
    /// Template with issuer, audience, leeway and required claims; only the algorithm varies.
    validation: Validation,
    hs256: Option<DecodingKey>,
    file_keys: Option<Arc<KeySet>>,
    remote: Option<RemoteJwks>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Summary only: keys and secrets stay out of debug output.
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("file_keys", &self.file_keys.as_ref().map(|k| k.keys.len()))
            .field("jwks_url", &self.remote.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Loads the JWKS file (error if unreadable/invalid: message names auth.jwks_path), prepares HS256 if configured.
    /// For jwks_url, tries one fetch but start-up does not fail if it is unreachable (logs a warning; fetched lazily).
    pub async fn new(settings: &AuthSettings) -> Result<Self, String> {
        settings.check()?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = settings.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;

        let file_keys = match &settings.jwks_path {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("auth.jwks_path: cannot read {}: {e}", path.display()))?;
                let set = KeySet::parse(&bytes, "auth.jwks_path")
                    .map_err(|e| format!("auth.jwks_path: {}: {e}", path.display()))?;
                tracing::info!(keys = set.keys.len(), "loaded JWKS from auth.jwks_path");
                Some(Arc::new(set))
            }
        };

        // Read even without a URL, so that a wrong path stops start-up before it matters.
        let extra_roots = match &settings.jwks_ca_file {
            None => Vec::new(),
            Some(path) => read_ca_file(path)?,
        };

        let remote = match &settings.jwks_url {
            None => None,
            Some(url) => {
                let client = jwks_client(extra_roots, settings.allow_http_jwks)?;
                let remote = RemoteJwks {
                    url: url.clone(),
                    client,
                    cache_ttl: Duration::from_secs(settings.jwks_cache_seconds),
                    refresh_min: Duration::from_secs(settings.jwks_refresh_min_seconds),
                    state: RwLock::new(RemoteState::default()),
                    fetch_lock: tokio::sync::Mutex::new(()),
                };
                // Best effort: the identity provider may come up after us.
                if remote.refresh().await.is_err() {
                    tracing::warn!("auth.jwks_url unreachable at start-up; will retry on demand");
                }
                Some(remote)
            }
        };

        let hs256 = settings.hs256_secret.as_ref().map(|secret| {
            tracing::warn!(
                "auth.hs256_secret is set: HS256 tokens are accepted (development only)"
            );
            DecodingKey::from_secret(secret.as_bytes())
        });

        Ok(Authenticator {
            validation,
            hs256,
            file_keys,
            remote,
        })
    }

    /// `authorization` is the raw Authorization header value, if any.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization)?;
        let (alg, kid) = parse_header(token)?;

        let key = match alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => VerifyKey {
                    kid: None,
                    alg,
                    key: key.clone(),
                },
                None => {
                    return Err(invalid(
                        "HS256 token but auth.hs256_secret is not configured",
                    ))
                }
            },
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                self.resolve_key(kid.as_deref(), alg).await?
            }
            other => return Err(invalid(format!("algorithm {other:?} is not accepted"))),
        };

        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.alg];
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| invalid(describe_jwt_error(e.kind(), &key)))?;
        principal_from_claims(data.claims)
    }

    async fn resolve_key(&self, kid: Option<&str>, alg: Algorithm) -> Result<VerifyKey, AuthError> {
        let mut sets: Vec<Arc<KeySet>> = self.file_keys.iter().cloned().collect();
        let mut selection = select(&sets, kid, alg);
        if let Some(remote) = &self.remote {
            // A kid found in the file needs no network; anything else consults the URL set.
            let settled = kid.is_some() && !matches!(selection, Selection::NotFound);
            if !settled {
                sets.push(remote.current().await?);
                selection = select(&sets, kid, alg);
                if matches!(selection, Selection::NotFound) {
                    sets.pop();
                    sets.push(remote.refresh().await?);
                    selection = select(&sets, kid, alg);
                }
            }
        }
        match selection {
            Selection::Use(key) => Ok(key),
            Selection::WrongAlg(kid) => Err(invalid(format!(
                "algorithm {alg:?} is not allowed for key {:?}",
                loggable(&kid)
            ))),
            Selection::NotFound => Err(match kid {
                Some(kid) => invalid(format!("unknown kid {:?}", loggable(kid))),
                None => invalid(format!("no kid and no {alg:?} key configured")),
            }),
            Selection::Ambiguous(n) => Err(invalid(format!(
                "no kid and {n} keys allow {alg:?}; a kid is required"
            ))),
        }
    }
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive).
fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = match authorization.map(str::trim) {
        None | Some("") => return Err(AuthError::Missing),
        Some(v) => v,
    };
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(invalid("authorization scheme is not Bearer"));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(invalid("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("token too large"));
    }
    if token.split('.').count() != 3 || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(invalid("malformed token: not a compact JWS"));
    }
    Ok(token)
}

/// Reads `alg` and `kid` ourselves first, so `none` and unknown algorithms get distinct reasons.
fn parse_header(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| invalid("malformed token: header is not base64url"))?;
    let header: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("malformed token: header is not JSON"))?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| invalid("malformed token: header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(invalid("unsigned token (alg none)"));
    }
    let alg = Algorithm::from_str(alg)
        .map_err(|_| invalid(format!("unsupported algorithm {:?}", loggable(alg))))?;
    // RFC 7515: a `crit` extension we do not implement must make the token invalid.
    if header.get("crit").is_some() {
        return Err(invalid("unsupported crit header"));
    }
    let parsed: Header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid("malformed token: invalid header"))?;
    Ok((alg, parsed.kid))
}

fn describe_jwt_error(kind: &ErrorKind, key: &VerifyKey) -> String {
    let key_name = key.kid.as_deref().unwrap_or("(no kid)");
    match kind {
        ErrorKind::InvalidSignature => format!("bad signature (key {key_name:?})"),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("malformed {claim} claim"),
        ErrorKind::InvalidAlgorithm => format!("algorithm not allowed for key {key_name:?}"),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            format!("key {key_name:?} is unusable")
        }
        // serde messages can quote claim values: say only where it failed.
        ErrorKind::Json(_) => {
            "malformed token: claims are not valid JSON of the expected shape".into()
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
            "malformed token: bad encoding".into()
        }
        other => format!("token rejected ({})", kind_name(other)),
    }
}

/// The variant name only: some variants carry data we do not want in logs.
fn kind_name(kind: &ErrorKind) -> String {
    let debug = format!("{kind:?}");
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn principal_from_claims(claims: Claims) -> Result<Principal, AuthError> {
    let env = match claims.env {
        None | Some(serde_json::Value::Null) => return Err(invalid("missing env claim")),
        Some(serde_json::Value::String(s)) => {
            Uuid::parse_str(&s).map_err(|_| invalid("env claim is not a UUID"))?
        }
        Some(_) => return Err(invalid("env claim is not a UUID string")),
    };
    let subject = match claims.sub {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err(invalid("sub claim is not a string")),
    };
    let scopes = match claims.scope {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => {
            let unique: HashSet<&str> = s.split_ascii_whitespace().collect();
            let mut scopes: Vec<String> = unique.into_iter().map(str::to_owned).collect();
            scopes.sort_unstable();
            scopes
        }
        Some(_) => return Err(invalid("scope claim is not a space-separated string")),
    };
    Ok(Principal {
        env,
        subject,
        scopes,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{json, Value};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/jwt/rsa-private.txt");
    const RSA2_PRIVATE: &str = include_str!("../tests/fixtures/jwt/rsa2-private.txt");
    const EC_PRIVATE: &str = include_str!("../tests/fixtures/jwt/ec-private.txt");
    const ED_PRIVATE: &str = include_str!("../tests/fixtures/jwt/ed-private.txt");
    const JWKS: &str = include_str!("../tests/fixtures/jwt/jwks.json");
    const JWKS_ROTATED: &str = include_str!("../tests/fixtures/jwt/jwks-rotated.json");
    const JWKS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/jwks.json");

    const ISS: &str = "https://idp.example.test";
    const AUD: &str = "oath-service";
    const ENV: &str = "4b7d4a66-1a3c-4c38-9a35-0d2f9d1f4e21";
    const SECRET: &str = "dev-secret-dev-secret-dev-secret-0123";

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn settings() -> AuthSettings {
        AuthSettings {
            issuer: ISS.into(),
            audience: AUD.into(),
            jwks_path: Some(JWKS_PATH.into()),
            jwks_url: None,
            jwks_ca_file: None,
            allow_http_jwks: false,
            hs256_secret: None,
            leeway_seconds: default_leeway_seconds(),
            jwks_cache_seconds: default_jwks_cache_seconds(),
            jwks_refresh_min_seconds: default_jwks_refresh_min_seconds(),
        }
    }

    async fn file_auth() -> Authenticator {
        Authenticator::new(&settings()).await.unwrap()
    }

    async fn file_and_hs256_auth() -> Authenticator {
        let mut s = settings();
        s.hs256_secret = Some(SECRET.into());
        Authenticator::new(&s).await.unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "aud": AUD,
            "sub": "client-1",
            "env": ENV,
            "scope": "oath:tokens:read oath:otp:validate",
            "iat": now(),
            "exp": now() + 300,
        })
    }

    fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
            other => panic!("no test key for {other:?}"),
        };
        sign_with(alg, kid, claims, &key)
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, Some("rsa-1"), claims)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    async fn reason(auth: &Authenticator, token: &str) -> String {
        match auth.authenticate(Some(&bearer(token))).await {
            Err(AuthError::Invalid(reason)) => {
                assert!(!reason.contains(token), "reason leaks the token");
                reason
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    async fn assert_rejected(auth: &Authenticator, token: &str, expected: &str) {
        let reason = reason(auth, token).await;
        assert!(
            reason.contains(expected),
            "reason {reason:?} does not mention {expected:?}"
        );
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn env() -> Uuid {
        Uuid::parse_str(ENV).unwrap()
    }

    #[test]
    fn authenticator_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Authenticator>();
        check::<Arc<Authenticator>>();
    }

    #[tokio::test]
    async fn accepts_rs256_es256_eddsa_and_hs256() {
        let auth = file_and_hs256_auth().await;
        let tokens = [
            sign(Algorithm::RS256, Some("rsa-1"), &claims()),
            sign(Algorithm::ES256, Some("ec-1"), &claims()),
            sign(Algorithm::EdDSA, Some("ed-1"), &claims()),
            sign(Algorithm::HS256, None, &claims()),
        ];
        for token in tokens {
            let p = auth.authenticate(Some(&bearer(&token))).await.unwrap();
            assert_eq!(p.env, env());
            assert_eq!(p.subject.as_deref(), Some("client-1"));
        }
    }

    #[tokio::test]
    async fn bearer_scheme_is_case_insensitive() {
        let auth = file_auth().await;
        let token = rs256(&claims());
        for header in [format!("bearer {token}"), format!("BEARER  {token} ")] {
            auth.authenticate(Some(&header)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn scopes_are_parsed() {
        let auth = file_auth().await;
        let p = auth
            .authenticate(Some(&bearer(&rs256(&claims()))))
            .await
            .unwrap();
        assert!(p.has_scope(Scope::TokensRead));
        assert!(p.has_scope(Scope::OtpValidate));
        assert!(!p.has_scope(Scope::TokensWrite));
        assert_eq!(p.scopes(), ["oath:otp:validate", "oath:tokens:read"]);

        let mut c = claims();
        c.as_object_mut().unwrap().remove("scope");
        let p = auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
        assert!(Scope::ALL.iter().all(|s| !p.has_scope(*s)));
    }

    #[test]
    fn scope_strings() {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "oath:tokens:read",
                "oath:tokens:write",
                "oath:jobs:read",
                "oath:jobs:write",
                "oath:otp:validate"
            ]
        );
    }

    #[test]
    fn require_checks_scope_then_environment() {
        let p = Principal::new(env(), None, ["oath:tokens:read"]);
        assert!(p.require(env(), Scope::TokensRead).is_ok());
        match p.require(env(), Scope::TokensWrite) {
            Err(AuthError::Forbidden(m)) => {
                assert_eq!(m, "the access token lacks the scope oath:tokens:write")
            }
            other => panic!("{other:?}"),
        }
        match p.require(Uuid::new_v4(), Scope::TokensRead) {
            Err(AuthError::Forbidden(m)) => {
                assert_eq!(m, "the access token is not valid for this environment")
            }
            other => panic!("{other:?}"),
        }
        // Scope is checked first, so a wrong env with a missing scope reports the scope.
        match p.require(Uuid::new_v4(), Scope::JobsRead) {
            Err(AuthError::Forbidden(m)) => assert!(m.contains("oath:jobs:read")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_header_and_wrong_scheme() {
        let auth = file_auth().await;
        assert!(matches!(
            auth.authenticate(None).await,
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            auth.authenticate(Some("  ")).await,
            Err(AuthError::Missing)
        ));
        let token = rs256(&claims());
        match auth.authenticate(Some(&format!("Basic {token}"))).await {
            Err(AuthError::Invalid(r)) => assert!(r.contains("not Bearer")),
            other => panic!("{other:?}"),
        }
        match auth.authenticate(Some("Bearer")).await {
            Err(AuthError::Invalid(r)) => assert!(r.contains("empty")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn malformed_tokens_rejected() {
        let auth = file_auth().await;
        assert_rejected(&auth, "abc", "malformed").await;
        assert_rejected(&auth, "a.b.c.d", "malformed").await;
        assert_rejected(&auth, "!!!.e30.sig", "malformed").await;
        let header = URL_SAFE_NO_PAD.encode("not json");
        assert_rejected(&auth, &format!("{header}.e30.sig"), "malformed").await;
        let header = b64(&json!({"typ": "JWT"}));
        assert_rejected(&auth, &format!("{header}.e30.sig"), "no alg").await;
        let header = b64(&json!({"alg": "XS999"}));
        assert_rejected(&auth, &format!("{header}.e30.sig"), "unsupported algorithm").await;
    }

    #[tokio::test]
    async fn alg_none_rejected_in_any_case() {
        let auth = file_and_hs256_auth().await;
        for alg in ["none", "None", "NONE", "nOnE"] {
            let token = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "typ": "JWT"})),
                b64(&claims())
            );
            assert_rejected(&auth, &token, "alg none").await;
        }
    }

    #[tokio::test]
    async fn hs256_rejected_without_secret() {
        let auth = file_auth().await;
        let token = sign(Algorithm::HS256, None, &claims());
        assert_rejected(&auth, &token, "hs256_secret is not configured").await;
        // Even when signed with the public key bytes, as in the classic confusion attack.
        let token = sign_with(
            Algorithm::HS256,
            Some("rsa-1"),
            &claims(),
            &EncodingKey::from_secret(JWKS.as_bytes()),
        );
        assert_rejected(&auth, &token, "hs256_secret is not configured").await;
    }

    /// PKCS#1 RSAPublicKey DER of the `rsa-1` JWK, i.e. what an attacker can derive from the JWKS.
    fn rsa1_public_der() -> Vec<u8> {
        fn der_len(len: usize, out: &mut Vec<u8>) {
            if len < 0x80 {
                out.push(len as u8);
            } else {
                let bytes: Vec<u8> = len
                    .to_be_bytes()
                    .into_iter()
                    .skip_while(|b| *b == 0)
                    .collect();
                out.push(0x80 | bytes.len() as u8);
                out.extend(bytes);
            }
        }
        fn der_uint(mut bytes: Vec<u8>, out: &mut Vec<u8>) {
            if bytes[0] & 0x80 != 0 {
                bytes.insert(0, 0);
            }
            out.push(0x02);
            der_len(bytes.len(), out);
            out.extend(bytes);
        }
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["kid"], "rsa-1");
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let mut body = Vec::new();
        der_uint(n, &mut body);
        der_uint(e, &mut body);
        let mut der = vec![0x30];
        der_len(body.len(), &mut der);
        der.extend(body);
        der
    }

    #[tokio::test]
    async fn hs256_signed_with_rsa_public_key_rejected() {
        let auth = file_and_hs256_auth().await;
        let der = rsa1_public_der();
        let body = STANDARD.encode(&der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
            lines.join("\n")
        );
        // Sanity: the DER really is the rsa-1 public key, so the attack below is the real one.
        let rs = rs256(&claims());
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[AUD]);
        jsonwebtoken::decode::<Value>(&rs, &DecodingKey::from_rsa_der(&der), &v).unwrap();

        for secret in [der.as_slice(), pem.as_bytes(), JWKS.as_bytes()] {
            let key = EncodingKey::from_secret(secret);
            for kid in [Some("rsa-1"), None] {
                let token = sign_with(Algorithm::HS256, kid, &claims(), &key);
                assert_rejected(&auth, &token, "bad signature").await;
            }
        }
    }

    #[tokio::test]
    async fn algorithm_not_allowed_by_key_rejected() {
        let auth = file_auth().await;
        // An RS256 header naming the EC key.
        let token = sign(Algorithm::RS256, Some("ec-1"), &claims());
        assert_rejected(&auth, &token, "not allowed for key").await;
        // An ES256 header naming the RSA key.
        let token = sign(Algorithm::ES256, Some("rsa-1"), &claims());
        assert_rejected(&auth, &token, "not allowed for key").await;
        // Algorithms outside RS256/ES256/EdDSA/HS256 are refused outright.
        let token = format!(
            "{}.{}.sig",
            b64(&json!({"alg": "RS512", "kid": "rsa-1"})),
            b64(&claims())
        );
        assert_rejected(&auth, &token, "not accepted").await;
    }

    #[tokio::test]
    async fn token_without_kid_needs_a_unique_key() {
        let auth = file_auth().await;
        // One key per algorithm in jwks.json, so no kid is fine.
        let token = sign(Algorithm::ES256, None, &claims());
        auth.authenticate(Some(&bearer(&token))).await.unwrap();

        let mut s = settings();
        s.jwks_path = Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/jwt/jwks-rotated.json"
            )
            .into(),
        );
        let rotated = Authenticator::new(&s).await.unwrap();
        let token = sign(Algorithm::RS256, None, &claims());
        assert_rejected(&rotated, &token, "a kid is required").await;
        let token = sign(Algorithm::EdDSA, None, &claims());
        assert_rejected(&rotated, &token, "no EdDSA key").await;
    }

    #[tokio::test]
    async fn expiry_honours_leeway() {
        let auth = file_auth().await;
        let mut c = claims();
        c["exp"] = json!(now() - 30);
        auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
        c["exp"] = json!(now() - 120);
        assert_rejected(&auth, &rs256(&c), "expired").await;
    }

    #[tokio::test]
    async fn nbf_in_future_rejected() {
        let auth = file_auth().await;
        let mut c = claims();
        c["nbf"] = json!(now() + 30);
        auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
        c["nbf"] = json!(now() + 600);
        assert_rejected(&auth, &rs256(&c), "not yet valid").await;
    }

    #[tokio::test]
    async fn wrong_issuer_and_audience_rejected() {
        let auth = file_auth().await;
        let mut c = claims();
        c["iss"] = json!("https://evil.example.test");
        assert_rejected(&auth, &rs256(&c), "wrong issuer").await;
        let mut c = claims();
        c["aud"] = json!("another-service");
        assert_rejected(&auth, &rs256(&c), "wrong audience").await;
        c["aud"] = json!(["another-service", "third"]);
        assert_rejected(&auth, &rs256(&c), "wrong audience").await;
    }

    #[tokio::test]
    async fn audience_array_containing_ours_accepted() {
        let auth = file_auth().await;
        let mut c = claims();
        c["aud"] = json!(["another-service", AUD]);
        auth.authenticate(Some(&bearer(&rs256(&c)))).await.unwrap();
    }

    #[tokio::test]
    async fn missing_claims_rejected() {
        let auth = file_auth().await;
        for claim in ["exp", "iss", "aud", "env"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(claim);
            assert_rejected(&auth, &rs256(&c), &format!("missing {claim} claim")).await;
        }
    }

    #[tokio::test]
    async fn env_must_be_a_uuid() {
        let auth = file_auth().await;
        let mut c = claims();
        c["env"] = json!("production");
        assert_rejected(&auth, &rs256(&c), "not a UUID").await;
        c["env"] = json!(42);
        assert_rejected(&auth, &rs256(&c), "not a UUID").await;
    }

    #[tokio::test]
    async fn tampered_payload_rejected() {
        let auth = file_auth().await;
        let token = rs256(&claims());
        let dot = token.find('.').unwrap();
        let at = dot + 10;
        let mut bytes = token.into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_rejected(&auth, &tampered, "bad signature").await;
        // Signed by a key that is not in the set but claims a known kid.
        let foreign = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
        let token = sign_with(Algorithm::RS256, Some("rsa-1"), &claims(), &foreign);
        assert_rejected(&auth, &token, "bad signature").await;
    }

    #[tokio::test]
    async fn unknown_kid_rejected() {
        let auth = file_auth().await;
        let token = sign(Algorithm::RS256, Some("rsa-9"), &claims());
        assert_rejected(&auth, &token, "unknown kid").await;
    }

    #[tokio::test]
    async fn settings_are_checked() {
        let mut s = settings();
        assert!(s.check().is_ok());
        s.jwks_path = None;
        assert_eq!(
            s.check().unwrap_err(),
            "auth.jwks_path, auth.jwks_url or auth.hs256_secret must be set"
        );
        s.hs256_secret = Some("short".into());
        assert_eq!(
            s.check().unwrap_err(),
            "auth.hs256_secret must be at least 32 bytes"
        );
        s.hs256_secret = Some(SECRET.into());
        assert!(s.check().is_ok());
        s.issuer = " ".into();
        assert!(s.check().unwrap_err().contains("auth.issuer"));
        s.issuer = ISS.into();
        s.audience = String::new();
        assert!(s.check().unwrap_err().contains("auth.audience"));
        let debug = format!("{s:?}");
        assert!(debug.contains("[redacted]") && !debug.contains(SECRET));
    }

    #[tokio::test]
    async fn jwks_url_is_https_unless_http_is_allowed() {
        let mut s = url_settings("http://127.0.0.1:9/jwks.json?key=hunter2", 300, 30);
        s.allow_http_jwks = false;
        let err = s.check().unwrap_err();
        assert!(
            err.starts_with("auth.jwks_url must be an https:// URL")
                && err.contains("auth.allow_http_jwks"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "the URL stays out: {err}");
        assert_eq!(Authenticator::new(&s).await.unwrap_err(), err);
        s.jwks_url = Some("ftp://127.0.0.1/jwks.json".into());
        assert_eq!(
            s.check().unwrap_err(),
            "auth.jwks_url must be an https:// URL"
        );
        s.jwks_url = Some("HTTPS://idp.example.test/jwks.json".into());
        assert!(s.check().is_ok());
        s.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
        s.allow_http_jwks = true;
        assert!(s.check().is_ok());
    }

    #[tokio::test]
    async fn bad_jwks_ca_file_names_the_setting() {
        let mut s = settings();
        for (path, why) in [
            ("/nonexistent/ca.pem", "cannot read"),
            (JWKS_PATH, "holds no PEM certificate"),
        ] {
            s.jwks_ca_file = Some(path.into());
            let err = Authenticator::new(&s).await.err().unwrap();
            assert!(err.starts_with("auth.jwks_ca_file: "), "{err}");
            assert!(err.contains(why), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn settings_defaults_from_serde() {
        let s: AuthSettings = serde_json::from_value(
            json!({"issuer": ISS, "audience": AUD, "jwks_url": "https://x"}),
        )
        .unwrap();
        assert_eq!(
            (
                s.leeway_seconds,
                s.jwks_cache_seconds,
                s.jwks_refresh_min_seconds
            ),
            (60, 300, 30)
        );
        assert!(s.jwks_path.is_none() && s.hs256_secret.is_none());
        assert!(s.jwks_ca_file.is_none() && !s.allow_http_jwks);
    }

    #[tokio::test]
    async fn bad_jwks_file_names_the_setting() {
        let mut s = settings();
        s.jwks_path = Some("/nonexistent/jwks.json".into());
        let err = Authenticator::new(&s).await.err().unwrap();
        assert!(err.starts_with("auth.jwks_path"), "{err}");
        s.jwks_path =
            Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/README.md").into());
        let err = Authenticator::new(&s).await.err().unwrap();
        assert!(err.starts_with("auth.jwks_path"), "{err}");
    }

    #[test]
    fn unusable_jwks_entries_are_skipped() {
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird"},
            serde_json::from_str::<Value>(JWKS).unwrap()["keys"][1].clone(),
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes(), "test").unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| (k.kid.clone(), k.alg)).collect();
        assert_eq!(kids, [(Some("ec-1".to_owned()), Algorithm::ES256)]);
        // A JWK without alg gets one derived from its type.
        let mut ed = serde_json::from_str::<Value>(JWKS).unwrap()["keys"][2].clone();
        ed.as_object_mut().unwrap().remove("alg");
        let set = KeySet::parse(json!({"keys": [ed]}).to_string().as_bytes(), "test").unwrap();
        assert_eq!(set.keys[0].alg, Algorithm::EdDSA);
        assert!(KeySet::parse(br#"{"keys": []}"#, "test").is_err());
    }

    #[tokio::test]
    async fn dev_token_round_trip() {
        let mut s = settings();
        s.jwks_path = None;
        let scopes = vec!["oath:tokens:read".to_owned(), "oath:jobs:write".to_owned()];
        assert!(mint_dev_token(&s, env(), &scopes, Duration::from_secs(60)).is_err());
        s.hs256_secret = Some(SECRET.into());
        let token = mint_dev_token(&s, env(), &scopes, Duration::from_secs(60)).unwrap();
        let auth = Authenticator::new(&s).await.unwrap();
        let p = auth.authenticate(Some(&bearer(&token))).await.unwrap();
        assert_eq!(p.env, env());
        assert_eq!(p.subject.as_deref(), Some("dev"));
        assert!(p.require(env(), Scope::JobsWrite).is_ok());
        assert!(!p.has_scope(Scope::TokensWrite));
        let bad = vec!["a b".to_owned()];
        assert!(mint_dev_token(&s, env(), &bad, Duration::from_secs(60)).is_err());
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1 serving a JWKS that the test can swap, counting GETs.
    struct JwksServer {
        url: String,
        body: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        fn start(body: &str) -> JwksServer {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
            let body = Arc::new(Mutex::new(body.to_owned()));
            let hits = Arc::new(AtomicUsize::new(0));
            let (served, counter) = (body.clone(), hits.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                }
            });
            JwksServer { url, body, hits }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn serve(&self, body: &str) {
            *self.body.lock().unwrap() = body.to_owned();
        }
    }

    fn url_settings(url: &str, cache: u64, refresh_min: u64) -> AuthSettings {
        AuthSettings {
            jwks_path: None,
            jwks_url: Some(url.to_owned()),
            // These tests serve the key set over plain HTTP; tests/api/jwks_https.rs does TLS.
            allow_http_jwks: true,
            jwks_cache_seconds: cache,
            jwks_refresh_min_seconds: refresh_min,
            ..settings()
        }
    }

    fn rsa2_token() -> String {
        let key = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
        sign_with(Algorithm::RS256, Some("rsa-2"), &claims(), &key)
    }

    #[tokio::test]
    async fn jwks_url_unknown_kid_refetches_within_rate_limit() {
        // Signed up front so that the 1 s rate-limit window only covers verification.
        let rsa1 = rs256(&claims());
        let ec1 = sign(Algorithm::ES256, Some("ec-1"), &claims());
        let rsa2 = rsa2_token();
        let unknown: Vec<String> = (10..15)
            .map(|i| sign(Algorithm::RS256, Some(&format!("rsa-{i}")), &claims()))
            .collect();

        let server = JwksServer::start(JWKS);
        let auth = Authenticator::new(&url_settings(&server.url, 300, 1))
            .await
            .unwrap();
        assert_eq!(server.hits(), 1, "start-up fetch");
        for _ in 0..3 {
            auth.authenticate(Some(&bearer(&rsa1))).await.unwrap();
            auth.authenticate(Some(&bearer(&ec1))).await.unwrap();
        }
        assert_eq!(server.hits(), 1, "known kids are served from the cache");

        // Key rotation: rsa-2 appears, but the start-up fetch is still inside the window.
        server.serve(JWKS_ROTATED);
        assert_rejected(&auth, &rsa2, "unknown kid").await;
        assert_eq!(server.hits(), 1, "refetch is rate-limited");

        tokio::time::sleep(Duration::from_millis(1100)).await;
        let p = auth.authenticate(Some(&bearer(&rsa2))).await.unwrap();
        assert_eq!(p.env, env());
        assert_eq!(server.hits(), 2, "unknown kid triggered one refetch");

        // More unknown kids inside the new window: no more fetches.
        for token in &unknown {
            assert_rejected(&auth, token, "unknown kid").await;
        }
        assert_eq!(server.hits(), 2);
        // The rotated set replaced the old one: rsa-1 is still there, ec-1 is gone.
        auth.authenticate(Some(&bearer(&rsa1))).await.unwrap();
        assert_rejected(&auth, &ec1, "unknown kid").await;
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_unknown_kids_do_not_stampede() {
        // Half the tasks carry the rotated key, half a kid that exists nowhere.
        let tokens: Vec<(bool, String)> = (0..16)
            .map(|i| match i % 2 {
                0 => (true, rsa2_token()),
                _ => (
                    false,
                    sign(Algorithm::RS256, Some(&format!("gone-{i}")), &claims()),
                ),
            })
            .collect();
        let server = JwksServer::start(JWKS);
        let auth = Arc::new(
            Authenticator::new(&url_settings(&server.url, 300, 1))
                .await
                .unwrap(),
        );
        server.serve(JWKS_ROTATED);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for (valid, token) in tokens {
            let auth = auth.clone();
            tasks.spawn(async move { (valid, auth.authenticate(Some(&bearer(&token))).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (valid, result) = joined.unwrap();
            assert_eq!(result.is_ok(), valid, "{result:?}");
        }
        assert_eq!(
            server.hits(),
            2,
            "one start-up fetch plus exactly one refetch"
        );
    }

    #[tokio::test]
    async fn jwks_url_cache_expires() {
        let server = JwksServer::start(JWKS);
        let auth = Authenticator::new(&url_settings(&server.url, 1, 0))
            .await
            .unwrap();
        auth.authenticate(Some(&bearer(&rs256(&claims()))))
            .await
            .unwrap();
        assert_eq!(server.hits(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        auth.authenticate(Some(&bearer(&rs256(&claims()))))
            .await
            .unwrap();
        assert_eq!(server.hits(), 2, "stale cache refreshed");
    }

    #[tokio::test]
    async fn jwks_url_unreachable_without_cache() {
        // Bind then drop to get a local port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/jwks.json");
        let auth = Authenticator::new(&url_settings(&url, 300, 0))
            .await
            .unwrap();
        match auth.authenticate(Some(&bearer(&rs256(&claims())))).await {
            Err(AuthError::KeySetUnavailable(why)) => {
                assert!(why.contains("request failed"), "{why}");
                assert!(!why.contains(&url), "the URL stays out of messages: {why}");
            }
            other => panic!("expected KeySetUnavailable, got {other:?}"),
        }
        // HS256 still works when configured, since it needs no key set.
        let mut s = url_settings(&url, 300, 30);
        s.hs256_secret = Some(SECRET.into());
        let auth = Authenticator::new(&s).await.unwrap();
        let token = sign(Algorithm::HS256, None, &claims());
        auth.authenticate(Some(&bearer(&token))).await.unwrap();
        assert!(matches!(
            auth.authenticate(Some(&bearer(&rs256(&claims())))).await,
            Err(AuthError::KeySetUnavailable(_))
        ));
    }
}
