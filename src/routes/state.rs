//! The state every route shares: the services, and what HTTP alone needs (authentication,
//! limits, the upload gate, idempotency keys' binding, readiness).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sqlx::PgPool;
use zeroize::Zeroizing;

use super::jobs::ImportGate;
use crate::auth::Authenticator;
use crate::config::{PskcKeyring, Settings};
use crate::crypto::SecretCipher;
use crate::limits::RateLimits;
use crate::service::Services;

/// Everything a request handler needs, shared by all workers.
pub struct AppState {
    pub services: Services,
    pub auth: Authenticator,
    /// The configured pre-shared PSKC keys, each bound to its environments.
    pub pskc_keys: PskcKeyring,
    /// Keys the HMAC that binds an `Idempotency-Key` to its request.
    pub request_hash_key: Zeroizing<[u8; 32]>,
    /// One file upload per environment at a time, a few parses at once.
    pub imports: ImportGate,
    /// The per-token OTP and per-environment request limits of this process.
    pub limits: RateLimits,
    /// Set when the process was told to stop: readiness answers 503 from then on.
    pub stopping: AtomicBool,
}

impl AppState {
    pub async fn new(settings: Settings, db: PgPool) -> Result<Self, String> {
        let (active, keys) = settings.crypto.decoded_keys().map_err(|e| e.to_string())?;
        let cipher = Arc::new(SecretCipher::new(active, &keys).map_err(|e| e.to_string())?);
        let request_hash_key = settings
            .crypto
            .request_hash_key()
            .map_err(|e| e.to_string())?;
        let pskc_keys = settings.import.keyring().map_err(|e| e.to_string())?;
        for id in pskc_keys.shared_ids() {
            tracing::warn!(
                key_id = id,
                "import.pskc_keys.{id}.environments is [\"*\"]: every environment may import files under this key"
            );
        }
        let auth = Authenticator::new(&settings.auth).await?;
        let imports = ImportGate::new(settings.import.max_concurrent);
        let limits = RateLimits::new(&settings.limits);
        Ok(Self {
            services: Services::new(Arc::new(settings), db, cipher),
            auth,
            pskc_keys,
            request_hash_key,
            imports,
            limits,
            stopping: AtomicBool::new(false),
        })
    }

    pub fn db(&self) -> &PgPool {
        &self.services.db
    }

    pub fn settings(&self) -> &Settings {
        &self.services.settings
    }
}
