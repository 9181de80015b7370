//! Reading jobs: one job, the job list, and a job's results.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::views::*;
use crate::domain::job::ItemOutcome;
use crate::error::responses::{AuthenticatedErrors, BadRequest};
use crate::error::ApiError;
use crate::routes::extract::{Authorized, JobId, JobsRead};
use crate::routes::page::{self, Paging};
use crate::routes::{collection_url, cursor, AppState, Reply};
use crate::routes::{EnvPath, JobPath};
use crate::service::jobs;

/// Read a job: status, progress and result counts.
///
/// `/jobs/{job_id}` (the form of the job's self link) serves the same resource.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathJobs/{job_id}",
    tag = "Jobs",
    operation_id = "getJob",
    params(JobPath),
    responses(
        (status = 200, description = "The job.", body = JobResource),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:read"])),
)]
pub async fn get(auth: Authorized<JobsRead, JobId>, state: web::Data<AppState>) -> Reply {
    let job = jobs::get(&state.services, auth.env, auth.ids.0).await?;
    Ok(HttpResponse::Ok().json(JobResource::new(state.settings().base_url(), job)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Items per page, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque: taken from a page's `_links.next`.
    cursor: Option<String>,
    /// Only rows with this outcome.
    #[param(value_type = Option<ItemOutcome>)]
    outcome: Option<String>,
}

/// A job list's query string, parsed.
pub struct JobListRequest {
    /// Newest first: before the last id of the previous page.
    pub paging: Paging<Uuid>,
}

impl JobListRequest {
    /// `limit` and `cursor`; other parameters are ignored.
    pub fn parse(query_string: &str) -> Result<Self, ApiError> {
        let query: PageQuery = page::query(query_string)?;
        Ok(Self {
            paging: Paging::parse(query.limit.as_deref(), query.cursor, cursor::decode)?,
        })
    }
}

/// A job results query string, parsed.
pub struct ResultsRequest {
    /// In item order: after the last item index of the previous page.
    pub paging: Paging<i32>,
    pub outcome: Option<ItemOutcome>,
}

impl ResultsRequest {
    /// `limit`, `cursor` and `outcome`; other parameters are ignored.
    pub fn parse(query_string: &str) -> Result<Self, ApiError> {
        let query: PageQuery = page::query(query_string)?;
        let paging = Paging::parse(query.limit.as_deref(), query.cursor, decode_index_cursor)?;
        let outcome = query
            .outcome
            .as_deref()
            .map(|o| {
                ItemOutcome::parse(o).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "outcome must be one of CREATED, DUPLICATE, REVOKED, NOT_FOUND, SKIPPED_PAIRED, LIMIT_EXCEEDED, INVALID.".into(),
                    )
                })
            })
            .transpose()?;
        Ok(Self { paging, outcome })
    }
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathJobs",
    tag = "Jobs",
    operation_id = "listJobs",
    params(EnvPath,
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
        description = "Jobs per page, 1 to 1000; default 100."),
        ("cursor" = Option<String>, Query, description = "Opaque: taken from a page's `_links.next`."),),
    responses(
        (status = 200, description = "A page of jobs.", body = JobPage),
        (status = 400, response = BadRequest),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:read"])),
)]
pub async fn list(
    auth: Authorized<JobsRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let paging = JobListRequest::parse(req.query_string())?.paging;
    let mut found = jobs::list(&state.services, env, paging.last, paging.fetch()).await?;
    let base = state.settings().base_url();
    let links = paging.links(
        &mut found,
        |v| cursor::encode(v.job.id),
        &collection_url(base, env, "oathJobs"),
        &[("limit", paging.limit.to_string())],
    );
    let resources = found
        .into_iter()
        .map(|v| JobResource::new(base, v))
        .collect();
    Ok(HttpResponse::Ok().json(JobPage::new(links, resources)))
}

/// The job's per-item outcomes, in item order.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathJobs/{job_id}/results",
    tag = "Jobs",
    operation_id = "listJobResults",
    params(JobPath, PageQuery),
    responses(
        (status = 200, description = "A page of results.", body = ResultPage),
        (status = 400, response = BadRequest),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:read"])),
)]
pub async fn results(
    auth: Authorized<JobsRead, JobId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let (env, id) = (auth.env, auth.ids.0);
    let ResultsRequest { paging, outcome } = ResultsRequest::parse(req.query_string())?;
    let services = &state.services;
    let mut found = jobs::results(services, env, id, paging.last, outcome, paging.fetch()).await?;
    let mut params = vec![("limit", paging.limit.to_string())];
    if let Some(o) = outcome {
        params.push(("outcome", o.as_str().to_string()));
    }
    let links = paging.links(
        &mut found,
        |r| index_cursor(r.idx),
        &results_url(state.settings().base_url(), env, id),
        &params,
    );
    let results: Vec<ResultView> = found.into_iter().map(ResultView::from).collect();
    Ok(HttpResponse::Ok().json(ResultPage::new(links, results)))
}
