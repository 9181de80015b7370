//! Cancelling a job: `POST .../oathJobs/{jobID}/cancel`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::JobResource;
use crate::error::responses::{AuthenticatedErrors, Conflict};
use crate::routes::extract::{Authorized, JobId, JobsWrite};
use crate::routes::{origin, AppState, JobPath, Reply};
use crate::service::jobs;

/// Cancel a job.
///
/// A `PENDING` or `IN_PROGRESS` job is `CANCELED` once the chunk being written, if any, has
/// committed (about one chunk's time; the answer waits for it): the items processed before
/// stay done, with their results and counts; the rest are not processed, and the job's
/// stored input is deleted. `409` when the job has finished (`DONE`, `FAILED`, `CANCELED`),
/// also when its last chunk committed first.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathJobs/{job_id}/cancel",
    tag = "Jobs",
    operation_id = "cancelJob",
    params(JobPath),
    responses(
        (status = 202, description = "The job, canceled.", body = super::JobResource),
        (status = 409, response = Conflict),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:write"])),
)]
pub async fn cancel(
    auth: Authorized<JobsWrite, JobId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let origin = origin(&req);
    let canceled = jobs::cancel(&state.services, auth.env, auth.ids.0, &origin).await?;
    crate::audit::committed(&req, None, StatusCode::ACCEPTED);
    let base = state.settings().base_url();
    Ok(HttpResponse::Accepted().json(JobResource::new(base, canceled)))
}
