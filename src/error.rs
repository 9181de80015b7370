//! The one API error type, mapped to the contract's status codes and error body in one place.
//! Internal causes go to the log under the error's id; the client sees only the contract's message.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthError;
use crate::domain::job::MAX_DETAILS;
use crate::domain::FieldError;
use crate::service::ServiceError;
use crate::telemetry::{HandlerPanicked, REQUEST_ID_HEADER};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Fields fail validation: `details` are the first of `total` problems. Built by
    /// [`ApiError::invalid_data`] and [`ApiError::invalid_data_of`] only, so that every route's
    /// message counts its fields alike.
    #[error("{}", invalid_data_message(*total, details.len()))]
    InvalidData {
        details: Vec<FieldError>,
        total: usize,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The body did not arrive in `server.body_timeout_seconds`: 408 `INVALID_REQUEST`.
    #[error("{0}")]
    BodyTimeout(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A limit of the caller's environment is reached: 429 with `Retry-After` (whole seconds).
    #[error("{message}")]
    Limited {
        message: String,
        retry_after_seconds: u32,
    },
    /// The database (or another dependency) cannot be reached; the cause is logged only.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug; the cause is logged only.
    #[error("unexpected error: {0}")]
    Internal(String),
}

/// The contract's error codes (section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidData,
    AccessFailed,
    NotFound,
    MethodNotAllowed,
    Conflict,
    RequestTooLarge,
    UnsupportedMediaType,
    RequestLimited,
    UnexpectedError,
    ServiceUnavailable,
}

impl ErrorCode {
    pub const ALL: [Self; 11] = [
        Self::InvalidRequest,
        Self::InvalidData,
        Self::AccessFailed,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::RequestTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestLimited,
        Self::UnexpectedError,
        Self::ServiceUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::InvalidData => "INVALID_DATA",
            Self::AccessFailed => "ACCESS_FAILED",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict => "CONFLICT",
            Self::RequestTooLarge => "REQUEST_TOO_LARGE",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::RequestLimited => "REQUEST_LIMITED",
            Self::UnexpectedError => "UNEXPECTED_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
        }
    }

    /// The status of an error of this code; `ACCESS_FAILED` is 403 instead when a valid token
    /// lacks the scope or environment.
    fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::InvalidData => StatusCode::BAD_REQUEST,
            Self::AccessFailed => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UnexpectedError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Every error response has this body.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// Id of this error, also in the service's log line about it.
    id: Uuid,
    code: ErrorCode,
    /// One sentence a user can act on.
    #[schema(example = "The request has 1 invalid field; see details.")]
    message: &'a str,
    /// One entry per invalid field (`INVALID_DATA` only).
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
}

/// The error responses, as the OpenAPI document describes them.
pub mod responses {
    use utoipa::{IntoResponses, ToResponse};

    use super::ErrorBody;

    /// One response per error status: the error body under the given documentation and headers.
    macro_rules! error_responses {
        ($($(#[$attr:meta])* $name:ident;)*) => {$(
            #[derive(ToResponse)]
            $(#[$attr])*
            pub struct $name<'a>(pub ErrorBody<'a>);
        )*};
    }

    error_responses! {
        /// `INVALID_REQUEST`: the body is not JSON or the query is malformed; `INVALID_DATA`: fields
        /// fail validation, one `details[]` entry per problem.
        BadRequest;
        /// `ACCESS_FAILED`: no bearer token, or one that is malformed, expired, not yet valid, badly
        /// signed or missing a claim.
        #[response(headers(("WWW-Authenticate" = String, description = "`Bearer`, with `error=\"invalid_token\"` when a token was sent")))]
        Unauthorized;
        /// `ACCESS_FAILED`: the token lacks the operation's scope, or is for another environment.
        #[response(headers(("WWW-Authenticate" = String, description = "`Bearer error=\"insufficient_scope\"`")))]
        Forbidden;
        /// `NOT_FOUND`: no such resource in the environment, or a path id that is not a UUID.
        NotFound;
        /// `CONFLICT`.
        Conflict;
        /// `REQUEST_TOO_LARGE`: the body exceeds the configured limit.
        TooLarge;
        /// `INVALID_REQUEST`: the body did not arrive within `server.body_timeout_seconds`.
        RequestTimeout;
        /// `UNSUPPORTED_MEDIA_TYPE`: the body's `Content-Type` is not one the operation accepts.
        UnsupportedMediaType;
        /// `UNEXPECTED_ERROR`: a bug; the message never tells internals, the log has the cause.
        Unexpected;
        /// `SERVICE_UNAVAILABLE`: the database (or the key set) cannot be reached right now; the
        /// service recovers by itself.
        #[response(headers(("Retry-After" = u32, description = "Seconds to wait before retrying")))]
        Unavailable;
        /// `REQUEST_LIMITED`: a limit is reached (the environment's requests or unfinished jobs, a
        /// token's OTP checks); retry after the given number of seconds.
        #[response(headers(("Retry-After" = u32, description = "Whole seconds to wait before retrying, at least 1")))]
        TooManyRequests;
    }

    /// A set of the responses above, by status, for an operation's `responses(...)`.
    macro_rules! error_set {
        ($(#[$attr:meta])* $set:ident { $($status:tt $name:ident),+ $(,)? }) => {
            $(#[$attr])*
            #[derive(IntoResponses)]
            pub enum $set {
                $(#[response(status = $status)] $name(#[ref_response] $name<'static>),)+
            }
        };
    }

    error_set! {
        /// The errors every authenticated operation may answer, listed once for all of them (`429`
        /// when `limits.requests_per_environment_per_second` is set, and on job submission and OTP
        /// checks).
        AuthenticatedErrors {
            401 Unauthorized,
            403 Forbidden,
            404 NotFound,
            429 TooManyRequests,
            500 Unexpected,
            503 Unavailable,
        }
    }

    error_set! {
        /// The errors of every operation that takes a JSON body.
        BodyErrors { 400 BadRequest, 408 RequestTimeout, 413 TooLarge, 415 UnsupportedMediaType }
    }
}

impl ApiError {
    pub fn invalid_data(details: Vec<FieldError>) -> Self {
        let total = details.len();
        Self::invalid_data_of(details, total)
    }

    /// A 400 INVALID_DATA for `total` problems, of which `details` are the first: at most
    /// [`MAX_DETAILS`] are listed, whatever the body held, and the message gives the total.
    pub fn invalid_data_of(mut details: Vec<FieldError>, total: usize) -> Self {
        details.truncate(MAX_DETAILS);
        Self::InvalidData { details, total }
    }

    pub fn not_found() -> Self {
        Self::NotFound("The requested resource was not found.".into())
    }

    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidRequest(_) | Self::BodyTimeout(_) => ErrorCode::InvalidRequest,
            Self::InvalidData { .. } => ErrorCode::InvalidData,
            Self::Auth(AuthError::KeySetUnavailable(_)) | Self::Unavailable(_) => {
                ErrorCode::ServiceUnavailable
            }
            Self::Auth(_) => ErrorCode::AccessFailed,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::TooLarge(_) => ErrorCode::RequestTooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::Limited { .. } => ErrorCode::RequestLimited,
            Self::Internal(_) => ErrorCode::UnexpectedError,
        }
    }

    /// What the client reads: never an internal cause.
    fn public_message(&self) -> String {
        match self {
            Self::Auth(AuthError::Missing) => "The request has no bearer access token.".into(),
            Self::Auth(AuthError::Invalid(_)) => {
                "The access token is invalid, expired or not yet valid.".into()
            }
            Self::Auth(AuthError::Forbidden(m)) => m.clone(),
            Self::Auth(AuthError::KeySetUnavailable(_)) | Self::Unavailable(_) => {
                "The service is temporarily unavailable; retry later.".into()
            }
            Self::MethodNotAllowed => "The method is not allowed on this resource.".into(),
            Self::Internal(_) => "An unexpected error occurred.".into(),
            Self::InvalidData { details, total } => invalid_data_message(*total, details.len()),
            Self::InvalidRequest(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooLarge(m)
            | Self::BodyTimeout(m)
            | Self::UnsupportedMediaType(m)
            | Self::Limited { message: m, .. } => m.clone(),
        }
    }
}

/// The message of every 400 INVALID_DATA: how many fields are invalid, and whether `listed` (the
/// details) are all of them.
fn invalid_data_message(total: usize, listed: usize) -> String {
    match total {
        1 => "The request has 1 invalid field; see details.".to_string(),
        n if n > listed => {
            format!("The request has {n} invalid fields; the first {listed} are listed.")
        }
        n => format!("The request has {n} invalid fields; see details."),
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            _ => self.code().status(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let id = Uuid::new_v4();
        let status = self.status_code();
        let code = self.code();
        // `self`'s Display carries the internal cause; it is logged, never sent.
        if status.is_server_error() {
            tracing::error!(error_id = %id, code = code.as_str(), cause = %self, "request failed");
        } else {
            tracing::info!(error_id = %id, code = code.as_str(), cause = %self, "request rejected");
        }
        let message = self.public_message();
        let details: &[FieldError] = match self {
            Self::InvalidData { details, .. } => details,
            _ => &[],
        };
        let mut response = HttpResponse::build(status);
        match self {
            Self::Auth(AuthError::Missing) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::Auth(AuthError::Invalid(_)) => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""));
            }
            Self::Auth(AuthError::Forbidden(_)) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    "Bearer error=\"insufficient_scope\"",
                ));
            }
            Self::Limited {
                retry_after_seconds,
                ..
            } => {
                response.insert_header((
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_seconds).max(1)),
                ));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .insert_header((header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS)));
            }
            _ => {}
        }
        response.json(ErrorBody {
            id,
            code,
            message: &message,
            details,
        })
    }
}

impl ResponseError for HandlerPanicked {
    fn status_code(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = ApiError::Internal("handler panicked".into()).error_response();
        if let Ok(value) = HeaderValue::from_str(&self.request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => Self::not_found(),
            ServiceError::Conflict(message) => Self::Conflict(message),
            ServiceError::InvalidData { details, total } => Self::invalid_data_of(details, total),
            ServiceError::Limited {
                message,
                retry_after_seconds,
            } => Self::Limited {
                message,
                retry_after_seconds,
            },
            ServiceError::Database(e) => Self::from(&e),
            ServiceError::SharedDatabase(e) => Self::from(&*e),
            ServiceError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<crate::limits::Limited> for ApiError {
    fn from(limited: crate::limits::Limited) -> Self {
        Self::Limited {
            message: limited.message.into(),
            retry_after_seconds: limited.retry_after_seconds,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::from(&e)
    }
}

impl From<&sqlx::Error> for ApiError {
    fn from(e: &sqlx::Error) -> Self {
        if crate::store::is_unavailable(e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

/// The default service: any path the API does not serve.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// The default service of every resource: a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;

    fn respond_to(self, _req: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    /// Every route builds its 400 INVALID_DATA through `invalid_data`, so one field or many read
    /// alike wherever they are found.
    #[test]
    fn invalid_data_messages_count_the_fields() {
        let fields = |n: usize| -> Vec<FieldError> {
            (0..n)
                .map(|i| FieldError::invalid(format!("f{i}"), "bad"))
                .collect()
        };
        let message = |e: ApiError| (e.public_message(), e.to_string());
        let one = "The request has 1 invalid field; see details.";
        assert_eq!(
            message(ApiError::invalid_data(fields(1))),
            (one.into(), one.into())
        );
        let three = "The request has 3 invalid fields; see details.";
        assert_eq!(
            message(ApiError::invalid_data(fields(3))),
            (three.into(), three.into())
        );
        let cut = "The request has 5001 invalid fields; the first 1000 are listed.";
        assert_eq!(
            message(ApiError::invalid_data_of(fields(MAX_DETAILS + 10), 5001)),
            (cut.into(), cut.into())
        );
    }
}
