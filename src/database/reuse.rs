//! Connections handed from one request of the login path to the next, without the pool's test.
//!
//! sqlx tests every connection as it returns to the pool (a `ping`: a round trip, which costs
//! the database as much as a token's read), because a future dropped mid-statement can leave a
//! connection mid-protocol. The login path's requests (read a token, check a code) run short
//! statements outside transactions: when each of them completed, the connection is known to be
//! idle and in step, and [`Held::done`] puts it on a shelf for the next such request instead.
//! One that saw an error, or whose request was dropped half-way, is dropped as before: back to
//! the pool, which tests it.
//!
//! Shelved connections stay checked out of the pool (they count against
//! `database.max_connections`): at most half of them, each for at most [`KEEP`] (then the pool
//! takes it back, tested, and an idle service holds none). When the pool moves to another
//! database host ([`super::switches`]) or closes, the shelf is emptied.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::PgPool;
use tokio::sync::watch;

/// The longest a connection stays on the shelf: within the pool's own notion of "recently
/// tested" (`startup::RECENTLY_TESTED`), so that one coming back is not tested twice.
pub const KEEP: Duration = Duration::from_millis(500);

pub struct Reuse {
    pool: PgPool,
    shelf: Arc<Mutex<Shelf>>,
    switches: watch::Receiver<u64>,
}

struct Shelf {
    cap: usize,
    /// Oldest first.
    kept: Vec<Kept>,
}

struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
    /// The pool's host switch count when the connection was taken out.
    switch: u64,
}

impl Reuse {
    /// A shelf for up to half of the pool's connections. Spawns the task that gives kept
    /// connections back to the pool after [`KEEP`]; needs a Tokio runtime.
    pub fn new(pool: PgPool) -> Self {
        let cap = (pool.options().get_max_connections() / 2) as usize;
        let shelf = Arc::new(Mutex::new(Shelf {
            cap,
            kept: Vec::new(),
        }));
        tokio::spawn(sweep(Arc::downgrade(&shelf), pool.clone()));
        Self {
            pool,
            shelf,
            switches: super::switches(),
        }
    }

    /// The most recently shelved connection still good to use, else one from the pool.
    pub async fn acquire(&self) -> Result<Held<'_>, sqlx::Error> {
        let switch = *self.switches.borrow();
        let kept = lock(&self.shelf).kept.pop();
        // One kept too long or from before a switch goes back to the pool (tested).
        let conn = match kept.filter(|k| k.switch == switch && k.since.elapsed() < KEEP) {
            Some(kept) => kept.conn,
            None => self.pool.acquire().await?,
        };
        Ok(Held {
            conn: Some(conn),
            reuse: self,
            switch,
        })
    }
}

fn lock(shelf: &Mutex<Shelf>) -> std::sync::MutexGuard<'_, Shelf> {
    shelf.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Gives back what has been kept too long, and everything once the pool closes; ends with the
/// shelf.
async fn sweep(shelf: Weak<Mutex<Shelf>>, pool: PgPool) {
    loop {
        tokio::time::sleep(KEEP / 2).await;
        let Some(shelf) = shelf.upgrade() else { return };
        let closed = pool.is_closed();
        // Dropped outside the lock: each goes back to the pool, which tests it.
        let expired: Vec<Kept> = {
            let mut shelf = lock(&shelf);
            let keep_from = if closed {
                shelf.kept.len()
            } else {
                shelf.kept.partition_point(|k| k.since.elapsed() >= KEEP)
            };
            shelf.kept.drain(..keep_from).collect()
        };
        drop(expired);
    }
}

/// A connection of the login path. Dropped, it goes back to the pool (tested); after
/// [`Held::done`], onto the shelf.
pub struct Held<'a> {
    conn: Option<PoolConnection<Postgres>>,
    reuse: &'a Reuse,
    switch: u64,
}

impl Held<'_> {
    /// Every statement run on the connection completed, outside a transaction: it is idle and
    /// in step, to be used again untested.
    pub fn done(mut self) {
        let Some(conn) = self.conn.take() else { return };
        if *self.reuse.switches.borrow() != self.switch || self.reuse.pool.is_closed() {
            return;
        }
        let mut shelf = lock(&self.reuse.shelf);
        if shelf.kept.len() < shelf.cap {
            shelf.kept.push(Kept {
                conn,
                since: Instant::now(),
                switch: self.switch,
            });
        }
        // Else the connection goes back to the pool, after the lock is released (declared
        // later, the guard is dropped first).
    }
}

impl Deref for Held<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a held connection until done")
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a held connection until done")
    }
}
