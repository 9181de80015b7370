//! Verified tokens, so that a token presented again skips its signature check
//! (`auth.token_cache_size`).
//!
//! - Key: the SHA-256 of the bearer token; the token itself is never kept.
//! - Value: the [`Principal`] its claims gave, its `exp`, and whether the JWKS URL's key set took
//!   part in choosing its key. Only tokens that passed the full verification are stored.
//! - Bound: at most `auth.token_cache_size` entries, in two generations ([`Generations`]): the
//!   tokens left alone longest are forgotten first.
//! - Expiry: an entry is used only while the clock (read on every lookup) is before the token's
//!   `exp`; at `exp` it is dropped and the token goes through the full verification again, which
//!   alone may still accept it for `auth.leeway_seconds` (the result is then not stored).
//! - Key set: each entry belongs to an epoch of the JWKS URL's key set; a fetch that yields other
//!   keys starts a new epoch, and the first lookup or store of the new epoch drops every entry.
//!   The file's keys and the HS256 secret never change while the process runs.

use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use super::Principal;
use crate::generations::Generations;

/// The SHA-256 of a bearer token.
pub(super) type TokenHash = [u8; 32];

pub(super) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// What a lookup found.
pub(super) struct Cached {
    pub(super) principal: Principal,
    /// The JWKS URL's key set took part in choosing the token's key.
    pub(super) remote: bool,
}

struct Entry {
    principal: Principal,
    /// The token's `exp`: the entry is used only while the clock is before it.
    exp: u64,
    remote: bool,
}

struct State {
    /// Epoch of the JWKS URL's key set the entries were verified under.
    epoch: u64,
    entries: Generations<TokenHash, Entry>,
}

impl State {
    /// Moves to `epoch` when it is newer, dropping every entry; false when `epoch` is older
    /// than the entries' (a verification that started before the key set changed).
    fn at_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.entries.clear();
            self.epoch = epoch;
        }
        epoch == self.epoch
    }
}

pub(super) struct TokenCache {
    state: Mutex<State>,
}

impl TokenCache {
    /// At most `max_entries` tokens (and at least 2).
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            state: Mutex::new(State {
                epoch: 0,
                entries: Generations::new(max_entries),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Consistent after any panic: every update is one insert, removal or swap.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token of hash `key`, verified under the key set of `epoch`, if `now` (Unix seconds)
    /// is before its `exp`.
    pub(super) fn get(&self, key: &TokenHash, epoch: u64, now: u64) -> Option<Cached> {
        let mut state = self.lock();
        if !state.at_epoch(epoch) {
            return None;
        }
        let entry = state.entries.get_mut(key)?;
        if now >= entry.exp {
            state.entries.remove(key);
            return None;
        }
        Some(Cached {
            principal: entry.principal.clone(),
            remote: entry.remote,
        })
    }

    /// Stores a token that passed the full verification under the key set of `epoch` (read
    /// before its key was chosen), unless it expires by `now` or the key set has changed since.
    pub(super) fn insert(
        &self,
        key: TokenHash,
        epoch: u64,
        now: u64,
        exp: u64,
        principal: &Principal,
        remote: bool,
    ) {
        if now >= exp {
            return;
        }
        let mut state = self.lock();
        if state.at_epoch(epoch) {
            let principal = principal.clone();
            state.entries.insert(
                key,
                Entry {
                    principal,
                    exp,
                    remote,
                },
            );
        }
    }

    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}
