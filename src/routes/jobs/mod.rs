//! `/v1/environments/{envID}/oathJobs`: submit bulk create/revoke jobs, read them (also under
//! `/jobs/{id}`, the form the job's self link uses), their per-item results, and the job list;
//! cancel them.

mod cancel;
mod gate;
mod read;
mod submit;
mod views;

pub use cancel::*;
pub use gate::ImportGate;
pub use read::*;
pub use submit::*;
pub use views::JobResource;
