//! `Oath-Signature: t=<unix seconds>,v1=<hex of HMAC-SHA256 of "<t>.<body>">` under the
//! subscription's signing secret (the 32 bytes its base64 `signingSecret` decodes to). The time
//! is signed with the body, so a receiver can refuse an old delivery replayed.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of a signing secret.
pub const SECRET_LEN: usize = 32;

/// A new random signing secret.
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    use rand::RngCore as _;
    let mut secret = Zeroizing::new(vec![0u8; SECRET_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The secret as the API shows it once: base64.
pub fn encode_secret(secret: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(secret)
}

/// The header value for `body` sent at `t` (unix seconds).
pub fn header(secret: &[u8], t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `header` signs `body` under `secret` (as a receiver checks it; constant-time).
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_time_and_body() {
        let secret = [7u8; 32];
        let h = header(&secret, 1_700_000_000, b"[]");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
        assert!(verify(&secret, &h, b"[]"));
        assert!(!verify(&secret, &h, b"[1]"));
        assert!(!verify(&[8u8; 32], &h, b"[]"));
        let other_time = h.replace("t=1700000000", "t=1700000001");
        assert!(!verify(&secret, &other_time, b"[]"));
    }

    #[test]
    fn a_known_vector() {
        // printf '1.[]' | openssl dgst -sha256 -hmac "$(printf 'k%.0s' {1..32})"
        let secret = [b'k'; 32];
        let expected = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).unwrap();
            mac.update(b"1.[]");
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(header(&secret, 1, b"[]"), format!("t=1,v1={expected}"));
    }
}
