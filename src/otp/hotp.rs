//! RFC 4226 code generation: HMAC of the 8-byte big-endian moving factor, dynamic truncation to
//! 31 bits, modulo 10^digits. TOTP (RFC 6238) is the same function of the time step, with SHA-1,
//! SHA-256 or SHA-512.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};

use crate::domain::{HashAlgorithm, OtpLength};

/// The largest counter a code is accepted for: the next expected counter (`+ 1`) must still be
/// storable in the signed 64-bit column.
pub const MAX_COUNTER: u64 = i64::MAX as u64 - 1;

/// The OTP for `moving_factor` (a counter, or a time step), as a number below 10^length.
pub fn hotp(key: &[u8], algorithm: HashAlgorithm, length: OtpLength, moving_factor: u64) -> u32 {
    let message = moving_factor.to_be_bytes();
    let binary = match algorithm {
        HashAlgorithm::Sha1 => truncate(&mac::<Hmac<Sha1>>(key, &message)),
        HashAlgorithm::Sha256 => truncate(&mac::<Hmac<Sha256>>(key, &message)),
        HashAlgorithm::Sha512 => truncate(&mac::<Hmac<Sha512>>(key, &message)),
    };
    binary % 10u32.pow(u32::from(length.get()))
}

fn mac<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> impl AsRef<[u8]> {
    // HMAC takes keys of any length.
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes()
}

/// RFC 4226 section 5.3: four bytes at the offset named by the low nibble of the last byte,
/// without the sign bit.
fn truncate(digest: &impl AsRef<[u8]>) -> u32 {
    let digest = digest.as_ref();
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let bytes: [u8; 4] = digest[offset..offset + 4]
        .try_into()
        .expect("an HMAC digest is at least 20 bytes");
    u32::from_be_bytes(bytes) & 0x7fff_ffff
}
