//! The environment variables the settings read: `OATH__SECTION__KEY` (a setting's dotted path,
//! upper-cased, `__` for the dots) and the conventional `DATABASE_URL`.

use std::collections::HashMap;

use super::ConfigError;

const PREFIX: &str = "OATH__";

/// The variables the settings read, by name.
pub(super) struct Variables {
    values: HashMap<String, String>,
}

impl Variables {
    /// Keeps the variables of `vars` that the settings read; the others are no business of ours.
    pub(super) fn read(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let values = vars.into_iter().filter(|(name, _)| is_ours(name)).collect();
        Ok(Self { values })
    }

    /// The process environment's variables (those whose name or value is not Unicode cannot
    /// be ours: none of our names is, and a value must be text).
    pub(super) fn from_process() -> Result<Self, ConfigError> {
        Self::read(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The `OATH__` variables, for the `config` crate's environment source.
    pub(super) fn prefixed(&self) -> HashMap<String, String> {
        self.values
            .iter()
            .filter(|(name, _)| has_prefix(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// The variable that set the setting at `path`, if one did.
    pub(super) fn origin_of(&self, path: &str) -> Option<String> {
        let mut names: Vec<&String> = self
            .values
            .keys()
            .filter(|name| setting_path(name).as_deref() == Some(path))
            .collect();
        names.sort();
        names.first().map(|name| name.to_string())
    }
}

fn has_prefix(name: &str) -> bool {
    name.len() > PREFIX.len() && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
}

fn is_ours(name: &str) -> bool {
    has_prefix(name) || name == "DATABASE_URL"
}

/// The dotted path an `OATH__` variable sets, as the `config` crate derives it.
fn setting_path(name: &str) -> Option<String> {
    has_prefix(name).then(|| name[PREFIX.len()..].to_lowercase().replace("__", "."))
}
