//! `/v1/environments/{envID}/oathTokens`: create, read, list (all, by serial, by user), enable or
//! disable, unlock and delete single tokens.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use serde_json::Value;

use super::extract::{Authorized, TokenId, TokensRead, TokensWrite};
use super::idempotency::{self, IdempotencyKey};
use super::page::{self, Paging};
use super::{collection_url, cursor, json_object, origin, AppState, Reply};
use super::{EnvPath, IdRef, Link, TokenPath};
use crate::config::{Lockout, Settings};
use crate::domain::token::{otp_length_schema, TokenRequestDoc};
use crate::domain::{
    HashAlgorithm, NewToken, SerialNumber, TokenKind, TokenPatch, TokenPatchDoc, TokenSource,
    TokenStatus, TokenType, UserId,
};
use crate::error::responses::{AuthenticatedErrors, BadRequest, BodyErrors, Conflict};
use crate::error::ApiError;
use crate::service::tokens::{self, TokenFilter};
use crate::store::tokens::Token;

/// The token representation: never the secret.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Token)]
pub struct TokenResource {
    #[serde(rename = "_links")]
    links: TokenLinks,
    id: Uuid,
    environment: IdRef,
    #[schema(example = "2333734700388")]
    serial_number: String,
    #[serde(rename = "type")]
    token_type: TokenType,
    /// HOTP tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    hotp: Option<HotpView>,
    /// TOTP tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    totp: Option<TotpView>,
    #[schema(schema_with = otp_length_schema)]
    otp_length: u8,
    hash_algorithm: HashAlgorithm,
    status: TokenStatus,
    /// `PAIRED` tokens only: the user the token is paired with.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    user: Option<UserRef>,
    /// False: checks answer `DISABLED`, resync and pairing are refused (`PATCH` to change).
    enabled: bool,
    /// Consecutive failed checks.
    failed_attempts: i32,
    /// Checks are refused after too many failures (lockout), until a resync or an unlock, or
    /// until `lockedUntil`.
    locked: bool,
    /// Lockout policy `throttle`, while checks are refused: until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    locked_until: Option<String>,
    /// The last check the token passed (validate, resync or pairing); absent before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    last_used_at: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2024-12-02T12:10:41.616Z")]
    created_at: String,
    #[schema(format = DateTime, example = "2024-12-02T12:10:41.676Z")]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
struct TokenLinks {
    #[serde(rename = "self")]
    self_: Link,
    environment: Link,
}

#[derive(Serialize, ToSchema)]
#[schema(as = HotpState)]
struct HotpView {
    /// The next counter value expected.
    counter: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = TotpState)]
struct TotpView {
    /// Seconds.
    time_step: i32,
    /// Read-only: the token's clock offset in time steps, learnt from validations and resyncs.
    drift: i32,
}

#[derive(Serialize, ToSchema)]
#[schema(as = UserRef)]
struct UserRef {
    /// The user id given when the token was paired.
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
    /// The token as `settings` show it: its lock is judged by the lockout policy.
    pub fn new(settings: &Settings, token: Token) -> Self {
        let base = settings.base_url();
        let otp = &settings.otp;
        let throttled_until = token
            .locked_until
            .filter(|until| otp.lockout == Lockout::Throttle && *until > Utc::now());
        let locked = match otp.lockout {
            Lockout::Lock => i64::from(token.failed_attempts) >= i64::from(otp.max_failures),
            Lockout::Throttle => throttled_until.is_some(),
        };
        let (hotp, totp) = match token.kind {
            TokenKind::Hotp { counter } => (Some(HotpView { counter }), None),
            TokenKind::Totp { time_step } => (
                None,
                Some(TotpView {
                    time_step,
                    drift: token.drift,
                }),
            ),
        };
        Self {
            links: TokenLinks {
                self_: Link {
                    href: token_url(base, token.environment_id, token.id),
                },
                environment: Link {
                    href: environment_url(base, token.environment_id),
                },
            },
            id: token.id,
            environment: IdRef {
                id: token.environment_id,
            },
            serial_number: token.serial_number,
            token_type: token.kind.token_type(),
            hotp,
            totp,
            otp_length: token.otp_length.get(),
            hash_algorithm: token.hash_algorithm,
            status: token.status,
            user: token.user_id.map(|id| UserRef { id }),
            enabled: token.enabled,
            failed_attempts: token.failed_attempts,
            locked,
            locked_until: throttled_until.map(timestamp),
            last_used_at: token.last_used_at.map(timestamp),
            created_at: timestamp(token.created_at),
            updated_at: timestamp(token.updated_at),
        }
    }
}

/// Create one token.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens",
    tag = "Tokens",
    operation_id = "createToken",
    params(EnvPath, ("Idempotency-Key" = Option<String>, Header, description = super::idempotency::DOC)),
    request_body(content = TokenRequestDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "The token was created.", body = TokenResource,
            headers(("Location" = String, description = "The token's URL"))),
        (status = 409, response = Conflict),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn create(
    auth: Authorized<TokensWrite>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let (bytes, body) = json_object(&req, payload, &state, &["application/json"]).await?;
    let token = NewToken::parse(&Value::Object(body), TokenSource::Single)
        .map_err(ApiError::invalid_data)?;
    let Some(key) = IdempotencyKey::from_request(&req, &bytes, &state.request_hash_key[..])? else {
        let created = tokens::create(&state.services, env, &token, None, &origin(&req)).await?;
        return created_response(&req, &state, created, None).await;
    };
    let mut write = match idempotency::begin(Some(&key), &state, env).await? {
        Ok(write) => write,
        Err(first_response) => return Ok(first_response),
    };
    let origin = origin(&req);
    let created =
        tokens::create(&state.services, env, &token, Some(&mut write.tx), &origin).await?;
    created_response(&req, &state, created, Some(write)).await
}

/// `201` with the created token, recorded under the request's `Idempotency-Key` (`write`) when
/// it sent one, and audited.
async fn created_response(
    req: &HttpRequest,
    state: &AppState,
    created: Token,
    write: Option<idempotency::Write<'_>>,
) -> Reply {
    let resource = TokenResource::new(state.settings(), created);
    let location = resource.links.self_.href.clone();
    let body = serde_json::to_vec(&resource).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(write) = write {
        write
            .commit(StatusCode::CREATED, Some(&location), &body)
            .await?;
    }
    crate::audit::committed(req, Some(resource.id), StatusCode::CREATED);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .content_type("application/json")
        .body(body))
}

/// Read one token.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}",
    tag = "Tokens",
    operation_id = "getToken",
    params(TokenPath),
    responses(
        (status = 200, description = "The token.", body = TokenResource),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:read"])),
)]
pub async fn get(auth: Authorized<TokensRead, TokenId>, state: web::Data<AppState>) -> Reply {
    let token = tokens::get(&state.services, auth.env, auth.ids.0).await?;
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings(), token)))
}

/// Revoke (delete) one token, unpairing it if it is paired.
#[utoipa::path(
    delete,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}",
    tag = "Tokens",
    operation_id = "deleteToken",
    params(TokenPath),
    responses(
        (status = 204, description = "The token is gone."),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn delete(
    auth: Authorized<TokensWrite, TokenId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    tokens::delete(&state.services, auth.env, auth.ids.0, &origin(&req)).await?;
    crate::audit::committed(&req, None, StatusCode::NO_CONTENT);
    Ok(HttpResponse::NoContent().finish())
}

/// Enable or disable a token.
///
/// `{"enabled": false}` disables the token: its checks answer `DISABLED` without checking the
/// code or counting a failure, and resync and pairing answer `409`. `{"enabled": true}` enables
/// it again. No other property can be changed (`400 INVALID_DATA`).
#[utoipa::path(
    patch,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}",
    tag = "Tokens",
    operation_id = "updateToken",
    params(TokenPath),
    request_body(content(
        (TokenPatchDoc = "application/json"),
        (TokenPatchDoc = "application/merge-patch+json"),
    )),
    responses(
        (status = 200, description = "The token, changed.", body = TokenResource),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn update(
    auth: Authorized<TokensWrite, TokenId>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let media_types = ["application/json", "application/merge-patch+json"];
    let (_, body) = json_object(&req, payload, &state, &media_types).await?;
    let patch = TokenPatch::parse(&body).map_err(ApiError::invalid_data)?;
    let (env, id, enabled) = (auth.env, auth.ids.0, patch.enabled);
    let token = tokens::set_enabled(&state.services, env, id, enabled, &origin(&req)).await?;
    crate::audit::committed(&req, None, StatusCode::OK);
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings(), token)))
}

/// Unlock a token.
///
/// Clears the lock and the failed attempts, whichever the lockout policy, and answers the
/// token. No body.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/unlock",
    tag = "Tokens",
    operation_id = "unlockToken",
    params(TokenPath),
    responses(
        (status = 200, description = "The token, unlocked.", body = TokenResource),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn unlock(
    auth: Authorized<TokensWrite, TokenId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let token = tokens::unlock(&state.services, auth.env, auth.ids.0, &origin(&req)).await?;
    crate::audit::committed(&req, None, StatusCode::OK);
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings(), token)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `serialNumber eq "<serial number>"`, or `user.id eq "<user id>"` for the tokens paired
    /// to a user (operator case-insensitive).
    #[param(example = "user.id eq \"alice\"")]
    filter: Option<String>,
    /// Tokens per page, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque: taken from a page's `_links.next`.
    cursor: Option<String>,
}

/// A token list's query string, parsed.
pub struct ListRequest {
    pub filter: TokenFilter,
    /// Oldest first: after the last id of the previous page.
    pub paging: Paging<Uuid>,
    /// As sent, for the page links.
    filter_text: Option<String>,
}

impl ListRequest {
    /// `filter`, `limit` and `cursor`; other parameters are ignored.
    pub fn parse(query_string: &str) -> Result<Self, ApiError> {
        let query: ListQuery = page::query(query_string)?;
        Ok(Self {
            filter: match query.filter.as_deref() {
                Some(filter) => parse_filter(filter)?,
                None => TokenFilter::All,
            },
            paging: Paging::parse(query.limit.as_deref(), query.cursor, cursor::decode)?,
            filter_text: query.filter,
        })
    }
}

super::page_type! {
    /// A page of tokens, oldest first; `_links.next` when more follow.
    TokenPage { EmbeddedTokens "oathTokens": TokenResource }
}

/// List tokens, find one by serial number, or find a user's tokens.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathTokens",
    tag = "Tokens",
    operation_id = "listTokens",
    params(EnvPath, ListQuery),
    responses(
        (status = 200, description = "A page of tokens.", body = TokenPage),
        (status = 400, response = BadRequest),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:read"])),
)]
pub async fn list(
    auth: Authorized<TokensRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let query = ListRequest::parse(req.query_string())?;
    let paging = &query.paging;
    let mut found = tokens::list(
        &state.services,
        env,
        &query.filter,
        paging.last,
        paging.fetch(),
    )
    .await?;
    let mut params = Vec::new();
    if let Some(f) = &query.filter_text {
        params.push(("filter", f.clone()));
    }
    params.push(("limit", paging.limit.to_string()));
    let url = collection_url(state.settings().base_url(), env, "oathTokens");
    let links = paging.links(&mut found, |t| cursor::encode(t.id), &url, &params);
    let oath_tokens: Vec<TokenResource> = found
        .into_iter()
        .map(|t| TokenResource::new(state.settings(), t))
        .collect();
    Ok(HttpResponse::Ok().json(TokenPage::new(links, oath_tokens)))
}

/// The filters the list supports, SCIM style with the operator case-insensitive:
/// `serialNumber eq "X"` and `user.id eq "X"`.
fn parse_filter(filter: &str) -> Result<TokenFilter, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "Unsupported filter: use serialNumber eq \"<serial number>\" or user.id eq \"<user id>\"."
                .into(),
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
    let invalid = |m: String| ApiError::InvalidRequest(format!("Invalid filter: {m}."));
    match attr {
        "serialNumber" => SerialNumber::parse(value)
            .map(TokenFilter::Serial)
            .map_err(invalid),
        "user.id" => UserId::parse(value).map(TokenFilter::User).map_err(invalid),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(filter: &str) -> Option<String> {
        match parse_filter(filter) {
            Ok(TokenFilter::Serial(s)) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    fn user(filter: &str) -> Option<String> {
        match parse_filter(filter) {
            Ok(TokenFilter::User(u)) => Some(u.as_str().to_string()),
            _ => None,
        }
    }

    #[test]
    fn filter_syntax() {
        assert_eq!(serial(r#"serialNumber eq "AB12""#).unwrap(), "AB12");
        assert_eq!(serial(r#" serialNumber EQ  "AB12" "#).unwrap(), "AB12");
        assert_eq!(user(r#"user.id eq "alice""#).unwrap(), "alice");
        // A user id is opaque: spaces and quotes inside are part of it.
        assert_eq!(
            user(r#"user.id eq "Alice "A" Smith""#).unwrap(),
            r#"Alice "A" Smith"#
        );
        for bad in [
            "",
            "serialNumber",
            r#"serialNumber ne "AB12""#,
            r#"type eq "HOTP""#,
            "serialNumber eq AB12",
            r#"serialNumber eq "A B""#,
            r#"serialNumber eq "AB12" and x"#,
            r#"user.id eq """#,
            r#"user eq "alice""#,
            r#"user.id ne "alice""#,
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
