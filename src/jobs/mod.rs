//! Bulk jobs: `queue` stores and hands out jobs, `runner` drives them chunk by chunk, and each
//! job kind has a file that processes one chunk in one transaction.

pub mod create;
pub mod queue;
pub mod retention;
pub mod revoke;
pub mod runner;

/// Why a chunk could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The job's stored input is incomplete: the job cannot finish.
    #[error("the job's input items are missing")]
    InputMissing,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
