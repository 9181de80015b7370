//! Connections handed from one request of the login path to the next, without the pool's test.
//!
//! sqlx tests every connection as it returns to the pool (a `ping`: a round trip, which costs
//! the database as much as a token's read), because a future dropped mid-statement can leave a
//! connection mid-protocol. The login path's requests (read a token, check a code) run short
//! statements outside transactions: when each of them completed, the connection is known to be
//! idle and in step, and [`Held::done`] keeps it for the next such request instead. One that
//! saw an error, or whose request was dropped half-way, is not kept: a pool connection goes back
//! to the pool, which tests it; one of the login path's own is closed.
//!
//! **Own connections.** A connection's socket is watched by the Tokio runtime that opened it,
//! and each HTTP worker thread runs a runtime of its own: a request that uses a connection
//! another runtime opened (a job runner, the other worker) wakes that runtime's thread for each
//! answer, which then wakes the request's. So each HTTP worker thread opens connections of its
//! own for the login path and hands them only to requests on that thread: at most
//! [`login_share`] of `database.max_connections` in all (the pool is made with the rest), each
//! closed after [`OWN_IDLE`] unused. When they are all in use, a request takes a pool connection
//! as before: the most recently kept one (at most half the pool's, each for at most [`KEEP`],
//! then the pool takes it back, tested), else one from the pool.
//!
//! When the pool moves to another database host ([`super::switches`]) or closes, what is kept
//! is let go: the own connections closed, the pool's given back.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::{ConnectOptions as _, PgPool};
use tokio::sync::watch;

use super::SessionAttrs;

/// The longest a pool connection stays on the shelf: within the pool's own notion of "recently
/// tested" (`startup::RECENTLY_TESTED`), so that one coming back is not tested twice.
pub const KEEP: Duration = Duration::from_millis(500);

/// How long an own connection stays open unused.
pub const OWN_IDLE: Duration = Duration::from_secs(10);

/// After an own connection failed to open, how long the login path uses the pool's alone.
const OWN_RETRY: Duration = Duration::from_secs(1);

/// The part of `database.max_connections` that the login path's own connections may take (the
/// pool is made with the rest): a quarter, none below 4.
pub fn login_share(max_connections: u32) -> u32 {
    if max_connections < 4 {
        0
    } else {
        max_connections / 4
    }
}

pub struct Reuse {
    pool: PgPool,
    kept: Arc<Kept>,
    /// Own connections open (in use or kept), and how many may be.
    own_open: Arc<AtomicUsize>,
    own_cap: usize,
    /// After an own connection failed to open, none is tried before this.
    own_retry_at: Mutex<Option<Instant>>,
    /// What a host must be for a new own connection, as for the pool's (`Primary::check_new`).
    attrs: SessionAttrs,
    switches: watch::Receiver<u64>,
}

/// What is kept between requests, oldest first in each list.
struct Kept {
    shelf: Mutex<Shelf>,
    own: Mutex<Vec<IdleOwn>>,
}

struct Shelf {
    cap: usize,
    kept: Vec<Shelved>,
}

struct Shelved {
    conn: PoolConnection<Postgres>,
    since: Instant,
    /// The pool's host switch count when the connection was taken out.
    switch: u64,
}

/// An own connection between requests: the thread that opened it, since when it is unused.
struct IdleOwn {
    conn: Own,
    thread: ThreadId,
    since: Instant,
    switch: u64,
}

/// An own connection; counted open until dropped (closed).
struct Own {
    conn: PgConnection,
    _open: OpenCount,
}

struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Reuse {
    /// Up to `own_cap` own connections, opened to hosts as `attrs` wants, and a shelf for up to
    /// half of the pool's connections. Spawns the task that lets go of what was kept too long;
    /// needs a Tokio runtime.
    pub fn new(pool: PgPool, own_cap: u32, attrs: SessionAttrs) -> Self {
        let kept = Arc::new(Kept {
            shelf: Mutex::new(Shelf {
                cap: (pool.options().get_max_connections() / 2) as usize,
                kept: Vec::new(),
            }),
            own: Mutex::new(Vec::new()),
        });
        let switches = super::switches();
        tokio::spawn(sweep(Arc::downgrade(&kept), pool.clone(), switches.clone()));
        Self {
            pool,
            kept,
            own_open: Arc::new(AtomicUsize::new(0)),
            own_cap: own_cap as usize,
            own_retry_at: Mutex::new(None),
            attrs,
            switches,
        }
    }

    /// This thread's most recently used own connection; else a new one while there is room; else
    /// the most recently shelved pool connection still good to use; else one from the pool.
    pub async fn acquire(&self) -> Result<Held<'_>, sqlx::Error> {
        let switch = *self.switches.borrow();
        let conn = match self.take_own(switch) {
            Some(own) => Conn::Own(own),
            None => match self.open_own().await {
                Ok(Some(own)) => Conn::Own(own),
                // Waiting for the pool as well would double the wait for a host that does not
                // answer.
                Err(sqlx::Error::PoolTimedOut) => return Err(sqlx::Error::PoolTimedOut),
                // No room, or the host refused (e.g. at its connection limit, or read-only):
                // the pool may still have a connection, and tells the watcher of a read-only
                // host.
                Ok(None) | Err(_) => Conn::Pooled(self.take_pooled(switch).await?),
            },
        };
        Ok(Held {
            conn: Some(conn),
            reuse: self,
            switch,
        })
    }

    fn take_own(&self, switch: u64) -> Option<Own> {
        let me = thread::current().id();
        let idle = {
            let mut own = lock(&self.kept.own);
            let at = own.iter().rposition(|o| o.thread == me)?;
            own.remove(at)
        };
        // One from before a switch or unused too long is closed (dropped), and another opened.
        (idle.switch == switch && idle.since.elapsed() < OWN_IDLE).then_some(idle.conn)
    }

    /// A new own connection, or None when as many are open as may be. Opened within the pool's
    /// acquire timeout; a host that does not qualify is refused as the pool refuses it.
    async fn open_own(&self) -> Result<Option<Own>, sqlx::Error> {
        if lock(&self.own_retry_at).is_some_and(|at| Instant::now() < at) {
            return Ok(None);
        }
        if self.own_open.fetch_add(1, Ordering::AcqRel) >= self.own_cap {
            self.own_open.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let open = OpenCount(self.own_open.clone());
        let options = self.pool.connect_options();
        let attrs = self.attrs;
        let connect = async move {
            let mut conn = options.connect().await?;
            if !super::primary::qualifies(attrs, &mut conn).await? {
                return Err(sqlx::Error::Protocol(
                    "the database host is read-only and database.url wants \
                     target_session_attrs=read-write"
                        .into(),
                ));
            }
            Ok(conn)
        };
        let timeout = self.pool.options().get_acquire_timeout();
        let opened = match tokio::time::timeout(timeout, connect).await {
            Ok(conn) => conn,
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        if opened.is_err() {
            // Not again for a moment: each attempt costs the database a connection's start.
            *lock(&self.own_retry_at) = Some(Instant::now() + OWN_RETRY);
        }
        Ok(Some(Own {
            conn: opened?,
            _open: open,
        }))
    }

    async fn take_pooled(&self, switch: u64) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let shelved = lock(&self.kept.shelf).kept.pop();
        // One kept too long or from before a switch goes back to the pool (tested).
        match shelved.filter(|k| k.switch == switch && k.since.elapsed() < KEEP) {
            Some(shelved) => Ok(shelved.conn),
            None => self.pool.acquire().await,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets go of what has been kept too long, and of everything once the pool closes or moves to
/// another host; ends with the shelf.
async fn sweep(kept: Weak<Kept>, pool: PgPool, switches: watch::Receiver<u64>) {
    loop {
        tokio::time::sleep(KEEP / 2).await;
        let Some(kept) = kept.upgrade() else { return };
        let closed = pool.is_closed();
        let switch = *switches.borrow();
        // Dropped outside the locks: each pool connection goes back to the pool, which tests
        // it; each own connection is closed.
        let expired: Vec<Shelved> = {
            let mut shelf = lock(&kept.shelf);
            let keep_from = if closed {
                shelf.kept.len()
            } else {
                shelf.kept.partition_point(|k| k.since.elapsed() >= KEEP)
            };
            shelf.kept.drain(..keep_from).collect()
        };
        let unused: Vec<IdleOwn> = {
            let mut own = lock(&kept.own);
            let (gone, stay) = std::mem::take(&mut *own)
                .into_iter()
                .partition(|o| closed || o.switch != switch || o.since.elapsed() >= OWN_IDLE);
            *own = stay;
            gone
        };
        drop(expired);
        drop(unused);
    }
}

enum Conn {
    Own(Own),
    Pooled(PoolConnection<Postgres>),
}

/// A connection of the login path. Dropped, it is not kept: a pool connection goes back to the
/// pool (tested), an own one is closed. After [`Held::done`], it is kept for the next request.
pub struct Held<'a> {
    conn: Option<Conn>,
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
        match conn {
            Conn::Own(conn) => lock(&self.reuse.kept.own).push(IdleOwn {
                conn,
                thread: thread::current().id(),
                since: Instant::now(),
                switch: self.switch,
            }),
            Conn::Pooled(conn) => {
                let mut shelf = lock(&self.reuse.kept.shelf);
                if shelf.kept.len() < shelf.cap {
                    shelf.kept.push(Shelved {
                        conn,
                        since: Instant::now(),
                        switch: self.switch,
                    });
                }
                // Else the connection goes back to the pool, after the lock is released
                // (declared later, the guard is dropped first).
            }
        }
    }

    /// Whether this is one of the login path's own connections (not the pool's).
    pub fn is_own(&self) -> bool {
        matches!(self.conn, Some(Conn::Own(_)))
    }
}

impl Deref for Held<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self.conn.as_ref().expect("a held connection until done") {
            Conn::Own(own) => &own.conn,
            Conn::Pooled(conn) => conn,
        }
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self.conn.as_mut().expect("a held connection until done") {
            Conn::Own(own) => &mut own.conn,
            Conn::Pooled(conn) => conn,
        }
    }
}
