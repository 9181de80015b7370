//! The JWKS URL: fetched over HTTPS (the system's CA store plus `auth.jwks_ca_file`), cached,
//! refetched for an unknown `kid`, at most once per `jwks_refresh_min_seconds`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::keys::KeySet;
use super::AuthError;

/// A JWKS document larger than this is refused so a misbehaving URL cannot exhaust memory.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Upper bound on one JWKS fetch, so a slow identity provider cannot hold requests for long.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct RemoteState {
    pub(super) keys: Option<Arc<KeySet>>,
    pub(super) fetched_at: Option<Instant>,
    pub(super) last_attempt: Option<Instant>,
    pub(super) last_error: Option<String>,
}

/// The JWKS URL, its cache and the fetch rate limiter.
pub(super) struct RemoteJwks {
    pub(super) url: String,
    pub(super) client: reqwest::Client,
    pub(super) cache_ttl: Duration,
    pub(super) refresh_min: Duration,
    /// Short, non-async critical sections only, so a std lock is enough.
    pub(super) state: RwLock<RemoteState>,
    /// Held across a fetch so that at most one is in flight.
    pub(super) fetch_lock: tokio::sync::Mutex<()>,
    /// Incremented whenever a fetch yields other keys than those held (see `keys_epoch`).
    pub(super) epoch: AtomicU64,
}

impl RemoteJwks {
    pub(super) fn snapshot(&self) -> (Option<Arc<KeySet>>, bool) {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let fresh = st.fetched_at.is_some_and(|t| t.elapsed() < self.cache_ttl);
        (st.keys.clone(), fresh)
    }

    /// Whether the held key set is within its lifetime (no refresh due).
    pub(super) fn fresh(&self) -> bool {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        st.fetched_at.is_some_and(|t| t.elapsed() < self.cache_ttl)
    }

    /// Changes whenever the key set changes: the verified-token cache drops its entries then.
    /// Read before a key is chosen, it is at most as recent as the keys used.
    pub(super) fn keys_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(super) fn unavailable(&self) -> AuthError {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let why = st.last_error.as_deref().unwrap_or("no fetch attempted");
        AuthError::KeySetUnavailable(format!("no JWKS cached from auth.jwks_url ({why})"))
    }

    /// The key set for normal lookups: cached, refreshed after the TTL when the rate limit allows.
    pub(super) async fn current(&self) -> Result<Arc<KeySet>, AuthError> {
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
    pub(super) async fn refresh(&self) -> Result<Arc<KeySet>, AuthError> {
        // Waiting here lets a request reuse the result of a fetch already in flight.
        let _guard = self.fetch_lock.lock().await;
        self.refresh_locked()
            .await
            .ok_or_else(|| self.unavailable())
    }

    /// Fetches unless one happened within `refresh_min`; the caller holds `fetch_lock`.
    pub(super) async fn refresh_locked(&self) -> Option<Arc<KeySet>> {
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
                let changed = st
                    .keys
                    .as_ref()
                    .is_none_or(|held| held.fingerprint != keys.fingerprint);
                st.keys = Some(Arc::new(keys));
                if changed {
                    // Under the write lock: whoever reads the new epoch then reads these keys.
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                }
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

    pub(super) async fn fetch(&self) -> Result<KeySet, String> {
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
pub(super) fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
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
pub(super) fn jwks_client(
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
