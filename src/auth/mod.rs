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
//! Tokens that pass are remembered by the SHA-256 of the token, up to `auth.token_cache_size`
//! of them, until their `exp` (never for the leeway past it) or until the JWKS URL yields other
//! keys; a token presented again then skips its signature check (see the `cache` module).
//! Scopes and environment are checked by the caller on the [`Principal`], on every request.
//!
//! A missing header is [`AuthError::Missing`]; every other rejected token is [`AuthError::Invalid`]
//! with a distinct reason meant for logs only: it never contains the token, a secret or key
//! material, so callers may log it as-is (and must not show it to clients).
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use uuid::Uuid;

mod cache;
mod dev_token;
mod jwks;
mod keys;
mod settings;
#[cfg(test)]
mod tests;

use cache::{token_hash, TokenCache};
pub use dev_token::mint_dev_token;
pub(crate) use jwks::error_chain;
use jwks::{jwks_client, read_ca_file, RemoteJwks, RemoteState};
use keys::{select, KeySet, Selection, VerifyKey};
pub use settings::AuthSettings;

/// Tokens larger than this are refused before any parsing; real access tokens are a few KiB.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// OAuth scopes understood by the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    TokensRead,
    TokensWrite,
    JobsRead,
    JobsWrite,
    OtpValidate,
    ActivitiesRead,
    SubscriptionsRead,
    SubscriptionsWrite,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::TokensRead,
        Scope::TokensWrite,
        Scope::JobsRead,
        Scope::JobsWrite,
        Scope::OtpValidate,
        Scope::ActivitiesRead,
        Scope::SubscriptionsRead,
        Scope::SubscriptionsWrite,
    ];

    /// The scope as it appears in the `scope` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TokensRead => "oath:tokens:read",
            Scope::TokensWrite => "oath:tokens:write",
            Scope::JobsRead => "oath:jobs:read",
            Scope::JobsWrite => "oath:jobs:write",
            Scope::OtpValidate => "oath:otp:validate",
            Scope::ActivitiesRead => "oath:activities:read",
            Scope::SubscriptionsRead => "oath:subscriptions:read",
            Scope::SubscriptionsWrite => "oath:subscriptions:write",
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
        self.require_any(env, &[scope])
    }

    /// As [`Principal::require`], for an operation that any one of `scopes` allows.
    pub fn require_any(&self, env: Uuid, scopes: &[Scope]) -> Result<(), AuthError> {
        if !scopes.iter().any(|s| self.has_scope(*s)) {
            let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            return Err(AuthError::Forbidden(format!(
                "the access token lacks the scope {}",
                names.join(" or ")
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

/// Claims this module reads besides the registered ones checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    /// Checked by `jsonwebtoken`; read again for the cache.
    #[serde(default)]
    exp: Option<serde_json::Value>,
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
    /// Verified tokens; none when `auth.token_cache_size` is 0.
    cache: Option<TokenCache>,
}

/// A token that passed the full verification.
struct Verified {
    principal: Principal,
    /// Its `exp` in whole seconds (see [`numeric_date`]).
    exp: Option<u64>,
    /// The JWKS URL's key set took part in choosing its key.
    remote: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Summary only: keys and secrets stay out of debug output.
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("file_keys", &self.file_keys.as_ref().map(|k| k.keys.len()))
            .field("jwks_url", &self.remote.is_some())
            .field("token_cache", &self.cache.as_ref().map(TokenCache::len))
            .finish()
    }
}

/// What [`Authenticator::new`] checks, short of fetching `auth.jwks_url`: the settings, the
/// JWKS file, the CA file and the HTTPS client they make (`oath-service config check`).
pub fn check_offline(settings: &AuthSettings) -> Result<(), String> {
    settings.check()?;
    if let Some(path) = &settings.jwks_path {
        read_jwks_file(path)?;
    }
    let extra_roots = match &settings.jwks_ca_file {
        None => Vec::new(),
        Some(path) => read_ca_file(path)?,
    };
    if settings.jwks_url.is_some() {
        jwks_client(extra_roots, settings.allow_http_jwks)?;
    }
    Ok(())
}

/// The key set of `auth.jwks_path`; errors name the key.
fn read_jwks_file(path: &std::path::Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("auth.jwks_path: cannot read {}: {e}", path.display()))?;
    KeySet::parse(&bytes, "auth.jwks_path")
        .map_err(|e| format!("auth.jwks_path: {}: {e}", path.display()))
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
                let set = read_jwks_file(path)?;
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
                    epoch: AtomicU64::new(0),
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

        let cache =
            (settings.token_cache_size > 0).then(|| TokenCache::new(settings.token_cache_size));

        Ok(Authenticator {
            validation,
            hs256,
            file_keys,
            remote,
            cache,
        })
    }

    /// `authorization` is the raw Authorization header value, if any.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization)?;
        let Some(cache) = &self.cache else {
            return Ok(self.verify(token).await?.principal);
        };
        let hash = token_hash(token);
        let epoch = self.keys_epoch();
        if let Some(hit) = cache.get(&hash, epoch, jsonwebtoken::get_current_timestamp()) {
            if !hit.remote || self.remote_keys_current(epoch).await {
                return Ok(hit.principal);
            }
        }
        // Read before the key is chosen, so that a token verified with keys that are replaced
        // meanwhile is stored under the older epoch, and dropped.
        let epoch = self.keys_epoch();
        let verified = self.verify(token).await?;
        if let Some(exp) = verified.exp {
            let now = jsonwebtoken::get_current_timestamp();
            cache.insert(hash, epoch, now, exp, &verified.principal, verified.remote);
        }
        Ok(verified.principal)
    }

    /// Tokens in the verified-token cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// The epoch of the JWKS URL's key set (0 without a URL: the other keys never change).
    fn keys_epoch(&self) -> u64 {
        self.remote.as_ref().map_or(0, RemoteJwks::keys_epoch)
    }

    /// For a cached token whose key the JWKS URL's set helped choose: refreshes that set when
    /// its lifetime is over, as the full verification would; false if its keys changed since
    /// `epoch`.
    async fn remote_keys_current(&self, epoch: u64) -> bool {
        let Some(remote) = &self.remote else {
            return true;
        };
        if !remote.fresh() {
            // An error leaves the held keys in use (or none were ever held: no such entry).
            let _ = remote.current().await;
        }
        remote.keys_epoch() == epoch
    }

    /// The full verification: header, key, signature and claims.
    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let (alg, kid) = parse_header(token)?;

        let (key, remote) = match alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => (
                    VerifyKey {
                        kid: None,
                        alg,
                        key: key.clone(),
                    },
                    false,
                ),
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
        let exp = data.claims.exp.as_ref().and_then(numeric_date);
        Ok(Verified {
            principal: principal_from_claims(data.claims)?,
            exp,
            remote,
        })
    }

    /// The key for a token, and whether the JWKS URL's set took part in choosing it.
    async fn resolve_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(VerifyKey, bool), AuthError> {
        let mut sets: Vec<Arc<KeySet>> = self.file_keys.iter().cloned().collect();
        let mut selection = select(&sets, kid, alg);
        let mut consulted = false;
        if let Some(remote) = &self.remote {
            // A kid found in the file needs no network; anything else consults the URL set.
            let settled = kid.is_some() && !matches!(selection, Selection::NotFound);
            if !settled {
                consulted = true;
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
            Selection::Use(key) => Ok((key, consulted)),
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

/// A NumericDate claim in whole seconds, a fraction dropped (`jsonwebtoken` rounds it: the
/// cache never keeps a token past its literal `exp`).
fn numeric_date(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.floor() as u64)
    })
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
