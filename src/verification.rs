//! OTP checks on stored tokens: validate, resync and pairing. Each reads the token's state from
//! the store, opens its secret (the one place a stored secret is opened to check a code), runs
//! the engine ([`crate::otp`]) and writes the outcome back; the routes turn the result into HTTP.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::OtpSettings;
use crate::crypto::Sealed;
use crate::domain::{HashAlgorithm, Otp, OtpLength, TokenStatus, UserId};
use crate::error::ApiError;
use crate::generations::Generations;
use crate::otp::{self, Advance, MovingFactor, ResyncWindows, Windows};
use crate::startup::AppState;
use crate::store::otp::{self as store, OtpState};
use crate::store::tokens::Token;

/// The outcome of one check, as `validate` answers it and every check is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = ValidationStatus)]
pub enum Outcome {
    Valid,
    Invalid,
    /// Too many consecutive failures: the OTP was not checked.
    Locked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Invalid => "INVALID",
            Self::Locked => "LOCKED",
        }
    }
}

/// Checks `otp` and consumes it when valid. `None`: no such token.
///
/// A token this process has checked before is checked against what it saw then (its parameters
/// and sealed secret, which never change, and its moving factor), with one statement that writes
/// the outcome only if the row still has that factor and is not locked. Otherwise (the first
/// check here, a factor moved by another process or request, a locked or deleted token), the
/// row is read and the check made against it.
pub async fn validate(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    otp: &Otp,
) -> Result<Option<Outcome>, ApiError> {
    let settings = &state.settings.otp;
    // One connection for the read and the write: every checkout costs a round trip (sqlx tests
    // each connection as it returns to the pool).
    let mut db = state.db.acquire().await?;
    let now = unix_now();
    if let Some(seen) = state.seen_tokens.get(env, id) {
        let engine = engine_token(state, env, id, &seen.parameters, seen.factor)?;
        let written = match otp::verify(&engine, otp, now, windows(settings)) {
            Some(advance) => store::accept(
                &mut *db,
                env,
                id,
                advance,
                settings.max_failures,
                Some(&seen.factor),
            )
            .await?
            .then(|| (Outcome::Valid, advanced(seen.factor, advance))),
            None => {
                store::record_failure(&mut *db, env, id, settings.max_failures, Some(&seen.factor))
                    .await?
                    .map(|_| (Outcome::Invalid, seen.factor))
            }
        };
        if let Some((outcome, factor)) = written {
            state.seen_tokens.put(env, id, seen.parameters, factor);
            return Ok(Some(outcome));
        }
    }
    let Some(token) = store::get(&mut *db, env, id).await? else {
        state.seen_tokens.forget(env, id);
        return Ok(None);
    };
    if is_locked(&token, settings) {
        // Checked on a read until a resync unlocks it.
        state.seen_tokens.forget(env, id);
        return Ok(Some(Outcome::Locked));
    }
    let parameters = Arc::new(Parameters::of(
        token.otp_length,
        token.hash_algorithm,
        token.secret,
    ));
    let engine = engine_token(state, env, id, &parameters, token.factor)?;
    let accepted = match otp::verify(&engine, otp, now, windows(settings)) {
        // The check-and-advance: false when a concurrent request consumed the code first.
        Some(advance) => store::accept(&mut *db, env, id, advance, settings.max_failures, None)
            .await?
            .then_some(advance),
        None => None,
    };
    if let Some(advance) = accepted {
        state
            .seen_tokens
            .put(env, id, parameters, advanced(token.factor, advance));
        return Ok(Some(Outcome::Valid));
    }
    Ok(Some(
        match store::record_failure(&mut *db, env, id, settings.max_failures, None).await? {
            Some(_) => {
                state.seen_tokens.put(env, id, parameters, token.factor);
                Outcome::Invalid
            }
            // Locked by concurrent failures since the row was read.
            None => Outcome::Locked,
        },
    ))
}

/// What never changes about a token: its OTP parameters and its sealed secret.
struct Parameters {
    otp_length: OtpLength,
    hash_algorithm: HashAlgorithm,
    secret: Sealed,
}

impl Parameters {
    fn of(otp_length: OtpLength, hash_algorithm: HashAlgorithm, secret: Sealed) -> Self {
        Self {
            otp_length,
            hash_algorithm,
            secret,
        }
    }
}

/// A token as validate last saw it.
#[derive(Clone)]
struct Seen {
    parameters: Arc<Parameters>,
    factor: MovingFactor,
}

/// The tokens this process has validated, with the factor it last saw each have: at most
/// [`SeenTokens::MAX`] in two generations ([`Generations`]), so that memory stays bounded
/// whatever ids are validated. Keyed by environment and id, as every statement is.
pub struct SeenTokens {
    entries: Mutex<Generations<(Uuid, Uuid), Seen>>,
}

impl SeenTokens {
    /// About 200 bytes each: at most 10 MB.
    const MAX: usize = 50_000;

    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Generations::new(Self::MAX)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Generations<(Uuid, Uuid), Seen>> {
        // Every update under the lock is one map operation: consistent after a panic.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, env: Uuid, id: Uuid) -> Option<Seen> {
        self.lock().get_mut(&(env, id)).cloned()
    }

    fn put(&self, env: Uuid, id: Uuid, parameters: Arc<Parameters>, factor: MovingFactor) {
        self.lock().insert((env, id), Seen { parameters, factor });
    }

    fn forget(&self, env: Uuid, id: Uuid) {
        self.lock().remove(&(env, id));
    }
}

impl Default for SeenTokens {
    fn default() -> Self {
        Self::new()
    }
}

/// The factor a token has once `advance` is applied to `factor`.
fn advanced(factor: MovingFactor, advance: Advance) -> MovingFactor {
    match (factor, advance) {
        (MovingFactor::Totp { time_step, .. }, Advance::Totp { step, drift }) => {
            MovingFactor::Totp {
                time_step,
                drift,
                last_step: Some(step),
            }
        }
        (_, Advance::Hotp { last }) => MovingFactor::Hotp { counter: last + 1 },
        (hotp, Advance::Totp { .. }) => hotp,
    }
}

/// What a resync did.
pub enum Resync {
    /// The counter or drift was set and the lock cleared.
    Done(Token),
    /// The codes are not consecutive codes of the token within the window.
    NoMatch,
}

/// Resynchronises a token with two consecutive codes. `None`: no such token.
pub async fn resync(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    otps: [Otp; 2],
) -> Result<Option<Resync>, ApiError> {
    let settings = &state.settings.otp;
    let windows = ResyncWindows {
        hotp: settings.hotp_resync_window,
        totp_seconds: settings.totp_resync_window_seconds,
    };
    let mut tx = state.db.begin().await?;
    let Some(token) = store::get_for_update(&mut tx, env, id).await? else {
        return Ok(None);
    };
    let engine = engine_token_read(state, env, id, token)?;
    let now = unix_now();
    // Up to a few thousand HMACs: off the async worker.
    let found = tokio::task::spawn_blocking(move || otp::resync(&engine, &otps, now, windows))
        .await
        .map_err(|e| ApiError::Internal(format!("resync search failed: {e}")))?;
    let Some(advance) = found else {
        return Ok(Some(Resync::NoMatch));
    };
    let token = store::apply(&mut tx, env, id, advance, None).await?;
    tx.commit().await?;
    Ok(Some(Resync::Done(token)))
}

/// What a pairing did.
pub enum Pairing {
    Paired(Token),
    AlreadyPaired,
    /// Too many consecutive failures: the code was not checked.
    Locked,
    /// The code is not valid; counted as a failure.
    Invalid,
}

/// Pairs an available token with `user` when `otp` validates (consuming it). `None`: no such
/// token.
pub async fn pair(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    user: &UserId,
    otp: &Otp,
) -> Result<Option<Pairing>, ApiError> {
    let settings = &state.settings.otp;
    let mut tx = state.db.begin().await?;
    let Some(token) = store::get_for_update(&mut tx, env, id).await? else {
        return Ok(None);
    };
    if token.status == TokenStatus::Paired {
        return Ok(Some(Pairing::AlreadyPaired));
    }
    if is_locked(&token, settings) {
        return Ok(Some(Pairing::Locked));
    }
    let engine = engine_token_read(state, env, id, token)?;
    let Some(advance) = otp::verify(&engine, otp, unix_now(), windows(settings)) else {
        store::record_failure(&mut *tx, env, id, settings.max_failures, None).await?;
        tx.commit().await?;
        return Ok(Some(Pairing::Invalid));
    };
    let token = store::apply(&mut tx, env, id, advance, Some(user)).await?;
    tx.commit().await?;
    Ok(Some(Pairing::Paired(token)))
}

fn is_locked(token: &OtpState, settings: &OtpSettings) -> bool {
    i64::from(token.fail_count) >= i64::from(settings.max_failures)
}

fn windows(settings: &OtpSettings) -> Windows {
    Windows {
        hotp: settings.hotp_window,
        totp: settings.totp_window,
    }
}

/// The engine's view of a stored token with moving factor `factor`: its secret opened.
fn engine_token(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    parameters: &Parameters,
    factor: MovingFactor,
) -> Result<otp::Token, ApiError> {
    let secret = &parameters.secret;
    let key = state
        .cipher
        .open(&secret.key_id, &secret.ciphertext, env, id)
        .map_err(|e| ApiError::Internal(format!("token {id}: {e}")))?;
    Ok(otp::Token {
        key,
        algorithm: parameters.hash_algorithm,
        length: parameters.otp_length,
        factor,
    })
}

/// The engine's view of a token just read.
fn engine_token_read(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    token: OtpState,
) -> Result<otp::Token, ApiError> {
    let factor = token.factor;
    let parameters = Parameters::of(token.otp_length, token.hash_algorithm, token.secret);
    engine_token(state, env, id, &parameters, factor)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
