//! HTTP resources, one file each, plus what every route shares: the route table, path ids, JSON
//! bodies, cursors and links.

pub mod health;
pub mod idempotency;
pub mod jobs;
pub mod otp;
pub mod tokens;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use base64::Engine as _;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{self, ApiError};

/// Registers every route. Each resource answers 405 for methods it does not serve.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/health/live")
            .route(web::get().to(health::live))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/health/ready")
            .route(web::get().to(health::ready))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(health::metrics))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathTokens")
            .route(web::get().to(tokens::list))
            .route(web::post().to(tokens::create))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathTokens/{token_id}")
            .route(web::get().to(tokens::get))
            .route(web::delete().to(tokens::delete))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathJobs")
            .route(web::get().to(jobs::list))
            .route(web::post().to(jobs::submit))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource([
            "/v1/environments/{env_id}/oathJobs/{job_id}",
            "/v1/environments/{env_id}/jobs/{job_id}",
        ])
        .route(web::get().to(jobs::get))
        .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathJobs/{job_id}/results")
            .route(web::get().to(jobs::results))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathTokens/{token_id}/validate")
            .route(web::post().to(otp::validate))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathTokens/{token_id}/resync")
            .route(web::post().to(otp::resync))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/v1/environments/{env_id}/oathTokens/{token_id}/pairing")
            .route(web::post().to(otp::pair))
            .route(web::delete().to(otp::unpair))
            .default_service(web::to(error::method_not_allowed)),
    );
}

/// A UUID path segment; anything else names no resource, so it is a 404.
pub fn path_id(req: &HttpRequest, name: &str) -> Result<Uuid, ApiError> {
    req.match_info()
        .get(name)
        .and_then(|s| Uuid::try_parse(s).ok())
        .ok_or_else(ApiError::not_found)
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

/// `{"href": "..."}`
#[derive(Debug, Serialize)]
pub struct Link {
    pub href: String,
}

/// `{"id": "..."}`
#[derive(Debug, Serialize)]
pub struct IdRef {
    pub id: Uuid,
}

/// Pages of a collection, in PingOne's shape:
/// `{"_links": {"self", "next"?}, "_embedded": {...}, "size": n}`.
pub mod page {
    use serde::Serialize;

    use super::Link;

    #[derive(Serialize)]
    pub struct Page<T: Serialize> {
        #[serde(rename = "_links")]
        pub links: PageLinks,
        #[serde(rename = "_embedded")]
        pub embedded: T,
        pub size: usize,
    }

    #[derive(Serialize)]
    pub struct PageLinks {
        #[serde(rename = "self")]
        pub self_: Link,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub next: Option<Link>,
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
