//! `POST /oathJobs`: a JSON job, or a PSKC or CSV file imported as a create job.

use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use super::views::*;
use crate::domain::job::{
    parse_job, CreateJobRequestDoc, JobRequestError, JobType, NewJob, RevokeJobRequestDoc,
};
use crate::error::responses::{AuthenticatedErrors, BodyErrors, Conflict};
use crate::error::ApiError;
use crate::import::{self, pskc::PskcKeys, ImportError, CSV_MEDIA_TYPE, PSKC_MEDIA_TYPE};
use crate::jobs::queue;
use crate::routes::extract::{Authorized, JobsWrite};
use crate::routes::idempotency::{self, IdempotencyKey};
use crate::routes::EnvPath;
use crate::routes::{read_body, require_media_type};
use crate::startup::AppState;
use crate::store::jobs as store;

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
        ("Idempotency-Key" = Option<String>, Header, description = crate::routes::idempotency::DOC),
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
    let json_type = JobType::from_media_type(media_type);
    // A file holds its environment's one upload slot from before its body is read to the end of
    // its parse: an environment queues at most one file, and never in memory.
    let slot = match json_type {
        Some(_) => None,
        None => Some(state.imports.enter(env).ok_or_else(|| {
            ApiError::Limited {
                message:
                    "A file of this environment is being imported; send this one when it is done."
                        .into(),
                retry_after_seconds: IMPORT_BUSY_RETRY_AFTER_SECONDS,
            }
        })?),
    };
    let started = Instant::now();
    let bytes = read_body(
        &req,
        payload,
        state.settings.jobs.max_body_bytes,
        state.settings.body_timeout(),
    )
    .await?;
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let idempotency_key = IdempotencyKey::from_request(&req, &bytes, &state.request_hash_key[..])?;
    // Before any parsing: a retry is answered with its first response, and an environment at its
    // limit is refused. Both are decided again, under a lock, where the job is stored.
    if let Some(first_response) = idempotency::replay(idempotency_key.as_ref(), &state, env).await?
    {
        return Ok(first_response);
    }
    let limit = state.settings.jobs.max_unfinished_per_environment;
    if store::count_unfinished(&state.db, env).await? >= i64::from(limit) {
        return Err(over_the_unfinished_limit(limit));
    }
    let job = match json_type {
        Some(expected) => json_job(bytes, expected, &state).await?,
        None => import_job(&req, env, media_type, bytes, &state).await?,
    };
    drop(slot);
    let parsed_ms = started.elapsed().as_secs_f64() * 1000.0;

    let job_id = Uuid::now_v7();
    let mut write = match idempotency::begin(idempotency_key.as_ref(), &state, env).await? {
        Ok(write) => write,
        Err(first_response) => return Ok(first_response),
    };
    // After the idempotency claim, so that a retry of an accepted job still replays.
    if store::lock_and_count_unfinished(&mut write.tx, env).await? >= i64::from(limit) {
        return Err(over_the_unfinished_limit(limit));
    }
    let (job_type, is_async) = (job.job_type(), job.is_async());
    let chunk_size = state.settings.jobs.chunk_size;
    let cipher = state.cipher.clone();
    let origin = crate::events::Origin::of(&req);
    let row = queue::enqueue(&mut write.tx, env, job_id, job, chunk_size, cipher, &origin).await?;
    let resource = JobResource::new(state.settings.base_url(), row, Vec::new());
    let location = resource.links.self_.href.clone();
    let body = json_bytes(&resource)?;
    write
        .commit(StatusCode::ACCEPTED, Some(&location), &body)
        .await?;
    crate::audit::committed(&req, Some(job_id), StatusCode::ACCEPTED);
    tracing::info!(
        job_id = %job_id,
        job_type = job_type.as_str(),
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

/// A JSON job body, parsed and validated on the blocking pool: a large body is a fraction of a
/// second of CPU that would otherwise stall every request sharing this worker thread.
async fn json_job(
    bytes: web::Bytes,
    expected: JobType,
    state: &AppState,
) -> Result<NewJob, ApiError> {
    let max_items = state.settings.jobs.max_items;
    web::block(move || parse_job(&bytes, expected, max_items))
        .await
        .map_err(|e| ApiError::Internal(format!("job parser did not finish: {e}")))?
        .map_err(|e| match e {
            JobRequestError::Syntax(message) => ApiError::InvalidRequest(message),
            JobRequestError::Invalid { details, total } => {
                ApiError::invalid_data_of(details, total)
            }
        })
}

fn over_the_unfinished_limit(limit: u32) -> ApiError {
    ApiError::Limited {
        message: format!(
            "The environment has {limit} unfinished jobs, its limit; submit this one when one of them has finished."
        ),
        retry_after_seconds: LIMITED_RETRY_AFTER_SECONDS,
    }
}

/// Seconds a file upload is told to wait while another file of its environment is imported:
/// about the time a large file takes to parse.
const IMPORT_BUSY_RETRY_AFTER_SECONDS: u32 = 2;

/// Seconds a submission over the unfinished-job limit is told to wait: about a chunk's time on a
/// busy deployment, after which a job of the environment may well have finished.
const LIMITED_RETRY_AFTER_SECONDS: u32 = 5;

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
    let _permit = state.imports.parse_permit().await;
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
