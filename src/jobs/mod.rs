//! Bulk jobs: `queue` stores and hands out jobs, `runner` drives them step by step (`chunks`: the
//! chunks of a step, written at once), and each job kind has a file that processes one chunk in
//! one transaction. `housekeeping` runs beside the runners: purges and the backlog gauges.

mod chunks;
pub mod create;
mod housekeeping;
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
