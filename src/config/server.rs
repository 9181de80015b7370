//! `[server]`: the listeners, body limits and shutdown timing; `[log]`: level and format.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl ServerSettings {
    /// The admin listener's address; an empty value (e.g. `OATH__SERVER__ADMIN_ADDR=`) means none.
    pub fn admin_addr(&self) -> Option<&str> {
        self.admin_addr.as_deref().filter(|a| !a.trim().is_empty())
    }

    /// Checks what serde cannot: the addresses, the base URL and the ranges.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.addr.parse::<SocketAddr>().is_err() {
            return fail(format!(
                "server.addr must be host:port with an IP address, got {:?}",
                self.addr
            ));
        }
        if let Some(admin) = self.admin_addr() {
            if admin.parse::<SocketAddr>().is_err() {
                return fail(format!(
                    "server.admin_addr must be host:port with an IP address, got {admin:?}"
                ));
            }
        }
        let base = &self.public_base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.contains('?') {
            return fail(format!(
                "server.public_base_url must be an absolute http(s) URL, got {base:?}"
            ));
        }
        if self.max_body_bytes < 1024 {
            return fail("server.max_body_bytes must be at least 1024".into());
        }
        if self.shutdown_delay_seconds > 300 {
            return fail("server.shutdown_delay_seconds must be from 0 to 300".into());
        }
        if !(1..=3600).contains(&self.body_timeout_seconds) {
            return fail("server.body_timeout_seconds must be from 1 to 3600".into());
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::*;

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
}
