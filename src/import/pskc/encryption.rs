//! Encrypted PSKC values (RFC 6030 section 6.1): AES-CBC with the IV in front of the ciphertext,
//! under a pre-shared key or a PBKDF2 key derived from a password. Each value carries a
//! `ValueMAC`, an HMAC of IV and ciphertext under the container's MAC key (`MACMethod/MACKey`,
//! itself encrypted with the same key; the encryption key when absent), checked in constant time
//! before anything is decrypted. Errors about one value are row messages; errors about the
//! container's keys refuse the file.
//!
//! Every failure to decrypt or authenticate (bad padding, a MAC key that does not decrypt or is
//! too short, a `ValueMAC` mismatch) is the one message [`UNREADABLE`]: were they told apart, a
//! caller could submit crafted ciphertexts and learn plaintext from which message came back (a
//! padding oracle). Nor do they take different times: a MAC key that does not open is replaced by
//! a random one, and every value is still authenticated and decrypted before the outcome is read.

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use zeroize::Zeroizing;

use super::{base64, uri_suffix, PskcKeys};
use crate::import::xml::{shown, Element, Parts};
use crate::import::ImportError;

/// The row message of every key package that does not decrypt or authenticate.
pub const UNREADABLE: &str = "the key package cannot be decrypted or authenticated (a wrong key or password, or an altered file)";

/// Shortest MAC key accepted: a shorter one (a truncated decryption) would be guessable.
const MIN_MAC_KEY_BYTES: usize = 16;

/// Why a value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OpenError {
    /// The value is not laid out as RFC 6030 says (a missing element, an unsupported
    /// algorithm): a message naming it.
    Malformed(String),
    /// It does not decrypt or authenticate: always [`UNREADABLE`], whatever the cause.
    Unreadable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MacAlgorithm {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl MacAlgorithm {
    pub(super) fn from_uri(uri: &str) -> Option<Self> {
        match uri_suffix(uri).as_str() {
            "hmac-sha1" | "hmacwithsha1" => Some(Self::Sha1),
            "hmac-sha224" | "hmacwithsha224" => Some(Self::Sha224),
            "hmac-sha256" | "hmacwithsha256" => Some(Self::Sha256),
            "hmac-sha384" | "hmacwithsha384" => Some(Self::Sha384),
            "hmac-sha512" | "hmacwithsha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Checks `tag` over `data` in constant time.
    fn verify(self, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(data);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            Self::Sha1 => check::<Hmac<sha1::Sha1>>(key, data, tag),
            Self::Sha224 => check::<Hmac<sha2::Sha224>>(key, data, tag),
            Self::Sha256 => check::<Hmac<sha2::Sha256>>(key, data, tag),
            Self::Sha384 => check::<Hmac<sha2::Sha384>>(key, data, tag),
            Self::Sha512 => check::<Hmac<sha2::Sha512>>(key, data, tag),
        }
    }

    fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        match self {
            Self::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
            Self::Sha224 => pbkdf2::pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
            Self::Sha384 => pbkdf2::pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
        }
    }
}

/// How a container's encrypted values are opened.
pub(super) struct Crypto {
    /// The encryption key, when the request supplied one (derived from the password if the file
    /// says so).
    pub key: Option<Zeroizing<Vec<u8>>>,
    /// The MAC key, or why values cannot be authenticated (a malformed `MACMethod`).
    mac: Result<MacKey, String>,
}

/// The key `ValueMAC`s are checked with.
struct MacKey {
    algorithm: MacAlgorithm,
    key: Zeroizing<Vec<u8>>,
    /// False when the `MACKey` did not decrypt, or decrypted to too short a key: `key` is then
    /// random, and values are authenticated with it all the same (and fail), so that a package
    /// takes the time it would take with a key that opened.
    opened: bool,
}

impl Crypto {
    /// Settles the keys from the container header (read before the first key package) and the
    /// request's keys. A file that needs a key the request lacks is refused here.
    pub fn new(
        doc: &Parts,
        encryption_key: Option<&Element>,
        mac_method: Option<&Element>,
        keys: &PskcKeys,
    ) -> Result<Self, ImportError> {
        let derived = encryption_key.and_then(|e| e.child("DerivedKey"));
        let key = match derived {
            Some(derived) => {
                let Some(password) = &keys.password else {
                    return Err(doc.error(
                        derived.offset,
                        "the file's keys are derived from a password (DerivedKey): send it in the X-PSKC-Password header.",
                    ));
                };
                Some(derive_key(
                    doc,
                    derived,
                    password,
                    keys.pbkdf2_max_iterations,
                )?)
            }
            None => keys.pre_shared.clone(),
        };
        let encrypted =
            encryption_key.is_some() || mac_method.is_some_and(|m| m.child("MACKey").is_some());
        if encrypted && key.is_none() {
            let at = encryption_key.or(mac_method).map_or(0, |e| e.offset);
            return Err(doc.error(
                at,
                "the file is encrypted: send its pre-shared key in the X-PSKC-Key header, or name a configured one with X-PSKC-Key-Id.",
            ));
        }
        let mac = match (mac_method, &key) {
            (None, _) => Err("the file has no MACMethod to check ValueMAC with".to_string()),
            (Some(_), None) => Err("the MAC key needs the encryption key".to_string()),
            (Some(method), Some(key)) => mac_key(method, key),
        };
        Ok(Self { key, mac })
    }

    /// Authenticates and decrypts an `EncryptedValue` element. Malformed values are named
    /// with `what`.
    pub fn open(
        &self,
        what: &str,
        encrypted: &Element,
        value_mac: Option<&Element>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let malformed = |m: String| OpenError::Malformed(m);
        let key = self.key.as_deref().ok_or_else(|| {
            malformed(format!(
                "{what} is encrypted but the file names no EncryptionKey"
            ))
        })?;
        let cipher_value = cipher_value(what, encrypted)?;
        let Some(value_mac) = value_mac else {
            return Err(malformed(format!(
                "{what} is encrypted without a ValueMAC (RFC 6030 requires one with AES-CBC)"
            )));
        };
        let key_len = key_length(what, encrypted).map_err(malformed)?;
        let mac = self
            .mac
            .as_ref()
            .map_err(|m| malformed(format!("{what}: {m}")))?;
        // From here on the work is the same whatever fails (the MAC key, the tag, the padding):
        // the value is authenticated and decrypted, and only then is the outcome read.
        let tag = base64(value_mac.trimmed());
        let tag_matches = mac.algorithm.verify(
            &mac.key,
            &cipher_value,
            tag.as_deref().map_or(&[][..], Vec::as_slice),
        );
        let plain = decrypt(key, key_len, &cipher_value);
        match plain {
            Some(plain) if tag_matches & mac.opened => Ok(plain),
            _ => Err(OpenError::Unreadable),
        }
    }
}

/// The bytes of `CipherData/CipherValue`: IV and ciphertext.
fn cipher_value(what: &str, encrypted: &Element) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let value = encrypted
        .path(&["CipherData", "CipherValue"])
        .ok_or_else(|| {
            OpenError::Malformed(format!("{what}: CipherData/CipherValue is missing"))
        })?;
    base64(value.trimmed()).ok_or(OpenError::Unreadable)
}

/// The AES key length `EncryptionMethod` names; an error names what is malformed.
fn key_length(what: &str, encrypted: &Element) -> Result<usize, String> {
    let uri = encrypted
        .child("EncryptionMethod")
        .and_then(|m| m.attribute("Algorithm"))
        .ok_or_else(|| format!("{what}: EncryptionMethod Algorithm is missing"))?;
    let key_len = match uri_suffix(uri).as_str() {
        "aes128-cbc" => 16,
        "aes192-cbc" => 24,
        "aes256-cbc" => 32,
        _ => {
            return Err(format!(
                "{what}: the encryption algorithm {:?} is not supported (aes128-cbc, aes192-cbc and aes256-cbc are)",
                shown(uri)
            ))
        }
    };
    Ok(key_len)
}

/// AES-CBC with the IV in the first block and PKCS#7 padding, every pad byte checked. None for
/// anything that does not decrypt to a well-padded value; the caller cannot tell why. A key of
/// another size than `key_len` is a wrong key, and takes the time of one: the value is decrypted
/// under a stand-in of the right size, and None returned.
fn decrypt(key: &[u8], key_len: usize, cipher_value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use aes::cipher::block_padding::NoPadding;
    if cipher_value.len() < 32 || !cipher_value.len().is_multiple_of(16) {
        return None;
    }
    let stand_in;
    let (key, right_size) = if key.len() == key_len {
        (key, true)
    } else {
        stand_in = Zeroizing::new(vec![0u8; key_len]);
        (stand_in.as_slice(), false)
    };
    let (iv, body) = cipher_value.split_at(16);
    let mut plain = Zeroizing::new(body.to_vec());
    let decrypted = match key_len {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_mut::<NoPadding>(&mut plain)
            .is_ok(),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_mut::<NoPadding>(&mut plain)
            .is_ok(),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .ok()?
            .decrypt_padded_mut::<NoPadding>(&mut plain)
            .is_ok(),
    };
    let len = unpadded_len(&plain).filter(|_| decrypted & right_size)?;
    plain.truncate(len);
    Some(plain)
}

/// The length before PKCS#7 padding (RFC 5652 section 6.3): the last byte `n`, from 1 to 16,
/// and the last `n` bytes all equal to `n`. The last 16 bytes are looked at whatever `n` is, and
/// every one compared, so that the time does not tell where the padding went wrong.
pub(super) fn unpadded_len(plain: &[u8]) -> Option<usize> {
    let pad = *plain.last()?;
    let n = usize::from(pad);
    let window = plain.len().min(16);
    let mismatch =
        plain[plain.len() - window..]
            .iter()
            .rev()
            .enumerate()
            .fold(0u8, |acc, (i, b)| {
                // All ones for the bytes that should be padding, zero for the others.
                let in_padding = u8::from(i < n).wrapping_neg();
                acc | (in_padding & (b ^ pad))
            });
    let valid = (n != 0) & (n <= window) & (mismatch == 0);
    valid.then(|| plain.len() - n)
}

/// The MAC key of `MACMethod`: its encrypted `MACKey`, or the encryption key itself when the
/// method has none (as early PSKC producers wrote it). A MAC key that does not decrypt, or is
/// shorter than 16 bytes, makes every value of the file unreadable, with the one message, and in
/// the time a good key takes: it is replaced by a random key as long as its ciphertext. Errors
/// name what is malformed.
fn mac_key(method: &Element, key: &[u8]) -> Result<MacKey, String> {
    let uri = method.attribute("Algorithm").unwrap_or("");
    let algorithm = MacAlgorithm::from_uri(uri).ok_or_else(|| {
        format!(
            "the MACMethod algorithm {:?} is not supported (HMAC-SHA1 and HMAC-SHA2 are)",
            shown(uri)
        )
    })?;
    let Some(mac_key) = method.child("MACKey") else {
        return Ok(MacKey {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
            opened: true,
        });
    };
    let cipher = match cipher_value("MACKey", mac_key) {
        Ok(cipher) => cipher,
        Err(OpenError::Malformed(m)) => return Err(m),
        // Not base64: a key that does not open, like any other.
        Err(OpenError::Unreadable) => Zeroizing::new(Vec::new()),
    };
    let key_len = key_length("MACKey", mac_key)?;
    Ok(
        match decrypt(key, key_len, &cipher).filter(|k| k.len() >= MIN_MAC_KEY_BYTES) {
            Some(opened) => MacKey {
                algorithm,
                key: opened,
                opened: true,
            },
            None => random_mac_key(algorithm, cipher.len().saturating_sub(16)),
        },
    )
}

/// A MAC key no one knows, standing in for one that did not open.
fn random_mac_key(algorithm: MacAlgorithm, len: usize) -> MacKey {
    let mut key = Zeroizing::new(vec![0u8; len.max(MIN_MAC_KEY_BYTES)]);
    rand::thread_rng().fill_bytes(&mut key);
    MacKey {
        algorithm,
        key,
        opened: false,
    }
}

/// PBKDF2 (RFC 8018) as `DerivedKey/KeyDerivationMethod` describes it.
fn derive_key(
    doc: &Parts,
    derived: &Element,
    password: &[u8],
    max_iterations: u32,
) -> Result<Zeroizing<Vec<u8>>, ImportError> {
    let fail = |e: &Element, m: &str| Err(doc.error(e.offset, m));
    let Some(method) = derived.child("KeyDerivationMethod") else {
        return fail(derived, "DerivedKey has no KeyDerivationMethod.");
    };
    if uri_suffix(method.attribute("Algorithm").unwrap_or("")) != "pbkdf2" {
        return fail(method, "only PBKDF2 key derivation is supported.");
    }
    let Some(params) = method.child("PBKDF2-params") else {
        return fail(method, "KeyDerivationMethod has no PBKDF2-params.");
    };
    let Some(salt) = params
        .path(&["Salt", "Specified"])
        .and_then(|s| base64(s.trimmed()))
    else {
        return fail(params, "PBKDF2-params needs a base64 Salt/Specified.");
    };
    // Checked before any derivation: the count sets its cost.
    let iterations = params
        .child("IterationCount")
        .and_then(|i| i.trimmed().parse::<u32>().ok())
        .filter(|n| (1..=max_iterations).contains(n));
    let Some(iterations) = iterations else {
        return fail(
            params,
            &format!(
                "PBKDF2-params needs an IterationCount from 1 to {max_iterations} (import.pbkdf2_max_iterations)."
            ),
        );
    };
    // Without a KeyLength, the AES-128 key of RFC 6030's examples.
    let length = match params.child("KeyLength") {
        None => 16,
        Some(l) => match l.trimmed().parse::<usize>() {
            Ok(n @ (16 | 24 | 32)) => n,
            _ => return fail(l, "PBKDF2 KeyLength must be 16, 24 or 32 (bytes)."),
        },
    };
    let prf = match params.child("PRF").and_then(|p| p.attribute("Algorithm")) {
        None => MacAlgorithm::Sha1,
        Some(uri) => match MacAlgorithm::from_uri(uri) {
            Some(a) => a,
            None => return fail(params, "the PBKDF2 PRF must be HMAC-SHA1 or HMAC-SHA2."),
        },
    };
    let mut key = Zeroizing::new(vec![0u8; length]);
    prf.pbkdf2(password, &salt, iterations, &mut key);
    Ok(key)
}
