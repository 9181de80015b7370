//! What the API does, between HTTP ([`crate::routes`]) and SQL ([`crate::store`]): each
//! operation is one function that takes domain values and returns a domain result or a
//! [`ServiceError`]. Nothing here knows of requests, responses or status codes; the routes parse
//! a request, call one function and shape its answer.

pub mod activities;
pub mod create_batch;
pub mod environments;
pub mod jobs;
pub mod subscriptions;
pub mod tokens;
pub mod verification;

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Settings;
use crate::crypto::SecretCipher;
use crate::database::reuse::login_share;
use crate::database::{DatabaseUrl, Reuse, SessionAttrs};
use crate::domain::FieldError;
use create_batch::CreateBatcher;
use jobs::FinishedJobs;
use verification::SeenTokens;

/// Why an operation did not happen. The routes map each to the contract's error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such resource in the environment.
    #[error("not found")]
    NotFound,
    /// The resource's state does not allow the operation.
    #[error("{0}")]
    Conflict(String),
    /// Fields break a rule: `details` are the first of `total` problems.
    #[error("{total} invalid fields")]
    InvalidData {
        details: Vec<FieldError>,
        total: usize,
    },
    /// A limit of the environment is reached; retry after the given whole seconds.
    #[error("{message}")]
    Limited {
        message: String,
        retry_after_seconds: u32,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// One database error answered to several operations (batched creates).
    #[error(transparent)]
    SharedDatabase(Arc<sqlx::Error>),
    /// A bug or a broken invariant; the cause is logged, never answered.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// One field's problem.
    pub fn invalid(detail: FieldError) -> Self {
        Self::InvalidData {
            details: vec![detail],
            total: 1,
        }
    }
}

/// `store::get(..).await?.or_not_found()?`: what was asked for, or [`ServiceError::NotFound`].
pub trait OrNotFound<T> {
    fn or_not_found(self) -> Result<T, ServiceError>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self) -> Result<T, ServiceError> {
        self.ok_or(ServiceError::NotFound)
    }
}

/// What the operations share, built once per process.
pub struct Services {
    pub db: PgPool,
    /// Connections of the login path (token reads, code checks), handed on untested.
    pub reuse: Reuse,
    pub settings: Arc<Settings>,
    pub cipher: Arc<SecretCipher>,
    /// Single creates, combined per environment into shared transactions.
    pub creates: Arc<CreateBatcher>,
    /// The tokens validated here, as last seen: a validation of one of them is one statement.
    pub seen_tokens: SeenTokens,
    /// Wakes `"async": false` submissions when their job finishes.
    pub finished_jobs: FinishedJobs,
}

impl Services {
    pub fn new(settings: Arc<Settings>, db: PgPool, cipher: Arc<SecretCipher>) -> Self {
        let creates = CreateBatcher::new(db.clone(), settings.limits.tokens_per_environment);
        Self {
            finished_jobs: FinishedJobs::new(db.clone()),
            reuse: Reuse::new(
                db.clone(),
                login_share(settings.database.max_connections),
                DatabaseUrl::parse(&settings.database.url)
                    .map_or(SessionAttrs::Any, |url| url.attrs),
            ),
            db,
            settings,
            cipher,
            creates,
            seen_tokens: SeenTokens::new(),
        }
    }
}
