//! `[telemetry]`: where traces go. With `otlp_endpoint` unset (the default) nothing is exported
//! and no exporter exists; the trace ids in the log lines cost a header parse or 16 random bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::show::redact_url;
use super::ConfigError;

#[derive(Clone, Deserialize, Serialize)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP collector's base URL (e.g. `http://collector:4318`): spans are POSTed to
    /// `{otlp_endpoint}/v1/traces` as protobuf. Unset or empty: no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of the traces that start here (requests without a `traceparent`) that are
    /// exported, 0.0-1.0. A caller's sampling decision (the `traceparent`'s flag) is always
    /// followed.
    #[serde(default = "all")]
    pub sample_ratio: f64,
}

fn all() -> f64 {
    1.0
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: all(),
        }
    }
}

// The endpoint's URL may carry a password.
impl fmt::Debug for TelemetrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetrySettings")
            .field("otlp_endpoint", &self.otlp_endpoint().map(redact_url))
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

impl TelemetrySettings {
    /// The collector's base URL; an empty value (`OATH__TELEMETRY__OTLP_ENDPOINT=`) means none.
    pub fn otlp_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Where the spans are POSTed: the OTLP/HTTP traces path below the base URL (a URL that
    /// already ends in it is taken as it is).
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = self.otlp_endpoint() {
            let url = reqwest::Url::parse(endpoint).ok();
            if url
                .as_ref()
                .is_some_and(|u| !u.username().is_empty() || u.password().is_some())
            {
                // Export errors name the URL: credentials go in a header instead.
                return Err(ConfigError(
                    "telemetry.otlp_endpoint must not carry credentials; give them as a header with OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Basic%20...)".into(),
                ));
            }
            let usable = url.is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
            });
            if !usable {
                return Err(ConfigError(format!(
                    "telemetry.otlp_endpoint must be an http(s) URL without a query, e.g. http://collector:4318, got {endpoint:?}"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError(format!(
                "telemetry.sample_ratio must be from 0.0 to 1.0, got {}",
                self.sample_ratio
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load_env, load_with, VALID};
    use super::*;

    #[test]
    fn telemetry_from_a_file_or_the_environment() {
        let shipped = load_with(VALID).unwrap().telemetry;
        assert_eq!((shipped.otlp_endpoint(), shipped.sample_ratio), (None, 1.0));
        let s = load_with(&format!(
            "{VALID}\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.5"
        ))
        .unwrap()
        .telemetry;
        assert_eq!(
            s.traces_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(s.sample_ratio, 0.5);
        let secret = (
            "OATH__AUTH__HS256_SECRET",
            "0123456789abcdef0123456789abcdef",
        );
        let s = load_env(&[
            secret,
            ("OATH__TELEMETRY__OTLP_ENDPOINT", "https://otel.example"),
            ("OATH__TELEMETRY__SAMPLE_RATIO", "0.1"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(
            s.traces_url().as_deref(),
            Some("https://otel.example/v1/traces")
        );
        assert_eq!(s.sample_ratio, 0.1);
        // Empty is unset, as for the other optional addresses.
        let s = load_env(&[secret, ("OATH__TELEMETRY__OTLP_ENDPOINT", "")]).unwrap();
        assert_eq!(s.telemetry.traces_url(), None);
        let err = load_env(&[secret, ("OATH__TELEMETRY__SAMPLE_RATIO", "often")]).unwrap_err();
        assert!(err.to_string().contains("sample_ratio"), "{err}");
    }

    fn with(endpoint: &str, sample_ratio: f64) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint: Some(endpoint.into()),
            sample_ratio,
        }
    }

    #[test]
    fn the_traces_path_is_added_to_the_base_url_once() {
        for (endpoint, url) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.example/tenant-a",
                "https://otel.example/tenant-a/v1/traces",
            ),
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
        ] {
            let s = with(endpoint, 1.0);
            assert!(s.check().is_ok(), "{endpoint}");
            assert_eq!(s.traces_url().as_deref(), Some(url), "{endpoint}");
        }
        let unset = with("  ", 1.0);
        assert_eq!(unset.otlp_endpoint(), None);
        assert_eq!(unset.traces_url(), None);
        assert!(TelemetrySettings::default().traces_url().is_none());
    }

    #[test]
    fn a_bad_endpoint_or_ratio_is_refused_without_showing_a_password() {
        for endpoint in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://collector:4318?x=1",
            "http://u:hunter2@collector:4318",
            "https://hunter2@collector:4318",
        ] {
            let e = with(endpoint, 1.0).check().unwrap_err().to_string();
            assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let e = with("http://c:4318", ratio)
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains("telemetry.sample_ratio"), "{e}");
        }
        let debug = format!("{:?}", with("https://u:hunter2@c:4318", 1.0));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
