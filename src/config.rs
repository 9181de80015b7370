//! Typed settings: `config/default.toml`, then `config/{OATH_ENV}.toml`, then `OATH__SECTION__KEY`
//! environment variables (and `DATABASE_URL`). Anything missing or malformed stops start-up with one
//! line naming the key.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

pub use crate::auth::AuthSettings;

/// A configuration problem, rendered as one line that names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub crypto: CryptoSettings,
    pub limits: LimitSettings,
    pub jobs: JobSettings,
    #[serde(default)]
    pub import: ImportSettings,
    pub log: LogSettings,
    #[serde(default)]
    pub otp: OtpSettings,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ServerSettings {
    pub addr: String,
    /// When set (and not empty), `/metrics` is served on this address only; `/health/*` on both.
    #[serde(default)]
    pub admin_addr: Option<String>,
    pub public_base_url: String,
    pub max_body_bytes: usize,
    #[serde(default)]
    pub workers: usize,
    pub shutdown_timeout_seconds: u64,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
}

// The URL may carry a password.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &"[redacted]")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_seconds", &self.acquire_timeout_seconds)
            .finish()
    }
}

#[derive(Clone, Default, Deserialize)]
pub struct CryptoSettings {
    #[serde(default)]
    pub active_key_id: Option<String>,
    /// Key id -> base64 of 32 bytes.
    #[serde(default)]
    pub keys: HashMap<String, String>,
}

impl fmt::Debug for CryptoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("CryptoSettings")
            .field("active_key_id", &self.active_key_id)
            .field("key_ids", &ids)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct LimitSettings {
    pub tokens_per_environment: i64,
}

/// OTP validation windows and the lockout threshold. They apply to every token: the contract's
/// token representation has no per-token fields for them.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct OtpSettings {
    /// HOTP: counters accepted after the expected one.
    pub hotp_window: u32,
    /// TOTP: time steps accepted either side of the expected one (current step + drift).
    pub totp_window: u32,
    /// Consecutive failed validations after which a token answers `LOCKED` until resynced.
    pub max_failures: u32,
    /// HOTP resync: counters searched after the expected one.
    pub hotp_resync_window: u32,
    /// TOTP resync: seconds searched either side of now.
    pub totp_resync_window_seconds: u32,
}

impl Default for OtpSettings {
    fn default() -> Self {
        Self {
            hotp_window: 10,
            totp_window: 1,
            max_failures: 10,
            hotp_resync_window: 1000,
            totp_resync_window_seconds: 86_400,
        }
    }
}

impl OtpSettings {
    // Upper bounds keep the work of one request small: each candidate costs an HMAC.
    const MAX_HOTP_WINDOW: u32 = 1000;
    const MAX_TOTP_WINDOW: u32 = 100;
    const MAX_HOTP_RESYNC_WINDOW: u32 = 100_000;
    const MAX_TOTP_RESYNC_SECONDS: u32 = 7 * 86_400;

    fn check(&self) -> Result<(), String> {
        let within = |key: &str, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "otp.{key} must be from {min} to {max}, got {value}"
                ))
            }
        };
        within("hotp_window", self.hotp_window, 0, Self::MAX_HOTP_WINDOW)?;
        within("totp_window", self.totp_window, 0, Self::MAX_TOTP_WINDOW)?;
        // The count is an `integer` column.
        within("max_failures", self.max_failures, 1, i32::MAX as u32)?;
        within(
            "hotp_resync_window",
            self.hotp_resync_window,
            1,
            Self::MAX_HOTP_RESYNC_WINDOW,
        )?;
        within(
            "totp_resync_window_seconds",
            self.totp_resync_window_seconds,
            1,
            Self::MAX_TOTP_RESYNC_SECONDS,
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct JobSettings {
    /// Job runners per service process; 0 runs none (an API-only replica).
    pub runners: usize,
    /// Items per chunk: one transaction each.
    pub chunk_size: usize,
    /// How long a claim lasts without progress before another runner may take the job over.
    pub lease_seconds: u64,
    /// Fallback polling period when no notification arrives.
    pub poll_interval_ms: u64,
    /// Claims after which a job that keeps failing is marked FAILED.
    pub max_attempts: i32,
    /// Largest accepted job body.
    pub max_body_bytes: usize,
    /// Items per job.
    pub max_items: usize,
    /// How long an `"async": false` request waits for its job.
    pub sync_wait_seconds: u64,
}

/// File imports (PSKC, CSV).
#[derive(Clone, Default, Deserialize)]
pub struct ImportSettings {
    /// Pre-shared PSKC transport keys: id (named by a request's `X-PSKC-Key-Id`) -> hex of 16,
    /// 24 or 32 bytes.
    #[serde(default)]
    pub pskc_keys: HashMap<String, String>,
}

impl fmt::Debug for ImportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.pskc_keys.keys().collect();
        ids.sort();
        f.debug_struct("ImportSettings")
            .field("pskc_key_ids", &ids)
            .finish()
    }
}

impl ImportSettings {
    /// The pre-shared key with this id (case-insensitive, as environment variable names are).
    pub fn pskc_key(&self, id: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        self.pskc_keys
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(id))
            .and_then(|(_, v)| decode_pskc_key(v))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let mut ids: Vec<&String> = self.pskc_keys.keys().collect();
        ids.sort();
        for id in ids {
            if decode_pskc_key(&self.pskc_keys[id]).is_none() {
                return Err(ConfigError(format!(
                    "import.pskc_keys.{id} must be hex of 16, 24 or 32 bytes"
                )));
            }
        }
        Ok(())
    }
}

fn decode_pskc_key(hex_digits: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    hex::decode(hex_digits.trim())
        .ok()
        .map(zeroize::Zeroizing::new)
        .filter(|k| matches!(k.len(), 16 | 24 | 32))
}

#[derive(Clone, Debug, Deserialize)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Settings {
    /// Loads from `OATH_CONFIG_DIR` (default `config/`), `OATH_ENV` and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let dir = std::env::var_os("OATH_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let profile = std::env::var("OATH_ENV").ok();
        Self::load_from(&dir, profile.as_deref())
    }

    pub fn load_from(dir: &Path, profile: Option<&str>) -> Result<Self, ConfigError> {
        let settings = Self::read_from(dir, profile)?;
        settings.check()?;
        Ok(settings)
    }

    /// Reads the layered sources without the semantic checks of [`Settings::check`], for callers
    /// (tests) that fill in the rest.
    pub fn read_from(dir: &Path, profile: Option<&str>) -> Result<Self, ConfigError> {
        let default_file = dir.join("default.toml");
        if !default_file.is_file() {
            return Err(ConfigError(format!(
                "{} not found (run from the project directory or set OATH_CONFIG_DIR)",
                default_file.display()
            )));
        }
        let mut builder =
            config::Config::builder().add_source(config::File::from(default_file).required(true));
        if let Some(profile) = profile.filter(|p| !p.is_empty()) {
            builder = builder
                .add_source(config::File::from(dir.join(format!("{profile}.toml"))).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("OATH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        // OATH__DATABASE__URL wins over the conventional DATABASE_URL.
        if std::env::var_os("OATH__DATABASE__URL").is_none() {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                builder = builder
                    .set_override("database.url", url)
                    .map_err(|e| ConfigError(e.to_string()))?;
            }
        }
        builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks what serde cannot: ranges, URLs, addresses and key material.
    pub fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.server.addr.parse::<SocketAddr>().is_err() {
            return fail(format!(
                "server.addr must be host:port with an IP address, got {:?}",
                self.server.addr
            ));
        }
        if let Some(admin) = self.server.admin_addr() {
            if admin.parse::<SocketAddr>().is_err() {
                return fail(format!(
                    "server.admin_addr must be host:port with an IP address, got {admin:?}"
                ));
            }
        }
        let base = &self.server.public_base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.contains('?') {
            return fail(format!(
                "server.public_base_url must be an absolute http(s) URL, got {base:?}"
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return fail("server.max_body_bytes must be at least 1024".into());
        }
        if self.database.url.trim().is_empty() {
            return fail("database.url must be set (or DATABASE_URL)".into());
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections must be at least 1".into());
        }
        let jobs = &self.jobs;
        if jobs.chunk_size == 0 || jobs.chunk_size > 10_000 {
            return fail("jobs.chunk_size must be from 1 to 10000".into());
        }
        if jobs.lease_seconds < 2 {
            return fail("jobs.lease_seconds must be at least 2".into());
        }
        if jobs.poll_interval_ms == 0 {
            return fail("jobs.poll_interval_ms must be at least 1".into());
        }
        if jobs.max_attempts < 1 {
            return fail("jobs.max_attempts must be at least 1".into());
        }
        if jobs.max_items == 0 || jobs.max_items > i32::MAX as usize {
            return fail("jobs.max_items must be from 1 to 2147483647".into());
        }
        if self.limits.tokens_per_environment < 0 {
            return fail("limits.tokens_per_environment must not be negative".into());
        }
        self.otp.check().map_err(ConfigError)?;
        self.import.check()?;
        // Crypto keys are checked where they are used (serving, re-encrypting), so that
        // `dev-token` works with auth settings alone.
        self.auth.check().map_err(ConfigError)
    }

    /// `public_base_url` without a trailing slash, ready for `format!("{base}/v1/...")`.
    pub fn base_url(&self) -> &str {
        self.server.public_base_url.trim_end_matches('/')
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.database.acquire_timeout_seconds.max(1))
    }
}

impl ServerSettings {
    /// The admin listener's address; an empty value (e.g. `OATH__SERVER__ADMIN_ADDR=`) means none.
    pub fn admin_addr(&self) -> Option<&str> {
        self.admin_addr.as_deref().filter(|a| !a.trim().is_empty())
    }
}

impl CryptoSettings {
    /// The active key id and every configured key, decoded.
    pub fn decoded_keys(&self) -> Result<(String, HashMap<String, [u8; 32]>), ConfigError> {
        let Some(active) = self.active_key_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ConfigError(
                "crypto.active_key_id is not set (e.g. OATH__CRYPTO__ACTIVE_KEY_ID=k1 with OATH__CRYPTO__KEYS__K1=<base64 of 32 bytes>)".into(),
            ));
        };
        let active = active.to_ascii_lowercase();
        let mut keys = HashMap::new();
        for (id, encoded) in &self.keys {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    ConfigError(format!("crypto.keys.{id} must be base64 of 32 bytes"))
                })?;
            // Environment variable names reach us lower-cased, so key ids are case-insensitive.
            keys.insert(id.to_ascii_lowercase(), bytes);
        }
        if !keys.contains_key(&active) {
            return Err(ConfigError(format!(
                "crypto.active_key_id is {active:?} but crypto.keys.{active} is not set"
            )));
        }
        Ok((active, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    /// The shipped defaults plus `extra`, in a directory of their own.
    fn load_with(extra: &str) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("oath-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let defaults = std::fs::read_to_string("config/default.toml").unwrap();
        std::fs::write(dir.join("default.toml"), defaults).unwrap();
        std::fs::write(dir.join("test.toml"), extra).unwrap();
        let result = Settings::load_from(&dir, Some("test"));
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    const VALID: &str = r#"
        [auth]
        hs256_secret = "0123456789abcdef0123456789abcdef"
        [crypto]
        active_key_id = "K1"
        keys.k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    "#;

    #[test]
    fn loads_layers_and_matches_key_ids_case_insensitively() {
        let s = load_with(VALID).unwrap();
        let (active, keys) = s.crypto.decoded_keys().unwrap();
        assert_eq!(active, "k1");
        assert_eq!(keys["k1"], [1u8; 32]);
        assert_eq!(s.limits.tokens_per_environment, 100_000);
        assert_eq!(s.otp.hotp_window, 10);
        assert_eq!(s.otp.totp_window, 1);
        assert_eq!(s.otp.max_failures, 10);
        assert_eq!(s.otp.hotp_resync_window, 1000);
        assert_eq!(s.otp.totp_resync_window_seconds, 86_400);
        assert!(!format!("{s:?}").contains(KEY), "Debug must not show keys");
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "Debug must not show secrets"
        );
    }

    #[test]
    fn pskc_keys_are_hex_found_case_insensitively_and_never_shown() {
        let key = "000102030405060708090a0b0c0d0e0f";
        let s = load_with(&format!("{VALID}\n[import]\npskc_keys.Vendor = \"{key}\"")).unwrap();
        assert_eq!(s.import.pskc_key("VENDOR").unwrap().len(), 16);
        assert!(s.import.pskc_key("other").is_none());
        assert!(!format!("{s:?}").contains(key));
        assert!(load_with(VALID).unwrap().import.pskc_keys.is_empty());
    }

    #[test]
    fn each_problem_names_its_key() {
        let cases = [
            (
                format!("{VALID}\n[server]\naddr = \"localhost\""),
                "server.addr",
            ),
            (
                format!("{VALID}\n[server]\npublic_base_url = \"ftp://x\""),
                "server.public_base_url",
            ),
            (
                format!("{VALID}\n[server]\nmax_body_bytes = \"lots\""),
                "max_body_bytes",
            ),
            (format!("{VALID}\n[log]\nformat = \"xml\""), "format"),
            (VALID.replace("\"K1\"", "\"k2\""), "crypto.keys.k2"),
            (VALID.replace(KEY, "c2hvcnQ="), "crypto.keys.k1"),
            (
                VALID.replace("0123456789abcdef0123456789abcdef", "short"),
                "auth.hs256_secret",
            ),
            (
                format!("{VALID}\n[otp]\nmax_failures = 0"),
                "otp.max_failures",
            ),
            (
                format!("{VALID}\n[otp]\nhotp_window = 5000"),
                "otp.hotp_window",
            ),
            (
                format!("{VALID}\n[otp]\ntotp_resync_window_seconds = 0"),
                "otp.totp_resync_window_seconds",
            ),
            (format!("{VALID}\n[otp]\ntotp_window = -1"), "totp_window"),
            (
                format!("{VALID}\n[import]\npskc_keys.vendor7 = \"00112233\""),
                "import.pskc_keys.vendor7",
            ),
            (
                format!("{VALID}\n[import]\npskc_keys.v8 = \"not hex at all, not at all!!\""),
                "import.pskc_keys.v8",
            ),
        ];
        for (file, key) in cases {
            let err = load_with(&file)
                .and_then(|s| s.crypto.decoded_keys().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{file:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
