//! Who may parse a file now: one upload per environment at a time (a second one is refused
//! before its body is read, so no environment queues bodies in memory), and at most
//! `import.max_concurrent` parses in the process at once, shared in turn between environments.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tokio::sync::{Semaphore, SemaphorePermit};
use uuid::Uuid;

pub struct ImportGate {
    /// The environments with an upload between its head and the end of its parse.
    busy: Mutex<HashSet<Uuid>>,
    /// Parses (and PBKDF2 derivations) at once, so that imports cannot take every thread from
    /// request handling.
    parses: Semaphore,
}

impl ImportGate {
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            busy: Mutex::new(HashSet::new()),
            parses: Semaphore::new(max_concurrent),
        }
    }

    /// The environment's one upload slot; `None` while another upload of `env` holds it.
    pub fn enter(&self, env: Uuid) -> Option<ImportSlot<'_>> {
        let entered = self
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(env);
        // Built only once the lock is released: a slot unlocks it again when dropped.
        entered.then(|| ImportSlot { gate: self, env })
    }

    /// Waits for one of the process's parse permits. A tokio semaphore is fair (first come,
    /// first served), and each environment waits with at most one file.
    pub async fn parse_permit(&self) -> SemaphorePermit<'_> {
        self.parses
            .acquire()
            .await
            .expect("the import gate's semaphore is never closed")
    }
}

/// An environment's upload in progress; the slot is free again when this is dropped.
pub struct ImportSlot<'a> {
    gate: &'a ImportGate,
    env: Uuid,
}

impl Drop for ImportSlot<'_> {
    fn drop(&mut self) {
        let mut busy = self
            .gate
            .busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        busy.remove(&self.env);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_environment_until_it_is_dropped() {
        let gate = ImportGate::new(2);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = gate.enter(a).expect("a free slot");
        assert!(
            gate.enter(a).is_none(),
            "a second upload of the same environment"
        );
        let other = gate.enter(b).expect("another environment is not held up");
        drop(first);
        assert!(gate.enter(a).is_some(), "the slot is free once dropped");
        drop(other);
    }
}
