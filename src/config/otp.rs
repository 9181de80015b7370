//! `[otp]`: the validation and resync windows and the lockout policy, the same for every token.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// OTP validation windows and the lockout policy. They apply to every token: the contract's
/// token representation has no per-token fields for them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct OtpSettings {
    /// HOTP: counters accepted after the expected one.
    pub hotp_window: u32,
    /// TOTP: time steps accepted either side of the expected one (current step + drift).
    pub totp_window: u32,
    /// Consecutive failed checks after which a token is locked (see [`Lockout`]).
    pub max_failures: u32,
    /// What `max_failures` consecutive failures do to a token.
    pub lockout: Lockout,
    /// `throttle`: the first delay, doubled with each further failure...
    pub throttle_base_seconds: u32,
    /// ...up to this.
    pub throttle_max_seconds: u32,
    /// HOTP resync: counters searched after the expected one.
    pub hotp_resync_window: u32,
    /// TOTP resync: seconds searched either side of now.
    pub totp_resync_window_seconds: u32,
}

impl Default for OtpSettings {
    fn default() -> Self {
        Self {
            hotp_window: 10,
            totp_window: 1,
            max_failures: 10,
            lockout: Lockout::Lock,
            throttle_base_seconds: 30,
            throttle_max_seconds: 900,
            hotp_resync_window: 1000,
            totp_resync_window_seconds: 86_400,
        }
    }
}

/// What `otp.max_failures` consecutive failed checks do to a token.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lockout {
    /// Locked until a resync or an unlock: an attacker who knows a token's id can keep its
    /// user out for good.
    Lock,
    /// Checks refused for a delay that doubles with each further failure, up to a maximum: no
    /// one is kept out longer than that at a time, and guessing stays slow.
    Throttle,
}

impl OtpSettings {
    // Upper bounds keep the work of one request small: each candidate costs an HMAC.
    const MAX_HOTP_WINDOW: u32 = 1000;
    const MAX_TOTP_WINDOW: u32 = 100;
    const MAX_HOTP_RESYNC_WINDOW: u32 = 100_000;
    const MAX_TOTP_RESYNC_SECONDS: u32 = 7 * 86_400;
    /// A day: a longer refusal is a lock, which `lockout = "lock"` says more plainly.
    const MAX_THROTTLE_SECONDS: u32 = 86_400;

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let within = |key: &str, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError(format!(
                    "otp.{key} must be from {min} to {max}, got {value}"
                )))
            }
        };
        within("hotp_window", self.hotp_window, 0, Self::MAX_HOTP_WINDOW)?;
        within("totp_window", self.totp_window, 0, Self::MAX_TOTP_WINDOW)?;
        // The count is an `integer` column.
        within("max_failures", self.max_failures, 1, i32::MAX as u32)?;
        within(
            "throttle_base_seconds",
            self.throttle_base_seconds,
            1,
            Self::MAX_THROTTLE_SECONDS,
        )?;
        within(
            "throttle_max_seconds",
            self.throttle_max_seconds,
            self.throttle_base_seconds,
            Self::MAX_THROTTLE_SECONDS,
        )?;
        within(
            "hotp_resync_window",
            self.hotp_resync_window,
            1,
            Self::MAX_HOTP_RESYNC_WINDOW,
        )?;
        within(
            "totp_resync_window_seconds",
            self.totp_resync_window_seconds,
            1,
            Self::MAX_TOTP_RESYNC_SECONDS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn lockout_policy_from_a_file_or_the_environment() {
        let s = load_with(&format!(
            "{VALID}\n[otp]\nlockout = \"throttle\"\nthrottle_base_seconds = 5\nthrottle_max_seconds = 5"
        ))
        .unwrap();
        assert_eq!(s.otp.lockout, Lockout::Throttle);
        assert_eq!(
            (s.otp.throttle_base_seconds, s.otp.throttle_max_seconds),
            (5, 5)
        );
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[
            secret,
            ("OATH__OTP__LOCKOUT", "throttle"),
            ("OATH__OTP__MAX_FAILURES", "5"),
            ("OATH__OTP__THROTTLE_BASE_SECONDS", "10"),
            ("OATH__OTP__THROTTLE_MAX_SECONDS", "600"),
        ])
        .unwrap();
        assert_eq!(s.otp.lockout, Lockout::Throttle);
        assert_eq!(s.otp.max_failures, 5);
        assert_eq!(
            (s.otp.throttle_base_seconds, s.otp.throttle_max_seconds),
            (10, 600)
        );
        for (vars, key) in [
            (vec![("OATH__OTP__LOCKOUT", "forever")], "lockout"),
            (
                vec![("OATH__OTP__THROTTLE_BASE_SECONDS", "0")],
                "otp.throttle_base_seconds must be from 1 to 86400",
            ),
            (
                vec![("OATH__OTP__THROTTLE_MAX_SECONDS", "20")],
                "otp.throttle_max_seconds must be from 30 to 86400",
            ),
            (
                vec![("OATH__OTP__THROTTLE_MAX_SECONDS", "86401")],
                "otp.throttle_max_seconds must be from 30 to 86400",
            ),
        ] {
            let mut env = vec![secret];
            env.extend(vars);
            let err = load_env(&env).unwrap_err().to_string();
            assert!(err.contains(key), "{env:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
