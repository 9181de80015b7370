//! Verification keys: JWKS documents parsed into keys that each allow one algorithm, and the
//! choice of a key for a token.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::loggable;

/// RSA keys below this size are refused when loading a key set.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// A verification key and the single algorithm it may be used with.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

#[derive(Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<VerifyKey>,
    /// SHA-256 over the usable JWKs, in order, each as canonical JSON: equal for two documents
    /// that give the same keys, whatever their layout or their skipped entries.
    pub(super) fingerprint: [u8; 32],
}

/// Only the `keys` array is parsed strictly, so one odd JWK cannot make the whole set unusable.
#[derive(Deserialize)]
pub(super) struct RawJwkSet {
    pub(super) keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document; `source` names it in warnings.
    pub(super) fn parse(bytes: &[u8], source: &str) -> Result<KeySet, String> {
        let raw: RawJwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
        let mut keys = Vec::new();
        let mut fingerprint = Sha256::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            // Members in sorted order (serde_json's map without `preserve_order`), so the
            // layout does not count; were it kept, a reordered document would count as other
            // keys, which costs re-verifications only.
            let canonical = value.to_string();
            match verify_key_from_jwk(value) {
                Ok(key) => {
                    keys.push(key);
                    fingerprint.update((canonical.len() as u64).to_be_bytes());
                    fingerprint.update(canonical.as_bytes());
                }
                Err(why) => tracing::warn!(source, index, "ignoring JWK: {why}"),
            }
        }
        if keys.is_empty() {
            return Err("no usable signature key (RS256, ES256 or EdDSA)".into());
        }
        Ok(KeySet {
            keys,
            fingerprint: fingerprint.finalize().into(),
        })
    }
}

pub(super) fn verify_key_from_jwk(value: serde_json::Value) -> Result<VerifyKey, String> {
    let kid = value.get("kid").and_then(|k| k.as_str()).map(loggable);
    let label = kid.as_deref().unwrap_or("(no kid)").to_owned();
    let jwk: Jwk = serde_json::from_value(value)
        .map_err(|_| format!("{label}: unsupported key type or malformed JWK"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err(format!("{label}: not a signature key (use)")),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Err(format!("{label}: key_ops does not include verify"));
        }
    }
    let derived = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let modulus = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| format!("{label}: RSA modulus is not base64url"))?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(format!("{label}: RSA key shorter than 2048 bits"));
            }
            Algorithm::RS256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        // Shared secrets must never come from a key set: that is the HS256-confusion door.
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!("{label}: symmetric keys are not accepted"))
        }
        _ => return Err(format!("{label}: unsupported curve")),
    };
    let alg = match jwk.common.key_algorithm {
        None => derived,
        Some(KeyAlgorithm::RS256) if derived == Algorithm::RS256 => derived,
        Some(KeyAlgorithm::ES256) if derived == Algorithm::ES256 => derived,
        Some(KeyAlgorithm::EdDSA) if derived == Algorithm::EdDSA => derived,
        Some(other) => {
            return Err(format!(
                "{label}: alg {other:?} is not supported for this key type"
            ))
        }
    };
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|_| format!("{label}: invalid key parameters"))?;
    Ok(VerifyKey { kid, alg, key })
}

/// What the key lookup for one token found.
pub(super) enum Selection {
    Use(VerifyKey),
    /// The token's kid names a key for another algorithm (algorithm confusion).
    WrongAlg(String),
    NotFound,
    /// No kid and several keys for the algorithm: refusing beats guessing.
    Ambiguous(usize),
}

pub(super) fn select(sets: &[Arc<KeySet>], kid: Option<&str>, alg: Algorithm) -> Selection {
    let all = sets.iter().flat_map(|s| s.keys.iter());
    match kid {
        Some(kid) => {
            let mut named = all.filter(|k| k.kid.as_deref() == Some(kid)).peekable();
            if named.peek().is_none() {
                return Selection::NotFound;
            }
            match named.find(|k| k.alg == alg) {
                Some(k) => Selection::Use(k.clone()),
                None => Selection::WrongAlg(kid.to_owned()),
            }
        }
        None => {
            let matching: Vec<&VerifyKey> = all.filter(|k| k.alg == alg).collect();
            match matching.as_slice() {
                [] => Selection::NotFound,
                [one] => Selection::Use((*one).clone()),
                many => Selection::Ambiguous(many.len()),
            }
        }
    }
}
