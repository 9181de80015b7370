//! One problem with one field of a request, as it appears in an error body's `details[]`.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DetailCode {
    RequiredValue,
    InvalidValue,
    UniquenessViolation,
    LimitExceeded,
}

/// One problem with one field of the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = ErrorDetail)]
pub struct FieldError {
    pub code: DetailCode,
    /// The field's path, e.g. `tokens[3].otpLength`; absent for problems of no single field.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(example = "tokens[3].otpLength")]
    pub target: String,
    #[schema(example = "otpLength must be 6 or 8")]
    pub message: String,
}

impl FieldError {
    pub fn new(code: DetailCode, target: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            target: target.into(),
            message: message.into(),
        }
    }

    pub fn required(target: impl Into<String>) -> Self {
        let target = target.into();
        let message = format!("{} is required", leaf(&target));
        Self::new(DetailCode::RequiredValue, target, message)
    }

    pub fn invalid(target: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(DetailCode::InvalidValue, target, message)
    }
}

/// `tokens[3].hotp.counter` -> `counter`: messages name the field, targets give the path.
fn leaf(target: &str) -> &str {
    target.rsplit('.').next().unwrap_or(target)
}

/// Longest property name an error repeats; a longer one is cut, so that a body of huge
/// unknown names cannot make an answer larger still.
pub const SHOWN_NAME_MAX: usize = 64;

/// A client's property name as an error may repeat it: at most [`SHOWN_NAME_MAX`] characters,
/// no control characters.
pub fn shown_name(name: &str) -> String {
    let mut shown: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(SHOWN_NAME_MAX)
        .collect();
    if name.chars().count() > SHOWN_NAME_MAX {
        shown.push('…');
    }
    shown
}
