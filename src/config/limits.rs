//! `[limits]`: the token quota and the per-process rate limits.

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

impl LimitSettings {
    /// Checks what serde cannot: the ranges.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.tokens_per_environment < 0 {
            return fail("limits.tokens_per_environment must not be negative".into());
        }
        if self.otp_per_token_per_minute > 1_000_000 {
            return fail("limits.otp_per_token_per_minute must be from 0 to 1000000".into());
        }
        if self.requests_per_environment_per_second > 1_000_000 {
            return fail(
                "limits.requests_per_environment_per_second must be from 0 to 1000000".into(),
            );
        }
        if !(2..=10_000_000).contains(&self.rate_limit_keys) {
            return fail("limits.rate_limit_keys must be from 2 to 10000000".into());
        }
        Ok(())
    }
}
