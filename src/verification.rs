//! OTP checks on stored tokens: validate, resync and pairing. Each reads the token's state from
//! the store, opens its secret (the one place a stored secret is opened to check a code), runs
//! the engine ([`crate::otp`]) and writes the outcome back; the routes turn the result into HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::OtpSettings;
use crate::domain::{Otp, TokenStatus, UserId};
use crate::error::ApiError;
use crate::otp::{self, ResyncWindows, Windows};
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
    let Some(token) = store::get(&mut *db, env, id).await? else {
        return Ok(None);
    };
    if is_locked(&token, settings) {
        return Ok(Some(Outcome::Locked));
    }
    let engine = engine_token(state, env, id, token)?;
    let accepted = match otp::verify(&engine, otp, unix_now(), windows(settings)) {
        // The check-and-advance: false when a concurrent request consumed the code first.
        Some(advance) => store::accept(&mut *db, env, id, advance, settings.max_failures).await?,
        None => false,
    };
    if accepted {
        return Ok(Some(Outcome::Valid));
    }
    Ok(Some(
        match store::record_failure(&mut *db, env, id, settings.max_failures).await? {
            Some(_) => Outcome::Invalid,
            // Locked by concurrent failures since the row was read.
            None => Outcome::Locked,
        },
    ))
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
    let engine = engine_token(state, env, id, token)?;
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
    let engine = engine_token(state, env, id, token)?;
    let Some(advance) = otp::verify(&engine, otp, unix_now(), windows(settings)) else {
        store::record_failure(&mut *tx, env, id, settings.max_failures).await?;
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

/// The engine's view of a stored token: its secret opened.
fn engine_token(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    token: OtpState,
) -> Result<otp::Token, ApiError> {
    let key = state
        .cipher
        .open(&token.secret.key_id, &token.secret.ciphertext, env, id)
        .map_err(|e| ApiError::Internal(format!("token {id}: {e}")))?;
    Ok(otp::Token {
        key,
        algorithm: token.hash_algorithm,
        length: token.otp_length,
        factor: token.factor,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
