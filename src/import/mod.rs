//! File imports into create jobs: PSKC key containers (RFC 6030) and CSV seed files, read from
//! bytes into the items of a `CREATE_OATH_TOKENS` job. Every row goes through the same rules as a
//! JSON job item ([`NewToken::parse`]); a row that breaks them, or that cannot be read (a bad MAC,
//! a wrong key), becomes an INVALID item with its row number and a message that never holds a
//! secret. Only a file that cannot be read at all is refused, with an [`ImportError`] naming the
//! line or element. `keyring` holds the pre-shared transport keys a PSKC file may be sealed with.

pub mod csv;
pub mod keyring;
pub mod pskc;
mod xml;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::domain::job::{CreateItem, InvalidRow};
use crate::domain::token::TokenSource;
use crate::domain::{FieldError, NewToken};

pub const PSKC_MEDIA_TYPE: &str = "application/pskc+xml";
pub const CSV_MEDIA_TYPE: &str = "text/csv";

/// Longest serial number echoed in an INVALID result (the rules allow 50 characters).
const SHOWN_SERIAL_MAX: usize = 64;

/// The fewest hex digits, and base32 digits, that write a secret of 128 bits (the token rules'
/// shortest).
const SECRET_MIN_HEX: usize = 32;
const SECRET_MIN_BASE32: usize = 26;

/// Why a whole file was refused: a 400 whose message names the line or element at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Unreadable(String),
    #[error("The file has more than {max} rows; split it into files of at most {max} rows.")]
    TooManyRows { max: usize },
}

impl ImportError {
    pub(crate) fn at_line(line: usize, message: impl std::fmt::Display) -> Self {
        Self::Unreadable(format!("Line {line}: {message}"))
    }
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &[u8], offset: usize) -> usize {
    1 + text[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// The fields of one row, named as a JSON job item names them (`serialNumber`, `secret`,
/// `hotp.counter`, ...), with the secret wiped from memory when the row is dropped.
#[derive(Default)]
pub(crate) struct RowFields(Map<String, Value>);

impl RowFields {
    pub fn set(&mut self, field: &str, value: Value) {
        self.0.insert(field.to_string(), value);
    }

    pub fn set_str(&mut self, field: &str, value: &str) {
        self.set(field, Value::String(value.to_string()));
    }

    /// The secret, as the hex digits a JSON item carries.
    pub fn set_secret(&mut self, bytes: &[u8]) {
        self.set("secret", Value::String(hex::encode_upper(bytes)));
    }

    /// `{"hotp": {"counter": n}}` / `{"totp": {"timeStep": n}}`.
    pub fn set_nested(&mut self, object: &str, field: &str, value: Value) {
        let mut inner = Map::new();
        inner.insert(field.to_string(), value);
        self.set(object, Value::Object(inner));
    }

    pub fn serial(&self) -> Option<&str> {
        self.0.get("serialNumber").and_then(Value::as_str)
    }

    /// Runs the fields through the token rules. `name_of` turns a field path (`otpLength`,
    /// `hotp.counter`, `hotp`) into the file's own name for it (a CSV column, a PSKC element),
    /// so that messages speak the file's language.
    pub fn into_item(
        mut self,
        row_number: i64,
        context: &str,
        name_of: &dyn Fn(&str) -> String,
    ) -> CreateItem {
        let serial = self.serial().and_then(shown_serial);
        let value = Value::Object(std::mem::take(&mut self.0));
        let parsed = NewToken::parse(&value, TokenSource::JobItem(0));
        wipe_secret(value);
        match parsed {
            Ok(mut token) => {
                token.row_number = Some(row_number);
                CreateItem::Token(token)
            }
            Err(errors) => invalid(row_number, serial, context, describe(&errors, name_of)),
        }
    }
}

impl Drop for RowFields {
    fn drop(&mut self) {
        wipe_secret(Value::Object(std::mem::take(&mut self.0)));
    }
}

fn wipe_secret(value: Value) {
    if let Value::Object(mut fields) = value {
        if let Some(Value::String(secret)) = fields.remove("secret") {
            drop(Zeroizing::new(secret));
        }
    }
}

/// An INVALID item. `context` (`line 7`) leads the message when not empty.
pub(crate) fn invalid(
    row_number: i64,
    serial_number: Option<String>,
    context: &str,
    message: String,
) -> CreateItem {
    let message = if context.is_empty() {
        message
    } else {
        format!("{context}: {message}")
    };
    CreateItem::Invalid(InvalidRow {
        row_number,
        serial_number,
        message,
    })
}

/// A serial number as an INVALID result may show it: printable and not overly long; and none at
/// all when it could be a secret, since a row whose cells are swapped or shifted puts its secret
/// in the serial's place (and an INVALID row's serial is stored in clear and shown in results).
pub(crate) fn shown_serial(serial: &str) -> Option<String> {
    (!could_be_secret(serial)).then(|| printable(serial))
}

/// Text of a file as a message may repeat it: printable, and not overly long.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(SHOWN_SERIAL_MAX)
        .collect()
}

/// Whether `text` could be a secret of 128 bits or more as a file writes one: 32 hex digits or
/// more, or 26 base32 digits or more (either case), spaces, dashes and padding aside.
fn could_be_secret(text: &str) -> bool {
    let digits = || {
        text.chars()
            .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '='))
    };
    let count = digits().count();
    let hex = count >= SECRET_MIN_HEX && digits().all(|c| c.is_ascii_hexdigit());
    let base32 = count >= SECRET_MIN_BASE32
        && digits().all(|c| c.is_ascii_alphabetic() || ('2'..='7').contains(&c));
    hex || base32
}

/// The token rules' messages with each field called by the file's name for it:
/// `otpLength must be 6 or 8` becomes `ResponseFormat Length must be 6 or 8`.
fn describe(errors: &[FieldError], name_of: &dyn Fn(&str) -> String) -> String {
    let messages: Vec<String> = errors
        .iter()
        .map(|e| {
            let path = e.target.strip_prefix("tokens[0].").unwrap_or(&e.target);
            let leaf = path.rsplit('.').next().unwrap_or(path);
            let name = name_of(path);
            match e.message.strip_prefix(leaf) {
                Some(rest) if !leaf.is_empty() => format!("{name}{rest}"),
                _ => format!("{name}: {}", e.message),
            }
        })
        .collect();
    messages.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_use_the_files_names_and_never_the_secret() {
        let mut fields = RowFields::default();
        fields.set_str("serialNumber", "S1");
        fields.set_secret(&[0xAB; 8]);
        fields.set_str("type", "TOTP");
        fields.set("otpLength", Value::from(7));
        fields.set_nested("hotp", "counter", Value::from(1));
        let name_of = |path: &str| match path {
            "otpLength" => "ResponseFormat Length".to_string(),
            "hotp" => "Counter".to_string(),
            other => other.to_string(),
        };
        let item = fields.into_item(3, "KeyPackage 3", &name_of);
        let row = item.invalid();
        assert_eq!(row.row_number, 3);
        assert_eq!(row.serial_number.as_deref(), Some("S1"));
        assert!(
            row.message.starts_with("KeyPackage 3: secret must be"),
            "{row:?}"
        );
        assert!(row.message.contains("ResponseFormat Length must be 6 or 8"));
        assert!(row
            .message
            .contains("Counter is not allowed on a TOTP token"));
        assert!(!row.message.contains("ABAB"));
    }

    #[test]
    fn a_valid_row_keeps_its_row_number() {
        let mut fields = RowFields::default();
        fields.set_str("serialNumber", "S1");
        fields.set_secret(b"12345678901234567890");
        fields.set_str("type", "HOTP");
        fields.set("otpLength", Value::from(6));
        let item = fields.into_item(9, "", &|p| p.to_string());
        let t = item.token();
        assert_eq!(t.row_number, Some(9));
        assert_eq!(t.secret.expose(), b"12345678901234567890");
    }

    #[test]
    fn serials_that_could_be_secrets_are_not_shown() {
        let hex = "3132333435363738393031323334353637383930";
        for secret in [
            hex,
            &hex.to_lowercase(),
            &hex[..32],
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            "gezd gnbv gy3t qojq gezd gnbv gy3t qojq",
            "GEZDGNBVGY3TQOJQGEZDGNBVGY====",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            assert_eq!(shown_serial(secret), None, "{secret}");
        }
        for serial in [
            &hex[..31],
            "GEZDGNBVGY3TQOJQGEZDGNBVG",
            "SN-0000000000000000000000000000000001",
            "987654321",
            "Yubikey 5 NFC 0123456789 abcdefghijk",
        ] {
            assert_eq!(shown_serial(serial).as_deref(), Some(serial), "{serial}");
        }
        assert_eq!(shown_serial("A\u{7}B").as_deref(), Some("AB"));
    }

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of(b"a\nb\nc", 0), 1);
        assert_eq!(line_of(b"a\nb\nc", 2), 2);
        assert_eq!(line_of(b"a\nb\nc", 99), 3);
    }
}
