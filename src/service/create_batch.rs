//! Single creates (`POST .../oathTokens` without an `Idempotency-Key`), combined per environment:
//! while one transaction of an environment's creates commits, the creates that arrive meanwhile
//! wait, and the next transaction writes them all, so that an environment's creates share one
//! WAL flush instead of queueing one flush each behind its quota row's lock. Each request still
//! gets its own answer: its token, a duplicate serial number (also of an earlier create in the
//! same transaction), or the limit. While the quota has room for all of them, one statement
//! writes them ([`tokens::insert_new_counted`]); near the limit they are decided exactly as a job
//! chunk decides them ([`create_within_quota`]), in the order they arrived.
//!
//! A transaction runs on a task of its own, never in a request's future, so that a client that
//! goes away cancels nothing but its own wait. The queue of an environment holds only the creates
//! of requests in flight; it is removed when it runs empty.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::crypto::Sealed;
use crate::domain::job::ItemOutcome;
use crate::domain::NewToken;
use crate::events::{EventType, Origin};
use crate::metrics::METRICS;
use crate::store::batch::{create_within_quota, first_occurrences, TokenBatch};
use crate::store::tokens::{self, InsertError, Token};
use crate::store::{events, is_conflict, is_unavailable, quota};

/// Creates one transaction writes at most.
const MAX_BATCH: usize = 500;

/// Attempts of a transaction that met a serial number written meanwhile by another process.
const ATTEMPTS: usize = 3;

type Reply = oneshot::Sender<Result<Token, InsertError>>;

struct Pending {
    chunk: TokenBatch,
    /// Who asked for each token of `chunk`: its event's actor and request id.
    origins: Vec<Origin>,
    replies: Vec<Reply>,
}

pub struct CreateBatcher {
    pool: PgPool,
    limit: i64,
    /// Environment -> the creates waiting for its next transactions, at most [`MAX_BATCH`] a
    /// transaction. An entry exists while a task commits the environment's creates.
    waiting: Mutex<HashMap<Uuid, VecDeque<Pending>>>,
}

impl CreateBatcher {
    pub fn new(pool: PgPool, limit: i64) -> Arc<Self> {
        Arc::new(Self {
            pool,
            limit,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Creates `token` with id `id` (its secret sealed for that id) in `env`, in the next
    /// transaction of the environment.
    pub async fn create(
        self: &Arc<Self>,
        env: Uuid,
        id: Uuid,
        token: &NewToken,
        sealed: Sealed,
        origin: Origin,
    ) -> Result<Token, InsertError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut waiting = self.lock();
            let first = !waiting.contains_key(&env);
            let queue = waiting.entry(env).or_default();
            if queue.back().is_none_or(|p| p.replies.len() >= MAX_BATCH) {
                queue.push_back(Pending {
                    chunk: TokenBatch::default(),
                    origins: Vec::new(),
                    replies: Vec::new(),
                });
            }
            let pending = queue.back_mut().expect("a batch with room");
            pending
                .chunk
                .push_token(pending.replies.len() as i32, id, token, sealed, false);
            pending.origins.push(origin);
            pending.replies.push(reply);
            first
        };
        if start {
            tokio::spawn(Arc::clone(self).commit_until_empty(env));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(InsertError::Db(sqlx::Error::WorkerCrashed)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, VecDeque<Pending>>> {
        // Every update under the lock is a push or a swap: the map is consistent after a panic.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch of `env`'s waiting creates, or none (and no entry) when none wait.
    fn take(&self, env: Uuid) -> Option<Pending> {
        let mut waiting = self.lock();
        let next = waiting.get_mut(&env)?.pop_front();
        if next.is_none() {
            waiting.remove(&env);
        }
        next
    }

    async fn commit_until_empty(self: Arc<Self>, env: Uuid) {
        while let Some(batch) = self.take(env) {
            METRICS
                .create_batch_size
                .observe(batch.replies.len() as f64);
            let mut outcome = self.commit(env, &batch).await;
            // A serial written meanwhile by another writer, or a deadlock with job chunks
            // written at once: the next attempt sees what they committed.
            for _ in 1..ATTEMPTS {
                match &outcome {
                    Err(e) if is_conflict(e) => outcome = self.commit(env, &batch).await,
                    _ => break,
                }
            }
            match outcome {
                Err(e) if is_unavailable(&e) => {
                    // The creates queued meanwhile would meet the same outage after waiting as
                    // long again: they get its answer now, so that no create waits for more
                    // than one connection (database.acquire_timeout_seconds). The queue is
                    // empty and gone: the next create starts a task of its own.
                    let e = Arc::new(e);
                    refuse(batch, &e);
                    while let Some(queued) = self.take(env) {
                        refuse(queued, &e);
                    }
                    return;
                }
                outcome => answer(batch, outcome),
            }
        }
    }

    /// One statement writes the tokens that are new, counts them in the quota and records
    /// their events, when they all fit in it. Near the limit, that statement fails and changes
    /// nothing; then one transaction takes the tokens in order while there is room, as a job
    /// chunk does.
    async fn commit(
        &self,
        env: Uuid,
        batch: &Pending,
    ) -> Result<(Vec<ItemOutcome>, Vec<Token>), sqlx::Error> {
        let chunk = &batch.chunk;
        match tokens::insert_new_counted(
            &self.pool,
            env,
            chunk,
            &first_occurrences(chunk),
            self.limit,
            &batch.origins,
        )
        .await
        {
            Ok(rows) => {
                let created: HashSet<Uuid> = rows.iter().map(|t| t.id).collect();
                let outcomes = chunk
                    .token_ids()
                    .iter()
                    .map(|id| {
                        if created.contains(id) {
                            ItemOutcome::Created
                        } else {
                            ItemOutcome::Duplicate
                        }
                    })
                    .collect();
                Ok((outcomes, rows))
            }
            Err(e) if quota::is_exceeded(&e) => self.commit_in_order(env, batch).await,
            Err(e) => Err(e),
        }
    }

    /// One transaction: the tokens that are new and within the quota, their events, and the
    /// created rows.
    async fn commit_in_order(
        &self,
        env: Uuid,
        batch: &Pending,
    ) -> Result<(Vec<ItemOutcome>, Vec<Token>), sqlx::Error> {
        let chunk = &batch.chunk;
        let mut tx = self.pool.begin().await?;
        let (outcomes, _) = create_within_quota(&mut tx, env, chunk, self.limit).await?;
        let (ids, serials) = chunk.tokens_with(&outcomes, ItemOutcome::Created);
        let origins = outcomes
            .iter()
            .zip(&batch.origins)
            .filter(|(o, _)| **o == ItemOutcome::Created)
            .map(|(_, origin)| origin);
        let created: Vec<(Uuid, &str, &Origin)> = ids
            .iter()
            .zip(serials)
            .zip(origins)
            .map(|((id, serial), origin)| (*id, serial, origin))
            .collect();
        events::record_each(&mut *tx, env, EventType::TokenCreated, &created).await?;
        let rows = tokens::get_many(&mut tx, env, &ids).await?;
        tx.commit().await?;
        Ok((outcomes, rows))
    }
}

/// Gives each request of `batch` the error `e`.
fn refuse(batch: Pending, e: &Arc<sqlx::Error>) {
    for reply in batch.replies {
        let _ = reply.send(Err(InsertError::Shared(Arc::clone(e))));
    }
}

/// Gives each waiting request its answer.
fn answer(batch: Pending, outcome: Result<(Vec<ItemOutcome>, Vec<Token>), sqlx::Error>) {
    let (outcomes, rows) = match outcome {
        Ok(done) => done,
        Err(e) => return refuse(batch, &Arc::new(e)),
    };
    let mut rows: HashMap<Uuid, Token> = rows.into_iter().map(|t| (t.id, t)).collect();
    for ((reply, outcome), id) in batch
        .replies
        .into_iter()
        .zip(outcomes)
        .zip(batch.chunk.token_ids())
    {
        let answer = match outcome {
            ItemOutcome::Created => rows
                .remove(id)
                .ok_or(InsertError::Db(sqlx::Error::RowNotFound)),
            ItemOutcome::LimitExceeded => Err(InsertError::LimitExceeded),
            _ => Err(InsertError::Duplicate),
        };
        let _ = reply.send(answer);
    }
}
