//! The environment variables the settings read: `OATH__SECTION__KEY` (a setting's dotted path,
//! upper-cased, `__` for the dots) and the conventional `DATABASE_URL`. Each can instead be
//! given as `NAME_FILE`, the path of a file whose content (without a final newline) is the
//! value, as container secrets are mounted; a setting whose own name ends in `_FILE`
//! (`auth.jwks_ca_file`) is itself, and `OATH__AUTH__JWKS_CA_FILE_FILE` reads its path from a file.

use std::collections::HashMap;

use super::ConfigError;

const PREFIX: &str = "OATH__";

const FILE_SUFFIX: &str = "_FILE";

/// The variables the settings read, by name, those given as `NAME_FILE` read from their file.
pub(super) struct Variables {
    values: HashMap<String, String>,
    /// Name -> the `NAME_FILE` variable its value was read through.
    files: HashMap<String, String>,
}

impl Variables {
    /// Keeps the variables of `vars` that the settings read (the others are no business of
    /// ours) and reads those given by file. A setting given both ways stops start-up.
    pub(super) fn read(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut values = HashMap::new();
        let mut by_file = Vec::new();
        for (name, value) in vars {
            match file_variable_target(&name) {
                Some(target) if is_ours(&target) => by_file.push((name, target, value)),
                _ if is_ours(&name) => {
                    values.insert(name, value);
                }
                _ => {}
            }
        }
        let mut files = HashMap::new();
        for (name, target, path) in by_file {
            if let Some(both) = values.keys().find(|n| same_setting(n, &target)) {
                return Err(ConfigError(format!(
                    "both {both} and {name} are set: give the value or the file, not both"
                )));
            }
            values.insert(target.clone(), read_value_file(&name, &path)?);
            files.insert(target, name);
        }
        Ok(Self { values, files })
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
        let name = names.first()?;
        Some(self.files.get(*name).unwrap_or(name).clone())
    }
}

/// For `NAME_FILE`, `NAME`: unless `NAME_FILE` itself names a setting (`auth.jwks_ca_file`;
/// an id under `crypto.keys` does not count, hence no id may end in `_FILE`).
fn file_variable_target(name: &str) -> Option<String> {
    let cut = name.len().checked_sub(FILE_SUFFIX.len())?;
    if !name.is_char_boundary(cut) || !name[cut..].eq_ignore_ascii_case(FILE_SUFFIX) {
        return None;
    }
    if setting_path(name).is_some_and(|path| super::known::is_fixed(&path)) {
        return None;
    }
    Some(name[..cut].to_string())
}

/// Whether two variable names set the same setting (the `config` crate lower-cases them).
fn same_setting(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The content of the file at `path`, without one final newline.
fn read_value_file(name: &str, path: &str) -> Result<String, ConfigError> {
    let mut value = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{name}: cannot read {path}: {e}")))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
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
