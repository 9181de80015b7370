//! `oath-service healthcheck`: the probe for container health checks. It asks the service's
//! readiness endpoint once and turns the answer into an exit status, so an image needs no curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longer than a healthy readiness check (one query) ever takes, shorter than an orchestrator's
/// probe timeout (Docker's default is 30 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The base URL that reaches a server listening on `addr` from the same host or container: an
/// unspecified address (`0.0.0.0`, `::`) becomes the loopback address of its family.
pub fn local_base_url(addr: &str) -> Result<String, String> {
    let mut addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("server.addr must be host:port with an IP address, got {addr:?}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(format!("http://{addr}"))
}

/// Succeeds when `base/health/ready` answers 200 within [`PROBE_TIMEOUT`]; the error is one
/// line saying what was answered instead. Redirects are not followed: they are not a 200.
pub async fn probe(base: &str) -> Result<(), String> {
    let base = base.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(format!(
            "--url must be an http:// or https:// URL, got {base:?}"
        ));
    }
    let url = format!("{base}/health/ready");
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "oath-service-healthcheck/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", crate::auth::error_chain(e.without_url())))?;
    match response.status() {
        reqwest::StatusCode::OK => Ok(()),
        status => Err(format!("{url} answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_base_url_reaches_the_listener_from_the_same_host() {
        assert_eq!(
            local_base_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(local_base_url("[::]:80").unwrap(), "http://[::1]:80");
        assert_eq!(
            local_base_url("10.1.2.3:9000").unwrap(),
            "http://10.1.2.3:9000"
        );
        assert!(local_base_url("localhost:8080")
            .unwrap_err()
            .starts_with("server.addr"));
    }

    #[tokio::test]
    async fn probe_refuses_a_url_without_http_scheme() {
        let err = probe("127.0.0.1:8080").await.unwrap_err();
        assert!(err.starts_with("--url must be"), "{err}");
    }
}
