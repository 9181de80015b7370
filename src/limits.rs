//! Rate limits (GCRA, from `governor`), held per process:
//! - `limits.otp_per_token_per_minute`: validate, resync and pairing of one token, keyed by the
//!   caller's environment and the token id, checked before the token is looked up;
//! - `limits.requests_per_environment_per_second`: every authenticated request of an environment,
//!   checked once the caller is authenticated and allowed into the environment.
//!
//! Beyond a limit the request is `429 REQUEST_LIMITED` with `Retry-After`, before any work, so a
//! limited OTP check is never a failed one and never counts toward a lockout.
//!
//! Memory stays bounded whatever ids clients send: each limiter remembers at most
//! `limits.rate_limit_keys` keys, in two generations ([`crate::generations`]): a key in use is
//! kept and only keys left alone for a whole generation are forgotten (most of them have
//! replenished by then, so forgetting them changes nothing).

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::config::LimitSettings;
use crate::generations::Generations;

/// The limits of one process.
pub struct RateLimits {
    otp: Option<Limiter<(Uuid, Uuid)>>,
    environment: Option<Limiter<Uuid>>,
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        let keys = settings.rate_limit_keys;
        Self {
            otp: NonZeroU32::new(settings.otp_per_token_per_minute)
                .map(|n| Limiter::new(Quota::per_minute(n), keys)),
            environment: NonZeroU32::new(settings.requests_per_environment_per_second)
                .map(|n| Limiter::new(Quota::per_second(n), keys)),
        }
    }

    /// One OTP check (validate, resync or pairing) of `token` by a caller of `env`.
    pub fn check_otp(&self, env: Uuid, token: Uuid) -> Result<(), Limited> {
        check(
            self.otp.as_ref(),
            &(env, token),
            "This token has had too many OTP checks in the last minute; retry later.",
        )
    }

    /// One authenticated request of `env`.
    pub fn check_environment(&self, env: Uuid) -> Result<(), Limited> {
        check(
            self.environment.as_ref(),
            &env,
            "The environment has made too many requests in the last second; retry later.",
        )
    }

    /// Keys remembered by the OTP and the environment limiters.
    pub fn keys(&self) -> (usize, usize) {
        (
            self.otp.as_ref().map_or(0, Limiter::keys),
            self.environment.as_ref().map_or(0, Limiter::keys),
        )
    }
}

/// A request refused by a limit: the message to answer and the whole seconds (at least 1) until
/// it may pass.
#[derive(Debug)]
pub struct Limited {
    pub message: &'static str,
    pub retry_after_seconds: u32,
}

fn check<K: Hash + Eq + Clone>(
    limiter: Option<&Limiter<K>>,
    key: &K,
    message: &'static str,
) -> Result<(), Limited> {
    match limiter.map(|l| l.check(key)) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(retry_after_seconds)) => Err(Limited {
            message,
            retry_after_seconds,
        }),
    }
}

/// A keyed GCRA limiter whose state store forgets the keys least recently used beyond a bound.
struct Limiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    inner: RateLimiter<K, BoundedStore<K>, C, NoOpMiddleware<C::Instant>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(quota: Quota, max_keys: usize) -> Self {
        Self::with_clock(quota, max_keys, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> Limiter<K, C> {
    fn with_clock(quota: Quota, max_keys: usize, clock: C) -> Self {
        Self {
            inner: RateLimiter::new(quota, BoundedStore::new(max_keys), clock),
        }
    }

    /// `Err` holds the whole seconds (at least 1) until `key` may pass again.
    fn check(&self, key: &K) -> Result<(), u32> {
        self.inner.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.inner.clock().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            u32::try_from(seconds).unwrap_or(u32::MAX).max(1)
        })
    }

    fn keys(&self) -> usize {
        self.inner.len()
    }
}

/// `max_keys` keys at most, in two generations (see [`Generations`]).
struct BoundedStore<K> {
    generations: Mutex<Generations<K, Nanos>>,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    fn new(max_keys: usize) -> Self {
        Self {
            generations: Mutex::new(Generations::new(max_keys)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, Nanos>> {
        // The maps are consistent after any panic: every update is one insert or one swap.
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut generations = self.lock();
        // A known key moves back into the current generation: it is in use again, even when
        // limited (then its state is unchanged).
        if let Some(state) = generations.get_mut(key) {
            let (outcome, next) = f(Some(*state))?;
            *state = next;
            return Ok(outcome);
        }
        // A new key limited at once keeps the state of a new key: none.
        let (outcome, next) = f(None)?;
        generations.insert(key.clone(), next);
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    /// Forgets the keys whose state is that of a new key.
    fn retain_recent(&self, drop_below: Nanos) {
        self.lock().retain(|_, state| *state > drop_below);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(
        per_minute: u32,
        max_keys: usize,
    ) -> (Limiter<u64, FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap());
        (Limiter::with_clock(quota, max_keys, clock.clone()), clock)
    }

    #[test]
    fn a_key_gets_its_quota_then_waits_whole_seconds() {
        let (limiter, clock) = limiter(3, 100);
        for _ in 0..3 {
            assert_eq!(limiter.check(&1), Ok(()));
        }
        // One more every 20 s.
        assert_eq!(limiter.check(&1), Err(20));
        assert_eq!(limiter.check(&2), Ok(()), "other keys are unaffected");
        clock.advance(Duration::from_millis(19_500));
        assert_eq!(limiter.check(&1), Err(1), "half a second rounds up to 1");
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check(&1), Ok(()));
        assert_eq!(limiter.check(&1), Err(20));
    }

    #[test]
    fn memory_is_bounded_whatever_keys_arrive() {
        let (limiter, _) = limiter(3, 1_000);
        for key in 0..1_000_000u64 {
            assert_eq!(limiter.check(&key), Ok(()));
            assert!(limiter.keys() <= 1_000);
        }
    }

    #[test]
    fn a_key_in_use_is_kept_while_others_come_and_go() {
        let (limiter, _) = limiter(3, 100);
        for _ in 0..3 {
            assert_eq!(limiter.check(&u64::MAX), Ok(()));
        }
        for key in 0..10_000u64 {
            limiter.check(&key).unwrap();
            if key % 40 == 0 {
                // Still limited: its state survived every turn of the generations.
                assert_eq!(limiter.check(&u64::MAX), Err(20), "after {key} other keys");
            }
        }
    }
}
