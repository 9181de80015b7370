//! Cancelling a job: `POST .../oathJobs/{jobID}/cancel`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::views::render;
use crate::error::responses::Conflict;
use crate::error::ApiError;
use crate::routes::extract::{Authorized, JobId, JobsWrite};
use crate::routes::{operation, JobPath, Reply};
use crate::startup::AppState;
use crate::store::jobs::{self as store, Cancel};

operation! {
    /// Cancel a job.
    ///
    /// A `PENDING` or `IN_PROGRESS` job is `CANCELED` once the chunk being written, if any, has
    /// committed (about one chunk's time; the answer waits for it): the items processed before
    /// stay done, with their results and counts; the rest are not processed, and the job's
    /// stored input is deleted. `409` when the job has finished (`DONE`, `FAILED`, `CANCELED`),
    /// also when its last chunk committed first.
    post "/v1/environments/{env_id}/oathJobs/{job_id}/cancel" as "cancelJob" in "Jobs",
    params(JobPath), scopes("oath:jobs:write"),
    responses(
        (status = 202, description = "The job, canceled.", body = super::JobResource),
        (status = 409, response = Conflict)
    );
    pub async fn cancel(
        auth: Authorized<JobsWrite, JobId>,
        req: HttpRequest,
        state: web::Data<AppState>,
    ) -> Reply {
        let (env, id) = (auth.env, auth.ids.0);
        let origin = crate::events::Origin::of(&req);
        let job = match store::cancel(&state.db, env, id, &origin).await? {
            Cancel::Canceled(job) => job,
            Cancel::Finished => {
                return Err(ApiError::Conflict(
                    "The job has finished; only a PENDING or IN_PROGRESS job can be canceled."
                        .into(),
                ))
            }
            Cancel::NotFound => return Err(ApiError::not_found()),
        };
        crate::audit::committed(&req, None, StatusCode::ACCEPTED);
        tracing::info!(job_id = %id, processed = job.processed, total = job.total, "job canceled");
        Ok(HttpResponse::Accepted().json(render(&state, job).await?))
    }
}
