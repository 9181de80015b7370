//! `/v1/environments/{envID}/oathJobs`: submit bulk create/revoke jobs, read them (also under
//! `/jobs/{id}`, the form the job's self link uses), their per-item results, and the job list.

use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::idempotency::IdempotencyKey;
use super::page::{self, Page};
use super::tokens::{environment_url, timestamp};
use super::{cursor, page_limit, path_id, read_body, require_media_type, IdRef, Link};
use crate::auth::Scope;
use crate::domain::job::{
    parse_job, JobRequestError, JobStatus, JobType, NewJob, Outcome, MAX_DETAILS,
};
use crate::error::ApiError;
use crate::import::{self, pskc::PskcKeys, ImportError, CSV_MEDIA_TYPE, PSKC_MEDIA_TYPE};
use crate::jobs::queue;
use crate::startup::AppState;
use crate::store::jobs::{self as store, Duplicate, JobRow, ResultRow};

const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResource {
    #[serde(rename = "_links")]
    links: JobLinks,
    id: Uuid,
    environment: IdRef,
    #[serde(rename = "type")]
    job_type: String,
    #[serde(rename = "async")]
    is_async: bool,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    progress: Progress,
    result: JobResult,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
}

#[derive(Serialize)]
struct JobLinks {
    #[serde(rename = "self")]
    self_: Link,
    environment: Link,
    results: Link,
}

#[derive(Serialize)]
struct Progress {
    processed: i32,
    total: i32,
}

/// Counts that are zero are left out, beside the one each job type always shows (as the
/// reference API's PENDING jobs show `{"created": 0}` or `{"revoked": 0}`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    duplicates: Vec<DuplicateView>,
    #[serde(skip_serializing_if = "is_zero")]
    duplicates_count: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<i32>,
    #[serde(skip_serializing_if = "is_zero")]
    not_found: i32,
    #[serde(skip_serializing_if = "is_zero")]
    skipped_paired: i32,
    #[serde(skip_serializing_if = "is_zero")]
    failed: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DuplicateView {
    serial_number: String,
    masked_secret: String,
}

fn job_url(base: &str, env: Uuid, id: Uuid) -> String {
    format!("{base}/v1/environments/{env}/jobs/{id}")
}

impl JobResource {
    fn new(base: &str, row: JobRow, duplicates: Vec<Duplicate>) -> Self {
        let env = row.environment_id;
        let is_create = row.job_type == JobType::CreateTokens.as_str();
        Self {
            links: JobLinks {
                self_: Link {
                    href: job_url(base, env, row.id),
                },
                environment: Link {
                    href: environment_url(base, env),
                },
                results: Link {
                    href: format!("{}/oathJobs/{}/results", environment_url(base, env), row.id),
                },
            },
            id: row.id,
            environment: IdRef { id: env },
            job_type: row.job_type,
            is_async: row.is_async,
            status: row.status,
            reason: row.reason,
            progress: Progress {
                processed: row.processed,
                total: row.total,
            },
            result: JobResult {
                created: is_create.then_some(row.created),
                duplicates: duplicates
                    .into_iter()
                    .map(|d| DuplicateView {
                        serial_number: d.serial_number,
                        masked_secret: d.masked_secret,
                    })
                    .collect(),
                duplicates_count: row.duplicates,
                revoked: (!is_create).then_some(row.revoked),
                not_found: row.not_found,
                skipped_paired: row.skipped_paired,
                failed: row.failed,
            },
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
            completed_at: row.completed_at.map(timestamp),
        }
    }
}

async fn render(state: &AppState, row: JobRow) -> Result<JobResource, ApiError> {
    let duplicates = if row.duplicates > 0 {
        store::duplicates(&state.db, row.environment_id, row.id).await?
    } else {
        Vec::new()
    };
    Ok(JobResource::new(state.settings.base_url(), row, duplicates))
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))
}

pub async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::JobsWrite).await?;
    let media_type = require_media_type(
        &req,
        &[
            JobType::CREATE_MEDIA_TYPE,
            JobType::REVOKE_MEDIA_TYPE,
            PSKC_MEDIA_TYPE,
            CSV_MEDIA_TYPE,
        ],
    )?;
    let started = Instant::now();
    let bytes = read_body(&req, payload, state.settings.jobs.max_body_bytes)
        .await?
        .freeze();
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (job, expected) = match JobType::from_media_type(media_type) {
        Some(expected) => (json_job(&bytes, expected, &state)?, expected),
        None => (
            import_job(&req, media_type, bytes.clone(), &state).await?,
            JobType::CreateTokens,
        ),
    };
    let parsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let idempotency = IdempotencyKey::from_request(&req, &bytes)?;
    drop(bytes);

    let job_id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    if let Some(key) = &idempotency {
        if let Err(first_response) = key.claim(&mut tx, &state, env).await? {
            return Ok(first_response);
        }
    }
    let chunk_size = state.settings.jobs.chunk_size;
    let row = queue::enqueue(&mut tx, env, job_id, &job, chunk_size, &state.cipher).await?;
    let is_async = job.is_async();
    drop(job);
    let resource = JobResource::new(state.settings.base_url(), row, Vec::new());
    let location = resource.links.self_.href.clone();
    let body = json_bytes(&resource)?;
    if let Some(key) = &idempotency {
        key.record(&mut tx, env, StatusCode::ACCEPTED, Some(&location), &body)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(
        job_id = %job_id,
        job_type = expected.as_str(),
        total = resource.progress.total,
        read_ms,
        parsed_ms,
        stored_ms = started.elapsed().as_secs_f64() * 1000.0,
        "job accepted"
    );

    if is_async {
        return Ok(accepted(StatusCode::ACCEPTED, &location, body));
    }
    // "async": false waits for the job; if it is not finished in time the job goes on and the
    // answer is the 202 with its current state.
    let deadline = Instant::now() + Duration::from_secs(state.settings.jobs.sync_wait_seconds);
    loop {
        let row = store::get(&state.db, env, job_id)
            .await?
            .ok_or_else(|| ApiError::Internal("submitted job vanished".into()))?;
        let finished = JobStatus::parse(&row.status).is_some_and(JobStatus::is_final);
        if finished || Instant::now() >= deadline {
            let status = if finished {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let body = json_bytes(&render(&state, row).await?)?;
            if let Some(key) = &idempotency {
                let mut conn = state.db.acquire().await?;
                key.record(&mut conn, env, status, Some(&location), &body)
                    .await?;
            }
            return Ok(accepted(status, &location, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn json_job(bytes: &[u8], expected: JobType, state: &AppState) -> Result<NewJob, ApiError> {
    parse_job(bytes, expected, state.settings.jobs.max_items).map_err(|e| match e {
        JobRequestError::Syntax(message) => ApiError::InvalidRequest(message),
        JobRequestError::Invalid { details, total } => ApiError::InvalidData {
            message: if total > details.len() {
                format!(
                    "The request has {total} invalid fields; the first {MAX_DETAILS} are listed. Nothing was stored."
                )
            } else {
                format!("The request has {total} invalid field(s); see details. Nothing was stored.")
            },
            details,
        },
    })
}

/// The header naming a configured pre-shared PSKC key (`import.pskc_keys.<id>`).
pub const PSKC_KEY_ID_HEADER: &str = "x-pskc-key-id";
/// The header carrying the password of a PBKDF2-protected PSKC file. Never logged or stored.
pub const PSKC_PASSWORD_HEADER: &str = "x-pskc-password";

/// A PSKC or CSV file as a create job: rows that break the token rules become INVALID items;
/// only a file that cannot be read at all is refused. `?async=false` waits for the job as
/// `"async": false` does in a JSON body.
async fn import_job(
    req: &HttpRequest,
    media_type: &str,
    bytes: web::Bytes,
    state: &AppState,
) -> Result<NewJob, ApiError> {
    let is_async = match web::Query::<AsyncQuery>::from_query(req.query_string())
        .map(|q| q.into_inner().is_async)
    {
        Ok(None) | Ok(Some(true)) => true,
        Ok(Some(false)) => false,
        Err(_) => {
            return Err(ApiError::InvalidRequest(
                "async must be true or false.".into(),
            ))
        }
    };
    let max_items = state.settings.jobs.max_items;
    let items = if media_type == PSKC_MEDIA_TYPE {
        let keys = pskc_keys(req, state)?;
        // Parsing (and PBKDF2) is CPU work on a file of up to jobs.max_body_bytes: off the
        // request threads.
        web::block(move || import::pskc::parse(&bytes, &keys, max_items)).await
    } else {
        web::block(move || import::csv::parse(&bytes, max_items)).await
    }
    .map_err(|e| ApiError::Internal(format!("import parser did not finish: {e}")))?
    .map_err(|e: ImportError| ApiError::InvalidRequest(e.to_string()))?;
    Ok(NewJob::Create { is_async, items })
}

#[derive(Deserialize)]
struct AsyncQuery {
    #[serde(rename = "async")]
    is_async: Option<bool>,
}

fn pskc_keys(req: &HttpRequest, state: &AppState) -> Result<PskcKeys, ApiError> {
    let mut keys = PskcKeys::default();
    if let Some(id) = req.headers().get(PSKC_KEY_ID_HEADER) {
        let key = id
            .to_str()
            .ok()
            .and_then(|id| state.settings.import.pskc_key(id.trim()));
        keys.pre_shared = Some(key.ok_or_else(|| {
            ApiError::InvalidRequest(
                "X-PSKC-Key-Id names no configured pre-shared key (import.pskc_keys.<id>).".into(),
            )
        })?);
    }
    if let Some(password) = req.headers().get(PSKC_PASSWORD_HEADER) {
        keys.password = Some(zeroize::Zeroizing::new(password.as_bytes().to_vec()));
    }
    Ok(keys)
}

fn accepted(status: StatusCode, location: &str, body: Vec<u8>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, location))
        .content_type("application/json")
        .body(body)
}

pub async fn get(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::JobsRead).await?;
    let id = path_id(&req, "job_id")?;
    let row = store::get(&state.db, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(render(&state, row).await?))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
    outcome: Option<String>,
}

fn page_query(req: &HttpRequest) -> Result<PageQuery, ApiError> {
    web::Query::<PageQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| ApiError::InvalidRequest("The query string is malformed.".into()))
}

#[derive(Serialize)]
struct EmbeddedJobs {
    #[serde(rename = "oathJobs")]
    oath_jobs: Vec<JobResource>,
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::JobsRead).await?;
    let query = page_query(&req)?;
    let limit = page_limit(query.limit.as_deref(), PAGE_DEFAULT, PAGE_MAX)?;
    let before = query.cursor.as_deref().map(cursor::decode).transpose()?;
    let mut rows = store::list(&state.db, env, before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| cursor::encode(r.id)))
        .flatten();
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(render(&state, row).await?);
    }
    let collection = format!(
        "{}/oathJobs",
        environment_url(state.settings.base_url(), env)
    );
    Ok(HttpResponse::Ok().json(Page {
        links: page::links(
            &collection,
            &[("limit", limit.to_string())],
            query.cursor.as_deref(),
            next,
        ),
        size: jobs.len(),
        embedded: EmbeddedJobs { oath_jobs: jobs },
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultView {
    #[serde(skip_serializing_if = "Option::is_none")]
    row_number: Option<i64>,
    index: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_number: Option<String>,
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    masked_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<ResultRow> for ResultView {
    fn from(r: ResultRow) -> Self {
        Self {
            row_number: r.row_number,
            index: r.idx,
            serial_number: r.serial_number,
            outcome: r.outcome,
            token_id: r.token_id,
            masked_secret: r.masked_secret,
            message: r.message,
        }
    }
}

#[derive(Serialize)]
struct EmbeddedResults {
    results: Vec<ResultView>,
}

/// Result cursors carry the last item index, in the same opaque form as id cursors.
fn index_cursor(idx: i32) -> String {
    cursor::encode(Uuid::from_u128(idx as u128))
}

fn decode_index_cursor(c: &str) -> Result<i32, ApiError> {
    i32::try_from(cursor::decode(c)?.as_u128())
        .map_err(|_| ApiError::InvalidRequest("The cursor is not valid.".into()))
}

pub async fn results(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = state.authorize(&req, "env_id", Scope::JobsRead).await?;
    let id = path_id(&req, "job_id")?;
    let query = page_query(&req)?;
    let limit = page_limit(query.limit.as_deref(), PAGE_DEFAULT, PAGE_MAX)?;
    let after = query
        .cursor
        .as_deref()
        .map(decode_index_cursor)
        .transpose()?;
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
    if store::get(&state.db, env, id).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let mut rows = store::results(
        &state.db,
        env,
        id,
        after,
        outcome.map(Outcome::as_str),
        limit + 1,
    )
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| index_cursor(r.idx)))
        .flatten();
    let mut params = vec![("limit", limit.to_string())];
    if let Some(o) = outcome {
        params.push(("outcome", o.as_str().to_string()));
    }
    let collection = format!(
        "{}/oathJobs/{id}/results",
        environment_url(state.settings.base_url(), env)
    );
    let results: Vec<ResultView> = rows.into_iter().map(ResultView::from).collect();
    Ok(HttpResponse::Ok().json(Page {
        links: page::links(&collection, &params, query.cursor.as_deref(), next),
        size: results.len(),
        embedded: EmbeddedResults { results },
    }))
}
