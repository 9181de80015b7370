//! OTP checks on stored tokens: validate, resync and pairing. Each reads the token's state from
//! the store, opens its secret (the one place a stored secret is opened to check a code), runs
//! the engine ([`crate::otp`]) and writes the outcome back; the routes turn the result into HTTP.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ServiceError, Services};
use crate::config::{Lockout, OtpSettings};
use crate::crypto::Sealed;
use crate::domain::{HashAlgorithm, Otp, OtpLength, TokenStatus, UserId};
use crate::events::{EventType, Origin};
use crate::generations::Generations;
use crate::otp::{self, Advance, MovingFactor, ResyncWindows, Windows};
use crate::store::otp::{self as store, LockoutRule, OtpState};
use crate::store::tokens::Token;

/// The outcome of one check, as `validate` answers it and every check is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = ValidationStatus)]
pub enum CheckOutcome {
    Valid,
    Invalid,
    /// Too many consecutive failures: the OTP was not checked.
    Locked,
    /// The token is disabled: the OTP was not checked, nor a failure counted.
    Disabled,
}

impl CheckOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Invalid => "INVALID",
            Self::Locked => "LOCKED",
            Self::Disabled => "DISABLED",
        }
    }
}

/// The answer to a check: its outcome and, for a token throttled under `otp.lockout =
/// "throttle"`, the whole seconds until checks are accepted again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: CheckOutcome,
    pub retry_after_seconds: Option<u64>,
}

impl From<CheckOutcome> for Verdict {
    fn from(outcome: CheckOutcome) -> Self {
        Self {
            outcome,
            retry_after_seconds: None,
        }
    }
}

/// Checks `otp` and consumes it when valid.
///
/// A token this process has checked before is checked against what it saw then (its parameters
/// and sealed secret, which never change, and its moving factor), with one statement that writes
/// the outcome only if the row still has that factor and is enabled and not locked. Otherwise
/// (the first check here, a factor moved by another process or request, a locked, disabled or
/// deleted token), the row is read and the check made against it.
pub async fn validate(
    services: &Services,
    env: Uuid,
    id: Uuid,
    otp: &Otp,
    origin: &Origin,
) -> Result<Verdict, ServiceError> {
    // One connection for the read and the write, handed on untested when every statement
    // completed (`database::reuse`).
    let mut db = services.reuse.acquire().await?;
    let verdict = check(services, &mut db, env, id, otp, origin).await;
    if verdict.is_ok() {
        db.done();
    }
    verdict
}

async fn check(
    services: &Services,
    db: &mut PgConnection,
    env: Uuid,
    id: Uuid,
    otp: &Otp,
    origin: &Origin,
) -> Result<Verdict, ServiceError> {
    let settings = &services.settings.otp;
    let rule = lockout_rule(settings);
    let now = unix_now();
    if let Some(seen) = services.seen_tokens.get(env, id) {
        let engine = engine_token(services, env, id, &seen.parameters, seen.factor)?;
        let written = match otp::verify(&engine, otp, now, windows(settings)) {
            Some(advance) => store::accept(&mut *db, env, id, advance, rule, Some(&seen.factor))
                .await?
                .then(|| (CheckOutcome::Valid, advanced(seen.factor, advance))),
            None => store::record_failure(&mut *db, env, id, rule, Some(&seen.factor), origin)
                .await?
                .map(|_| (CheckOutcome::Invalid, seen.factor)),
        };
        if let Some((outcome, factor)) = written {
            services.seen_tokens.put(env, id, seen.parameters, factor);
            return Ok(outcome.into());
        }
    }
    let Some(token) = store::get(&mut *db, env, id).await? else {
        services.seen_tokens.forget(env, id);
        return Err(ServiceError::NotFound);
    };
    if let Some(refused) = refusal(&token, settings) {
        // Read again on every check until enabled or unlocked.
        services.seen_tokens.forget(env, id);
        return Ok(refused);
    }
    let parameters = Arc::new(Parameters::of(
        token.otp_length,
        token.hash_algorithm,
        token.secret,
    ));
    let engine = engine_token(services, env, id, &parameters, token.factor)?;
    let accepted = match otp::verify(&engine, otp, now, windows(settings)) {
        // The check-and-advance: false when a concurrent request consumed the code first.
        Some(advance) => store::accept(&mut *db, env, id, advance, rule, None)
            .await?
            .then_some(advance),
        None => None,
    };
    if let Some(advance) = accepted {
        services
            .seen_tokens
            .put(env, id, parameters, advanced(token.factor, advance));
        return Ok(CheckOutcome::Valid.into());
    }
    if store::record_failure(&mut *db, env, id, rule, None, origin)
        .await?
        .is_some()
    {
        services.seen_tokens.put(env, id, parameters, token.factor);
        return Ok(CheckOutcome::Invalid.into());
    }
    // Locked by concurrent checks (or disabled, or deleted) since the row was read: what the
    // row says now decides the answer. A rare race, so a read more is no cost.
    services.seen_tokens.forget(env, id);
    let Some(token) = store::get(&mut *db, env, id).await? else {
        return Err(ServiceError::NotFound);
    };
    Ok(refusal(&token, settings).unwrap_or(Verdict {
        // The delay ended in between: refused all the same, as when the write was made.
        outcome: CheckOutcome::Locked,
        retry_after_seconds: (settings.lockout == Lockout::Throttle).then_some(1),
    }))
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
    /// The token is disabled: the codes were not checked.
    Disabled,
}

/// Resynchronises a token with two consecutive codes.
pub async fn resync(
    services: &Services,
    env: Uuid,
    id: Uuid,
    otps: [Otp; 2],
    origin: &Origin,
) -> Result<Resync, ServiceError> {
    let settings = &services.settings.otp;
    let windows = ResyncWindows {
        hotp: settings.hotp_resync_window,
        totp_seconds: settings.totp_resync_window_seconds,
    };
    let mut tx = services.db.begin().await?;
    let Some(token) = store::get_for_update(&mut tx, env, id).await? else {
        return Err(ServiceError::NotFound);
    };
    if !token.enabled {
        return Ok(Resync::Disabled);
    }
    // A resync clears a lock: an unlock as well, for whoever follows the token's lock state.
    let events: &[EventType] = match refusal(&token, settings) {
        Some(_) => &[EventType::TokenResynced, EventType::TokenUnlocked],
        None => &[EventType::TokenResynced],
    };
    let engine = engine_token_read(services, env, id, token)?;
    let now = unix_now();
    // Up to a few thousand HMACs: off the async worker.
    let found = tokio::task::spawn_blocking(move || otp::resync(&engine, &otps, now, windows))
        .await
        .map_err(|e| ServiceError::Internal(format!("resync search failed: {e}")))?;
    let Some(advance) = found else {
        return Ok(Resync::NoMatch);
    };
    let token = store::apply(&mut tx, env, id, advance, None, events, origin).await?;
    tx.commit().await?;
    Ok(Resync::Done(token))
}

/// What a pairing did.
pub enum Pairing {
    Paired(Token),
    AlreadyPaired,
    /// The token is disabled: the code was not checked.
    Disabled,
    /// Too many consecutive failures: the code was not checked.
    Locked,
    /// The code is not valid; counted as a failure.
    Invalid,
}

/// Pairs an available token with `user` when `otp` validates (consuming it).
pub async fn pair(
    services: &Services,
    env: Uuid,
    id: Uuid,
    user: &UserId,
    otp: &Otp,
    origin: &Origin,
) -> Result<Pairing, ServiceError> {
    let settings = &services.settings.otp;
    let mut tx = services.db.begin().await?;
    let Some(token) = store::get_for_update(&mut tx, env, id).await? else {
        return Err(ServiceError::NotFound);
    };
    if !token.enabled {
        return Ok(Pairing::Disabled);
    }
    if token.status == TokenStatus::Paired {
        return Ok(Pairing::AlreadyPaired);
    }
    if refusal(&token, settings).is_some() {
        return Ok(Pairing::Locked);
    }
    let engine = engine_token_read(services, env, id, token)?;
    let Some(advance) = otp::verify(&engine, otp, unix_now(), windows(settings)) else {
        store::record_failure(&mut *tx, env, id, lockout_rule(settings), None, origin).await?;
        tx.commit().await?;
        return Ok(Pairing::Invalid);
    };
    let token = store::apply(
        &mut tx,
        env,
        id,
        advance,
        Some(user),
        &[EventType::TokenPaired],
        origin,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, "token paired");
    Ok(Pairing::Paired(token))
}

/// Why a check of `token`, as read, is answered without checking the code: disabled, or locked
/// under the lockout policy (with the seconds left of a throttle delay). None: check it.
fn refusal(token: &OtpState, settings: &OtpSettings) -> Option<Verdict> {
    if !token.enabled {
        return Some(CheckOutcome::Disabled.into());
    }
    match settings.lockout {
        Lockout::Lock => (i64::from(token.fail_count) >= i64::from(settings.max_failures))
            .then_some(CheckOutcome::Locked.into()),
        Lockout::Throttle => token
            .throttled_for
            .filter(|seconds| *seconds > 0)
            .map(|seconds| Verdict {
                outcome: CheckOutcome::Locked,
                retry_after_seconds: u64::try_from(seconds).ok(),
            }),
    }
}

/// What the statements of a check need of the lockout policy.
pub fn lockout_rule(settings: &OtpSettings) -> LockoutRule {
    LockoutRule {
        throttle: settings.lockout == Lockout::Throttle,
        max_failures: settings.max_failures,
        base_seconds: settings.throttle_base_seconds,
        max_seconds: settings.throttle_max_seconds,
    }
}

fn windows(settings: &OtpSettings) -> Windows {
    Windows {
        hotp: settings.hotp_window,
        totp: settings.totp_window,
    }
}

/// The engine's view of a stored token with moving factor `factor`: its secret opened.
fn engine_token(
    services: &Services,
    env: Uuid,
    id: Uuid,
    parameters: &Parameters,
    factor: MovingFactor,
) -> Result<otp::OtpToken, ServiceError> {
    let secret = &parameters.secret;
    let key = services
        .cipher
        .open(&secret.key_id, &secret.ciphertext, env, id)
        .map_err(|e| ServiceError::Internal(format!("token {id}: {e}")))?;
    Ok(otp::OtpToken {
        key,
        algorithm: parameters.hash_algorithm,
        length: parameters.otp_length,
        factor,
    })
}

/// The engine's view of a token just read.
fn engine_token_read(
    services: &Services,
    env: Uuid,
    id: Uuid,
    token: OtpState,
) -> Result<otp::OtpToken, ServiceError> {
    let factor = token.factor;
    let parameters = Parameters::of(token.otp_length, token.hash_algorithm, token.secret);
    engine_token(services, env, id, &parameters, factor)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
