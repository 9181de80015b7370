//! The bodies of `validate`, `resync` and `pairing`, parsed strictly with every problem reported
//! at once: an [`Otp`] is 6 or 8 ASCII digits, a [`UserId`] 1-128 characters without control
//! characters. Messages never repeat a submitted OTP.

use std::fmt;

use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{FieldError, OtpLength};

/// A one-time password as submitted. `Debug` redacts it: it is a credential until it is used.
/// No `PartialEq`: the engine compares codes in constant time only.
#[derive(Clone, Copy)]
pub struct Otp {
    value: u32,
    length: OtpLength,
}

impl Otp {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let length = OtpLength::new(s.len() as u64).ok_or("an OTP must be 6 or 8 digits")?;
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an OTP must contain the digits 0-9 only");
        }
        let value = s.parse().map_err(|_| "an OTP must be 6 or 8 digits")?;
        Ok(Self { value, length })
    }

    /// The code as a number (leading zeros dropped; see [`Otp::length`]).
    pub fn value(&self) -> u32 {
        self.value
    }

    pub fn length(&self) -> OtpLength {
        self.length
    }
}

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Otp([redacted])")
    }
}

/// The user a token is paired with: an opaque id from the caller's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(s: &str) -> Result<Self, String> {
        let chars = s.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(format!(
                "userId must be 1 to {} characters long",
                Self::MAX_CHARS
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("userId must not contain control characters".into());
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `{"otp": "12345678"}`
#[derive(Debug)]
pub struct ValidateRequest {
    pub otp: Otp,
}

/// `{"otps": ["first", "second"]}`: two consecutive codes.
#[derive(Debug)]
pub struct ResyncRequest {
    pub otps: [Otp; 2],
}

/// `{"userId": "...", "otp": "..."}`
#[derive(Debug)]
pub struct PairingRequest {
    pub user_id: UserId,
    pub otp: Otp,
}

// What `ValidateRequest::parse` accepts, for the OpenAPI document.
/// An OTP to check.
#[derive(ToSchema)]
#[schema(as = ValidateRequest, example = json!({"otp": "12345678"}))]
pub struct ValidateRequestDoc {
    /// 6 or 8 digits. A well-formed code of another length than the token's is just wrong.
    #[schema(pattern = "^([0-9]{6}|[0-9]{8})$")]
    pub otp: String,
}

// What `ResyncRequest::parse` accepts.
/// Two consecutive OTPs of the token.
#[derive(ToSchema)]
#[schema(as = ResyncRequest, example = json!({"otps": ["12345678", "87654321"]}))]
pub struct ResyncRequestDoc {
    /// Two consecutive codes, in order, each 6 or 8 digits.
    #[schema(min_items = 2, max_items = 2)]
    pub otps: Vec<String>,
}

// What `PairingRequest::parse` accepts.
/// The user to pair the token with, and an OTP the token shows now.
#[derive(ToSchema)]
#[schema(
    as = PairingRequest,
    rename_all = "camelCase",
    example = json!({"userId": "alice", "otp": "12345678"})
)]
pub struct PairingRequestDoc {
    /// 1 to 128 characters, no control characters; stored as given.
    #[schema(min_length = 1, max_length = 128)]
    pub user_id: String,
    /// 6 or 8 digits.
    #[schema(pattern = "^([0-9]{6}|[0-9]{8})$")]
    pub otp: String,
}

impl ValidateRequest {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = unknown_properties(body, &["otp"]);
        let otp = otp_field(body, &mut errors);
        match otp {
            Some(otp) if errors.is_empty() => Ok(Self { otp }),
            _ => Err(errors),
        }
    }
}

impl ResyncRequest {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = unknown_properties(body, &["otps"]);
        let otps = match body.get("otps") {
            None | Some(Value::Null) => {
                errors.push(FieldError::required("otps"));
                None
            }
            Some(Value::Array(items)) if items.len() == 2 => {
                let parsed: Vec<Option<Otp>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| otp_value(item, &format!("otps[{i}]"), &mut errors))
                    .collect();
                match parsed[..] {
                    [Some(first), Some(second)] => Some([first, second]),
                    _ => None,
                }
            }
            Some(_) => {
                errors.push(FieldError::invalid(
                    "otps",
                    "otps must be an array of two consecutive OTPs",
                ));
                None
            }
        };
        match otps {
            Some(otps) if errors.is_empty() => Ok(Self { otps }),
            _ => Err(errors),
        }
    }
}

impl PairingRequest {
    pub fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = unknown_properties(body, &["userId", "otp"]);
        let user_id = match body.get("userId") {
            None | Some(Value::Null) => {
                errors.push(FieldError::required("userId"));
                None
            }
            Some(Value::String(s)) => UserId::parse(s)
                .map_err(|m| errors.push(FieldError::invalid("userId", m)))
                .ok(),
            Some(_) => {
                errors.push(FieldError::invalid("userId", "userId must be a string"));
                None
            }
        };
        let otp = otp_field(body, &mut errors);
        match (user_id, otp) {
            (Some(user_id), Some(otp)) if errors.is_empty() => Ok(Self { user_id, otp }),
            _ => Err(errors),
        }
    }
}

fn unknown_properties(body: &Map<String, Value>, known: &[&str]) -> Vec<FieldError> {
    body.keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError::invalid(k.clone(), format!("unknown property {k}")))
        .collect()
}

fn otp_field(body: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Otp> {
    match body.get("otp") {
        None | Some(Value::Null) => {
            errors.push(FieldError::required("otp"));
            None
        }
        Some(v) => otp_value(v, "otp", errors),
    }
}

fn otp_value(value: &Value, target: &str, errors: &mut Vec<FieldError>) -> Option<Otp> {
    let Some(s) = value.as_str() else {
        errors.push(FieldError::invalid(
            target,
            "an OTP must be a string of 6 or 8 digits",
        ));
        return None;
    };
    Otp::parse(s)
        .map_err(|m| errors.push(FieldError::invalid(target, m)))
        .ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::DetailCode;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn problems(errors: Vec<FieldError>) -> Vec<(DetailCode, String)> {
        errors.into_iter().map(|e| (e.code, e.target)).collect()
    }

    #[test]
    fn otp_is_six_or_eight_ascii_digits() {
        let otp = Otp::parse("012345").unwrap();
        assert_eq!((otp.value(), otp.length().get()), (12345, 6));
        assert_eq!(Otp::parse("99999999").unwrap().value(), 99_999_999);
        for bad in [
            "",
            "12345",
            "1234567",
            "123456789",
            "12345a",
            "+12345",
            " 12345",
            "١٢٣٤٥٦",
        ] {
            assert!(Otp::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{otp:?}"), "Otp([redacted])");
    }

    #[test]
    fn user_id_length_and_characters() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse(&"é".repeat(128)).is_ok());
        assert!(UserId::parse(&"é".repeat(129)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse("a\u{7f}").is_err());
    }

    #[test]
    fn validate_body() {
        assert!(ValidateRequest::parse(&obj(json!({"otp": "123456"}))).is_ok());
        let errs = ValidateRequest::parse(&obj(json!({"otp": 123456, "x": 1}))).unwrap_err();
        assert_eq!(
            problems(errs),
            vec![
                (DetailCode::InvalidValue, "x".into()),
                (DetailCode::InvalidValue, "otp".into())
            ]
        );
        let errs = ValidateRequest::parse(&obj(json!({"otp": null}))).unwrap_err();
        assert_eq!(
            problems(errs),
            vec![(DetailCode::RequiredValue, "otp".into())]
        );
    }

    #[test]
    fn resync_body() {
        let ok = ResyncRequest::parse(&obj(json!({"otps": ["123456", "654321"]}))).unwrap();
        assert_eq!(ok.otps[1].value(), 654321);
        let cases = [
            (json!({}), vec![(DetailCode::RequiredValue, "otps")]),
            (
                json!({"otps": ["123456"]}),
                vec![(DetailCode::InvalidValue, "otps")],
            ),
            (
                json!({"otps": "123456"}),
                vec![(DetailCode::InvalidValue, "otps")],
            ),
            (
                json!({"otps": [1, "12"]}),
                vec![
                    (DetailCode::InvalidValue, "otps[0]"),
                    (DetailCode::InvalidValue, "otps[1]"),
                ],
            ),
        ];
        for (body, want) in cases {
            let got = problems(ResyncRequest::parse(&obj(body.clone())).unwrap_err());
            let want: Vec<_> = want.into_iter().map(|(c, t)| (c, t.to_string())).collect();
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn pairing_body() {
        let ok = PairingRequest::parse(&obj(json!({"userId": "u1", "otp": "12345678"}))).unwrap();
        assert_eq!(ok.user_id.as_str(), "u1");
        let errs = PairingRequest::parse(&obj(json!({"userId": 5}))).unwrap_err();
        assert_eq!(
            problems(errs),
            vec![
                (DetailCode::InvalidValue, "userId".into()),
                (DetailCode::RequiredValue, "otp".into())
            ]
        );
    }
}
