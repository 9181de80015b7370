//! `[import]`: the pre-shared PSKC transport keys as configured (hex, with the environments each
//! is bound to), and the limits on parsing files. [`ImportSettings::keyring`] turns the keys into
//! the [`PskcKeyring`] the import routes use, naming the key at fault when one is malformed.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::import::keyring::{decode_pskc_key, KeyScope, PskcKeyring};

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

impl ImportSettings {
    /// Decodes and binds every configured key; the error names the key at fault.
    pub fn keyring(&self) -> Result<PskcKeyring, ConfigError> {
        let mut ids: Vec<&String> = self.pskc_keys.keys().collect();
        ids.sort();
        let mut ring = PskcKeyring::default();
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
            let Some(scope) = KeyScope::parse(&listed) else {
                return fail(
                    ".environments must list the environment ids that may use the key (or [\"*\"] for all)",
                );
            };
            ring.insert(id, key, scope);
        }
        Ok(ring)
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::super::testing::*;

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
}
