//! The one API error type, mapped to the contract's status codes and error body in one place.
//! Internal causes go to the log under the error's id; the client sees only the contract's message.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use uuid::Uuid;

use crate::auth::AuthError;
use crate::domain::FieldError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{message}")]
    InvalidData {
        message: String,
        details: Vec<FieldError>,
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
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The database (or another dependency) cannot be reached; the cause is logged only.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug; the cause is logged only.
    #[error("unexpected error: {0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    id: Uuid,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    details: &'a [FieldError],
}

impl ApiError {
    pub fn invalid_data(details: Vec<FieldError>) -> Self {
        let message = match details.len() {
            1 => "The request has 1 invalid field; see details.".to_string(),
            n => format!("The request has {n} invalid fields; see details."),
        };
        Self::InvalidData { message, details }
    }

    pub fn not_found() -> Self {
        Self::NotFound("The requested resource was not found.".into())
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::InvalidData { .. } => "INVALID_DATA",
            Self::Auth(AuthError::KeySetUnavailable(_)) | Self::Unavailable(_) => {
                "SERVICE_UNAVAILABLE"
            }
            Self::Auth(_) => "ACCESS_FAILED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "CONFLICT",
            Self::TooLarge(_) => "REQUEST_TOO_LARGE",
            Self::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Self::Internal(_) => "UNEXPECTED_ERROR",
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
            Self::InvalidRequest(m)
            | Self::InvalidData { message: m, .. }
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::TooLarge(m)
            | Self::UnsupportedMediaType(m) => m.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::InvalidData { .. } => StatusCode::BAD_REQUEST,
            Self::Auth(AuthError::Missing | AuthError::Invalid(_)) => StatusCode::UNAUTHORIZED,
            Self::Auth(AuthError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Auth(AuthError::KeySetUnavailable(_)) | Self::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let id = Uuid::new_v4();
        let status = self.status_code();
        let code = self.code();
        // `self`'s Display carries the internal cause; it is logged, never sent.
        if status.is_server_error() {
            tracing::error!(error_id = %id, code, cause = %self, "request failed");
        } else {
            tracing::info!(error_id = %id, code, cause = %self, "request rejected");
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

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

/// Errors that mean "the database cannot be reached right now", as opposed to a bug.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: shutdown / cannot connect now; 53: resources.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        _ => false,
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
