//! Which webhook targets the service may call: `https://` (or `http://` with
//! `events.allow_http`), and never a loopback, private, link-local, unique-local or unspecified
//! address (unless `events.allow_private_targets`), whether the URL names the address or a host
//! that resolves to it. Checked when a subscription is written, and again at every delivery by
//! the resolver the delivery client connects through ([`CheckedResolver`]): the address checked
//! is the address connected to, so a name that resolves differently the second time (DNS
//! rebinding) cannot reach an internal service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// What the rules allow.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub allow_http: bool,
    pub allow_private: bool,
}

/// Checks a target URL as written: scheme, host, no credentials; an address literal against
/// the address rules. Names are resolved by [`resolve`].
pub fn parse(url: &str, rules: Rules) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|_| "url must be an absolute URL".to_string())?;
    match parsed.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        _ => return Err("url must start with https://".into()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url must not hold credentials; send them in httpEndpoint.headers".into());
    }
    if parsed.fragment().is_some() {
        return Err("url must not have a fragment".into());
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("url must name a host")?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        check_ip(ip, rules)?;
    }
    Ok(parsed)
}

/// Resolves the URL's host and checks every address it resolves to.
pub async fn resolve(url: &Url, rules: Rules) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().ok_or("url must name a host")?.to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = lookup(host.trim_start_matches('[').trim_end_matches(']'), port).await?;
    for addr in &addrs {
        check_ip(addr.ip(), rules)?;
    }
    Ok(addrs)
}

/// The error of a name that does not resolve.
pub const UNRESOLVED: &str = "the host could not be resolved";

async fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let target = (host.to_string(), port);
    let addrs = tokio::task::spawn_blocking(move || target.to_socket_addrs())
        .await
        .map_err(|_| UNRESOLVED.to_string())?
        .map_err(|_| UNRESOLVED.to_string())?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(UNRESOLVED.into());
    }
    Ok(addrs)
}

fn check_ip(ip: IpAddr, rules: Rules) -> Result<(), String> {
    if !rules.allow_private && is_internal(ip) {
        return Err(
            "url must not be or resolve to a loopback, private, link-local, unique-local or unspecified address"
                .into(),
        );
    }
    Ok(())
}

/// Loopback, private, shared (CGNAT), link-local, unique-local, unspecified, broadcast or
/// multicast: no receiver a tenant may make the service call. An IPv6 address that carries an
/// IPv4 one (mapped, compatible, NAT64) is judged by that.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fe80::/10 link-local, fc00::/7 unique-local, fec0::/10 site-local (old).
                || (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfec0
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        // 0.0.0.0/8 "this network", 100.64.0.0/10 shared address space.
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

/// The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) or
/// NAT64 (64:ff9b::a.b.c.d) IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|x| *x == 0) && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0);
    (compatible || nat64).then_some(tail)
}

/// The delivery client's resolver: the addresses a name resolves to, all of them allowed, or an
/// error (no connection is made).
pub struct CheckedResolver {
    pub rules: Rules,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rules = self.rules;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = lookup(&host, 0).await?;
            for addr in &addrs {
                check_ip(addr.ip(), rules)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Rules = Rules {
        allow_http: false,
        allow_private: false,
    };

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "ff02::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls() {
        assert!(parse("https://hooks.example.com/oath", STRICT).is_ok());
        for bad in [
            "http://hooks.example.com/",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "https://127.0.0.1/",
            "https://[::1]:8443/",
            "https://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data",
            "https://0.0.0.0/",
            "https://10.0.0.1/",
            "/relative",
            "",
        ] {
            assert!(parse(bad, STRICT).is_err(), "{bad}");
        }
        let open = Rules {
            allow_http: true,
            allow_private: true,
        };
        assert!(parse("http://127.0.0.1:8080/hook", open).is_ok());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused() {
        let url = parse("https://localhost:9/hook", STRICT).unwrap();
        assert!(resolve(&url, STRICT).await.is_err());
        let open = Rules {
            allow_http: false,
            allow_private: true,
        };
        assert!(resolve(&url, open).await.is_ok());
    }
}
