//! `[crypto]`: the keys that seal token secrets at rest (base64 of 32 bytes each, by id), the
//! active one, and the key binding idempotency keys to requests. Decoded only where they are
//! used (serving, re-encrypting), so that `dev-token` works without them.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use hmac::Hmac;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::ConfigError;

#[derive(Clone, Default, Deserialize, Serialize)]
pub struct CryptoSettings {
    #[serde(default)]
    pub active_key_id: Option<String>,
    /// Key id -> base64 of 32 bytes.
    #[serde(default)]
    pub keys: HashMap<String, String>,
    /// Base64 of 32 bytes: the HMAC key binding idempotency keys to requests. Derived from the
    /// active key when unset.
    #[serde(default)]
    pub request_hash_key: Option<String>,
}

impl fmt::Debug for CryptoSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("CryptoSettings")
            .field("active_key_id", &self.active_key_id)
            .field("key_ids", &ids)
            .finish()
    }
}

/// Key id (lower case) -> AES-256 key, wiped when dropped.
pub type DecodedKeys = HashMap<String, Zeroizing<[u8; 32]>>;

impl CryptoSettings {
    /// The active key id and every configured key, decoded.
    pub fn decoded_keys(&self) -> Result<(String, DecodedKeys), ConfigError> {
        let Some(active) = self.active_key_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ConfigError(
                "crypto.active_key_id is not set (e.g. OATH__CRYPTO__ACTIVE_KEY_ID=k1 with OATH__CRYPTO__KEYS__K1=<base64 of 32 bytes>)".into(),
            ));
        };
        let active = active.to_ascii_lowercase();
        let mut keys = HashMap::new();
        for (id, encoded) in &self.keys {
            let bytes = decode_key32(encoded).ok_or_else(|| {
                ConfigError(format!("crypto.keys.{id} must be base64 of 32 bytes"))
            })?;
            // Environment variable names reach us lower-cased, so key ids are case-insensitive.
            keys.insert(id.to_ascii_lowercase(), bytes);
        }
        if !keys.contains_key(&active) {
            return Err(ConfigError(format!(
                "crypto.active_key_id is {active:?} but crypto.keys.{active} is not set"
            )));
        }
        Ok((active, keys))
    }

    /// The key of the HMAC that binds an `Idempotency-Key` to its request: `request_hash_key`
    /// when set, else derived from the active encryption key (so that a database reader, who
    /// has neither, cannot test guesses of a secret against the stored binding).
    pub fn request_hash_key(&self) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
        if let Some(encoded) = self.request_hash_key.as_deref() {
            return decode_key32(encoded).ok_or_else(|| {
                ConfigError("crypto.request_hash_key must be base64 of 32 bytes".into())
            });
        }
        let (active, keys) = self.decoded_keys()?;
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&keys[&active][..])
            .expect("HMAC takes keys of any length");
        hmac::Mac::update(&mut mac, b"oath-service:request-hash-key:v1");
        Ok(Zeroizing::new(hmac::Mac::finalize(mac).into_bytes().into()))
    }
}

fn decode_key32(encoded: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?,
    );
    <[u8; 32]>::try_from(bytes.as_slice())
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::super::testing::*;

    #[test]
    fn the_request_hash_key_is_configured_or_derived() {
        let s = load_with(VALID).unwrap();
        let derived = s.crypto.request_hash_key().unwrap();
        assert_ne!(*derived, [1u8; 32], "not the encryption key itself");
        let mut s2 = s.clone();
        s2.crypto.request_hash_key =
            Some(base64::engine::general_purpose::STANDARD.encode([9u8; 32]));
        assert_eq!(*s2.crypto.request_hash_key().unwrap(), [9u8; 32]);
        s2.crypto.request_hash_key = Some("c2hvcnQ=".into());
        assert!(s2
            .crypto
            .request_hash_key()
            .unwrap_err()
            .to_string()
            .contains("crypto.request_hash_key"));
    }
}
