//! `database.url` in libpq's form: one host or several
//! (`postgres://user@host1:5432,host2:5433/db?target_session_attrs=read-write`), with
//! `target_session_attrs` `read-write` (the default with several hosts) or `any`. sqlx parses a
//! URL of one host only, so each host becomes the options sqlx makes of the same URL naming that
//! host alone: user, password, database, `sslmode` and the rest are shared by every host.

use std::fmt;

use sqlx::postgres::PgConnectOptions;

/// libpq's default port, for a host named without one.
const DEFAULT_PORT: u16 = 5432;

/// Which hosts a session may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Only a host that accepts writes by default (`transaction_read_only` off: not in
    /// recovery, nor read-only by default), as libpq's `read-write`.
    ReadWrite,
    /// The first host that accepts a connection.
    Any,
}

/// One host of the URL and the options of a connection to it.
#[derive(Clone)]
pub struct Host {
    /// `host:port` (an IPv6 address in brackets), as logs name it; never the password.
    pub name: String,
    pub options: PgConnectOptions,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A parsed `database.url`: its hosts in order and the sessions it wants.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    pub hosts: Vec<Host>,
    pub attrs: SessionAttrs,
}

impl DatabaseUrl {
    /// Parses `url`; an error is one line that names `database.url` (never the password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let fail = |what: String| format!("database.url {what}");
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "postgres" | "postgresql"))
            .ok_or_else(|| fail("must start with postgres:// or postgresql://".into()))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host_list) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let (tail, attrs) = take_session_attrs(tail).map_err(&fail)?;
        let entries: Vec<&str> = host_list.split(',').collect();
        if entries.len() == 1 {
            // One host: sqlx reads the URL as before (a socket directory in `host=` included).
            let options = sqlx_options(&format!("{scheme}://{authority}{tail}")).map_err(&fail)?;
            let name = format!("{}:{}", options.get_host(), options.get_port());
            return Ok(Self {
                hosts: vec![Host { name, options }],
                attrs: attrs.unwrap_or(SessionAttrs::Any),
            });
        }
        for key in ["host", "hostaddr", "port"] {
            if query_keys(&tail).any(|k| k == key) {
                return Err(fail(format!(
                    "names several hosts and so cannot have a {key} parameter: put each \
                     host:port in the list"
                )));
            }
        }
        let hosts = entries
            .into_iter()
            .map(|entry| {
                let (host, port) = split_host_port(entry).map_err(&fail)?;
                let in_url = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                let name = format!("{in_url}:{port}");
                let options = sqlx_options(&format!("{scheme}://{userinfo}{name}{tail}"))
                    .map_err(|e| fail(format!("(host {name}): {e}")))?
                    // sqlx keeps an IPv6 address's brackets, which a socket address cannot have.
                    .host(host);
                Ok(Host { name, options })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            hosts,
            attrs: attrs.unwrap_or(SessionAttrs::ReadWrite),
        })
    }

    /// The hosts' names, comma-separated, for a log line.
    pub fn host_names(&self) -> String {
        let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
        names.join(",")
    }
}

/// The options sqlx makes of a URL of one host; its error without the URL.
fn sqlx_options(url: &str) -> Result<PgConnectOptions, String> {
    url.parse::<PgConnectOptions>()
        .map_err(|e| format!("is not a valid PostgreSQL URL: {e}"))
}

/// `tail` (path, query, fragment) without `target_session_attrs`, and its value.
fn take_session_attrs(tail: &str) -> Result<(String, Option<SessionAttrs>), String> {
    let Some((path, query)) = tail.split_once('?') else {
        return Ok((tail.to_string(), None));
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let mut attrs = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "target_session_attrs" {
            kept.push(pair);
            continue;
        }
        attrs = Some(match value {
            "read-write" => SessionAttrs::ReadWrite,
            "any" => SessionAttrs::Any,
            other => {
                return Err(format!(
                    "target_session_attrs must be read-write or any, got {other:?}"
                ))
            }
        });
    }
    let mut tail = path.to_string();
    if !kept.is_empty() {
        tail.push('?');
        tail.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        tail.push('#');
        tail.push_str(fragment);
    }
    Ok((tail, attrs))
}

/// The keys of the query in `tail`.
fn query_keys(tail: &str) -> impl Iterator<Item = &str> {
    let query = tail.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 5432.
fn split_host_port(entry: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(bracketed) = entry.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("has a host {entry:?} without its closing bracket"))?;
        match after {
            "" => (host, None),
            after => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("has a host {entry:?} with text after its bracket")),
            },
        }
    } else {
        match entry.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!(
                    "has a host {entry:?}: an IPv6 address goes in brackets, [addr]:port"
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("names an empty host in its host list".into());
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("has a host {entry:?} whose port is not 1-65535"))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Vec<(String, String, u16)> {
        DatabaseUrl::parse(url)
            .unwrap()
            .hosts
            .into_iter()
            .map(|h| {
                let (host, port) = (h.options.get_host().to_string(), h.options.get_port());
                (h.name, host, port)
            })
            .collect()
    }

    fn host(name: &str, host: &str, port: u16) -> (String, String, u16) {
        (name.to_string(), host.to_string(), port)
    }

    #[test]
    fn several_hosts_with_ports_share_user_database_and_parameters() {
        let url = DatabaseUrl::parse(
            "postgres://app:s%40cret@db1:5432,db2:5433/oath?sslmode=disable&application_name=x",
        )
        .unwrap();
        assert_eq!(
            url.attrs,
            SessionAttrs::ReadWrite,
            "the default with several"
        );
        assert_eq!(url.host_names(), "db1:5432,db2:5433");
        for h in &url.hosts {
            assert_eq!(h.options.get_username(), "app");
            assert_eq!(h.options.get_database(), Some("oath"));
            assert!(matches!(
                h.options.get_ssl_mode(),
                sqlx::postgres::PgSslMode::Disable
            ));
        }
        assert!(!format!("{url:?}").contains("cret"), "no password in Debug");
    }

    #[test]
    fn ports_default_to_5432_and_ipv6_addresses_go_in_brackets() {
        assert_eq!(
            hosts("postgresql://u@a,b:6000,[::1],[fe80::2]:7000/db"),
            [
                host("a:5432", "a", 5432),
                host("b:6000", "b", 6000),
                host("[::1]:5432", "::1", 5432),
                host("[fe80::2]:7000", "fe80::2", 7000),
            ]
        );
    }

    #[test]
    fn one_host_is_read_by_sqlx_as_before_and_takes_any_session() {
        let url = DatabaseUrl::parse("postgres://u@db:6543/x?sslmode=require").unwrap();
        assert_eq!(url.attrs, SessionAttrs::Any);
        assert_eq!(
            hosts("postgres://u@db:6543/x"),
            [host("db:6543", "db", 6543)]
        );
        assert_eq!(hosts("postgres://u@db/x"), [host("db:5432", "db", 5432)]);
        let url = DatabaseUrl::parse("postgres://u@db/x?target_session_attrs=read-write").unwrap();
        assert_eq!(url.attrs, SessionAttrs::ReadWrite, "when asked for");
    }

    #[test]
    fn target_session_attrs_read_write_or_any_and_is_not_passed_to_sqlx() {
        for (query, attrs) in [
            ("?target_session_attrs=read-write", SessionAttrs::ReadWrite),
            ("?target_session_attrs=any", SessionAttrs::Any),
            (
                "?sslmode=disable&target_session_attrs=any",
                SessionAttrs::Any,
            ),
            (
                "?target_session_attrs=any&sslmode=disable",
                SessionAttrs::Any,
            ),
            ("", SessionAttrs::ReadWrite),
        ] {
            let url = DatabaseUrl::parse(&format!("postgres://u@a:1,b:2/db{query}")).unwrap();
            assert_eq!(url.attrs, attrs, "{query}");
        }
        let (tail, _) = take_session_attrs("/db?a=1&target_session_attrs=any&b=2#f").unwrap();
        assert_eq!(tail, "/db?a=1&b=2#f");
        let (tail, _) = take_session_attrs("/db?target_session_attrs=any").unwrap();
        assert_eq!(tail, "/db");
    }

    #[test]
    fn errors_name_database_url_and_never_the_password() {
        for (url, expected) in [
            ("mysql://u@a/db", "must start with postgres://"),
            (
                "postgres://u:pw@a,b/db?target_session_attrs=primary",
                "target_session_attrs must be read-write or any, got \"primary\"",
            ),
            ("postgres://u:pw@a:1,/db", "empty host"),
            ("postgres://u:pw@a:1,b:0/db", "port is not 1-65535"),
            ("postgres://u:pw@a:1,b:70000/db", "port is not 1-65535"),
            ("postgres://u:pw@a:1,b:x/db", "port is not 1-65535"),
            ("postgres://u:pw@a,::1/db", "IPv6 address goes in brackets"),
            ("postgres://u:pw@a,[::1/db", "closing bracket"),
            ("postgres://u:pw@a,[::1]x/db", "after its bracket"),
            (
                "postgres://u:pw@a,b/db?port=5",
                "cannot have a port parameter",
            ),
            (
                "postgres://u:pw@a,b/db?host=c",
                "cannot have a host parameter",
            ),
            (
                "postgres://u:pw@a,b/db?sslmode=sometimes",
                "(host a:5432): is not a valid PostgreSQL URL",
            ),
            (
                "postgres://u:pw@a:99999/db",
                "is not a valid PostgreSQL URL",
            ),
        ] {
            let err = DatabaseUrl::parse(url).unwrap_err();
            assert!(err.starts_with("database.url "), "{url}: {err}");
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains(":pw"), "{url}: {err}");
        }
    }
}
