//! `/v1/environments/{envID}/oathTokens/{tokenID}/validate`, `/resync` and `/pairing`: checking an
//! OTP, resynchronising a token with two consecutive OTPs, and pairing a token with a user.
//!
//! Every OTP check is logged as one event (`otp checked`: token id, outcome), never
//! with the OTP or the secret.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{Authorized, Demands, OtpValidate, TokenId, TokensWrite};
use super::tokens::TokenResource;
use super::{json_object, origin, AppState, Reply, TokenPath};
use crate::domain::{
    FieldError, PairingRequest, PairingRequestDoc, ResyncRequest, ResyncRequestDoc,
    ValidateRequest, ValidateRequestDoc,
};
use crate::error::responses::{AuthenticatedErrors, BodyErrors, Conflict};
use crate::error::ApiError;
use crate::metrics::METRICS;
use crate::service::tokens;
use crate::service::verification::{self, CheckOutcome, Pairing, Resync};
use crate::store::tokens::Token;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ValidationResult {
    status: CheckOutcome,
    /// `LOCKED` under the lockout policy `throttle` only: whole seconds until the token's codes
    /// are checked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, minimum = 1)]
    retry_after_seconds: Option<u64>,
}

/// The request of an OTP check, and the scope the check demands.
pub trait CheckRequest: Sized + 'static {
    type Scope: Demands;
    fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>>;
}

/// `Request: Scope`: each check's request parses as its domain type says.
macro_rules! check_requests {
    ($($request:ident: $scope:ident),*) => {$(
        impl CheckRequest for $request {
            type Scope = $scope;
            fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
                $request::parse(body)
            }
        }
    )*};
}
check_requests!(
    ValidateRequest: OtpValidate,
    ResyncRequest: TokensWrite,
    PairingRequest: TokensWrite
);

/// An OTP check of the path's token: the caller authorized as `R::Scope` (see [`Authorized`]),
/// then the check counted against the token's rate limit, then the body read as `R`, in that
/// order, so that a refused or limited check reads no body.
pub struct OtpCheck<R> {
    state: web::Data<AppState>,
    env: Uuid,
    id: Uuid,
    request: R,
}

impl<R: CheckRequest> FromRequest for OtpCheck<R> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let auth = Authorized::<R::Scope, TokenId>::from_request(req, payload);
        let body = web::Payload::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let auth = auth.await?;
            let (env, id) = (auth.env, auth.ids.0);
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Internal("application state missing".into()))?
                .clone();
            state.limits.check_otp(env, id)?;
            let body = body.await.map_err(|e| ApiError::Internal(e.to_string()))?;
            let request = parse_body(&req, body, &state, R::parse).await?;
            Ok(Self {
                state,
                env,
                id,
                request,
            })
        })
    }
}

/// Check an OTP.
///
/// `{"otp": "..."}` answers `{"status": "VALID" | "INVALID" | "LOCKED" | "DISABLED"}`. A
/// valid code is consumed (HOTP: the counter moves past it; TOTP: its time step is never
/// accepted again). After too many consecutive failures the token is `LOCKED`: until a resync
/// or an unlock (lockout policy `lock`), or for a delay that doubles with each further
/// failure, given in `retryAfterSeconds` (policy `throttle`). A `LOCKED` or `DISABLED` answer
/// checked nothing and counted nothing.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/validate",
    tag = "OTP",
    operation_id = "validateOtp",
    params(TokenPath),
    request_body(content = ValidateRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The outcome of the check.", body = ValidationResult),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:otp:validate"])),
)]
pub async fn validate(check: OtpCheck<ValidateRequest>, req: HttpRequest) -> Reply {
    let OtpCheck {
        state,
        env,
        id,
        request,
    } = check;
    let origin = origin(&req);
    let verdict = verification::validate(&state.services, env, id, &request.otp, &origin).await?;
    log_check(&req, id, "validate", verdict.outcome, StatusCode::OK);
    Ok(HttpResponse::Ok().json(ValidationResult {
        status: verdict.outcome,
        retry_after_seconds: verdict.retry_after_seconds,
    }))
}

/// Resynchronise a token with two consecutive OTPs.
///
/// `{"otps": ["first", "second"]}` sets the counter or drift, clears the lock and answers the
/// token; `400 INVALID_DATA` when the OTPs are not consecutive codes within the resync window;
/// `409` when the token is disabled.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/resync",
    tag = "OTP",
    operation_id = "resyncToken",
    params(TokenPath),
    request_body(content = ResyncRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The token, resynchronised.", body = TokenResource),
        (status = 409, response = Conflict),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn resync(check: OtpCheck<ResyncRequest>, req: HttpRequest) -> Reply {
    let OtpCheck {
        state,
        env,
        id,
        request,
    } = check;
    let origin = origin(&req);
    let resynced = verification::resync(&state.services, env, id, request.otps, &origin).await?;
    let (outcome, refusal) = match resynced {
        Resync::Done(token) => return Ok(checked_token(&req, &state, "resync", token)),
        Resync::Disabled => (CheckOutcome::Disabled, disabled()),
        Resync::NoMatch => (
            CheckOutcome::Invalid,
            invalid_field(
                "otps",
                "otps are not two consecutive codes of this token within the resync window; \
                 enter two codes in a row as the token shows them",
            ),
        ),
    };
    log_check(&req, id, "resync", outcome, refusal.status_code());
    Err(refusal)
}

/// Pair a token with a user.
///
/// `{"userId": "...", "otp": "..."}` pairs an `AVAILABLE` token whose OTP validates (consuming
/// it) and answers the token; `409` when it is already paired, locked or disabled.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathTokens/{token_id}/pairing",
    tag = "OTP",
    operation_id = "pairToken",
    params(TokenPath),
    request_body(content = PairingRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The token, now `PAIRED`.", body = TokenResource),
        (status = 409, response = Conflict),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn pair(check: OtpCheck<PairingRequest>, req: HttpRequest) -> Reply {
    let OtpCheck {
        state,
        env,
        id,
        request,
    } = check;
    let user = &request.user_id;
    let origin = origin(&req);
    let pairing = verification::pair(&state.services, env, id, user, &request.otp, &origin).await?;
    match paired(pairing) {
        Ok(token) => Ok(checked_token(&req, &state, "pairing", token)),
        Err((checked, refusal)) => {
            if let Some(outcome) = checked {
                log_check(&req, id, "pairing", outcome, refusal.status_code());
            }
            Err(refusal)
        }
    }
}

/// The paired token, or why the pairing was refused: the error, and the outcome of the check
/// when the code's token was looked at (not for a token already paired).
fn paired(pairing: Pairing) -> Result<Token, (Option<CheckOutcome>, ApiError)> {
    match pairing {
        Pairing::Paired(token) => Ok(token),
        Pairing::AlreadyPaired => Err((
            None,
            ApiError::Conflict("The token is already paired; unpair it first.".into()),
        )),
        Pairing::Disabled => Err((Some(CheckOutcome::Disabled), disabled())),
        Pairing::Locked => Err((
            Some(CheckOutcome::Locked),
            ApiError::Conflict(
                "The token is locked after too many failed validations; resync or unlock it first."
                    .into(),
            ),
        )),
        Pairing::Invalid => Err((
            Some(CheckOutcome::Invalid),
            invalid_field(
                "otp",
                "the OTP is not valid for this token; enter the code the token shows now",
            ),
        )),
    }
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
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:tokens:write"])),
)]
pub async fn unpair(
    auth: Authorized<TokensWrite, TokenId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    tokens::unpair(&state.services, auth.env, auth.ids.0, &origin(&req)).await?;
    crate::audit::committed(&req, None, StatusCode::NO_CONTENT);
    Ok(HttpResponse::NoContent().finish())
}

/// The body, a JSON object, read by the operation's parser: 400 for anything else.
async fn parse_body<T, P>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    parse: P,
) -> Result<T, ApiError>
where
    P: FnOnce(&Map<String, Value>) -> Result<T, Vec<FieldError>>,
{
    let (_, body) = json_object(req, payload, state, &["application/json"]).await?;
    parse(&body).map_err(ApiError::invalid_data)
}

/// A check that passed and changed `token`: logged as valid, answered with the token.
fn checked_token(
    req: &HttpRequest,
    state: &AppState,
    operation: &'static str,
    token: Token,
) -> HttpResponse {
    log_check(
        req,
        token.id,
        operation,
        CheckOutcome::Valid,
        StatusCode::OK,
    );
    HttpResponse::Ok().json(TokenResource::new(state.settings(), token))
}

/// The 409 of a check of a disabled token.
fn disabled() -> ApiError {
    ApiError::Conflict("The token is disabled; enable it first.".into())
}

/// A 400 INVALID_DATA for the one field the check refused.
fn invalid_field(target: &str, message: &str) -> ApiError {
    ApiError::invalid_data(vec![FieldError::invalid(target, message)])
}

/// One OTP check, whose result is stored and will be answered with `status`: logged, counted in
/// `oath_otp_validations_total`, and audited.
fn log_check(
    req: &HttpRequest,
    token_id: Uuid,
    operation: &'static str,
    outcome: CheckOutcome,
    status: StatusCode,
) {
    crate::audit::outcome(req, outcome.as_str());
    crate::audit::committed(req, None, status);
    METRICS
        .otp_validations
        .with_label_values(&[operation, outcome.as_str()])
        .inc();
    tracing::info!(token_id = %token_id, operation, outcome = outcome.as_str(), "otp checked");
}
