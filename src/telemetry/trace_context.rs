//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` a caller sends,
//! and the trace id that the log lines of a request carry. A header that is not a valid
//! `traceparent` is ignored, as the recommendation asks: the request starts a trace of its own.

use std::fmt;

use actix_web::http::header::HeaderMap;

pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A trace id: 16 bytes, never all zero, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl TraceId {
    /// A fresh id, for a trace that starts here.
    pub fn random() -> Self {
        Self(rand::random::<u128>().max(1))
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        Some(u128::from_be_bytes(bytes))
            .filter(|&v| v != 0)
            .map(Self)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A valid `traceparent`: the caller's trace, its span (our parent) and its sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span id, never zero.
    pub parent_id: u64,
    /// The caller's `sampled` flag: it recorded its span, and asks that ours be recorded too.
    pub sampled: bool,
}

impl TraceParent {
    /// The request's `traceparent`, when it has exactly one and it is valid.
    pub fn of_request(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(TRACEPARENT_HEADER);
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Self::parse(value.to_str().ok()?)
    }

    /// `version-traceid-parentid-flags`, all lowercase hex. Version 00 is exactly that; a later
    /// version may append fields after a dash, which are ignored; version ff is invalid.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim_matches([' ', '\t']).as_bytes();
        let head = value.get(..55)?;
        let version = &head[..2];
        let fields_end = [head[2], head[35], head[52]];
        if fields_end != [b'-'; 3] || !is_lower_hex(version) || version == b"ff" {
            return None;
        }
        let exact = version == b"00";
        if (exact && value.len() != 55) || (!exact && value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let trace_id = TraceId(hex_value(&head[3..35])?);
        let parent_id = u64::try_from(hex_value(&head[36..52])?).ok()?;
        let flags = u8::try_from(hex_value(&head[53..55])?).ok()?;
        if trace_id.0 == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

fn is_lower_hex(digits: &[u8]) -> bool {
    digits
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The value of up to 32 lowercase hex digits (no sign, no upper case: the format allows none).
fn hex_value(digits: &[u8]) -> Option<u128> {
    if !is_lower_hex(digits) {
        return None;
    }
    u128::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_gives_the_callers_trace_span_and_decision() {
        let p = TraceParent::parse(VALID).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert!(p.sampled);
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        // Other flags are kept by the caller; only `sampled` means something here.
        assert!(
            TraceParent::parse(&VALID.replace("-01", "-09"))
                .unwrap()
                .sampled
        );
        // A later version may carry more fields.
        let future = format!("{}-more", VALID.replacen("00", "cc", 1));
        assert_eq!(TraceParent::parse(&future).unwrap().trace_id, p.trace_id);
    }

    #[test]
    fn anything_else_is_ignored() {
        for bad in [
            "",
            "00",
            "garbage",
            &VALID[..54],
            &format!("{VALID}-"),
            &format!("{VALID}x"),
            &VALID.replacen("00", "ff", 1),
            &VALID.to_uppercase(),
            &VALID.replace(
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "00000000000000000000000000000000",
            ),
            &VALID.replace("00f067aa0ba902b7", "0000000000000000"),
            &VALID.replace("4bf92f35", "+bf92f35"),
            &VALID.replace("-00f0", "_00f0"),
            &VALID.replace("-01", "-0g"),
            &format!("{}x", VALID.replacen("00", "cc", 1)),
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn two_traceparent_headers_are_ignored() {
        use actix_web::http::header::{HeaderName, HeaderValue};
        let name = HeaderName::from_static(TRACEPARENT_HEADER);
        let mut headers = HeaderMap::new();
        assert_eq!(TraceParent::of_request(&headers), None);
        headers.insert(name.clone(), HeaderValue::from_static(VALID));
        assert!(TraceParent::of_request(&headers).is_some());
        headers.append(name, HeaderValue::from_static(VALID));
        assert_eq!(TraceParent::of_request(&headers), None);
    }

    #[test]
    fn random_trace_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (TraceId::random(), TraceId::random());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(TraceId::from_bytes(a.to_bytes()), Some(a));
        assert_eq!(TraceId::from_bytes([0; 16]), None);
    }
}
