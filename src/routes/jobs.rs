//! `/v1/environments/{envID}/oathJobs`: submit bulk create/revoke jobs, read them (also under
//! `/jobs/{id}`, the form the job's self link uses), their per-item results, and the job list.

use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{Authorized, JobId, JobsRead, JobsWrite};
use super::idempotency::{self, IdempotencyKey};
use super::page;
use super::tokens::{environment_url, timestamp};
use super::{cursor, page_limit, read_body, require_media_type, IdRef, Link};
use super::{EnvPath, JobPath, PageLinks};
use crate::domain::job::{
    parse_job, CreateJobRequestDoc, JobRequestError, JobStatus, JobType, NewJob, Outcome,
    RevokeJobRequestDoc,
};
use crate::error::responses::{AuthenticatedErrors, BadRequest, BodyErrors, Conflict};
use crate::error::ApiError;
use crate::import::{self, pskc::PskcKeys, ImportError, CSV_MEDIA_TYPE, PSKC_MEDIA_TYPE};
use crate::jobs::queue;
use crate::startup::AppState;
use crate::store::jobs::{self as store, Job};
use crate::store::results::{self, Duplicate, JobResult as ItemResult};

const PAGE_DEFAULT: i64 = 100;
const PAGE_MAX: i64 = 1000;

/// A bulk job: its state, progress and result counts.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Job)]
pub struct JobResource {
    #[serde(rename = "_links")]
    links: JobLinks,
    id: Uuid,
    environment: IdRef,
    #[serde(rename = "type")]
    job_type: JobType,
    #[serde(rename = "async")]
    is_async: bool,
    status: JobStatus,
    /// `FAILED` jobs only: why, in words a user can act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<String>,
    progress: Progress,
    result: JobResult,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Finished jobs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    completed_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = JobLinks)]
struct JobLinks {
    #[serde(rename = "self")]
    self_: Link,
    environment: Link,
    results: Link,
}

#[derive(Serialize, ToSchema)]
#[schema(as = JobProgress)]
struct Progress {
    processed: i32,
    total: i32,
}

/// Counts that are zero are left out, beside the one each job type always shows (as the
/// reference API's PENDING jobs show `{"created": 0}` or `{"revoked": 0}`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobResult)]
struct JobResult {
    /// Create jobs: tokens created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    created: Option<i32>,
    /// Create jobs: the first 1,000 items whose serial number already existed (or came earlier
    /// in the job); all of them are in the job's results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    duplicates: Vec<DuplicateView>,
    /// Create jobs, only when `duplicates` is cut to its first 1,000: how many there are.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    duplicates_count: Option<i32>,
    /// Revoke jobs: tokens revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    revoked: Option<i32>,
    /// Revoke jobs: ids not found in the environment.
    #[serde(skip_serializing_if = "is_zero")]
    not_found: i32,
    /// Revoke jobs: paired tokens left alone (`forceUnpair` false).
    #[serde(skip_serializing_if = "is_zero")]
    skipped_paired: i32,
    /// Create jobs: items refused for another reason (`LIMIT_EXCEEDED`, `INVALID` file rows).
    #[serde(skip_serializing_if = "is_zero")]
    failed: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobDuplicate)]
struct DuplicateView {
    serial_number: String,
    /// The first two hex digits of the submitted secret, upper-case, then six `*`.
    #[schema(example = "6E******")]
    masked_secret: String,
}

fn job_url(base: &str, env: Uuid, id: Uuid) -> String {
    format!("{base}/v1/environments/{env}/jobs/{id}")
}

impl JobResource {
    fn new(base: &str, row: Job, duplicates: Vec<Duplicate>) -> Self {
        let env = row.environment_id;
        let is_create = row.job_type == JobType::CreateTokens;
        let counts = row.counts;
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
                created: is_create.then_some(counts.created),
                duplicates: duplicates
                    .into_iter()
                    .map(|d| DuplicateView {
                        serial_number: d.serial_number,
                        masked_secret: d.masked_secret,
                    })
                    .collect(),
                duplicates_count: (i64::from(counts.duplicates) > results::EMBEDDED_DUPLICATES)
                    .then_some(counts.duplicates),
                revoked: (!is_create).then_some(counts.revoked),
                not_found: counts.not_found,
                skipped_paired: counts.skipped_paired,
                failed: counts.failed,
            },
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
            completed_at: row.completed_at.map(timestamp),
        }
    }
}

async fn render(state: &AppState, job: Job) -> Result<JobResource, ApiError> {
    let mut all = render_all(state, vec![job]).await?;
    all.pop()
        .ok_or_else(|| ApiError::Internal("a job rendered to nothing".into()))
}

/// Jobs with their embedded duplicates, read in one query for all of them.
async fn render_all(state: &AppState, jobs: Vec<Job>) -> Result<Vec<JobResource>, ApiError> {
    let with_duplicates: Vec<Uuid> = jobs
        .iter()
        .filter(|j| j.counts.duplicates > 0)
        .map(|j| j.id)
        .collect();
    let env = jobs.first().map(|j| j.environment_id);
    let mut duplicates = match env {
        Some(env) if !with_duplicates.is_empty() => {
            results::duplicates(&state.db, env, &with_duplicates).await?
        }
        _ => Default::default(),
    };
    let base = state.settings.base_url();
    Ok(jobs
        .into_iter()
        .map(|job| {
            let embedded = duplicates.remove(&job.id).unwrap_or_default();
            JobResource::new(base, job, embedded)
        })
        .collect())
}

fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Submit a bulk create or revoke job.
///
/// The body's media type says which. The whole request is validated first; a valid one is stored
/// and answered `202` (`PENDING`) before any token is written.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/oathJobs",
    tag = "Jobs",
    operation_id = "submitJob",
    params(
        EnvPath,
        ("Idempotency-Key" = Option<String>, Header, description = super::idempotency::DOC),
        ("X-PSKC-Key" = Option<String>, Header,
            description = "`application/pskc+xml` only: the caller's own transport key (hex of 16, 24 or 32 bytes) that decrypts the file's secrets; never logged or stored"),
        ("X-PSKC-Key-Id" = Option<String>, Header,
            description = "`application/pskc+xml` only: a pre-shared key configured in the service for this environment (`import.pskc_keys.<id>`)"),
        ("X-PSKC-Password" = Option<String>, Header,
            description = "`application/pskc+xml` only: the password a PBKDF2-encrypted file's key derives from"),
    ),
    request_body(
        description = "A JSON job (its `type` must agree with the media type), or a file to \
            import as a create job: PSKC (RFC 6030) or CSV with the header row \
            `serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep` (`secretBase32` \
            instead of `secret` for base32 seeds). A file row that is not a valid token becomes an \
            `INVALID` result instead of refusing the file.",
        content(
            (CreateJobRequestDoc = "application/vnd.pingidentity.job.oathtokens.create+json"),
            (RevokeJobRequestDoc = "application/vnd.pingidentity.job.oathtokens.revoke+json"),
            (String = "application/pskc+xml"),
            (String = "text/csv"),
        ),
    ),
    responses(
        (status = 200, description = "`\"async\": false` and the job finished in time.", body = JobResource,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 202, description = "The job is stored and will run.", body = JobResource,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 409, response = Conflict),
        BodyErrors,
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:write"])),
)]
pub async fn submit(
    auth: Authorized<JobsWrite>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let env = auth.env;
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
            import_job(&req, env, media_type, bytes.clone(), &state).await?,
            JobType::CreateTokens,
        ),
    };
    let parsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let idempotency_key = IdempotencyKey::from_request(&req, &bytes, &state.request_hash_key[..])?;
    drop(bytes);

    let job_id = Uuid::now_v7();
    let mut write = match idempotency::begin(idempotency_key.as_ref(), &state, env).await? {
        Ok(write) => write,
        Err(first_response) => return Ok(first_response),
    };
    let chunk_size = state.settings.jobs.chunk_size;
    let row = queue::enqueue(&mut write.tx, env, job_id, &job, chunk_size, &state.cipher).await?;
    crate::audit::target(&req, job_id);
    let is_async = job.is_async();
    drop(job);
    let resource = JobResource::new(state.settings.base_url(), row, Vec::new());
    let location = resource.links.self_.href.clone();
    let body = json_bytes(&resource)?;
    write
        .commit(StatusCode::ACCEPTED, Some(&location), &body)
        .await?;
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
        let finished = row.status.is_final();
        if finished || Instant::now() >= deadline {
            let status = if finished {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let body = json_bytes(&render(&state, row).await?)?;
            if let Some(key) = &idempotency_key {
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
        JobRequestError::Invalid { details, total } => ApiError::invalid_data_of(details, total),
    })
}

/// The header naming a configured pre-shared PSKC key (`import.pskc_keys.<id>`).
pub const PSKC_KEY_ID_HEADER: &str = "x-pskc-key-id";
/// The header carrying the caller's own PSKC transport key, hex. Never logged or stored.
pub const PSKC_KEY_HEADER: &str = "x-pskc-key";
/// The header carrying the password of a PBKDF2-protected PSKC file. Never logged or stored.
pub const PSKC_PASSWORD_HEADER: &str = "x-pskc-password";

/// A PSKC or CSV file as a create job: rows that break the token rules become INVALID items;
/// only a file that cannot be read at all is refused. `?async=false` waits for the job as
/// `"async": false` does in a JSON body.
async fn import_job(
    req: &HttpRequest,
    env: Uuid,
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
    let keys = if media_type == PSKC_MEDIA_TYPE {
        Some(pskc_keys(req, env, state)?)
    } else {
        None
    };
    // Parsing (and PBKDF2) is CPU work on a file of up to jobs.max_body_bytes: off the request
    // threads, and a few files at a time.
    let _permit = state
        .import_permits
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("import permits closed: {e}")))?;
    let items = match keys {
        Some(keys) => web::block(move || import::pskc::parse(&bytes, &keys, max_items)).await,
        None => web::block(move || import::csv::parse(&bytes, max_items)).await,
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

/// The transport key and password a PSKC upload brings. A key id the environment may not use
/// is answered exactly as one that does not exist.
fn pskc_keys(req: &HttpRequest, env: Uuid, state: &AppState) -> Result<PskcKeys, ApiError> {
    let headers = req.headers();
    let mut keys = PskcKeys {
        pbkdf2_max_iterations: state.settings.import.pbkdf2_max_iterations,
        ..PskcKeys::default()
    };
    let (own, named) = (
        headers.get(PSKC_KEY_HEADER),
        headers.get(PSKC_KEY_ID_HEADER),
    );
    if own.is_some() && named.is_some() {
        return Err(ApiError::InvalidRequest(
            "Send either X-PSKC-Key or X-PSKC-Key-Id, not both.".into(),
        ));
    }
    if let Some(own) = own {
        let key = own
            .to_str()
            .ok()
            .and_then(crate::config::decode_pskc_key)
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "X-PSKC-Key must be the hex of a 16, 24 or 32-byte key.".into(),
                )
            })?;
        keys.pre_shared = Some(key);
    }
    if let Some(id) = named {
        let key = id
            .to_str()
            .ok()
            .and_then(|id| state.pskc_keys.key_for(id.trim(), env));
        keys.pre_shared = Some(key.ok_or_else(|| {
            ApiError::InvalidRequest(
                "X-PSKC-Key-Id names no pre-shared key this environment may use.".into(),
            )
        })?);
    }
    if let Some(password) = headers.get(PSKC_PASSWORD_HEADER) {
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
pub async fn get(
    auth: Authorized<JobsRead, JobId>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (env, id) = (auth.env, auth.ids.0);
    let row = store::get(&state.db, env, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(render(&state, row).await?))
}

/// Read a job, by its self link.
///
/// The same resource as `/oathJobs/{job_id}`.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/jobs/{job_id}",
    tag = "Jobs",
    operation_id = "getJobBySelfLink",
    params(JobPath),
    responses(
        (status = 200, description = "The job.", body = JobResource),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:jobs:read"])),
)]
#[allow(dead_code)] // documents the second path of `get`'s resource; never called
fn get_by_self_link() {}

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

fn page_query(query_string: &str) -> Result<PageQuery, ApiError> {
    web::Query::<PageQuery>::from_query(query_string)
        .map(web::Query::into_inner)
        .map_err(|_| ApiError::InvalidRequest("The query string is malformed.".into()))
}

/// A job list's query string, parsed.
pub struct JobListRequest {
    pub limit: i64,
    /// The last id of the previous page (jobs are listed newest first).
    pub before: Option<Uuid>,
    cursor: Option<String>,
}

impl JobListRequest {
    /// `limit` and `cursor`; other parameters are ignored.
    pub fn parse(query_string: &str) -> Result<Self, ApiError> {
        let query = page_query(query_string)?;
        Ok(Self {
            limit: page_limit(query.limit.as_deref(), PAGE_DEFAULT, PAGE_MAX)?,
            before: query.cursor.as_deref().map(cursor::decode).transpose()?,
            cursor: query.cursor,
        })
    }
}

/// A job results query string, parsed.
pub struct ResultsRequest {
    pub limit: i64,
    /// The last item index of the previous page.
    pub after: Option<i32>,
    pub outcome: Option<Outcome>,
    cursor: Option<String>,
}

impl ResultsRequest {
    /// `limit`, `cursor` and `outcome`; other parameters are ignored.
    pub fn parse(query_string: &str) -> Result<Self, ApiError> {
        let query = page_query(query_string)?;
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
        Ok(Self {
            limit,
            after,
            outcome,
            cursor: query.cursor,
        })
    }
}

/// A page of jobs, newest first; `_links.next` when more follow.
#[derive(Serialize, ToSchema)]
struct JobPage {
    #[serde(rename = "_links")]
    links: PageLinks,
    #[serde(rename = "_embedded")]
    embedded: EmbeddedJobs,
    size: usize,
}

/// A page of a job's results, in item order; `_links.next` when more follow.
#[derive(Serialize, ToSchema)]
struct ResultPage {
    #[serde(rename = "_links")]
    links: PageLinks,
    #[serde(rename = "_embedded")]
    embedded: EmbeddedResults,
    size: usize,
}

#[derive(Serialize, ToSchema)]
struct EmbeddedJobs {
    #[serde(rename = "oathJobs")]
    oath_jobs: Vec<JobResource>,
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/oathJobs",
    tag = "Jobs",
    operation_id = "listJobs",
    params(
        EnvPath,
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
            description = "Jobs per page, 1 to 1000; default 100."),
        ("cursor" = Option<String>, Query, description = "Opaque: taken from a page's `_links.next`."),
    ),
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
) -> Result<HttpResponse, ApiError> {
    let env = auth.env;
    let query = JobListRequest::parse(req.query_string())?;
    let limit = query.limit;
    let mut rows = store::list(&state.db, env, query.before, limit + 1).await?;
    let next = page::cut(&mut rows, limit, |r| cursor::encode(r.id));
    let jobs = render_all(&state, rows).await?;
    let collection = format!(
        "{}/oathJobs",
        environment_url(state.settings.base_url(), env)
    );
    Ok(HttpResponse::Ok().json(JobPage {
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

/// What happened to one item of a job.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobItemResult)]
struct ResultView {
    /// The item's `rowNumber`, or its row in an imported file.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    row_number: Option<i64>,
    /// The item's position in the job, from 0.
    index: i32,
    /// Create jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    serial_number: Option<String>,
    outcome: Outcome,
    /// The token created, revoked or already holding the serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    token_id: Option<Uuid>,
    /// Create jobs: the first two hex digits of the submitted secret, then six `*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    masked_secret: Option<String>,
    /// `INVALID` rows: why the row could not be read as a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    message: Option<String>,
}

impl From<ItemResult> for ResultView {
    fn from(r: ItemResult) -> Self {
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

#[derive(Serialize, ToSchema)]
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
) -> Result<HttpResponse, ApiError> {
    let (env, id) = (auth.env, auth.ids.0);
    let query = ResultsRequest::parse(req.query_string())?;
    let (limit, after, outcome) = (query.limit, query.after, query.outcome);
    if store::get(&state.db, env, id).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let mut rows = results::page(&state.db, env, id, after, outcome, limit + 1).await?;
    let next = page::cut(&mut rows, limit, |r| index_cursor(r.idx));
    let mut params = vec![("limit", limit.to_string())];
    if let Some(o) = outcome {
        params.push(("outcome", o.as_str().to_string()));
    }
    let collection = format!(
        "{}/oathJobs/{id}/results",
        environment_url(state.settings.base_url(), env)
    );
    let results: Vec<ResultView> = rows.into_iter().map(ResultView::from).collect();
    Ok(HttpResponse::Ok().json(ResultPage {
        links: page::links(&collection, &params, query.cursor.as_deref(), next),
        size: results.len(),
        embedded: EmbeddedResults { results },
    }))
}
