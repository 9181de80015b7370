//! `GET /v1/environments/{envID}/activities`: the environment's events, oldest first. Unlike
//! other lists, every page links `next`, the position after its last event (or the position it
//! started from, when it has none), so that a client that saves the last `next` and polls it
//! sees each later event exactly once.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::extract::{ActivitiesRead, Authorized};
use super::page::query;
use super::{collection_url, page_limit, AppState, EnvPath, Link, PageLinks, Reply};
use crate::error::responses::AuthenticatedErrors;
use crate::error::ApiError;
use crate::events::{EventType, EventView};

use crate::service::activities;
use crate::store::events::{Filter, Position};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ActivitiesQuery {
    /// `type eq "OATH_TOKEN.LOCKED"` or `resource.id eq "<uuid>"` (operator case-insensitive).
    #[param(example = "type eq \"OATH_TOKEN.LOCKED\"")]
    filter: Option<String>,
    /// Events per page, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque: taken from a page's `_links.next`.
    cursor: Option<String>,
}

super::page_type! {
    /// A page of events, oldest first; `_links.next` on every page, the last included.
    ActivityPage { EmbeddedActivities "activities": EventView }
}

/// List the environment's events (the activity log).
///
/// Oldest first. Every page carries `_links.next`, the position after its last event: save
/// it and poll it later to see each later event exactly once. Events are kept
/// `events.retention_seconds` (90 days by default).
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/activities",
    tag = "Events",
    operation_id = "listActivities",
    params(EnvPath, ActivitiesQuery),
    responses(
        (status = 200, description = "A page of events.", body = ActivityPage),
        (status = 400, response = crate::error::responses::BadRequest),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:activities:read"])),
)]
pub async fn list(
    auth: Authorized<ActivitiesRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let page = ActivitiesRequest::parse(req.query_string())?;
    let services = &state.services;
    let events = activities::after(services, env, page.from, page.filter, page.limit).await?;
    let next = events.last().map_or(page.from, |e| e.position);
    let collection = collection_url(state.settings().base_url(), env, "activities");
    let links = PageLinks {
        self_: page.link(&collection, page.cursor.as_ref().map(|_| page.from)),
        next: Some(page.link(&collection, Some(next))),
    };
    let items = events.into_iter().map(|e| EventView::new(env, e)).collect();
    Ok(HttpResponse::Ok().json(ActivityPage::new(links, items)))
}

/// The feed's query string, parsed.
struct ActivitiesRequest {
    filter: Filter,
    /// After this position: the cursor's, or the start.
    from: Position,
    limit: i64,
    /// As sent, for the page links.
    filter_text: Option<String>,
    cursor: Option<String>,
}

impl ActivitiesRequest {
    fn parse(query_string: &str) -> Result<Self, ApiError> {
        let q: ActivitiesQuery = query(query_string)?;
        let filter = q.filter.as_deref().map(parse_filter).transpose()?;
        let from = q.cursor.as_deref().map(decode_cursor).transpose()?;
        Ok(Self {
            filter: filter.unwrap_or_default(),
            from: from.unwrap_or_default(),
            limit: page_limit(q.limit.as_deref())?,
            filter_text: q.filter,
            cursor: q.cursor,
        })
    }

    /// The link to the page after `cursor` (none: from the start) with this page's filter and
    /// limit.
    fn link(&self, collection: &str, cursor: Option<Position>) -> Link {
        let mut params = Vec::new();
        if let Some(f) = &self.filter_text {
            params.push(format!("filter={}", encode_param(f)));
        }
        params.push(format!("limit={}", self.limit));
        if let Some(c) = cursor {
            params.push(format!("cursor={}", encode_cursor(c)));
        }
        Link {
            href: format!("{collection}?{}", params.join("&")),
        }
    }
}

/// `type eq "X"` or `resource.id eq "uuid"`.
fn parse_filter(filter: &str) -> Result<Filter, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "Unsupported filter: use type eq \"<event type>\" or resource.id eq \"<id>\".".into(),
        )
    };
    let mut parts = filter.trim().splitn(3, char::is_whitespace);
    let (Some(attr), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let value = value
        .trim()
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(bad)?;
    match attr {
        "type" => EventType::parse(value)
            .map(|t| Filter {
                event_type: Some(t),
                ..Filter::default()
            })
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("Invalid filter: no event type {value:?}."))
            }),
        "resource.id" => Uuid::try_parse(value)
            .map(|id| Filter {
                resource_id: Some(id),
                ..Filter::default()
            })
            .map_err(|_| {
                ApiError::InvalidRequest("Invalid filter: resource.id must be a UUID.".into())
            }),
        _ => Err(bad()),
    }
}

const CURSOR_TAG: &str = "e1:";

fn encode_cursor(p: Position) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{CURSOR_TAG}{}.{}.{}", p.xid, p.seq, p.n))
}

fn decode_cursor(cursor: &str) -> Result<Position, ApiError> {
    let invalid = || ApiError::InvalidRequest("The cursor is not valid.".into());
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let mut parts = text
        .strip_prefix(CURSOR_TAG)
        .ok_or_else(invalid)?
        .split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .filter(|n| *n >= 0)
    };
    let (Some(xid), Some(seq), Some(n)) = (next(), next(), next()) else {
        return Err(invalid());
    };
    Ok(Position {
        xid,
        seq,
        n: i32::try_from(n).map_err(|_| invalid())?,
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_param(s: &str) -> String {
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
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let p = Position {
            xid: 123_456,
            seq: 42,
            n: 7,
        };
        assert_eq!(decode_cursor(&encode_cursor(p)).unwrap(), p);
        for bad in ["", "x", "ZTE6MS4y", "djE6MS4yLjM"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters() {
        let f = parse_filter(r#"type eq "OATH_TOKEN.LOCKED""#).unwrap();
        assert_eq!(f.event_type, Some(EventType::TokenLocked));
        let id = Uuid::now_v7();
        let f = parse_filter(&format!(r#"resource.id EQ "{id}""#)).unwrap();
        assert_eq!(f.resource_id, Some(id));
        for bad in [
            "",
            r#"type eq "NOPE""#,
            r#"type ne "OATH_TOKEN.LOCKED""#,
            r#"resource.id eq "x""#,
            r#"actor eq "x""#,
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
