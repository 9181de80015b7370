//! Envelope encryption of token secrets at rest: AES-256-GCM, a random 96-bit nonce per value, the
//! key id stored beside the ciphertext, and the environment and token ids bound as associated data
//! so a ciphertext copied to another row does not decrypt. Several keys may be configured: new
//! values use the active one, old values keep decrypting with theirs until re-encrypted.

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use uuid::Uuid;

use crate::domain::Secret;

const NONCE_LEN: usize = 12;
/// Versions the associated-data layout.
const AAD_PREFIX: &[u8] = b"oath-token-secret:v1:";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no encryption key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("a stored secret failed authentication (wrong key, or the row was tampered with)")]
    Corrupt,
}

/// A secret as stored: which key sealed it, and `nonce || ciphertext || tag`.
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

pub struct SecretCipher {
    active_id: String,
    keys: HashMap<String, Aes256Gcm>,
}

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCipher")
            .field("active_id", &self.active_id)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl SecretCipher {
    /// `keys` (32 bytes each) must contain `active_id` (checked by the configuration loader).
    /// The ciphers wipe their key schedules when dropped.
    pub fn new<K: AsRef<[u8]>>(
        active_id: String,
        keys: &HashMap<String, K>,
    ) -> Result<Self, CryptoError> {
        let keys = keys
            .iter()
            .map(|(id, key)| {
                Aes256Gcm::new_from_slice(key.as_ref())
                    .map(|cipher| (id.clone(), cipher))
                    .map_err(|_| CryptoError::UnknownKey(id.clone()))
            })
            .collect::<Result<HashMap<String, Aes256Gcm>, _>>()?;
        if !keys.contains_key(&active_id) {
            return Err(CryptoError::UnknownKey(active_id));
        }
        Ok(Self { active_id, keys })
    }

    pub fn active_key_id(&self) -> &str {
        &self.active_id
    }

    /// Whether `key_id` is configured, so that what it sealed can be opened.
    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// The configured key ids, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    pub fn seal(&self, secret: &Secret, env: Uuid, token_id: Uuid) -> Sealed {
        let cipher = &self.keys[&self.active_id];
        // The thread-local CSPRNG (ChaCha, seeded and periodically reseeded from the OS) gives
        // unpredictable nonces without a system call per value, which bulk jobs would feel.
        let nonce = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        let aad = associated_data(env, token_id);
        let body = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        let mut ciphertext = Vec::with_capacity(NONCE_LEN + body.len());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&body);
        Sealed {
            key_id: self.active_id.clone(),
            ciphertext,
        }
    }

    pub fn open(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        env: Uuid,
        token_id: Uuid,
    ) -> Result<Secret, CryptoError> {
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        if ciphertext.len() < NONCE_LEN {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, body) = ciphertext.split_at(NONCE_LEN);
        let aad = associated_data(env, token_id);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map(Secret::from_bytes)
            .map_err(|_| CryptoError::Corrupt)
    }
}

fn associated_data(env: Uuid, token_id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 32);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(env.as_bytes());
    aad.extend_from_slice(token_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(active: &str) -> SecretCipher {
        let keys = HashMap::from([("a".to_string(), [1u8; 32]), ("b".to_string(), [2u8; 32])]);
        SecretCipher::new(active.to_string(), &keys).unwrap()
    }

    #[test]
    fn round_trip_and_rotation() {
        let secret = Secret::from_hex("3132333435363738393031323334353637383930").unwrap();
        let (env, id) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = cipher("a").seal(&secret, env, id);
        assert_eq!(sealed.key_id, "a");
        assert_eq!(sealed.ciphertext.len(), NONCE_LEN + 20 + 16);
        assert!(!sealed.ciphertext.windows(20).any(|w| w == secret.expose()));
        // After rotating to "b", values sealed with "a" still open.
        let opened = cipher("b").open("a", &sealed.ciphertext, env, id).unwrap();
        assert_eq!(opened, secret);
    }

    #[test]
    fn nonces_differ() {
        let secret = Secret::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let (env, id) = (Uuid::new_v4(), Uuid::new_v4());
        let c = cipher("a");
        assert_ne!(
            c.seal(&secret, env, id).ciphertext,
            c.seal(&secret, env, id).ciphertext
        );
    }

    #[test]
    fn bound_to_environment_and_token() {
        let secret = Secret::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let (env, id) = (Uuid::new_v4(), Uuid::new_v4());
        let c = cipher("a");
        let sealed = c.seal(&secret, env, id);
        assert!(matches!(
            c.open("a", &sealed.ciphertext, Uuid::new_v4(), id),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            c.open("a", &sealed.ciphertext, env, Uuid::new_v4()),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            c.open("zz", &sealed.ciphertext, env, id),
            Err(CryptoError::UnknownKey(_))
        ));
    }
}
