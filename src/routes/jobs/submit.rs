//! `POST /oathJobs`: a JSON job, or a PSKC or CSV file imported as a create job.

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
use crate::routes::extract::{Authorized, JobsWrite};
use crate::routes::idempotency::{self, IdempotencyKey};
use crate::routes::{origin, read_body, require_media_type, AppState, EnvPath, Reply};
use crate::service::jobs::{self, JobView};

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
) -> Reply {
    let env = auth.env;
    let (job, key) = match read_submission(&req, payload, &state, env).await? {
        Submission::Replayed(first_response) => return Ok(first_response),
        Submission::New { job, key } => (job, key),
    };
    let is_async = job.is_async();
    let mut write = match idempotency::begin(key.as_ref(), &state, env).await? {
        Ok(write) => write,
        Err(first_response) => return Ok(first_response),
    };
    let origin = origin(&req);
    let submitted = jobs::submit(&state.services, &mut write.tx, env, job, &origin).await?;
    let id = submitted.job.id;
    let (location, body) = job_body(&state, submitted)?;
    write
        .commit(StatusCode::ACCEPTED, Some(&location), &body)
        .await?;
    crate::audit::committed(&req, Some(id), StatusCode::ACCEPTED);
    match is_async {
        true => Ok(answer(StatusCode::ACCEPTED, &location, body)),
        false => wait_for(&state, env, id, key.as_ref(), &location).await,
    }
}

/// `"async": false`: the job once it has finished (`200`), or, if it is not finished in time,
/// its current state (`202`; the job goes on), recorded under the request's `Idempotency-Key`.
async fn wait_for(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    key: Option<&IdempotencyKey>,
    location: &str,
) -> Reply {
    let waited = jobs::wait(&state.services, env, id).await?;
    let status = match waited.job.status.is_final() {
        true => StatusCode::OK,
        false => StatusCode::ACCEPTED,
    };
    let (_, body) = job_body(state, waited)?;
    if let Some(key) = key {
        let mut conn = state.db().acquire().await?;
        key.record(&mut conn, env, status, Some(location), &body)
            .await?;
    }
    Ok(answer(status, location, body))
}

/// A submission, read: a new job with the request's `Idempotency-Key`, or the first response
/// to a retry of one.
enum Submission {
    Replayed(HttpResponse),
    New {
        job: NewJob,
        key: Option<IdempotencyKey>,
    },
}

/// Reads and parses a submission. A retry is answered with its first response, and an
/// environment at its limit of unfinished jobs is refused, before any parsing; both are decided
/// again, under a lock, where the job is stored.
async fn read_submission(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    env: Uuid,
) -> Result<Submission, ApiError> {
    let media_type = require_media_type(req, &SUBMIT_MEDIA_TYPES)?;
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
    let settings = state.settings();
    let bytes = read_body(
        req,
        payload,
        settings.jobs.max_body_bytes,
        settings.body_timeout(),
    )
    .await?;
    let key = IdempotencyKey::from_request(req, &bytes, &state.request_hash_key[..])?;
    if let Some(first_response) = idempotency::replay(key.as_ref(), state, env).await? {
        return Ok(Submission::Replayed(first_response));
    }
    jobs::check_room(&state.services, env).await?;
    let job = match json_type {
        Some(expected) => json_job(bytes, expected, state).await?,
        None => import_job(req, env, media_type, bytes, state).await?,
    };
    drop(slot);
    Ok(Submission::New { job, key })
}

/// The media types a submission may have: a JSON job, or a file.
const SUBMIT_MEDIA_TYPES: [&str; 4] = [
    JobType::CREATE_MEDIA_TYPE,
    JobType::REVOKE_MEDIA_TYPE,
    PSKC_MEDIA_TYPE,
    CSV_MEDIA_TYPE,
];

/// The job's URL and its representation, serialised.
fn job_body(state: &AppState, view: JobView) -> Result<(String, Vec<u8>), ApiError> {
    let resource = JobResource::new(state.settings().base_url(), view);
    let location = resource.links.self_.href.clone();
    Ok((location, json_bytes(&resource)?))
}

/// A JSON job body, parsed and validated on the blocking pool: a large body is a fraction of a
/// second of CPU that would otherwise stall every request sharing this worker thread.
async fn json_job(
    bytes: web::Bytes,
    expected: JobType,
    state: &AppState,
) -> Result<NewJob, ApiError> {
    let max_items = state.settings().jobs.max_items;
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

/// Seconds a file upload is told to wait while another file of its environment is imported:
/// about the time a large file takes to parse.
const IMPORT_BUSY_RETRY_AFTER_SECONDS: u32 = 2;

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
    let max_items = state.settings().jobs.max_items;
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
        pbkdf2_max_iterations: state.settings().import.pbkdf2_max_iterations,
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

fn answer(status: StatusCode, location: &str, body: Vec<u8>) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, location))
        .content_type("application/json")
        .body(body)
}
