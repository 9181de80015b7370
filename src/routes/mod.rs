//! HTTP resources, one file each, plus what every route shares: the route table, path ids, JSON
//! bodies, cursors and links.

pub mod docs;
pub mod environments;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod openapi;
pub mod otp;
pub mod tokens;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, Route};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{self, ApiError};

/// Makes the route of one method of a resource (the method guard is added by [`configure`]).
pub type Handler = fn() -> Route;

/// One resource: its paths (aliases serve the same handlers) and the methods it serves.
pub struct Resource {
    pub paths: &'static [&'static str],
    pub methods: &'static [(Method, Handler)],
}

const fn resource(
    paths: &'static [&'static str],
    methods: &'static [(Method, Handler)],
) -> Resource {
    Resource { paths, methods }
}

const GET: Method = Method::GET;
const POST: Method = Method::POST;
const DELETE: Method = Method::DELETE;

/// Every route the service serves: [`configure`] registers exactly these, and the OpenAPI test
/// checks that `/openapi.json` documents exactly these (method, path) pairs. The router tries
/// resources in this order and matches each dynamic one with a regex, so the static paths come
/// first (a string comparison each), then the busiest: validate, then single tokens.
pub const ROUTES: &[Resource] = &[
    resource(&["/health/live"], &[(GET, || web::to(health::live))]),
    resource(&["/health/ready"], &[(GET, || web::to(health::ready))]),
    resource(&["/metrics"], &[(GET, || web::to(health::metrics))]),
    resource(&["/openapi.json"], &[(GET, || web::to(openapi::document))]),
    resource(&["/docs"], &[(GET, || web::to(docs::page))]),
    resource(
        &["/docs/redoc.standalone.js"],
        &[(GET, || web::to(docs::script))],
    ),
    resource(
        &["/v1/environments/{env_id}/oathTokens/{token_id}/validate"],
        &[(POST, || web::to(otp::validate))],
    ),
    resource(
        &["/v1/environments/{env_id}/oathTokens/{token_id}"],
        &[
            (GET, || web::to(tokens::get)),
            (DELETE, || web::to(tokens::delete)),
        ],
    ),
    resource(
        &["/v1/environments/{env_id}/oathTokens"],
        &[
            (GET, || web::to(tokens::list)),
            (POST, || web::to(tokens::create)),
        ],
    ),
    resource(
        &["/v1/environments/{env_id}/oathTokens/{token_id}/resync"],
        &[(POST, || web::to(otp::resync))],
    ),
    resource(
        &["/v1/environments/{env_id}/oathTokens/{token_id}/pairing"],
        &[
            (POST, || web::to(otp::pair)),
            (DELETE, || web::to(otp::unpair)),
        ],
    ),
    resource(
        &["/v1/environments/{env_id}/oathJobs"],
        &[
            (GET, || web::to(jobs::list)),
            (POST, || web::to(jobs::submit)),
        ],
    ),
    resource(
        &[
            "/v1/environments/{env_id}/oathJobs/{job_id}",
            "/v1/environments/{env_id}/jobs/{job_id}",
        ],
        &[(GET, || web::to(jobs::get))],
    ),
    resource(
        &["/v1/environments/{env_id}/oathJobs/{job_id}/results"],
        &[(GET, || web::to(jobs::results))],
    ),
    resource(
        &["/v1/environments/{env_id}"],
        &[(GET, || web::to(environments::get))],
    ),
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

/// Reads a JSON body of media type `application/json` (parameters allowed), at most `limit` bytes.
pub async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Value, ApiError> {
    require_media_type(req, &["application/json"])?;
    let bytes = read_body(req, payload, limit).await?;
    parse_json(&bytes)
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
/// declared, and as soon as the stream passes it otherwise.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
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
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::InvalidRequest(format!("The request body could not be read: {e}."))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

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

/// `{"id": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct IdRef {
    pub id: Uuid,
}

/// Links of pages of a collection (PingOne's shape:
/// `{"_links": {"self", "next"?}, "_embedded": {...}, "size": n}`).
pub mod page {
    use super::{Link, PageLinks};

    /// Cuts rows fetched with `limit + 1` to `limit`: the extra row only tells that more
    /// follow, and then the next page's cursor is that of the last row kept.
    pub fn cut<T>(
        rows: &mut Vec<T>,
        limit: i64,
        cursor_of: impl Fn(&T) -> String,
    ) -> Option<String> {
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
    pub fn links(
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

/// `limit` query parameter: 1 to `max`, `default` when absent.
pub fn page_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("limit must be an integer from 1 to {max}."))
            }),
    }
}
