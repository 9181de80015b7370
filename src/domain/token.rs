//! A token as a client submits it, parsed from JSON with every problem reported at once, each with
//! the path of the field (`serialNumber`, `tokens[12].hotp.counter`).

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{shown_name, FieldError, Secret};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialNumber(String);

impl SerialNumber {
    pub const MAX_LEN: usize = 50;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "serialNumber must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("serialNumber must contain ASCII letters and digits only".into());
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(rename_all = "UPPERCASE")]
pub enum TokenType {
    Hotp,
    Totp,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hotp => "HOTP",
            Self::Totp => "TOTP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HOTP" => Some(Self::Hotp),
            "TOTP" => Some(Self::Totp),
            _ => None,
        }
    }
}

/// HOTP tokens use `HmacSHA1` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub enum HashAlgorithm {
    #[serde(rename = "HmacSHA1")]
    #[schema(rename = "HmacSHA1")]
    Sha1,
    #[serde(rename = "HmacSHA256")]
    #[schema(rename = "HmacSHA256")]
    Sha256,
    #[serde(rename = "HmacSHA512")]
    #[schema(rename = "HmacSHA512")]
    Sha512,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "HmacSHA1",
            Self::Sha256 => "HmacSHA256",
            Self::Sha512 => "HmacSHA512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HmacSHA1" => Some(Self::Sha1),
            "HmacSHA256" => Some(Self::Sha256),
            "HmacSHA512" => Some(Self::Sha512),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtpLength(u8);

impl OtpLength {
    pub fn new(n: u64) -> Option<Self> {
        matches!(n, 6 | 8).then_some(Self(n as u8))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// `PAIRED` tokens carry the `user` they are paired with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(rename_all = "UPPERCASE")]
pub enum TokenStatus {
    Available,
    Paired,
}

impl TokenStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "AVAILABLE",
            Self::Paired => "PAIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AVAILABLE" => Some(Self::Available),
            "PAIRED" => Some(Self::Paired),
            _ => None,
        }
    }
}

/// The type-specific part of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// `counter` is the next counter value expected.
    Hotp { counter: i64 },
    /// `time_step` in seconds.
    Totp { time_step: i32 },
}

impl TokenKind {
    pub fn token_type(self) -> TokenType {
        match self {
            Self::Hotp { .. } => TokenType::Hotp,
            Self::Totp { .. } => TokenType::Totp,
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewToken {
    pub serial_number: SerialNumber,
    pub secret: Secret,
    pub kind: TokenKind,
    pub otp_length: OtpLength,
    pub hash_algorithm: HashAlgorithm,
    /// Job items only: the row of the source file, echoed in job results.
    pub row_number: Option<i64>,
    /// TOTP: the clock drift in time steps, as an imported file may know it (a PSKC
    /// `TimeDrift`); clients cannot set it, so tokens from JSON start at 0.
    pub drift: i32,
}

/// Where a token sits in a request: the top-level body or an item of a job's `tokens[]`.
#[derive(Clone, Copy, Debug)]
pub enum TokenSource {
    Single,
    JobItem(usize),
}

impl TokenSource {
    fn target(self, field: &str) -> String {
        match self {
            Self::Single => field.to_string(),
            Self::JobItem(i) => format!("tokens[{i}].{field}"),
        }
    }
}

// What `NewToken::parse` accepts, for the OpenAPI document.
/// A token as a client submits it. Unknown properties, `hotp` on a TOTP token and `totp` on a HOTP
/// token are refused; `null` counts as absent.
#[derive(ToSchema)]
#[schema(
    as = TokenRequest,
    rename_all = "camelCase",
    example = json!({"serialNumber": "2333734700388", "secret": "6EBD59F71A800C48C4619CD33F6C385C9237C9BA",
                     "type": "HOTP", "hotp": {"counter": 456789}, "otpLength": 8})
)]
pub struct TokenRequestDoc {
    /// Unique per environment (case-sensitive).
    #[schema(min_length = 1, max_length = 50, pattern = "^[A-Za-z0-9]+$")]
    pub serial_number: String,
    /// The shared secret in hex (either case): 32 to 200 digits, an even number. Input only: no
    /// response, log line or error message repeats it.
    #[schema(
        min_length = 32,
        max_length = 200,
        pattern = "^([0-9A-Fa-f]{2})+$",
        write_only
    )]
    pub secret: String,
    #[schema(rename = "type")]
    pub token_type: TokenType,
    #[schema(schema_with = otp_length_schema)]
    pub otp_length: u8,
    /// Default `HmacSHA1`.
    pub hash_algorithm: Option<HashAlgorithm>,
    /// HOTP tokens only.
    pub hotp: Option<HotpRequestDoc>,
    /// TOTP tokens only; `timeStep` 30 when absent.
    pub totp: Option<TotpRequestDoc>,
    /// Job items only (a single create refuses it): the row of the source file, echoed in the
    /// job's results.
    #[schema(minimum = 1)]
    pub row_number: Option<i64>,
}

#[derive(ToSchema)]
#[schema(as = HotpRequest)]
pub struct HotpRequestDoc {
    /// The next counter value expected, 0 to 2^63-1; default 0.
    #[schema(minimum = 0)]
    pub counter: Option<i64>,
}

#[derive(ToSchema)]
#[schema(as = TotpRequest, rename_all = "camelCase")]
pub struct TotpRequestDoc {
    /// Seconds; default 30.
    #[schema(minimum = 10, maximum = 300)]
    pub time_step: Option<i32>,
}

/// `otpLength`: 6 or 8 digits.
pub fn otp_length_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .enum_values(Some([6, 8]))
        .description(Some("Digits per OTP."))
        .build()
}

pub const SECRET_MIN_HEX: usize = 32;
pub const SECRET_MAX_HEX: usize = 200;
pub const TIME_STEP_DEFAULT: i32 = 30;
pub const TIME_STEP_RANGE: std::ops::RangeInclusive<i64> = 10..=300;

impl NewToken {
    /// Parses one token object. `source` decides the field paths and whether `rowNumber` is allowed.
    pub fn parse(value: &Value, source: TokenSource) -> Result<Self, Vec<FieldError>> {
        let Some(obj) = value.as_object() else {
            let target = match source {
                TokenSource::Single => String::new(),
                TokenSource::JobItem(i) => format!("tokens[{i}]"),
            };
            return Err(vec![FieldError::invalid(
                target,
                "each token must be a JSON object",
            )]);
        };
        let mut errors = Vec::new();
        let t = |field: &str| source.target(field);

        for key in obj.keys() {
            let known = matches!(
                key.as_str(),
                "serialNumber"
                    | "secret"
                    | "type"
                    | "otpLength"
                    | "hashAlgorithm"
                    | "hotp"
                    | "totp"
            ) || (key == "rowNumber" && matches!(source, TokenSource::JobItem(_)));
            if !known {
                let key = shown_name(key);
                errors.push(FieldError::invalid(
                    t(&key),
                    format!("unknown property {key}"),
                ));
            }
        }

        let serial_number = required_str(obj, "serialNumber", &t, &mut errors).and_then(|s| {
            SerialNumber::parse(s)
                .map_err(|m| errors.push(FieldError::invalid(t("serialNumber"), m)))
                .ok()
        });

        let secret = required_str(obj, "secret", &t, &mut errors).and_then(|s| {
            parse_secret(s)
                .map_err(|m| errors.push(FieldError::invalid(t("secret"), m)))
                .ok()
        });

        let token_type = required_str(obj, "type", &t, &mut errors).and_then(|s| {
            let parsed = TokenType::parse(s);
            if parsed.is_none() {
                errors.push(FieldError::invalid(t("type"), "type must be HOTP or TOTP"));
            }
            parsed
        });

        let otp_length = match obj.get("otpLength") {
            None | Some(Value::Null) => {
                errors.push(FieldError::required(t("otpLength")));
                None
            }
            Some(v) => {
                let parsed = v.as_u64().and_then(OtpLength::new);
                if parsed.is_none() {
                    errors.push(FieldError::invalid(
                        t("otpLength"),
                        "otpLength must be 6 or 8",
                    ));
                }
                parsed
            }
        };

        let hash_algorithm = match obj.get("hashAlgorithm") {
            None | Some(Value::Null) => Some(HashAlgorithm::Sha1),
            Some(v) => {
                let parsed = v.as_str().and_then(HashAlgorithm::parse);
                match (parsed, token_type) {
                    (None, _) => {
                        errors.push(FieldError::invalid(
                            t("hashAlgorithm"),
                            "hashAlgorithm must be HmacSHA1, HmacSHA256 or HmacSHA512",
                        ));
                        None
                    }
                    (Some(h), Some(TokenType::Hotp)) if h != HashAlgorithm::Sha1 => {
                        errors.push(FieldError::invalid(
                            t("hashAlgorithm"),
                            "HOTP tokens support HmacSHA1 only",
                        ));
                        None
                    }
                    (Some(h), _) => Some(h),
                }
            }
        };

        let counter = HOTP.parse(obj.get("hotp"), token_type, &t, &mut errors);
        let time_step = TOTP
            .parse(obj.get("totp"), token_type, &t, &mut errors)
            .map(|n| n as i32);

        let row_number = match source {
            TokenSource::JobItem(_) => optional_integer(
                obj.get("rowNumber"),
                || t("rowNumber"),
                |n| n >= 1,
                "rowNumber must be an integer of at least 1",
                &mut errors,
            ),
            _ => None,
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        // With no errors recorded, every field above parsed.
        let (
            Some(serial_number),
            Some(secret),
            Some(token_type),
            Some(otp_length),
            Some(hash_algorithm),
        ) = (
            serial_number,
            secret,
            token_type,
            otp_length,
            hash_algorithm,
        )
        else {
            unreachable!("a missing field always records an error")
        };
        let kind = match token_type {
            TokenType::Hotp => TokenKind::Hotp {
                counter: counter.unwrap_or(0),
            },
            TokenType::Totp => TokenKind::Totp {
                time_step: time_step.unwrap_or(TIME_STEP_DEFAULT),
            },
        };
        Ok(Self {
            serial_number,
            secret,
            kind,
            otp_length,
            hash_algorithm,
            row_number,
            drift: 0,
        })
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    target: &impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            errors.push(FieldError::required(target(field)));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(FieldError::invalid(
                target(field),
                format!("{field} must be a string"),
            ));
            None
        }
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if !(SECRET_MIN_HEX..=SECRET_MAX_HEX).contains(&s.len()) {
        return Err(format!(
            "secret must be {SECRET_MIN_HEX} to {SECRET_MAX_HEX} hex digits (128 bits at least)"
        ));
    }
    Secret::from_hex(s).map_err(str::to_string)
}

/// `hotp` or `totp`: an optional object, allowed on tokens of its type only, whose one
/// property is an integer.
struct SubObject {
    field: &'static str,
    belongs_to: TokenType,
    property: &'static str,
    /// Properties the service sets: refused as read-only rather than unknown.
    read_only: &'static [&'static str],
    valid: fn(i64) -> bool,
    message: &'static str,
}

/// `{"counter": n}`.
const HOTP: SubObject = SubObject {
    field: "hotp",
    belongs_to: TokenType::Hotp,
    property: "counter",
    read_only: &[],
    // as_i64 is None for negatives below i64::MIN, floats, and u64 beyond i64::MAX.
    valid: |n| n >= 0,
    message: "counter must be an integer from 0 to 9223372036854775807",
};

/// `{"timeStep": s}`.
const TOTP: SubObject = SubObject {
    field: "totp",
    belongs_to: TokenType::Totp,
    property: "timeStep",
    read_only: &["drift"],
    valid: |n| TIME_STEP_RANGE.contains(&n),
    message: "timeStep must be an integer from 10 to 300 seconds",
};

impl SubObject {
    /// The property, when the object and it are given and valid; every problem is recorded.
    fn parse(
        &self,
        value: Option<&Value>,
        token_type: Option<TokenType>,
        t: &impl Fn(&str) -> String,
        errors: &mut Vec<FieldError>,
    ) -> Option<i64> {
        let field = self.field;
        let value = value.filter(|v| !v.is_null())?;
        if let Some(tt) = token_type.filter(|tt| *tt != self.belongs_to) {
            errors.push(FieldError::invalid(
                t(field),
                format!("{field} is not allowed on a {} token", tt.as_str()),
            ));
            return None;
        }
        let Some(obj) = value.as_object() else {
            errors.push(FieldError::invalid(
                t(field),
                format!("{field} must be an object"),
            ));
            return None;
        };
        for key in obj
            .keys()
            .filter(|k| *k != self.property)
            .map(|k| shown_name(k))
        {
            let message = if self.read_only.contains(&key.as_str()) {
                format!("{key} is read-only")
            } else {
                format!("unknown property {key}")
            };
            errors.push(FieldError::invalid(t(&format!("{field}.{key}")), message));
        }
        optional_integer(
            obj.get(self.property),
            || t(&format!("{field}.{}", self.property)),
            self.valid,
            self.message,
            errors,
        )
    }
}

/// An optional integer property: absent or null is None; an integer `valid` refuses, or any
/// other value, is an error at `target` with `message`.
fn optional_integer(
    value: Option<&Value>,
    target: impl FnOnce() -> String,
    valid: impl Fn(i64) -> bool,
    message: &str,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    let value = value.filter(|v| !v.is_null())?;
    let parsed = value.as_i64().filter(|n| valid(*n));
    if parsed.is_none() {
        errors.push(FieldError::invalid(target(), message));
    }
    parsed
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::DetailCode;

    fn targets(v: Value, source: TokenSource) -> Vec<(DetailCode, String)> {
        NewToken::parse(&v, source)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.code, e.target))
            .collect()
    }

    #[test]
    fn parses_seed_token() {
        let token = NewToken::parse(
            &json!({"serialNumber": "2333734700388", "secret": "6EBD59F71A800C48C4619CD33F6C385C9237C9BA",
                    "type": "HOTP", "hotp": {"counter": 456789}, "otpLength": 8}),
            TokenSource::Single,
        )
        .unwrap();
        assert_eq!(token.serial_number.as_str(), "2333734700388");
        assert_eq!(token.kind, TokenKind::Hotp { counter: 456789 });
        assert_eq!(token.otp_length.get(), 8);
        assert_eq!(token.hash_algorithm, HashAlgorithm::Sha1);
        assert_eq!(token.secret.expose().len(), 20);
    }

    #[test]
    fn totp_defaults_time_step() {
        let token = NewToken::parse(
            &json!({"serialNumber": "A1", "secret": "00112233445566778899aabbccddeeff",
                    "type": "TOTP", "otpLength": 6, "hashAlgorithm": "HmacSHA512"}),
            TokenSource::Single,
        )
        .unwrap();
        assert_eq!(token.kind, TokenKind::Totp { time_step: 30 });
    }

    /// The same detail code for each of `targets`.
    fn each(code: DetailCode, targets: &[&str]) -> Vec<(DetailCode, String)> {
        targets.iter().map(|t| (code, t.to_string())).collect()
    }

    #[test]
    fn reports_every_problem_with_job_paths() {
        let errs = targets(
            json!({"serialNumber": "bad serial", "secret": "abc", "type": "TOTP", "otpLength": 7,
                   "hotp": {"counter": 1}, "extra": true, "rowNumber": 0}),
            TokenSource::JobItem(12),
        );
        let want = each(
            DetailCode::InvalidValue,
            &[
                "tokens[12].extra",
                "tokens[12].serialNumber",
                "tokens[12].secret",
                "tokens[12].otpLength",
                "tokens[12].hotp",
                "tokens[12].rowNumber",
            ],
        );
        assert_eq!(errs, want);
    }

    #[test]
    fn required_fields() {
        let errs = targets(json!({}), TokenSource::Single);
        let want = each(
            DetailCode::RequiredValue,
            &["serialNumber", "secret", "type", "otpLength"],
        );
        assert_eq!(errs, want);
    }

    #[test]
    fn row_number_only_in_jobs() {
        let errs = targets(
            json!({"serialNumber": "A1", "secret": "00112233445566778899aabbccddeeff",
                   "type": "HOTP", "otpLength": 6, "rowNumber": 3}),
            TokenSource::Single,
        );
        assert_eq!(
            errs,
            vec![(DetailCode::InvalidValue, "rowNumber".to_string())]
        );
    }
}
