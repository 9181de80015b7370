//! `/v1/environments/{envID}/oathTokens`: create, read, list and delete single tokens.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::idempotency::IdempotencyKey;
use super::page::{self, Page};
use super::{cursor, page_limit, parse_json, path_id, read_body, require_media_type, IdRef, Link};
use crate::auth::Scope;
use crate::domain::{DetailCode, FieldError, NewToken, SerialNumber, TokenSource};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store::tokens::{self as store, InsertError, TokenRow};

const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;

/// The token representation: never the secret.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResource {
    #[serde(rename = "_links")]
    links: TokenLinks,
    id: Uuid,
    environment: IdRef,
    serial_number: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hotp: Option<HotpView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totp: Option<TotpView>,
    otp_length: i16,
    hash_algorithm: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserRef>,
    created_at: String,
    updated_at: String,
}

#[derive(Serialize)]
struct TokenLinks {
    #[serde(rename = "self")]
    self_: Link,
    environment: Link,
}

#[derive(Serialize)]
struct HotpView {
    counter: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TotpView {
    time_step: i32,
    drift: i32,
}

#[derive(Serialize)]
struct UserRef {
    id: String,
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn environment_url(base: &str, env: Uuid) -> String {
    format!("{base}/v1/environments/{env}")
}

fn token_url(base: &str, env: Uuid, id: Uuid) -> String {
    format!("{base}/v1/environments/{env}/oathTokens/{id}")
}

impl TokenResource {
    pub fn new(base: &str, row: TokenRow) -> Self {
        Self {
            links: TokenLinks {
                self_: Link {
                    href: token_url(base, row.environment_id, row.id),
                },
                environment: Link {
                    href: environment_url(base, row.environment_id),
                },
            },
            id: row.id,
            environment: IdRef {
                id: row.environment_id,
            },
            serial_number: row.serial_number,
            hotp: row.counter.map(|counter| HotpView { counter }),
            totp: row.time_step.map(|time_step| TotpView {
                time_step,
                drift: row.drift,
            }),
            token_type: row.token_type,
            otp_length: row.otp_length,
            hash_algorithm: row.hash_algorithm,
            status: row.status,
            user: row.user_id.map(|id| UserRef { id }),
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
        }
    }
}

pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensWrite).await?;
    require_media_type(&req, &["application/json"])?;
    let bytes = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let body = parse_json(&bytes)?;
    if !body.is_object() {
        return Err(ApiError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    let token = NewToken::parse(&body, TokenSource::Single).map_err(ApiError::invalid_data)?;

    let idempotency = IdempotencyKey::from_request(&req, &bytes)?;

    let id = Uuid::now_v7();
    let sealed = state.cipher.seal(&token.secret, env, id);
    let limit = state.settings.limits.tokens_per_environment;
    let mut tx = state.db.begin().await?;
    if let Some(key) = &idempotency {
        if let Err(first_response) = key.claim(&mut tx, &state, env).await? {
            return Ok(first_response);
        }
    }
    let row = store::insert(&mut tx, env, id, &token, &sealed, limit)
        .await
        .map_err(|e| match e {
            InsertError::Duplicate => ApiError::invalid_data(vec![FieldError::new(
                DetailCode::UniquenessViolation,
                "serialNumber",
                "a token with this serialNumber already exists in the environment",
            )]),
            InsertError::LimitExceeded => ApiError::invalid_data(vec![FieldError::new(
                DetailCode::LimitExceeded,
                "",
                format!("the environment already holds its limit of {limit} tokens"),
            )]),
            InsertError::Db(e) => e.into(),
        })?;
    let resource = TokenResource::new(state.settings.base_url(), row);
    let location = resource.links.self_.href.clone();
    let body = serde_json::to_vec(&resource).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(key) = &idempotency {
        key.record(&mut tx, env, StatusCode::CREATED, Some(&location), &body)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(token_id = %id, serial_number = %token.serial_number.as_str(), "token created");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .content_type("application/json")
        .body(body))
}

pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensRead).await?;
    let id = path_id(&req, "token_id")?;
    let row = store::get(&state.db, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings.base_url(), row)))
}

pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensWrite).await?;
    let id = path_id(&req, "token_id")?;
    if !store::delete(&state.db, env, id).await? {
        return Err(ApiError::not_found());
    }
    tracing::info!(token_id = %id, "token deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct ListQuery {
    filter: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct EmbeddedTokens {
    #[serde(rename = "oathTokens")]
    oath_tokens: Vec<TokenResource>,
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensRead).await?;
    let query = web::Query::<ListQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::InvalidRequest("The query string is malformed.".into()))?
        .into_inner();
    let serial = query.filter.as_deref().map(parse_filter).transpose()?;
    let limit = page_limit(query.limit.as_deref(), PAGE_DEFAULT, PAGE_MAX)?;
    let after = query.cursor.as_deref().map(cursor::decode).transpose()?;

    let mut rows = store::list(
        &state.db,
        env,
        serial.as_ref().map(SerialNumber::as_str),
        after,
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);

    let base = state.settings.base_url();
    let collection = format!("{}/oathTokens", environment_url(base, env));
    let next = more
        .then(|| rows.last().map(|r| cursor::encode(r.id)))
        .flatten();
    let mut params = Vec::new();
    if let Some(f) = &query.filter {
        params.push(("filter", f.clone()));
    }
    params.push(("limit", limit.to_string()));
    let oath_tokens: Vec<TokenResource> = rows
        .into_iter()
        .map(|r| TokenResource::new(base, r))
        .collect();
    Ok(HttpResponse::Ok().json(Page {
        links: page::links(&collection, &params, query.cursor.as_deref(), next),
        size: oath_tokens.len(),
        embedded: EmbeddedTokens { oath_tokens },
    }))
}

/// The one filter the list supports: `serialNumber eq "X"` (operator case-insensitive, SCIM style).
fn parse_filter(filter: &str) -> Result<SerialNumber, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "Unsupported filter: use serialNumber eq \"<serial number>\".".into(),
        )
    };
    let mut parts = filter.trim().splitn(3, char::is_whitespace);
    let (Some(attr), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if attr != "serialNumber" || !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let value = value
        .trim()
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(bad)?;
    SerialNumber::parse(value)
        .map_err(|m| ApiError::InvalidRequest(format!("Invalid filter: {m}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax() {
        assert_eq!(
            parse_filter(r#"serialNumber eq "AB12""#).unwrap().as_str(),
            "AB12"
        );
        assert_eq!(
            parse_filter(r#" serialNumber EQ  "AB12" "#)
                .unwrap()
                .as_str(),
            "AB12"
        );
        for bad in [
            "",
            "serialNumber",
            r#"serialNumber ne "AB12""#,
            r#"type eq "HOTP""#,
            "serialNumber eq AB12",
            r#"serialNumber eq "A B""#,
            r#"serialNumber eq "AB12" and x"#,
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
