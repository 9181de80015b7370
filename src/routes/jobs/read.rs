//! Reading jobs: one job, the job list, and a job's results.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::views::*;
use crate::domain::job::Outcome;
use crate::error::responses::BadRequest;
use crate::error::ApiError;
use crate::routes::extract::{Authorized, JobId, JobsRead};
use crate::routes::page::{self, Paging};
use crate::routes::{collection_url, cursor, operation, OrNotFound, Reply};
use crate::routes::{EnvPath, JobPath};
use crate::startup::AppState;
use crate::store::jobs as store;
use crate::store::results;

operation! {
    /// Read a job: status, progress and result counts.
    ///
    /// `/jobs/{job_id}` (the form of the job's self link) serves the same resource.
    get "/v1/environments/{env_id}/oathJobs/{job_id}" as "getJob" in "Jobs",
    params(JobPath), scopes("oath:jobs:read"),
    responses((status = 200, description = "The job.", body = JobResource));
    pub async fn get(auth: Authorized<JobsRead, JobId>, state: web::Data<AppState>) -> Reply {
        let (env, id) = (auth.env, auth.ids.0);
        let row = store::get(&state.db, env, id).await?.or_not_found()?;
        Ok(HttpResponse::Ok().json(render(&state, row).await?))
    }
}

operation! {
    /// Read a job, by its self link.
    ///
    /// The same resource as `/oathJobs/{job_id}`.
    get "/v1/environments/{env_id}/jobs/{job_id}" as "getJobBySelfLink" in "Jobs",
    params(JobPath), scopes("oath:jobs:read"),
    responses((status = 200, description = "The job.", body = JobResource));
    #[allow(dead_code)] // documents the second path of `get`'s resource; never called
    fn get_by_self_link() {}
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
    #[param(value_type = Option<Outcome>)]
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
    pub outcome: Option<Outcome>,
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
                Outcome::parse(o).ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "outcome must be one of CREATED, DUPLICATE, REVOKED, NOT_FOUND, SKIPPED_PAIRED, LIMIT_EXCEEDED, INVALID.".into(),
                    )
                })
            })
            .transpose()?;
        Ok(Self { paging, outcome })
    }
}

operation! {
    /// List jobs, newest first.
    get "/v1/environments/{env_id}/oathJobs" as "listJobs" in "Jobs",
    params(
        EnvPath,
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Jobs per page, 1 to 1000; default 100."),
        ("cursor" = Option<String>, Query, description = "Opaque: taken from a page's `_links.next`."),
    ),
    scopes("oath:jobs:read"),
    responses(
        (status = 200, description = "A page of jobs.", body = JobPage),
        (status = 400, response = BadRequest)
    );
    pub async fn list(
        auth: Authorized<JobsRead>,
        req: HttpRequest,
        state: web::Data<AppState>,
    ) -> Reply {
        let env = auth.env;
        let paging = JobListRequest::parse(req.query_string())?.paging;
        let mut rows = store::list(&state.db, env, paging.last, paging.fetch()).await?;
        let links = paging.links(
            &mut rows,
            |r| cursor::encode(r.id),
            &collection_url(state.settings.base_url(), env, "oathJobs"),
            &[("limit", paging.limit.to_string())],
        );
        let jobs = render_all(&state, rows).await?;
        Ok(HttpResponse::Ok().json(JobPage::new(links, jobs)))
    }
}

operation! {
    /// The job's per-item outcomes, in item order.
    get "/v1/environments/{env_id}/oathJobs/{job_id}/results" as "listJobResults" in "Jobs",
    params(JobPath, PageQuery), scopes("oath:jobs:read"),
    responses(
        (status = 200, description = "A page of results.", body = ResultPage),
        (status = 400, response = BadRequest)
    );
    pub async fn results(
        auth: Authorized<JobsRead, JobId>,
        req: HttpRequest,
        state: web::Data<AppState>,
    ) -> Reply {
        let (env, id) = (auth.env, auth.ids.0);
        let ResultsRequest { paging, outcome } = ResultsRequest::parse(req.query_string())?;
        if store::get(&state.db, env, id).await?.is_none() {
            return Err(ApiError::not_found());
        }
        let mut rows =
            results::page(&state.db, env, id, paging.last, outcome, paging.fetch()).await?;
        let mut params = vec![("limit", paging.limit.to_string())];
        if let Some(o) = outcome {
            params.push(("outcome", o.as_str().to_string()));
        }
        let links = paging.links(
            &mut rows,
            |r| index_cursor(r.idx),
            &results_url(state.settings.base_url(), env, id),
            &params,
        );
        let results: Vec<ResultView> = rows.into_iter().map(ResultView::from).collect();
        Ok(HttpResponse::Ok().json(ResultPage::new(links, results)))
    }
}
