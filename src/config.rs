//! Typed settings: the defaults compiled into the binary (`config/default.toml`), then the
//! optional overlays `config/default.toml` and `config/{OATH_ENV}.toml` of the working directory,
//! then `OATH__SECTION__KEY` environment variables (and `DATABASE_URL`). Environment values are
//! taken verbatim as text, so a digits-only key or secret is never read as a number; typed
//! settings parse that text. Anything missing or malformed stops start-up with one line naming
//! the key, and so does a key that names no setting (`known.rs`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use hmac::Hmac;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

pub use crate::auth::AuthSettings;

mod environment;
mod events;
mod known;
mod show;

use environment::Variables;
pub use events::EventSettings;

/// A configuration problem, rendered as one line that names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Debug, Deserialize, Serialize)]
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
    #[serde(default)]
    pub events: EventSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
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
    /// How long requests are still served after a stop signal, readiness answering 503.
    pub shutdown_delay_seconds: u64,
    /// How long a request may take to send its body once its head has arrived (else 408).
    pub body_timeout_seconds: u64,
}

#[derive(Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
    /// With several hosts: how often the host in use is asked whether it still accepts writes.
    pub primary_check_interval_ms: u64,
}

// The URL may carry a password.
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &"[redacted]")
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_seconds", &self.acquire_timeout_seconds)
            .field("primary_check_interval_ms", &self.primary_check_interval_ms)
            .finish()
    }
}

#[derive(Clone, Default, Deserialize, Serialize)]
pub struct CryptoSettings {
    #[serde(default)]
    pub active_key_id: Option<String>,
    /// Key id -> base64 of 32 bytes.
    #[serde(default)]
    pub keys: HashMap<String, String>,
    /// Base64 of 32 bytes: the HMAC key binding idempotency keys to requests. Derived from the
    /// active key when unset.
    #[serde(default)]
    pub request_hash_key: Option<String>,
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

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LimitSettings {
    pub tokens_per_environment: i64,
    /// Validate, resync and pairing calls per token and minute (per process); 0 is no limit.
    pub otp_per_token_per_minute: u32,
    /// Authenticated requests per environment and second (per process); 0 is no limit.
    pub requests_per_environment_per_second: u32,
    /// Keys (tokens, environments) each rate limit remembers at most per process.
    pub rate_limit_keys: usize,
}

/// OTP validation windows and the lockout policy. They apply to every token: the contract's
/// token representation has no per-token fields for them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct OtpSettings {
    /// HOTP: counters accepted after the expected one.
    pub hotp_window: u32,
    /// TOTP: time steps accepted either side of the expected one (current step + drift).
    pub totp_window: u32,
    /// Consecutive failed checks after which a token is locked (see [`Lockout`]).
    pub max_failures: u32,
    /// What `max_failures` consecutive failures do to a token.
    pub lockout: Lockout,
    /// `throttle`: the first delay, doubled with each further failure...
    pub throttle_base_seconds: u32,
    /// ...up to this.
    pub throttle_max_seconds: u32,
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
            lockout: Lockout::Lock,
            throttle_base_seconds: 30,
            throttle_max_seconds: 900,
            hotp_resync_window: 1000,
            totp_resync_window_seconds: 86_400,
        }
    }
}

/// What `otp.max_failures` consecutive failed checks do to a token.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lockout {
    /// Locked until a resync or an unlock: an attacker who knows a token's id can keep its
    /// user out for good.
    Lock,
    /// Checks refused for a delay that doubles with each further failure, up to a maximum: no
    /// one is kept out longer than that at a time, and guessing stays slow.
    Throttle,
}

impl OtpSettings {
    // Upper bounds keep the work of one request small: each candidate costs an HMAC.
    const MAX_HOTP_WINDOW: u32 = 1000;
    const MAX_TOTP_WINDOW: u32 = 100;
    const MAX_HOTP_RESYNC_WINDOW: u32 = 100_000;
    const MAX_TOTP_RESYNC_SECONDS: u32 = 7 * 86_400;
    /// A day: a longer refusal is a lock, which `lockout = "lock"` says more plainly.
    const MAX_THROTTLE_SECONDS: u32 = 86_400;

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
            "throttle_base_seconds",
            self.throttle_base_seconds,
            1,
            Self::MAX_THROTTLE_SECONDS,
        )?;
        within(
            "throttle_max_seconds",
            self.throttle_max_seconds,
            self.throttle_base_seconds,
            Self::MAX_THROTTLE_SECONDS,
        )?;
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

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobSettings {
    /// Job runners per service process; 0 runs none (an API-only replica).
    pub runners: usize,
    /// Items per chunk: one transaction each.
    pub chunk_size: usize,
    /// Chunks of one create job a runner writes at once, each on a connection of its own; they
    /// commit one after another, in item order.
    pub parallel_chunks: usize,
    /// How long a claim lasts without progress before another runner may take the job over.
    pub lease_seconds: u64,
    /// Fallback polling period when no notification arrives.
    pub poll_interval_ms: u64,
    /// Takeovers (claims of a job whose runner's lease expired: it died or stalled) after which
    /// the job is marked FAILED. Giving a job back between chunks does not count.
    pub max_attempts: i32,
    /// Largest accepted job body.
    pub max_body_bytes: usize,
    /// Items per job.
    pub max_items: usize,
    /// How long an `"async": false` request waits for its job.
    pub sync_wait_seconds: u64,
    /// Finished jobs (DONE, FAILED) are deleted with their results this long after completion.
    pub retention_seconds: u64,
    /// How often each process looks for finished jobs past their retention.
    pub purge_interval_seconds: u64,
    /// Jobs an environment may have PENDING or IN_PROGRESS at once; beyond it a submission is 429.
    pub max_unfinished_per_environment: u32,
}

/// File imports (PSKC, CSV).
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ImportSettings {
    /// Pre-shared PSKC transport keys by id (named by a request's `X-PSKC-Key-Id`), each bound
    /// to the environments that may use it.
    pub pskc_keys: HashMap<String, PskcKeySetting>,
    /// Largest PBKDF2 `IterationCount` a password-protected file may ask for.
    pub pbkdf2_max_iterations: u32,
    /// Files parsed (and keys derived) at once per process; further imports wait their turn.
    pub max_concurrent: usize,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            pskc_keys: HashMap::new(),
            pbkdf2_max_iterations: 200_000,
            max_concurrent: 2,
        }
    }
}

/// One `import.pskc_keys.<id>` entry as configured. The earlier flat form (`<id> = "<hex>"`)
/// is read only to stop start-up with a message naming the new form.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PskcKeySetting {
    Bound {
        key: String,
        #[serde(default)]
        environments: Option<TextList>,
    },
    Flat(String),
}

impl PskcKeySetting {
    /// A key (hex) for the listed environments (`"*"`: all), as the new form configures it.
    pub fn bound(key: &str, environments: &[&str]) -> Self {
        Self::Bound {
            key: key.to_string(),
            environments: Some(TextList::List(
                environments.iter().map(|e| e.to_string()).collect(),
            )),
        }
    }
}

/// A list given as a TOML array or, from an environment variable, as comma-separated text.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TextList {
    List(Vec<String>),
    Text(String),
}

impl TextList {
    fn items(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            Self::List(items) => items.iter().map(String::as_str).collect(),
            Self::Text(text) => text.split(',').collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl fmt::Debug for ImportSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.pskc_keys.keys().collect();
        ids.sort();
        f.debug_struct("ImportSettings")
            .field("pskc_key_ids", &ids)
            .field("pbkdf2_max_iterations", &self.pbkdf2_max_iterations)
            .field("max_concurrent", &self.max_concurrent)
            .finish()
    }
}

/// Which environments may use a pre-shared PSKC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// `["*"]`: every environment (logged as a warning at start-up).
    All,
    Environments(Vec<Uuid>),
}

/// The configured pre-shared PSKC keys, decoded and bound to their environments.
#[derive(Default)]
pub struct PskcKeyring {
    /// Lower-case id -> key and scope.
    keys: HashMap<String, (Zeroizing<Vec<u8>>, KeyScope)>,
}

impl fmt::Debug for PskcKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("PskcKeyring").field("ids", &ids).finish()
    }
}

impl PskcKeyring {
    /// The key with this id (case-insensitive, as environment variable names are) if `env` may
    /// use it. An unknown id and a key bound elsewhere look the same to the caller.
    pub fn key_for(&self, id: &str, env: Uuid) -> Option<Zeroizing<Vec<u8>>> {
        let (key, scope) = self.keys.get(&id.to_ascii_lowercase())?;
        let allowed = match scope {
            KeyScope::All => true,
            KeyScope::Environments(envs) => envs.contains(&env),
        };
        allowed.then(|| key.clone())
    }

    /// Ids of keys every environment may use.
    pub fn shared_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .keys
            .iter()
            .filter(|(_, (_, scope))| *scope == KeyScope::All)
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort();
        ids
    }
}

impl ImportSettings {
    /// Decodes and binds every configured key; the error names the key at fault.
    pub fn keyring(&self) -> Result<PskcKeyring, ConfigError> {
        let mut ids: Vec<&String> = self.pskc_keys.keys().collect();
        ids.sort();
        let mut keys = HashMap::new();
        for id in ids {
            let fail = |what: &str| Err(ConfigError(format!("import.pskc_keys.{id}{what}")));
            let (key, environments) = match &self.pskc_keys[id] {
                PskcKeySetting::Flat(_) => {
                    return fail(&format!(
                        " is a bare key, a form no longer read: set import.pskc_keys.{id}.key = \"<hex>\" and import.pskc_keys.{id}.environments = [\"<environment id>\", ...] (OATH__IMPORT__PSKC_KEYS__{up}__KEY and OATH__IMPORT__PSKC_KEYS__{up}__ENVIRONMENTS=<id>,<id>)",
                        up = id.to_ascii_uppercase()
                    ))
                }
                PskcKeySetting::Bound { key, environments } => (key, environments),
            };
            let Some(key) = decode_pskc_key(key) else {
                return fail(".key must be hex of 16, 24 or 32 bytes");
            };
            let listed = environments
                .as_ref()
                .map(TextList::items)
                .unwrap_or_default();
            let scope = if listed == ["*"] {
                KeyScope::All
            } else {
                let envs: Option<Vec<Uuid>> =
                    listed.iter().map(|e| Uuid::parse_str(e).ok()).collect();
                match envs {
                    Some(envs) if !envs.is_empty() => KeyScope::Environments(envs),
                    _ => {
                        return fail(
                            ".environments must list the environment ids that may use the key (or [\"*\"] for all)",
                        )
                    }
                }
            };
            keys.insert(id.to_ascii_lowercase(), (key, scope));
        }
        Ok(PskcKeyring { keys })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(1_000..=10_000_000).contains(&self.pbkdf2_max_iterations) {
            return Err(ConfigError(
                "import.pbkdf2_max_iterations must be from 1000 to 10000000".into(),
            ));
        }
        if !(1..=64).contains(&self.max_concurrent) {
            return Err(ConfigError(
                "import.max_concurrent must be from 1 to 64".into(),
            ));
        }
        self.keyring().map(|_| ())
    }
}

/// A PSKC transport key: hex of 16, 24 or 32 bytes.
pub fn decode_pskc_key(hex_digits: &str) -> Option<Zeroizing<Vec<u8>>> {
    hex::decode(hex_digits.trim())
        .ok()
        .map(Zeroizing::new)
        .filter(|k| matches!(k.len(), 16 | 24 | 32))
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Ten years: longer retention is no retention, and the interval stays far from overflow.
const MAX_RETENTION_SECONDS: u64 = 10 * 366 * 86_400;

/// The most chunks of one job written at once.
const MAX_PARALLEL_CHUNKS: usize = 8;

/// The shipped defaults, compiled in so that the binary runs from any directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

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
        Self::read_with_env(dir, profile, None)
    }

    /// As [`Settings::read_from`], with `env` standing for the process environment when given:
    /// the variables are read exactly as they would be from the process.
    pub fn read_with_env(
        dir: &Path,
        profile: Option<&str>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let vars = match env {
            Some(env) => Variables::read(env)?,
            None => Variables::from_process()?,
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from(dir.join("default.toml")).required(false));
        if let Some(profile) = profile.filter(|p| !p.is_empty()) {
            // A profile the operator names must exist.
            builder = builder
                .add_source(config::File::from(dir.join(format!("{profile}.toml"))).required(true));
        }
        // No `try_parsing`: it would turn a digits-only secret into a float. Values stay text;
        // numeric and boolean settings parse it when deserialized.
        builder = builder.add_source(
            config::Environment::with_prefix("OATH")
                .prefix_separator("__")
                .separator("__")
                .source(Some(vars.prefixed())),
        );
        // OATH__DATABASE__URL wins over the conventional DATABASE_URL.
        if vars.get("OATH__DATABASE__URL").is_none() {
            if let Some(url) = vars.get("DATABASE_URL") {
                builder = builder
                    .set_override("database.url", url)
                    .map_err(|e| ConfigError(e.to_string()))?;
            }
        }
        let config = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        known::refuse_unknown(&config, |path| vars.origin_of(path))?;
        config
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))
    }

    /// The compiled-in defaults alone, unchecked.
    fn from_defaults() -> Result<Self, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
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
        if self.server.shutdown_delay_seconds > 300 {
            return fail("server.shutdown_delay_seconds must be from 0 to 300".into());
        }
        if !(1..=3600).contains(&self.server.body_timeout_seconds) {
            return fail("server.body_timeout_seconds must be from 1 to 3600".into());
        }
        if self.database.url.trim().is_empty() {
            return fail("database.url must be set (or DATABASE_URL)".into());
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections must be at least 1".into());
        }
        if !(50..=60_000).contains(&self.database.primary_check_interval_ms) {
            return fail("database.primary_check_interval_ms must be from 50 to 60000".into());
        }
        let jobs = &self.jobs;
        if jobs.chunk_size == 0 || jobs.chunk_size > 10_000 {
            return fail("jobs.chunk_size must be from 1 to 10000".into());
        }
        if !(1..=MAX_PARALLEL_CHUNKS).contains(&jobs.parallel_chunks) {
            return fail(format!(
                "jobs.parallel_chunks must be from 1 to {MAX_PARALLEL_CHUNKS}"
            ));
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
        if !(1..=MAX_RETENTION_SECONDS).contains(&jobs.retention_seconds) {
            return fail(format!(
                "jobs.retention_seconds must be from 1 to {MAX_RETENTION_SECONDS}"
            ));
        }
        if !(1..=86_400).contains(&jobs.purge_interval_seconds) {
            return fail("jobs.purge_interval_seconds must be from 1 to 86400".into());
        }
        if !(1..=100_000).contains(&jobs.max_unfinished_per_environment) {
            return fail("jobs.max_unfinished_per_environment must be from 1 to 100000".into());
        }
        let limits = &self.limits;
        if limits.tokens_per_environment < 0 {
            return fail("limits.tokens_per_environment must not be negative".into());
        }
        if limits.otp_per_token_per_minute > 1_000_000 {
            return fail("limits.otp_per_token_per_minute must be from 0 to 1000000".into());
        }
        if limits.requests_per_environment_per_second > 1_000_000 {
            return fail(
                "limits.requests_per_environment_per_second must be from 0 to 1000000".into(),
            );
        }
        if !(2..=10_000_000).contains(&limits.rate_limit_keys) {
            return fail("limits.rate_limit_keys must be from 2 to 10000000".into());
        }
        // `OATH__CRYPTO__KEYS__K1_FILE` names the file holding key k1, so no id can end so.
        let ids = (self.crypto.keys.keys().map(|id| ("crypto.keys", id))).chain(
            self.import
                .pskc_keys
                .keys()
                .map(|id| ("import.pskc_keys", id)),
        );
        for (map, id) in ids {
            if id.to_ascii_uppercase().ends_with("_FILE") {
                return fail(format!(
                    "{map}.{id}: an id may not end in _file (a variable ending in _FILE names the file holding a value)"
                ));
            }
        }
        self.otp.check().map_err(ConfigError)?;
        self.events.check().map_err(ConfigError)?;
        self.import.check()?;
        // Crypto keys are checked where they are used (serving, re-encrypting), so that
        // `dev-token` works with auth settings alone.
        self.auth.check().map_err(ConfigError)
    }

    /// `public_base_url` without a trailing slash, ready for `format!("{base}/v1/...")`.
    pub fn base_url(&self) -> &str {
        self.server.public_base_url.trim_end_matches('/')
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.server.body_timeout_seconds)
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.database.acquire_timeout_seconds.max(1))
    }

    pub fn primary_check_interval(&self) -> Duration {
        Duration::from_millis(self.database.primary_check_interval_ms)
    }
}

/// Key id (lower case) -> AES-256 key, wiped when dropped.
pub type DecodedKeys = HashMap<String, Zeroizing<[u8; 32]>>;

impl ServerSettings {
    /// The admin listener's address; an empty value (e.g. `OATH__SERVER__ADMIN_ADDR=`) means none.
    pub fn admin_addr(&self) -> Option<&str> {
        self.admin_addr.as_deref().filter(|a| !a.trim().is_empty())
    }
}

impl CryptoSettings {
    /// The active key id and every configured key, decoded.
    pub fn decoded_keys(&self) -> Result<(String, DecodedKeys), ConfigError> {
        let Some(active) = self.active_key_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ConfigError(
                "crypto.active_key_id is not set (e.g. OATH__CRYPTO__ACTIVE_KEY_ID=k1 with OATH__CRYPTO__KEYS__K1=<base64 of 32 bytes>)".into(),
            ));
        };
        let active = active.to_ascii_lowercase();
        let mut keys = HashMap::new();
        for (id, encoded) in &self.keys {
            let bytes = decode_key32(encoded).ok_or_else(|| {
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

    /// The key of the HMAC that binds an `Idempotency-Key` to its request: `request_hash_key`
    /// when set, else derived from the active encryption key (so that a database reader, who
    /// has neither, cannot test guesses of a secret against the stored binding).
    pub fn request_hash_key(&self) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
        if let Some(encoded) = self.request_hash_key.as_deref() {
            return decode_key32(encoded).ok_or_else(|| {
                ConfigError("crypto.request_hash_key must be base64 of 32 bytes".into())
            });
        }
        let (active, keys) = self.decoded_keys()?;
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&keys[&active][..])
            .expect("HMAC takes keys of any length");
        hmac::Mac::update(&mut mac, b"oath-service:request-hash-key:v1");
        Ok(Zeroizing::new(hmac::Mac::finalize(mac).into_bytes().into()))
    }
}

fn decode_key32(encoded: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?,
    );
    <[u8; 32]>::try_from(bytes.as_slice())
        .ok()
        .map(Zeroizing::new)
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
        assert_eq!(*keys["k1"], [1u8; 32]);
        assert_eq!(s.limits.tokens_per_environment, 100_000);
        assert_eq!(s.limits.otp_per_token_per_minute, 60);
        assert_eq!(s.limits.requests_per_environment_per_second, 0);
        assert_eq!(s.otp.hotp_window, 10);
        assert_eq!(s.otp.totp_window, 1);
        assert_eq!(s.otp.max_failures, 10);
        assert_eq!(s.otp.lockout, Lockout::Lock);
        assert_eq!(
            (s.otp.throttle_base_seconds, s.otp.throttle_max_seconds),
            (30, 900)
        );
        assert_eq!(s.otp.hotp_resync_window, 1000);
        assert_eq!(s.otp.totp_resync_window_seconds, 86_400);
        assert!(!format!("{s:?}").contains(KEY), "Debug must not show keys");
        assert!(
            !format!("{s:?}").contains("0123456789abcdef"),
            "Debug must not show secrets"
        );
    }

    const ENV_A: &str = "0193a0c4-0000-7000-8000-00000000000a";
    const ENV_B: &str = "0193a0c4-0000-7000-8000-00000000000b";

    #[test]
    fn pskc_keys_are_bound_to_environments_and_never_shown() {
        let key = "000102030405060708090a0b0c0d0e0f";
        let s = load_with(&format!(
            "{VALID}\n[import]\npskc_keys.Vendor.key = \"{key}\"\npskc_keys.Vendor.environments = [\"{ENV_A}\"]\npskc_keys.all.key = \"{key}\"\npskc_keys.all.environments = [\"*\"]"
        ))
        .unwrap();
        let ring = s.import.keyring().unwrap();
        let (a, b) = (
            Uuid::parse_str(ENV_A).unwrap(),
            Uuid::parse_str(ENV_B).unwrap(),
        );
        assert_eq!(ring.key_for("VENDOR", a).unwrap().len(), 16);
        assert!(ring.key_for("vendor", b).is_none(), "bound to A only");
        assert!(ring.key_for("other", a).is_none());
        assert!(ring.key_for("all", b).is_some());
        assert_eq!(ring.shared_ids(), ["all"]);
        assert!(!format!("{s:?}").contains(key));
        assert!(!format!("{ring:?}").contains(key));
        assert!(load_with(VALID).unwrap().import.pskc_keys.is_empty());
    }

    /// The process environment as an operator sets it, read through the real loader.
    fn load_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("oath-config-{}", uuid::Uuid::new_v4()));
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::read_with_env(&dir, None, Some(env)).and_then(|s| {
            s.check()?;
            Ok(s)
        })
    }

    #[test]
    fn runs_with_compiled_in_defaults_and_no_config_folder() {
        let s = load_env(&[(
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        )])
        .unwrap();
        assert_eq!(s.jobs.chunk_size, 1000);
        assert_eq!(s.import.pbkdf2_max_iterations, 200_000);
        assert_eq!(s.server.addr, "127.0.0.1:8080");
    }

    #[test]
    fn string_settings_from_the_environment_are_taken_verbatim() {
        let digits = "12345678901234567890123456789012";
        let s = load_env(&[
            ("OATH__AUTH__HS256_SECRET", digits),
            ("OATH__AUTH__ISSUER", "0042"),
            ("OATH__AUTH__AUDIENCE", "1e3"),
            ("OATH__CRYPTO__ACTIVE_KEY_ID", "007"),
            ("OATH__CRYPTO__KEYS__007", KEY),
            ("OATH__IMPORT__PSKC_KEYS__VENDOR7__KEY", digits),
            (
                "OATH__IMPORT__PSKC_KEYS__VENDOR7__ENVIRONMENTS",
                &format!("{ENV_A}, {ENV_B}"),
            ),
            ("OATH__SERVER__PUBLIC_BASE_URL", "https://10.0.0.1"),
            ("OATH__JOBS__RUNNERS", "0"),
            ("OATH__JOBS__SYNC_WAIT_SECONDS", "5"),
            ("OATH__LIMITS__TOKENS_PER_ENVIRONMENT", "7"),
            ("OATH__LIMITS__OTP_PER_TOKEN_PER_MINUTE", "5"),
            ("OATH__LIMITS__REQUESTS_PER_ENVIRONMENT_PER_SECOND", "300"),
            ("OATH__LIMITS__RATE_LIMIT_KEYS", "5000"),
            ("DATABASE_URL", "postgres://u:1234@db:5432/1234"),
        ])
        .unwrap();
        assert_eq!(s.auth.hs256_secret.as_deref(), Some(digits));
        assert_eq!(s.auth.issuer, "0042");
        assert_eq!(s.auth.audience, "1e3");
        let (active, keys) = s.crypto.decoded_keys().unwrap();
        assert_eq!(active, "007");
        assert_eq!(*keys["007"], [1u8; 32]);
        let ring = s.import.keyring().unwrap();
        for env in [ENV_A, ENV_B] {
            let key = ring
                .key_for("vendor7", Uuid::parse_str(env).unwrap())
                .unwrap();
            assert_eq!(hex::encode(&key[..]), digits);
        }
        assert_eq!(s.database.url, "postgres://u:1234@db:5432/1234");
        assert_eq!((s.jobs.runners, s.jobs.sync_wait_seconds), (0, 5));
        assert_eq!(s.limits.tokens_per_environment, 7);
        let limits = &s.limits;
        assert_eq!(
            (
                limits.otp_per_token_per_minute,
                limits.requests_per_environment_per_second,
                limits.rate_limit_keys
            ),
            (5, 300, 5000)
        );
    }

    #[test]
    fn the_flat_pskc_key_form_names_the_new_one() {
        for err in [
            load_with(&format!(
                "{VALID}\n[import]\npskc_keys.vendor7 = \"000102030405060708090a0b0c0d0e0f\""
            ))
            .unwrap_err(),
            load_env(&[
                (
                    "OATH__AUTH__HS256_SECRET",
                    "0123456789abcdef0123456789abcdef",
                ),
                (
                    "OATH__IMPORT__PSKC_KEYS__VENDOR7",
                    "000102030405060708090a0b0c0d0e0f",
                ),
            ])
            .unwrap_err(),
        ] {
            let err = err.to_string();
            assert!(err.contains("import.pskc_keys.vendor7.key"), "{err}");
            assert!(
                err.contains("OATH__IMPORT__PSKC_KEYS__VENDOR7__ENVIRONMENTS"),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1);
        }
    }

    #[test]
    fn unknown_settings_stop_start_up_naming_the_closest_key() {
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let err = load_env(&[secret, ("OATH__SERVER__ADRR", "0.0.0.0:80")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration error: unknown setting server.adrr from OATH__SERVER__ADRR (did you mean server.addr?)"
        );
        let err = load_with(&format!("{VALID}\n[jobs]\nrunner = 4")).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("unknown setting jobs.runner in ")
                && err.contains("test.toml")
                && err.ends_with("(did you mean jobs.runners?)"),
            "{err}"
        );
        for (file, expected) in [
            (
                "[colour]\nfavourite = \"blue\"",
                "unknown setting colour.favourite in ",
            ),
            (
                "[import]\npskc_keys.v7.key = \"00\"\npskc_keys.v7.kye = \"00\"",
                "(did you mean import.pskc_keys.v7.key?)",
            ),
        ] {
            let err = load_with(&format!("{VALID}\n{file}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{file}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let err = load_env(&[secret, ("OATH__CRYPTO__KEYS__K2__X", "y")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown setting crypto.keys.k2.x from OATH__CRYPTO__KEYS__K2__X"),
            "{err}"
        );
        // Map-valued settings take any id.
        let s = load_env(&[
            secret,
            ("OATH__CRYPTO__KEYS__ANY_ID_AT_ALL", KEY),
            (
                "OATH__IMPORT__PSKC_KEYS__V7__KEY",
                "000102030405060708090a0b0c0d0e0f",
            ),
            ("OATH__IMPORT__PSKC_KEYS__V7__ENVIRONMENTS", ENV_A),
            ("OATH_UNRELATED", "x"),
            ("DATABASE_URL", "postgres://db/x"),
        ])
        .unwrap();
        assert!(s.crypto.keys.contains_key("any_id_at_all"));
    }

    /// A scratch file holding `content`, removed when the test ends.
    struct ValueFile(PathBuf);

    impl ValueFile {
        fn new(content: &str) -> Self {
            let path = std::env::temp_dir().join(format!("oath-value-{}", Uuid::new_v4()));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for ValueFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn any_setting_can_be_read_from_a_file() {
        let secret = ValueFile::new("0123456789abcdef0123456789abcdef\n");
        let key = ValueFile::new(&format!("{KEY}\r\n"));
        let url = ValueFile::new("postgres://u:p@db/x");
        let ca = ValueFile::new("/etc/oath-service/idp-ca.pem\n");
        let s = load_env(&[
            ("OATH__AUTH__HS256_SECRET_FILE", secret.path()),
            ("OATH__CRYPTO__ACTIVE_KEY_ID", "k1"),
            ("OATH__CRYPTO__KEYS__K1_FILE", key.path()),
            ("DATABASE_URL_FILE", url.path()),
            // A setting whose name ends in _FILE is itself, and can be read from a file too.
            ("OATH__AUTH__JWKS_CA_FILE_FILE", ca.path()),
        ])
        .unwrap();
        assert_eq!(
            s.auth.hs256_secret.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(*s.crypto.decoded_keys().unwrap().1["k1"], [1u8; 32]);
        assert_eq!(s.database.url, "postgres://u:p@db/x");
        assert_eq!(
            s.auth.jwks_ca_file.as_deref(),
            Some(Path::new("/etc/oath-service/idp-ca.pem"))
        );
        let s = load_env(&[
            ("OATH__AUTH__HS256_SECRET_FILE", secret.path()),
            ("OATH__AUTH__JWKS_CA_FILE", "/ca.pem"),
        ])
        .unwrap();
        assert_eq!(s.auth.jwks_ca_file.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn a_setting_given_twice_or_by_an_unreadable_file_stops_start_up() {
        let secret = ValueFile::new("0123456789abcdef0123456789abcdef");
        let cases = [
            (
                vec![
                    ("OATH__AUTH__HS256_SECRET_FILE", secret.path()),
                    ("OATH__AUTH__HS256_SECRET", "0123456789abcdef0123456789abcdef"),
                ],
                "both OATH__AUTH__HS256_SECRET and OATH__AUTH__HS256_SECRET_FILE are set",
            ),
            (
                vec![("OATH__AUTH__HS256_SECRET_FILE", "/nonexistent/secret")],
                "OATH__AUTH__HS256_SECRET_FILE: cannot read /nonexistent/secret",
            ),
            (
                vec![
                    ("OATH__AUTH__HS256_SECRET_FILE", secret.path()),
                    ("OATH__SERVER__ADRR_FILE", secret.path()),
                ],
                "unknown setting server.adrr from OATH__SERVER__ADRR_FILE (did you mean server.addr?)",
            ),
        ];
        for (env, expected) in cases {
            let err = load_env(&env).unwrap_err().to_string();
            assert!(err.contains(expected), "{env:?}: {err}");
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
        let err = load_with(&VALID.replace("keys.k1", "keys.k1_file")).unwrap_err();
        assert!(
            err.to_string()
                .contains("crypto.keys.k1_file: an id may not end in _file"),
            "{err}"
        );
    }

    #[test]
    fn the_request_hash_key_is_configured_or_derived() {
        let s = load_with(VALID).unwrap();
        let derived = s.crypto.request_hash_key().unwrap();
        assert_ne!(*derived, [1u8; 32], "not the encryption key itself");
        let mut s2 = s.clone();
        s2.crypto.request_hash_key =
            Some(base64::engine::general_purpose::STANDARD.encode([9u8; 32]));
        assert_eq!(*s2.crypto.request_hash_key().unwrap(), [9u8; 32]);
        s2.crypto.request_hash_key = Some("c2hvcnQ=".into());
        assert!(s2
            .crypto
            .request_hash_key()
            .unwrap_err()
            .to_string()
            .contains("crypto.request_hash_key"));
    }

    #[test]
    fn job_retention_defaults_and_ranges() {
        let s = load_with(VALID).unwrap();
        assert_eq!(s.jobs.retention_seconds, 2_592_000);
        assert_eq!(s.jobs.purge_interval_seconds, 300);
        let s = load_with(&format!(
            "{VALID}\n[jobs]\nretention_seconds = 1\npurge_interval_seconds = 86400"
        ))
        .unwrap();
        assert_eq!(
            (s.jobs.retention_seconds, s.jobs.purge_interval_seconds),
            (1, 86_400)
        );
        for (extra, key) in [
            ("retention_seconds = 0", "jobs.retention_seconds"),
            ("retention_seconds = 316224001", "jobs.retention_seconds"),
            ("purge_interval_seconds = 0", "jobs.purge_interval_seconds"),
            (
                "purge_interval_seconds = 86401",
                "jobs.purge_interval_seconds",
            ),
        ] {
            let err = load_with(&format!("{VALID}\n[jobs]\n{extra}")).unwrap_err();
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
    }

    #[test]
    fn primary_check_interval_from_the_environment_and_its_range() {
        assert_eq!(
            load_with(VALID).unwrap().database.primary_check_interval_ms,
            500
        );
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[
            secret,
            ("OATH__DATABASE__PRIMARY_CHECK_INTERVAL_MS", "250"),
            (
                "OATH__DATABASE__URL",
                "postgres://u@db1:5432,db2:5433/oath?target_session_attrs=read-write",
            ),
        ])
        .unwrap();
        assert_eq!(s.primary_check_interval(), Duration::from_millis(250));
        assert_eq!(
            crate::database::DatabaseUrl::parse(&s.database.url)
                .unwrap()
                .host_names(),
            "db1:5432,db2:5433"
        );
        for value in ["49", "60001", "soon"] {
            let err = load_env(&[secret, ("OATH__DATABASE__PRIMARY_CHECK_INTERVAL_MS", value)])
                .unwrap_err();
            assert!(
                err.to_string().contains("primary_check_interval_ms"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn parallel_chunks_from_a_file_or_the_environment() {
        assert_eq!(load_with(VALID).unwrap().jobs.parallel_chunks, 2);
        let s = load_with(&format!("{VALID}\n[jobs]\nparallel_chunks = 1")).unwrap();
        assert_eq!(s.jobs.parallel_chunks, 1);
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[secret, ("OATH__JOBS__PARALLEL_CHUNKS", "8")]).unwrap();
        assert_eq!(s.jobs.parallel_chunks, 8);
        for value in ["0", "9"] {
            let err = load_env(&[secret, ("OATH__JOBS__PARALLEL_CHUNKS", value)]).unwrap_err();
            assert!(
                err.to_string()
                    .contains("jobs.parallel_chunks must be from 1 to 8"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn body_timeout_from_a_file_or_the_environment() {
        assert_eq!(load_with(VALID).unwrap().server.body_timeout_seconds, 30);
        let s = load_with(&format!("{VALID}\n[server]\nbody_timeout_seconds = 5")).unwrap();
        assert_eq!(s.body_timeout(), Duration::from_secs(5));
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[secret, ("OATH__SERVER__BODY_TIMEOUT_SECONDS", "7")]).unwrap();
        assert_eq!(s.server.body_timeout_seconds, 7);
        for value in ["0", "3601"] {
            let env = [secret, ("OATH__SERVER__BODY_TIMEOUT_SECONDS", value)];
            let err = load_env(&env).unwrap_err();
            assert!(
                err.to_string()
                    .contains("server.body_timeout_seconds must be from 1 to 3600"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn lockout_policy_from_a_file_or_the_environment() {
        let s = load_with(&format!(
            "{VALID}\n[otp]\nlockout = \"throttle\"\nthrottle_base_seconds = 5\nthrottle_max_seconds = 5"
        ))
        .unwrap();
        assert_eq!(s.otp.lockout, Lockout::Throttle);
        assert_eq!(
            (s.otp.throttle_base_seconds, s.otp.throttle_max_seconds),
            (5, 5)
        );
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[
            secret,
            ("OATH__OTP__LOCKOUT", "throttle"),
            ("OATH__OTP__MAX_FAILURES", "5"),
            ("OATH__OTP__THROTTLE_BASE_SECONDS", "10"),
            ("OATH__OTP__THROTTLE_MAX_SECONDS", "600"),
        ])
        .unwrap();
        assert_eq!(s.otp.lockout, Lockout::Throttle);
        assert_eq!(s.otp.max_failures, 5);
        assert_eq!(
            (s.otp.throttle_base_seconds, s.otp.throttle_max_seconds),
            (10, 600)
        );
        for (vars, key) in [
            (vec![("OATH__OTP__LOCKOUT", "forever")], "lockout"),
            (
                vec![("OATH__OTP__THROTTLE_BASE_SECONDS", "0")],
                "otp.throttle_base_seconds must be from 1 to 86400",
            ),
            (
                vec![("OATH__OTP__THROTTLE_MAX_SECONDS", "20")],
                "otp.throttle_max_seconds must be from 30 to 86400",
            ),
            (
                vec![("OATH__OTP__THROTTLE_MAX_SECONDS", "86401")],
                "otp.throttle_max_seconds must be from 30 to 86400",
            ),
        ] {
            let mut env = vec![secret];
            env.extend(vars);
            let err = load_env(&env).unwrap_err().to_string();
            assert!(err.contains(key), "{env:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
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
                format!("{VALID}\n[import]\npskc_keys.vendor7.key = \"00112233\"\npskc_keys.vendor7.environments = [\"*\"]"),
                "import.pskc_keys.vendor7.key",
            ),
            (
                format!("{VALID}\n[import]\npskc_keys.v8.key = \"000102030405060708090a0b0c0d0e0f\""),
                "import.pskc_keys.v8.environments",
            ),
            (
                format!("{VALID}\n[import]\npskc_keys.v9.key = \"000102030405060708090a0b0c0d0e0f\"\npskc_keys.v9.environments = [\"not-a-uuid\"]"),
                "import.pskc_keys.v9.environments",
            ),
            (
                format!("{VALID}\n[import]\npbkdf2_max_iterations = 1"),
                "import.pbkdf2_max_iterations",
            ),
            (
                VALID.replace("[auth]", "[auth]\nleeway_seconds = 301"),
                "auth.leeway_seconds",
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
