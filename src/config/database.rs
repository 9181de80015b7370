//! `[database]`: the connection URL (which may carry a password, so never shown) and the pool.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl DatabaseSettings {
    /// Checks what serde cannot: a URL is set, and the ranges.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.url.trim().is_empty() {
            return fail("database.url must be set (or DATABASE_URL)".into());
        }
        if self.max_connections == 0 {
            return fail("database.max_connections must be at least 1".into());
        }
        if !(50..=60_000).contains(&self.primary_check_interval_ms) {
            return fail("database.primary_check_interval_ms must be from 50 to 60000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::*;

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
}
