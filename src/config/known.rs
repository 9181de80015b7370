//! Which settings exist: every field of [`Settings`], as the compiled-in defaults serialize it,
//! plus the entries of the map-valued settings, whose ids are the operator's. A key the service
//! does not know stops start-up (a typo would otherwise leave a default silently in force).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use super::{ConfigError, Settings};

/// Settings whose keys are ids chosen by the operator, with what each id may hold below it
/// (`""`: the id itself holds the value).
const MAPS: &[(&str, &[&str])] = &[
    ("crypto.keys", &[""]),
    // `""`: the earlier flat form, refused later with a line naming the new one.
    ("import.pskc_keys", &["", "key", "environments"]),
];

/// The dotted paths of every fixed setting.
static FIXED: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let defaults = Settings::from_defaults().expect("the compiled-in defaults deserialize");
    let value = serde_json::to_value(defaults).expect("settings serialize");
    let mut paths = BTreeSet::new();
    collect_leaves(&value, String::new(), &mut paths);
    for (map, _) in MAPS {
        paths.remove(*map);
    }
    paths
});

fn collect_leaves(value: &serde_json::Value, path: String, out: &mut BTreeSet<String>) {
    match value {
        // A map-valued setting serializes as an empty object: it is a leaf here, removed above.
        serde_json::Value::Object(fields) if !fields.is_empty() => {
            for (name, value) in fields {
                collect_leaves(value, join(&path, name), out);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// `path.name`; either may be empty.
fn join(path: &str, name: &str) -> String {
    match (path.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => path.to_string(),
        _ => format!("{path}.{name}"),
    }
}

/// Whether `path` (dotted, e.g. `server.addr`) names a setting other than a map's entry.
pub(super) fn is_fixed(path: &str) -> bool {
    FIXED.contains(path)
}

/// Whether `path` (dotted, e.g. `server.addr`) names a setting.
pub(super) fn is_known(path: &str) -> bool {
    FIXED.contains(path) || map_entry(path).is_some_and(|(_, sub, subs)| subs.contains(&sub))
}

/// For a path below a map-valued setting: the map's entry (`crypto.keys.k1`), what follows the
/// id (`""` when nothing does) and what may follow it.
fn map_entry(path: &str) -> Option<(String, &str, &'static [&'static str])> {
    MAPS.iter().find_map(|(map, subs)| {
        let rest = path.strip_prefix(map)?.strip_prefix('.')?;
        let (id, sub) = rest.split_once('.').unwrap_or((rest, ""));
        (!id.is_empty()).then(|| (format!("{map}.{id}"), sub, *subs))
    })
}

/// The known setting nearest to an unknown `path`, when one is near enough to be a typo of it.
pub(super) fn closest(path: &str) -> Option<String> {
    let mut candidates: Vec<String> = FIXED.iter().cloned().collect();
    if let Some((entry, _, subs)) = map_entry(path) {
        candidates.extend(subs.iter().map(|sub| join(&entry, sub)));
    }
    let most = (path.len() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(path, &c), c))
        .filter(|(d, _)| *d <= most)
        .min()
        .map(|(_, c)| c)
}

/// Every key given in `config` (files, environment) that names no setting stops start-up, with
/// the nearest known key and where it was set: `origin_of` names the environment variable that
/// set a path, if one did.
pub(super) fn refuse_unknown(
    config: &config::Config,
    origin_of: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut given = Vec::new();
    collect_given(&config.cache, String::new(), &mut given);
    given.sort();
    let Some((path, file)) = given.into_iter().find(|(path, _)| !is_known(path)) else {
        return Ok(());
    };
    let from = match origin_of(&path) {
        Some(var) => format!(" from {var}"),
        None => file.map(|f| format!(" in {f}")).unwrap_or_default(),
    };
    let hint = closest(&path)
        .map(|c| format!(" (did you mean {c}?)"))
        .unwrap_or_default();
    Err(ConfigError(format!("unknown setting {path}{from}{hint}")))
}

/// The dotted path of every value (not table) in `value`, with the file it came from.
fn collect_given(value: &config::Value, path: String, out: &mut Vec<(String, Option<String>)>) {
    match &value.kind {
        config::ValueKind::Table(fields) => {
            for (name, value) in fields {
                collect_given(value, join(&path, name), out);
            }
        }
        _ => out.push((path, value.origin().map(str::to_string))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_settings_come_from_the_structs_and_maps_take_any_id() {
        for path in [
            "server.addr",
            "server.admin_addr",
            "auth.jwks_ca_file",
            "auth.hs256_secret",
            "crypto.active_key_id",
            "crypto.request_hash_key",
            "otp.hotp_window",
            "import.max_concurrent",
            "crypto.keys.k1",
            "import.pskc_keys.vendor7",
            "import.pskc_keys.vendor7.key",
            "import.pskc_keys.vendor7.environments",
        ] {
            assert!(is_known(path), "{path}");
        }
        for path in [
            "server.adrr",
            "server",
            "crypto.keys",
            "crypto.keys.k1.x",
            "import.pskc_keys.vendor7.kye",
            "import.pskc_keys",
            "telemetry",
        ] {
            assert!(!is_known(path), "{path}");
        }
    }

    #[test]
    fn the_closest_key_is_offered_when_near() {
        assert_eq!(closest("server.adrr").as_deref(), Some("server.addr"));
        assert_eq!(closest("sever.addr").as_deref(), Some("server.addr"));
        assert_eq!(closest("jobs.runner").as_deref(), Some("jobs.runners"));
        assert_eq!(
            closest("import.pskc_keys.v7.kye").as_deref(),
            Some("import.pskc_keys.v7.key")
        );
        assert_eq!(closest("color"), None);
    }
}
