//! The shared OATH key. It never leaves this type in clear except to be sealed or to compute an
//! OTP; `Debug` and `Display` redact it and the bytes are zeroed on drop.

use std::fmt;

use zeroize::Zeroizing;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Decodes hex of either case. The error message never repeats the input.
    pub fn from_hex(hex_digits: &str) -> Result<Self, &'static str> {
        if !hex_digits.len().is_multiple_of(2) {
            return Err("secret must have an even number of hex digits");
        }
        let mut bytes = Zeroizing::new(vec![0u8; hex_digits.len() / 2]);
        hex::decode_to_slice(hex_digits, &mut bytes)
            .map_err(|_| "secret must contain hex digits only")?;
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// What a job result may show of a secret: its first byte as two upper-case hex digits, then
    /// six `*` (`6E******`).
    pub fn masked(&self) -> String {
        match self.0.first() {
            Some(b) => format!("{b:02X}******"),
            None => "******".to_string(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::from_hex("6EBD59F71A800C48C4619CD33F6C385C").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}{s}").to_lowercase().contains("6ebd"));
    }

    #[test]
    fn masks_first_byte_upper_case() {
        let s = Secret::from_hex("6ebd59f71a800c48c4619cd33f6c385c").unwrap();
        assert_eq!(s.masked(), "6E******");
    }

    #[test]
    fn rejects_odd_length_and_non_hex() {
        assert!(Secret::from_hex("abc").is_err());
        assert!(Secret::from_hex("zz").is_err());
        assert_eq!(Secret::from_hex("0aFF").unwrap().expose(), &[0x0a, 0xff]);
    }
}
