//! The effective settings as TOML for `oath-service config check`, every secret replaced by
//! `"<redacted>"`: the output may be pasted into a ticket.

use super::Settings;

pub const REDACTED: &str = "<redacted>";

/// The settings that hold secrets, by dotted path; `*` stands for any id of a map.
const SECRETS: &[&str] = &[
    "auth.hs256_secret",
    "crypto.request_hash_key",
    "crypto.keys.*",
    "import.pskc_keys.*.key",
    // The earlier flat form, a bare key (refused at start-up, but shown by nobody).
    "import.pskc_keys.*",
];

impl Settings {
    /// Every setting in force, secrets redacted (and the password of `database.url`).
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| format!("cannot show the settings: {e}"))?;
        redact_table(&mut table, "");
        if let Some(toml::Value::String(url)) =
            table.get_mut("database").and_then(|d| d.get_mut("url"))
        {
            *url = redact_url(url);
        }
        toml::to_string(&table).map_err(|e| format!("cannot show the settings: {e}"))
    }
}

fn redact_table(table: &mut toml::Table, path: &str) {
    for (name, value) in table.iter_mut() {
        let path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match value {
            toml::Value::Table(inner) => redact_table(inner, &path),
            value if is_secret(&path) => *value = toml::Value::String(REDACTED.into()),
            _ => {}
        }
    }
}

fn is_secret(path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    SECRETS.iter().any(|pattern| {
        let pattern: Vec<&str> = pattern.split('.').collect();
        pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| *p == "*" || p == s)
    })
}

/// `url` with its password (`user:password@`, or a `password=` parameter) replaced.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                    format!("{name}={REDACTED}")
                }
                _ => param.to_string(),
            })
            .collect();
        out = format!("{out}?{}", params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_password_is_redacted_wherever_the_url_has_it() {
        for (url, shown) in [
            (
                "postgres://svc:s3cr:t@db:5432/oath?sslmode=verify-full",
                "postgres://svc:<redacted>@db:5432/oath?sslmode=verify-full",
            ),
            (
                "postgres://svc@db/oath?password=s3cr&sslmode=require",
                "postgres://svc@db/oath?password=<redacted>&sslmode=require",
            ),
            ("postgres://db/oath", "postgres://db/oath"),
            ("postgres://u:p@db", "postgres://u:<redacted>@db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secrets_match_their_patterns_only() {
        assert!(is_secret("crypto.keys.k1"));
        assert!(is_secret("import.pskc_keys.v7.key"));
        assert!(!is_secret("import.pskc_keys.v7.environments"));
        assert!(!is_secret("crypto.active_key_id"));
    }
}
