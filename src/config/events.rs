//! `[events]`: the activity log's retention, webhook subscriptions and their delivery.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct EventSettings {
    /// Events are deleted this long after they occurred.
    pub retention_seconds: u64,
    /// Subscriptions an environment may have.
    pub max_subscriptions_per_environment: u32,
    /// A delivery not answered within this is a failure.
    pub delivery_timeout_seconds: u64,
    /// An event still undelivered this long after it occurred is dropped (and counted).
    pub max_delivery_age_seconds: u64,
    /// Accept `http://` targets (development).
    pub allow_http: bool,
    /// Accept targets that are or resolve to loopback, private, link-local, unique-local or
    /// unspecified addresses (tests, internal receivers).
    pub allow_private_targets: bool,
    /// PEM CA certificates trusted for targets, beside the system's.
    pub ca_file: Option<String>,
    /// Delivery workers per service process; 0 runs none.
    pub runners: usize,
    /// How often an idle worker looks for subscriptions with events to deliver.
    pub poll_interval_ms: u64,
    /// How long a worker holds a subscription it claimed without finishing a delivery, before
    /// another may take it over.
    pub lease_seconds: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            retention_seconds: 7_776_000,
            max_subscriptions_per_environment: 50,
            delivery_timeout_seconds: 10,
            max_delivery_age_seconds: 604_800,
            allow_http: false,
            allow_private_targets: false,
            ca_file: None,
            runners: 2,
            poll_interval_ms: 500,
            lease_seconds: 60,
        }
    }
}

/// Ten years, as for jobs.
const MAX_SECONDS: u64 = 10 * 366 * 86_400;

impl EventSettings {
    pub(super) fn check(&self) -> Result<(), String> {
        let within = |key: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "events.{key} must be from {min} to {max}, got {value}"
                ))
            }
        };
        within("retention_seconds", self.retention_seconds, 1, MAX_SECONDS)?;
        within(
            "max_subscriptions_per_environment",
            self.max_subscriptions_per_environment.into(),
            0,
            10_000,
        )?;
        within(
            "delivery_timeout_seconds",
            self.delivery_timeout_seconds,
            1,
            300,
        )?;
        within(
            "max_delivery_age_seconds",
            self.max_delivery_age_seconds,
            1,
            MAX_SECONDS,
        )?;
        within("runners", self.runners as u64, 0, 64)?;
        within("poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        // A lease must outlast the delivery it covers.
        within(
            "lease_seconds",
            self.lease_seconds,
            self.delivery_timeout_seconds + 1,
            3600,
        )?;
        if let Some(path) = self.ca_file.as_deref().filter(|p| !p.is_empty()) {
            std::fs::read(path).map_err(|e| format!("events.ca_file: cannot read {path}: {e}"))?;
        }
        Ok(())
    }

    pub fn ca_file(&self) -> Option<&str> {
        self.ca_file.as_deref().filter(|p| !p.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts_and_ranges_are_checked() {
        let d = EventSettings::default();
        assert_eq!(d.retention_seconds, 7_776_000);
        assert_eq!(d.max_subscriptions_per_environment, 50);
        assert_eq!(d.delivery_timeout_seconds, 10);
        assert_eq!(d.max_delivery_age_seconds, 604_800);
        assert!(!d.allow_http && !d.allow_private_targets);
        d.check().unwrap();
        let lease_too_short = EventSettings {
            lease_seconds: 10,
            ..EventSettings::default()
        };
        assert!(lease_too_short
            .check()
            .unwrap_err()
            .starts_with("events.lease_seconds"));
        let no_timeout = EventSettings {
            delivery_timeout_seconds: 0,
            ..EventSettings::default()
        };
        assert!(no_timeout
            .check()
            .unwrap_err()
            .starts_with("events.delivery_timeout_seconds"));
        let missing_ca = EventSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..EventSettings::default()
        };
        assert!(missing_ca
            .check()
            .unwrap_err()
            .starts_with("events.ca_file"));
    }
}
