//! What the settings tests share: the shipped defaults with a file or an environment on top,
//! read through the real loader.

use super::{ConfigError, Settings};

pub(super) const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// The shipped defaults plus `extra`, in a directory of their own.
pub(super) fn load_with(extra: &str) -> Result<Settings, ConfigError> {
    let dir = std::env::temp_dir().join(format!("oath-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let defaults = std::fs::read_to_string("config/default.toml").unwrap();
    std::fs::write(dir.join("default.toml"), defaults).unwrap();
    std::fs::write(dir.join("test.toml"), extra).unwrap();
    let result = Settings::load_from(&dir, Some("test"));
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

pub(super) const VALID: &str = r#"
    [auth]
    hs256_secret = "0123456789abcdef0123456789abcdef"
    [crypto]
    active_key_id = "K1"
    keys.k1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
"#;

pub(super) const ENV_A: &str = "0193a0c4-0000-7000-8000-00000000000a";
pub(super) const ENV_B: &str = "0193a0c4-0000-7000-8000-00000000000b";

/// The process environment as an operator sets it, read through the real loader.
pub(super) fn load_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
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
