//! `/v1/environments/{envID}/oathTokens/{tokenID}/validate`, `/resync` and `/pairing`: checking an
//! OTP, resynchronising a token with two consecutive OTPs, and pairing a token with a user.
//!
//! Every OTP check is logged as one event (`otp checked`: token id, operation, outcome), never
//! with the OTP or the secret.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::tokens::TokenResource;
use super::{json_body, path_id, TokenPath};
use crate::auth::Scope;
use crate::config::OtpSettings;
use crate::domain::{
    FieldError, HashAlgorithm, OtpLength, PairingRequest, PairingRequestDoc, ResyncRequest,
    ResyncRequestDoc, ValidateRequest, ValidateRequestDoc,
};
use crate::error::responses::{
    BadRequest, Conflict, Forbidden, NotFound, TooLarge, Unauthorized, Unavailable, Unexpected,
    UnsupportedMediaType,
};
use crate::error::ApiError;
use crate::metrics::METRICS;
use crate::otp::{self, MovingFactor, ResyncWindows, Windows};
use crate::startup::AppState;
use crate::store::otp::{self as store, OtpRow};

/// The answer of `validate`, and the outcome of every logged check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = ValidationStatus)]
pub enum Outcome {
    Valid,
    Invalid,
    /// Too many consecutive failures: the OTP was not checked.
    Locked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Invalid => "INVALID",
            Self::Locked => "LOCKED",
        }
    }
}

#[derive(Serialize, ToSchema)]
struct ValidationResult {
    status: Outcome,
}

/// Check an OTP.
///
/// `{"otp": "..."}` answers `{"status": "VALID" | "INVALID" | "LOCKED"}`. A valid code is
/// consumed (HOTP: the counter moves past it; TOTP: its time step is never accepted again); after
/// too many consecutive failures the token is `LOCKED` until a successful resync.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/validate",
    tag = "OTP",
    operation_id = "validateOtp",
    params(TokenPath),
    request_body(content = ValidateRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The outcome of the check.", body = ValidationResult),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["oath:otp:validate"])),
)]
pub async fn validate(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::OtpValidate).await?;
    let id = path_id(&req, "token_id")?;
    let body = object_body(&req, payload, &state).await?;
    let request = ValidateRequest::parse(&body).map_err(ApiError::invalid_data)?;
    let settings = &state.settings.otp;

    // One connection for the read and the write: every checkout costs a round trip (sqlx tests
    // each connection as it returns to the pool).
    let mut db = state.db.acquire().await?;
    let row = store::get(&mut *db, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let outcome = if is_locked(&row, settings) {
        Outcome::Locked
    } else {
        let token = engine_token(&state, env, id, &row)?;
        let accepted = match otp::verify(&token, &request.otp, unix_now(), windows(settings)) {
            // The check-and-advance: false when a concurrent request consumed the code first.
            Some(advance) => {
                store::accept(&mut *db, env, id, advance, settings.max_failures).await?
            }
            None => false,
        };
        if accepted {
            Outcome::Valid
        } else {
            match store::record_failure(&mut *db, env, id, settings.max_failures).await? {
                Some(_) => Outcome::Invalid,
                // Locked by concurrent failures since the row was read.
                None => Outcome::Locked,
            }
        }
    };
    log_check(&req, id, "validate", outcome);
    Ok(HttpResponse::Ok().json(ValidationResult { status: outcome }))
}

/// Resynchronise a token with two consecutive OTPs.
///
/// `{"otps": ["first", "second"]}` sets the counter or drift, clears the lock and answers the
/// token; `400 INVALID_DATA` when the OTPs are not consecutive codes within the resync window.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/resync",
    tag = "OTP",
    operation_id = "resyncToken",
    params(TokenPath),
    request_body(content = ResyncRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The token, resynchronised.", body = TokenResource),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn resync(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensWrite).await?;
    let id = path_id(&req, "token_id")?;
    let body = object_body(&req, payload, &state).await?;
    let request = ResyncRequest::parse(&body).map_err(ApiError::invalid_data)?;
    let settings = &state.settings.otp;
    let windows = ResyncWindows {
        hotp: settings.hotp_resync_window,
        totp_seconds: settings.totp_resync_window_seconds,
    };

    let mut tx = state.db.begin().await?;
    let row = store::get_for_update(&mut tx, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let token = engine_token(&state, env, id, &row)?;
    let now = unix_now();
    // Up to a few thousand HMACs: off the async worker.
    let found = web::block(move || otp::resync(&token, &request.otps, now, windows))
        .await
        .map_err(|e| ApiError::Internal(format!("resync search failed: {e}")))?;
    let Some(advance) = found else {
        log_check(&req, id, "resync", Outcome::Invalid);
        return Err(ApiError::InvalidData {
            message: "The OTPs are not two consecutive codes of this token within the resync \
                      window; enter two codes in a row as the token shows them."
                .into(),
            details: vec![FieldError::invalid(
                "otps",
                "otps must be two consecutive codes of this token",
            )],
        });
    };
    let row = store::apply(&mut tx, env, id, advance, None).await?;
    tx.commit().await?;
    log_check(&req, id, "resync", Outcome::Valid);
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings.base_url(), row)))
}

/// Pair a token with a user.
///
/// `{"userId": "...", "otp": "..."}` pairs an `AVAILABLE` token whose OTP validates (consuming
/// it) and answers the token; `409` when it is already paired or locked.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/pairing",
    tag = "OTP",
    operation_id = "pairToken",
    params(TokenPath),
    request_body(content = PairingRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The token, now `PAIRED`.", body = TokenResource),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn pair(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensWrite).await?;
    let id = path_id(&req, "token_id")?;
    let body = object_body(&req, payload, &state).await?;
    let request = PairingRequest::parse(&body).map_err(ApiError::invalid_data)?;
    let settings = &state.settings.otp;

    let mut tx = state.db.begin().await?;
    let row = store::get_for_update(&mut tx, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if row.status == "PAIRED" {
        return Err(ApiError::Conflict(
            "The token is already paired; unpair it first.".into(),
        ));
    }
    if is_locked(&row, settings) {
        log_check(&req, id, "pairing", Outcome::Locked);
        return Err(ApiError::Conflict(
            "The token is locked after too many failed validations; resync it first.".into(),
        ));
    }
    let token = engine_token(&state, env, id, &row)?;
    let Some(advance) = otp::verify(&token, &request.otp, unix_now(), windows(settings)) else {
        store::record_failure(&mut *tx, env, id, settings.max_failures).await?;
        tx.commit().await?;
        log_check(&req, id, "pairing", Outcome::Invalid);
        return Err(ApiError::InvalidData {
            message: "The OTP is not valid for this token; enter the code the token shows now."
                .into(),
            details: vec![FieldError::invalid(
                "otp",
                "the OTP is not valid for this token",
            )],
        });
    };
    let row = store::apply(&mut tx, env, id, advance, Some(&request.user_id)).await?;
    tx.commit().await?;
    log_check(&req, id, "pairing", Outcome::Valid);
    tracing::info!(token_id = %id, "token paired");
    Ok(HttpResponse::Ok().json(TokenResource::new(state.settings.base_url(), row)))
}

/// Unpair a token.
///
/// `204` whether or not the token was paired; `404` when there is no token.
#[utoipa::path(
    delete,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/pairing",
    tag = "OTP",
    operation_id = "unpairToken",
    params(TokenPath),
    responses(
        (status = 204, description = "The token is not paired (whether or not it was)."),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn unpair(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::TokensWrite).await?;
    let id = path_id(&req, "token_id")?;
    let was_paired = store::unpair(&state.db, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if was_paired {
        tracing::info!(token_id = %id, "token unpaired");
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn object_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Map<String, Value>, ApiError> {
    match json_body(req, payload, state.settings.server.max_body_bytes).await? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::InvalidRequest(
            "The request body must be a JSON object.".into(),
        )),
    }
}

fn is_locked(row: &OtpRow, settings: &OtpSettings) -> bool {
    i64::from(row.fail_count) >= i64::from(settings.max_failures)
}

fn windows(settings: &OtpSettings) -> Windows {
    Windows {
        hotp: settings.hotp_window,
        totp: settings.totp_window,
    }
}

/// The engine's view of a stored token, its secret opened.
fn engine_token(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    row: &OtpRow,
) -> Result<otp::Token, ApiError> {
    let corrupt = |what: &str| ApiError::Internal(format!("token {id} has an invalid {what}"));
    let algorithm =
        HashAlgorithm::parse(&row.hash_algorithm).ok_or_else(|| corrupt("hash_algorithm"))?;
    let length = u64::try_from(row.otp_length)
        .ok()
        .and_then(OtpLength::new)
        .ok_or_else(|| corrupt("otp_length"))?;
    let factor = match (row.counter, row.time_step) {
        (Some(counter), None) => MovingFactor::Hotp {
            counter: u64::try_from(counter).map_err(|_| corrupt("counter"))?,
        },
        (None, Some(time_step)) => MovingFactor::Totp {
            time_step: u32::try_from(time_step)
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| corrupt("time_step"))?,
            drift: row.drift,
            last_step: row
                .last_time_step
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt("last_time_step"))?,
        },
        _ => return Err(corrupt("type")),
    };
    let key = state
        .cipher
        .open(&row.secret_key_id, &row.secret_ciphertext, env, id)
        .map_err(|e| ApiError::Internal(format!("token {id}: {e}")))?;
    Ok(otp::Token {
        key,
        algorithm,
        length,
        factor,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One OTP check: logged, counted in `oath_otp_validations_total`, and its outcome given to the
/// request's audit event.
fn log_check(req: &HttpRequest, token_id: Uuid, operation: &'static str, outcome: Outcome) {
    crate::audit::outcome(req, outcome.as_str());
    METRICS
        .otp_validations
        .with_label_values(&[operation, outcome.as_str()])
        .inc();
    tracing::info!(token_id = %token_id, operation, outcome = outcome.as_str(), "otp checked");
}
