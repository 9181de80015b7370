//! HTTP resources, one file each, plus what every route shares: the route table, path ids, JSON
//! bodies, cursors and links.

pub mod activities;
pub mod docs;
pub mod environments;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod openapi;
pub mod otp;
mod state;
pub mod subscriptions;
pub mod tokens;

pub use state::AppState;

use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::{web, HttpMessage, HttpRequest, Route};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{self, ApiError};
use crate::events::Origin;

/// Makes the route of one method of a resource (the method guard is added by [`configure`]).
pub type Handler = fn() -> Route;

/// One resource: its paths (aliases serve the same handlers) and the methods it serves.
pub struct Resource {
    pub paths: &'static [&'static str],
    pub methods: &'static [(Method, Handler)],
}

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const PATCH: Method = Method::PATCH;
const PUT: Method = Method::PUT;
const DELETE: Method = Method::DELETE;

/// `resource!["/path", "/alias": GET module::handler, POST module::other]`: a [`Resource`] whose
/// methods are served by those handlers.
macro_rules! resource {
    ($($path:literal),+: $($method:ident $handler:path),+) => {
        Resource {
            paths: &[$($path),+],
            methods: &[$(($method, || web::to($handler))),+],
        }
    };
}

/// What a handler answers: a response, or an error rendered as the API's error body.
pub type Reply = Result<actix_web::HttpResponse, ApiError>;

/// Every route the service serves: [`configure`] registers exactly these, and the OpenAPI test
/// checks that `/openapi.json` documents exactly these (method, path) pairs. The router tries
/// resources in this order and matches each dynamic one with a regex, so the static paths come
/// first (a string comparison each), then the busiest: validate, then single tokens.
pub const ROUTES: &[Resource] = &[
    resource!["/health/live": GET health::live],
    resource!["/health/ready": GET health::ready],
    resource!["/metrics": GET health::metrics],
    resource!["/openapi.json": GET openapi::document],
    resource!["/docs": GET docs::page],
    resource!["/docs/redoc.standalone.js": GET docs::script],
    resource!["/v1/environments/{env_id}/oathTokens/{token_id}/validate": POST otp::validate],
    resource!["/v1/environments/{env_id}/oathTokens/{token_id}":
        GET tokens::get, PATCH tokens::update, DELETE tokens::delete],
    resource!["/v1/environments/{env_id}/oathTokens": GET tokens::list, POST tokens::create],
    resource!["/v1/environments/{env_id}/oathTokens/{token_id}/resync": POST otp::resync],
    resource!["/v1/environments/{env_id}/oathTokens/{token_id}/pairing":
        POST otp::pair, DELETE otp::unpair],
    resource!["/v1/environments/{env_id}/oathTokens/{token_id}/unlock": POST tokens::unlock],
    resource!["/v1/environments/{env_id}/oathJobs": GET jobs::list, POST jobs::submit],
    resource![
        "/v1/environments/{env_id}/oathJobs/{job_id}",
        "/v1/environments/{env_id}/jobs/{job_id}": GET jobs::get
    ],
    resource!["/v1/environments/{env_id}/oathJobs/{job_id}/results": GET jobs::results],
    resource!["/v1/environments/{env_id}/oathJobs/{job_id}/cancel": POST jobs::cancel],
    resource!["/v1/environments/{env_id}/activities": GET activities::list],
    resource!["/v1/environments/{env_id}/subscriptions":
        GET subscriptions::list, POST subscriptions::create],
    resource!["/v1/environments/{env_id}/subscriptions/{subscription_id}":
        GET subscriptions::get, PUT subscriptions::update, DELETE subscriptions::delete],
    resource!["/v1/environments/{env_id}": GET environments::get],
];

/// Which routes of [`ROUTES`] one listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `server.addr` when there is no admin listener: every route.
    All,
    /// `server.addr` beside an admin listener: every route but `/metrics`.
    Public,
    /// `server.admin_addr`: `/health/*` and `/metrics`, nothing of the API.
    Admin,
}

impl Listener {
    fn serves(self, path: &str) -> bool {
        let operations = path.starts_with("/health/");
        match self {
            Listener::All => true,
            Listener::Public => path != "/metrics",
            Listener::Admin => operations || path == "/metrics",
        }
    }
}

/// Registers the routes of [`ROUTES`] that `listener` serves. Each resource answers 405 for
/// methods it does not serve.
pub fn configure(cfg: &mut web::ServiceConfig, listener: Listener) {
    let served = ROUTES
        .iter()
        .filter(|r| r.paths.iter().all(|p| listener.serves(p)));
    for r in served {
        let mut service = web::resource(r.paths.to_vec());
        for (method, handler) in r.methods {
            service = service.route(handler().method(method.clone()));
        }
        cfg.service(service.default_service(web::to(error::method_not_allowed)));
    }
}

/// Who a change is made for, as its events name it: the authenticated caller of `req` (its
/// `sub`, as the audit trail records it) and the request id.
pub fn origin(req: &HttpRequest) -> Origin {
    let request_id = req
        .extensions()
        .get::<crate::audit::RequestId>()
        .map(|r| r.0.clone());
    Origin {
        actor: crate::audit::subject(req).unwrap_or_else(|| crate::events::SYSTEM.to_string()),
        request_id,
    }
}

/// A JSON body of one of `media_types` (parameters allowed), at most `server.max_body_bytes`:
/// its bytes, which an `Idempotency-Key` binds to, and the object it must be.
pub async fn json_object(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    media_types: &[&str],
) -> Result<(web::Bytes, Map<String, Value>), ApiError> {
    require_media_type(req, media_types)?;
    let settings = state.settings();
    let bytes = read_body(
        req,
        payload,
        settings.server.max_body_bytes,
        settings.body_timeout(),
    )
    .await?;
    match parse_json(&bytes)? {
        Value::Object(object) => Ok((bytes, object)),
        _ => Err(ApiError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        )),
    }
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json syntax errors carry a position, never the input itself.
        ApiError::InvalidRequest(format!(
            "The request body is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        ))
    })
}

/// Checks the request's `Content-Type` essence against the accepted ones and returns it.
pub fn require_media_type<'a>(
    req: &HttpRequest,
    accepted: &[&'a str],
) -> Result<&'a str, ApiError> {
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    essence
        .as_deref()
        .and_then(|e| accepted.iter().copied().find(|a| *a == e))
        .ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "The request body must have Content-Type {}.",
                accepted.join(" or ")
            ))
        })
}

/// The whole body, refusing more than `limit` bytes before reading them when the length is
/// declared, and as soon as the stream passes it otherwise; `408` when it has not all arrived
/// within `timeout`. The buffer grows as bytes arrive, never past the declared length: a
/// declared length is a claim, not memory to reserve.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, ApiError> {
    let too_large = || {
        ApiError::TooLarge(format!(
            "The request body exceeds the limit of {limit} bytes."
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let expected = declared.unwrap_or(limit);
    let read = async {
        let mut body: Vec<u8> = Vec::with_capacity(expected.min(INITIAL_BODY_BUFFER));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::InvalidRequest(format!("The request body could not be read: {e}."))
            })?;
            let len = body.len() + chunk.len();
            if len > limit {
                return Err(too_large());
            }
            if len > body.capacity() {
                // Doubling keeps the copies linear; the declared length caps the last step.
                let capacity = (body.capacity() * 2).min(expected).max(len);
                body.reserve_exact(capacity - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(web::Bytes::from(body))
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::BodyTimeout(format!(
            "The request body did not arrive within {} seconds.",
            timeout.as_secs()
        ))
    })?
}

/// What a body buffer starts with, whatever length the request declares.
const INITIAL_BODY_BUFFER: usize = 64 * 1024;

/// `{"href": "..."}`: an absolute URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    pub href: String,
}

/// The links of a page of a collection; `next` only when more items follow.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageLinks {
    #[serde(rename = "self")]
    pub self_: Link,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<Link>,
}

/// `page_type! { /// docs \n Page { Embedded "key": Item } }`: a page of a collection and its
/// `_embedded` object, whose one property `key` holds the page's items (PingOne's shape:
/// `{"_links": {"self", "next"?}, "_embedded": {"key": [...]}, "size": n}`).
macro_rules! page_type {
    ($(#[$doc:meta])* $vis:vis $page:ident { $embedded:ident $key:tt: $item:ty }) => {
        $(#[$doc])*
        #[derive(serde::Serialize, utoipa::ToSchema)]
        $vis struct $page {
            #[serde(rename = "_links")]
            links: $crate::routes::PageLinks,
            #[serde(rename = "_embedded")]
            embedded: $embedded,
            size: usize,
        }

        #[derive(serde::Serialize, utoipa::ToSchema)]
        $vis struct $embedded {
            #[serde(rename = $key)]
            items: Vec<$item>,
        }

        impl $page {
            $vis fn new(links: $crate::routes::PageLinks, items: Vec<$item>) -> Self {
                Self {
                    links,
                    size: items.len(),
                    embedded: $embedded { items },
                }
            }
        }
    };
}
pub(crate) use page_type;

/// `{"id": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct IdRef {
    pub id: Uuid,
}

/// Links of pages of a collection (PingOne's shape:
/// `{"_links": {"self", "next"?}, "_embedded": {...}, "size": n}`).
pub mod page {
    use serde::de::DeserializeOwned;

    use super::{page_limit, ApiError, Link, PageLinks};

    /// A list's query string as `Q`; 400 when it is malformed.
    pub fn query<Q: DeserializeOwned>(query_string: &str) -> Result<Q, ApiError> {
        actix_web::web::Query::<Q>::from_query(query_string)
            .map(actix_web::web::Query::into_inner)
            .map_err(|_| ApiError::InvalidRequest("The query string is malformed.".into()))
    }

    /// A list's `limit` and `cursor`: the page size, the last row of the previous page (`L`, as
    /// the list's cursors name rows), and the cursor as sent, for the page's self link.
    pub struct Paging<L> {
        pub limit: i64,
        pub last: Option<L>,
        cursor: Option<String>,
    }

    impl<L> Paging<L> {
        pub fn parse(
            limit: Option<&str>,
            cursor: Option<String>,
            decode: impl Fn(&str) -> Result<L, ApiError>,
        ) -> Result<Self, ApiError> {
            Ok(Self {
                limit: page_limit(limit)?,
                last: cursor.as_deref().map(decode).transpose()?,
                cursor,
            })
        }

        /// Rows to fetch: one more than a page, which only tells that more follow.
        pub fn fetch(&self) -> i64 {
            self.limit + 1
        }

        /// Cuts rows fetched with [`Paging::fetch`] to the page and links it: to itself and,
        /// when more follow, to the next page from the last row kept. `params` are repeated in
        /// both links.
        pub fn links<T>(
            &self,
            rows: &mut Vec<T>,
            cursor_of: impl Fn(&T) -> String,
            collection: &str,
            params: &[(&str, String)],
        ) -> PageLinks {
            let next = cut(rows, self.limit, cursor_of);
            links(collection, params, self.cursor.as_deref(), next)
        }
    }

    /// Cuts rows fetched with `limit + 1` to `limit`: the extra row only tells that more
    /// follow, and then the next page's cursor is that of the last row kept.
    fn cut<T>(rows: &mut Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Option<String> {
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        if more {
            rows.last().map(cursor_of)
        } else {
            None
        }
    }

    /// Links to this page and, when `next` is a cursor, the next one; `params` are repeated in
    /// both, percent-encoded.
    fn links(
        collection: &str,
        params: &[(&str, String)],
        current: Option<&str>,
        next: Option<String>,
    ) -> PageLinks {
        let href = |cursor: Option<&str>| {
            let mut qs: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect();
            if let Some(c) = cursor {
                qs.push(format!("cursor={}", percent_encode(c)));
            }
            Link {
                href: format!("{collection}?{}", qs.join("&")),
            }
        };
        PageLinks {
            self_: href(current),
            next: next.as_deref().map(|c| href(Some(c))),
        }
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters.
    fn percent_encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn percent_encoding() {
            assert_eq!(
                super::percent_encode(r#"serialNumber eq "A1""#),
                "serialNumber%20eq%20%22A1%22"
            );
        }
    }
}

/// The path of a resource of an environment, for the OpenAPI document.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvPath {
    /// The environment (tenant).
    pub env_id: Uuid,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// The environment (tenant).
    pub env_id: Uuid,
    /// The token.
    pub token_id: Uuid,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The environment (tenant).
    pub env_id: Uuid,
    /// The job.
    pub job_id: Uuid,
}

/// Opaque page cursors: the last id of the previous page, base64url-encoded with a version tag.
pub mod cursor {
    use super::*;

    const TAG: &str = "v1:";

    pub fn encode(last_id: Uuid) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{TAG}{last_id}"))
    }

    pub fn decode(cursor: &str) -> Result<Uuid, ApiError> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix(TAG).and_then(|id| Uuid::try_parse(id).ok()))
            .ok_or_else(|| ApiError::InvalidRequest("The cursor is not valid.".into()))
    }
}

/// Items of a page when the query gives no `limit`.
const PAGE_DEFAULT: i64 = 100;
/// The largest `limit` of every list.
const PAGE_MAX: i64 = 1000;

/// `limit` query parameter: 1 to 1000, 100 when absent.
pub(crate) fn page_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(PAGE_DEFAULT),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("limit must be an integer from 1 to {PAGE_MAX}."))
            }),
    }
}

/// The `/v1/environments/{env}/<tail>` collection URL whose pages link to each other.
pub fn collection_url(base: &str, env: Uuid, tail: &str) -> String {
    format!("{}/{tail}", tokens::environment_url(base, env))
}
