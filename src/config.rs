//! Typed settings: the defaults compiled into the binary (`config/default.toml`), then the
//! optional overlays `config/default.toml` and `config/{OATH_ENV}.toml` of the working directory,
//! then `OATH__SECTION__KEY` environment variables (and `DATABASE_URL`). Environment values are
//! taken verbatim as text, so a digits-only key or secret is never read as a number; typed
//! settings parse that text. Anything missing or malformed stops start-up with one line naming
//! the key, and so does a key that names no setting (`known.rs`).
//!
//! This file reads and checks [`Settings`] as a whole; each section's types, checks and tests
//! live in a file of their own (`server.rs`, `database.rs`, `crypto.rs`, `limits.rs`, `otp.rs`,
//! `jobs.rs`, `import.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::AuthSettings;
// The PSKC keyring belongs to the imports; named here too, where callers have always found it.
pub use crate::import::keyring::{decode_pskc_key, KeyScope, PskcKeyring};

mod crypto;
mod database;
mod environment;
mod events;
mod import;
mod jobs;
mod known;
mod limits;
mod otp;
mod server;
mod show;
mod telemetry;
#[cfg(test)]
mod testing;

pub use crypto::{CryptoSettings, DecodedKeys};
pub use database::DatabaseSettings;
pub use events::EventSettings;
pub use import::{ImportSettings, PskcKeySetting, TextList};
pub use jobs::JobSettings;
pub use limits::LimitSettings;
pub use otp::{Lockout, OtpSettings};
pub use server::{LogFormat, LogSettings, ServerSettings};
pub use telemetry::TelemetrySettings;

use environment::Variables;

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
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

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
        self.server.check()?;
        self.database.check()?;
        self.jobs.check()?;
        self.limits.check()?;
        // `OATH__CRYPTO__KEYS__K1_FILE` names the file holding key k1, so no id can end so.
        let ids = (self.crypto.keys.keys().map(|id| ("crypto.keys", id))).chain(
            self.import
                .pskc_keys
                .keys()
                .map(|id| ("import.pskc_keys", id)),
        );
        for (map, id) in ids {
            if id.to_ascii_uppercase().ends_with("_FILE") {
                return Err(ConfigError(format!(
                    "{map}.{id}: an id may not end in _file (a variable ending in _FILE names the file holding a value)"
                )));
            }
        }
        self.otp.check()?;
        self.events.check().map_err(ConfigError)?;
        self.import.check()?;
        self.telemetry.check()?;
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::testing::*;
    use super::*;

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
