//! An environment: what it holds against its limits.

use uuid::Uuid;

use super::{ServiceError, Services};
use crate::store::{jobs, quota};

/// What an environment holds: its tokens and its unfinished jobs.
pub struct Usage {
    pub tokens: i64,
    pub unfinished_jobs: i64,
}

pub async fn usage(services: &Services, env: Uuid) -> Result<Usage, ServiceError> {
    Ok(Usage {
        tokens: quota::tokens(&services.db, env).await?,
        unfinished_jobs: jobs::count_unfinished(&services.db, env).await?,
    })
}
