//! The few calls `import` makes to the API: submit a file as a job, read the job, read the rows
//! that were not created. Failures become one line a user can act on, never with the token, a
//! key or a password in it.
//!
//! The token and a PSKC key or password go to `--url` and nowhere else: redirects are never
//! followed (a 3xx is an error naming its `Location`), and plain http is refused unless `--url`
//! is this machine.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{redirect, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;
use zeroize::Zeroizing;

/// How long polling goes on through transient failures (connection lost, 503) before giving up.
pub const TRANSIENT_PATIENCE: Duration = Duration::from_secs(60);
/// Attempts at the upload when the connection fails or the service is briefly unavailable; the
/// `Idempotency-Key` makes a repeated upload return the first job.
const SUBMIT_ATTEMPTS: u32 = 4;
/// The longest `Retry-After` honoured between upload attempts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// An upload of a large file over a slow link takes a while; a poll never should.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest results page the API serves.
const PAGE_LIMIT: u32 = 1000;
/// The outcomes of rows that were not created, as the results filter names them.
const NOT_CREATED: [&str; 3] = ["DUPLICATE", "LIMIT_EXCEEDED", "INVALID"];
/// Longest service message repeated in an error line.
const MAX_MESSAGE_CHARS: usize = 300;

/// What unlocks a PSKC file's secrets.
pub enum PskcCredential {
    None,
    KeyId(String),
    Key(Zeroizing<String>),
    Password(Zeroizing<String>),
}

/// A failed call: its line for the user, and whether trying again may help.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub transient: bool,
}

/// A job as the API shows it: the fields `import` reads, and the document itself for `--json`.
pub struct Job {
    pub id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub processed: u64,
    pub total: u64,
    pub created: u64,
    pub duplicates: u64,
    pub failed: u64,
    /// The upload's answer was the first one's, replayed for its `Idempotency-Key`.
    pub replayed: bool,
    pub document: String,
}

impl Job {
    fn parse(text: &str) -> Result<Self, String> {
        let doc: JobDoc = serde_json::from_str(text)
            .map_err(|e| format!("the service answered with a job this client cannot read: {e}"))?;
        let listed = doc.result.duplicates.len() as u64;
        Ok(Self {
            id: doc.id,
            status: doc.status,
            reason: doc.reason,
            processed: doc.progress.processed,
            total: doc.progress.total,
            created: doc.result.created.unwrap_or(0),
            // `duplicatesCount` only appears when the embedded list was cut.
            duplicates: doc.result.duplicates_count.unwrap_or(listed).max(listed),
            failed: doc.result.failed.unwrap_or(0),
            replayed: false,
            document: text.trim().to_string(),
        })
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "DONE" | "FAILED")
    }

    /// Rows of a finished job that did not become a token.
    pub fn not_created(&self) -> u64 {
        self.total.saturating_sub(self.created)
    }
}

#[derive(Deserialize)]
struct JobDoc {
    id: Uuid,
    status: String,
    reason: Option<String>,
    progress: ProgressDoc,
    #[serde(default)]
    result: ResultDoc,
}

#[derive(Deserialize)]
struct ProgressDoc {
    processed: u64,
    total: u64,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultDoc {
    created: Option<u64>,
    #[serde(default)]
    duplicates: Vec<Value>,
    duplicates_count: Option<u64>,
    failed: Option<u64>,
}

/// One row of a job's results.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultRow {
    pub row_number: Option<i64>,
    pub index: i64,
    pub serial_number: Option<String>,
    pub outcome: String,
    pub token_id: Option<Uuid>,
    pub masked_secret: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct ResultPage {
    #[serde(rename = "_links")]
    links: PageLinks,
    #[serde(rename = "_embedded")]
    embedded: EmbeddedResults,
}

#[derive(Deserialize)]
struct PageLinks {
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

#[derive(Deserialize)]
struct EmbeddedResults {
    results: Vec<ResultRow>,
}

pub struct Client {
    http: reqwest::Client,
    /// `{base}/v1/environments/{env}/oathJobs`
    jobs: Url,
}

impl Client {
    pub fn new(base: &str, env: Uuid, token: Zeroizing<String>) -> Result<Self, String> {
        let base = parse_base(base)?;
        let bearer = Zeroizing::new(format!("Bearer {}", token.as_str()));
        let mut auth = HeaderValue::try_from(bearer.as_str())
            .map_err(|_| "OATH_TOKEN holds characters a bearer token cannot have".to_string())?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("oath-service-import/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // A redirect would carry the X-PSKC-Key (and, to the same host, the token) to
            // wherever the answer points.
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let jobs = Url::parse(&format!(
            "{}/v1/environments/{env}/oathJobs",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| format!("--url: {e}"))?;
        Ok(Self { http, jobs })
    }

    /// Uploads the file as a job, retrying a dropped connection or a busy service with the same
    /// `Idempotency-Key`.
    pub async fn submit(
        &self,
        body: Vec<u8>,
        media_type: &str,
        idempotency_key: &str,
        credential: &PskcCredential,
        on_retry: &mut dyn FnMut(&str),
    ) -> Result<Job, String> {
        // Shared, so that a retry does not copy the file.
        let body = actix_web::web::Bytes::from(body);
        let mut attempt = 1;
        loop {
            let mut request = self
                .http
                .post(self.jobs.clone())
                .timeout(UPLOAD_TIMEOUT)
                .header(CONTENT_TYPE, media_type)
                .header("idempotency-key", idempotency_key)
                .body(body.clone());
            request = match credential {
                PskcCredential::None => request,
                PskcCredential::KeyId(id) => request.header("x-pskc-key-id", id.as_str()),
                PskcCredential::Key(hex) => {
                    request.header("x-pskc-key", sensitive(hex.as_bytes())?)
                }
                PskcCredential::Password(pw) => {
                    request.header("x-pskc-password", sensitive(pw.as_bytes())?)
                }
            };
            let failure = match request.send().await {
                Ok(res) if res.status().is_success() => {
                    let replayed = res
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|v| v.as_bytes() == b"true");
                    match res.text().await {
                        Ok(text) => {
                            let mut job = Job::parse(&text)?;
                            job.replayed = replayed;
                            return Ok(job);
                        }
                        // Accepted, but the answer was lost: the retry gets it replayed.
                        Err(e) => (transport("upload", &e), None),
                    }
                }
                Ok(res) => {
                    let wait = retry_after(&res);
                    let failure = refused("the upload", res).await;
                    (failure, wait)
                }
                // A refused connection sent nothing: more likely a wrong --url than a blip.
                Err(e) if e.is_connect() => return Err(transport("upload", &e).message),
                Err(e) => (transport("upload", &e), None),
            };
            let (failure, wait) = failure;
            if !failure.transient || attempt >= SUBMIT_ATTEMPTS {
                return Err(failure.message);
            }
            let wait = wait
                .unwrap_or(Duration::from_secs(1 << attempt))
                .min(MAX_RETRY_AFTER);
            on_retry(&format!(
                "{}; trying again in {}s (attempt {} of {SUBMIT_ATTEMPTS})",
                failure.message,
                wait.as_secs(),
                attempt + 1
            ));
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    pub async fn job(&self, id: Uuid) -> Result<Job, Failure> {
        let text = self
            .get_text(self.job_url(id, "")?, "reading the job")
            .await?;
        Job::parse(&text).map_err(|message| Failure {
            message,
            transient: false,
        })
    }

    /// Every result row of the job that was not created, in file order.
    pub async fn rows_not_created(&self, id: Uuid) -> Result<Vec<ResultRow>, String> {
        let mut rows = Vec::new();
        for outcome in NOT_CREATED {
            let mut cursor: Option<String> = None;
            loop {
                let mut url = self.job_url(id, "/results").map_err(|f| f.message)?;
                url.query_pairs_mut()
                    .append_pair("limit", &PAGE_LIMIT.to_string())
                    .append_pair("outcome", outcome);
                if let Some(c) = &cursor {
                    url.query_pairs_mut().append_pair("cursor", c);
                }
                let page: ResultPage = self.get_json(url, "reading the job's results").await?;
                rows.extend(page.embedded.results);
                // The next link is absolute on the service's public URL, which need not be the
                // one this client reaches it by: only its cursor is taken.
                cursor = page.links.next.and_then(|l| cursor_of(&l.href));
                if cursor.is_none() {
                    break;
                }
            }
        }
        rows.sort_by_key(|r| r.index);
        Ok(rows)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<T, String> {
        let text = self.get_text(url, what).await.map_err(|f| f.message)?;
        serde_json::from_str(&text).map_err(|e| {
            format!("{what}: the service answered with JSON this client cannot read: {e}")
        })
    }

    /// The body of a successful GET of `url`; `what` names the step in a failure's message.
    async fn get_text(&self, url: Url, what: &str) -> Result<String, Failure> {
        let res = self
            .http
            .get(url)
            .timeout(POLL_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport(what, &e))?;
        if !res.status().is_success() {
            return Err(refused(what, res).await);
        }
        res.text().await.map_err(|e| transport(what, &e))
    }

    fn job_url(&self, id: Uuid, tail: &str) -> Result<Url, Failure> {
        Url::parse(&format!("{}/{id}{tail}", self.jobs)).map_err(|e| Failure {
            message: format!("cannot build the job's URL: {e}"),
            transient: false,
        })
    }
}

/// `--url`: https, or http to this machine only (the token, a key or a password would cross the
/// network in clear); no credentials (the token travels in a header), no query.
fn parse_base(base: &str) -> Result<Url, String> {
    let url = Url::parse(base.trim())
        .map_err(|e| format!("--url {base:?} is not a URL ({e}); e.g. https://oath.example.com"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(
            "--url must be an http or https URL with a host, e.g. https://oath.example.com".into(),
        );
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("--url must not carry credentials: the token comes from OATH_TOKEN".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("--url must be a base URL without a query or a fragment".into());
    }
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(format!(
            "--url: plain http is allowed only to this machine (127.0.0.0/8, [::1], localhost), \
             not to {}: use https",
            url.host_str().unwrap_or_default()
        ));
    }
    Ok(url)
}

/// A host that is this machine without asking a resolver: a loopback address, or `localhost`.
fn is_loopback(url: &Url) -> bool {
    // The parser normalised the host: dotted IPv4, bracketed IPv6, a lowercase name.
    let host = url.host_str().unwrap_or_default();
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

fn cursor_of(href: &str) -> Option<String> {
    let url = Url::parse(href).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| v.into_owned())
}

/// A header value that is never printed (reqwest and `http` redact sensitive values in `Debug`).
fn sensitive(value: &[u8]) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_bytes(value)
        .map_err(|_| "the key or password on stdin cannot be sent in a header".to_string())?;
    v.set_sensitive(true);
    Ok(v)
}

fn retry_after(res: &reqwest::Response) -> Option<Duration> {
    res.headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A failure to talk to the service at all.
fn transport(what: &str, e: &reqwest::Error) -> Failure {
    let mut innermost: &dyn std::error::Error = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let place = e.url().map(|u| u.origin().ascii_serialization());
    let place = place.as_deref().unwrap_or("the service");
    let message = if e.is_connect() {
        format!("{what} failed: cannot connect to {place}: {innermost}")
    } else if e.is_timeout() {
        format!("{what} failed: {place} did not answer in time")
    } else {
        format!("{what} failed: {place}: {innermost}")
    };
    Failure {
        message: one_line(&message),
        transient: true,
    }
}

/// An answer other than 2xx: its status, the contract's error code and message, and the error id
/// the service's log repeats.
async fn refused(what: &str, res: reqwest::Response) -> Failure {
    let status = res.status();
    if status.is_redirection() {
        return redirected(what, &res);
    }
    let transient = matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
    );
    let body: Option<Value> = res
        .text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let mut message = format!("{what} was refused: HTTP {}", status.as_u16());
    if let Some(body) = &body {
        if let Some(code) = field(body, "code") {
            message.push_str(&format!(" {code}"));
        }
        if let Some(text) = field(body, "message") {
            message.push_str(&format!(": {}", clip(&text)));
        }
        let details = body.get("details").and_then(Value::as_array);
        if let Some(first) = details.and_then(|d| d.first()) {
            let target = field(first, "target").unwrap_or_default();
            let text = field(first, "message").unwrap_or_default();
            message.push_str(&format!(" ({target}: {}", clip(&text)));
            let more = details.map_or(0, |d| d.len()) - 1;
            if more > 0 {
                message.push_str(&format!("; and {more} more"));
            }
            message.push(')');
        }
        if let Some(id) = field(body, "id") {
            message.push_str(&format!(" [error id {id}]"));
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        message.push_str("; check the token in OATH_TOKEN");
    }
    if status == StatusCode::FORBIDDEN {
        message.push_str(
            "; the token needs the oath:jobs:write and oath:jobs:read scopes for this environment",
        );
    }
    Failure {
        message: one_line(&message),
        transient,
    }
}

/// A 3xx answer, not followed: the token and keys are for `--url` alone. Its `Location` is named
/// so that the user can check it and give the service's own address as `--url`.
fn redirected(what: &str, res: &reqwest::Response) -> Failure {
    let location = res
        .headers()
        .get(LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let target = location.map_or_else(|| "no Location".to_string(), |l| clip(&l));
    let message = format!(
        "{what} was redirected: HTTP {} to {target}; redirects are not followed, so that the \
         token and keys reach no other server: give --url the service's own address",
        res.status().as_u16()
    );
    Failure {
        message: one_line(&message),
        transient: false,
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    clipped.push('…');
    clipped
}

/// Control characters (a newline from a proxy's body, say) never split the line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(parse_base("http://127.0.0.1:8080").is_ok());
        assert!(parse_base("https://oath.example.com/prefix/").is_ok());
        for bad in [
            "127.0.0.1:8080",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com/?a=b",
            "not a url",
        ] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        for local in [
            "http://127.0.0.1:8080",
            "http://127.10.20.30",
            "http://[::1]:8080/",
            "http://localhost:8080",
            "http://LocalHost",
        ] {
            assert!(parse_base(local).is_ok(), "{local}");
        }
        for remote in [
            "http://oath.example.com",
            "http://example.invalid",
            "http://localhost.example.com",
            "http://10.0.0.5:8080",
            "http://192.168.1.20",
            "http://0.0.0.0:8080",
            "http://[fd00::1]:8080",
        ] {
            let e = parse_base(remote).expect_err(remote);
            assert!(e.contains("plain http") && e.contains("use https"), "{e}");
        }
        // Over https any host will do.
        for remote in ["https://10.0.0.5:8443", "https://oath.example.com"] {
            assert!(parse_base(remote).is_ok(), "{remote}");
        }
    }

    #[test]
    fn only_the_cursor_of_a_next_link_is_taken() {
        assert_eq!(
            cursor_of("https://public.example/v1/environments/e/oathJobs/j/results?limit=1000&outcome=INVALID&cursor=djE6MDA%3D"),
            Some("djE6MDA=".into())
        );
        assert_eq!(cursor_of("https://public.example/x?limit=1"), None);
    }

    #[test]
    fn messages_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }
}
