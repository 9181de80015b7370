//! How a job, a page of jobs and a page of results are shown.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::job::{ItemOutcome, JobStatus, JobType};
use crate::error::ApiError;
use crate::routes::tokens::{environment_url, timestamp};
use crate::routes::{collection_url, cursor, IdRef, Link};
use crate::service::jobs::JobView;
use crate::store::results::{self, ItemResult};

/// A bulk job: its state, progress and result counts.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Job)]
pub struct JobResource {
    #[serde(rename = "_links")]
    pub(super) links: JobLinks,
    pub(super) id: Uuid,
    pub(super) environment: IdRef,
    #[serde(rename = "type")]
    pub(super) job_type: JobType,
    #[serde(rename = "async")]
    pub(super) is_async: bool,
    pub(super) status: JobStatus,
    /// `FAILED` jobs only: why, in words a user can act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) reason: Option<String>,
    pub(super) progress: Progress,
    pub(super) result: JobResultView,
    #[schema(format = DateTime)]
    pub(super) created_at: String,
    #[schema(format = DateTime)]
    pub(super) updated_at: String,
    /// Finished jobs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub(super) completed_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = JobLinks)]
pub(super) struct JobLinks {
    #[serde(rename = "self")]
    pub(super) self_: Link,
    pub(super) environment: Link,
    pub(super) results: Link,
}

#[derive(Serialize, ToSchema)]
#[schema(as = JobProgress)]
pub(super) struct Progress {
    pub(super) processed: i32,
    pub(super) total: i32,
}

/// Counts that are zero are left out, beside the one each job type always shows (as the
/// reference API's PENDING jobs show `{"created": 0}` or `{"revoked": 0}`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobResult)]
pub(super) struct JobResultView {
    /// Create jobs: tokens created.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) created: Option<i32>,
    /// Create jobs: the first 1,000 items whose serial number already existed (or came earlier
    /// in the job); all of them are in the job's results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) duplicates: Vec<DuplicateView>,
    /// Create jobs, only when `duplicates` is cut to its first 1,000: how many there are.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) duplicates_count: Option<i32>,
    /// Revoke jobs: tokens revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) revoked: Option<i32>,
    /// Revoke jobs: ids not found in the environment.
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) not_found: i32,
    /// Revoke jobs: paired tokens left alone (`forceUnpair` false).
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) skipped_paired: i32,
    /// Create jobs: items refused for another reason (`LIMIT_EXCEEDED`, `INVALID` file rows).
    #[serde(skip_serializing_if = "is_zero")]
    pub(super) failed: i32,
}

pub(super) fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobDuplicate)]
pub(super) struct DuplicateView {
    pub(super) serial_number: String,
    /// The first two hex digits of the submitted secret, upper-case, then six `*`.
    #[schema(example = "6E******")]
    pub(super) masked_secret: String,
}

pub(super) fn job_url(base: &str, env: Uuid, id: Uuid) -> String {
    format!("{base}/v1/environments/{env}/jobs/{id}")
}

/// The job's results: a collection whose pages link to each other.
pub(super) fn results_url(base: &str, env: Uuid, id: Uuid) -> String {
    collection_url(base, env, &format!("oathJobs/{id}/results"))
}

impl JobResource {
    pub(super) fn new(base: &str, view: JobView) -> Self {
        let JobView {
            job: row,
            duplicates,
        } = view;
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
                    href: results_url(base, env, row.id),
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
            result: JobResultView {
                created: is_create.then_some(counts.created),
                duplicates: duplicates
                    .into_iter()
                    .map(|d| DuplicateView {
                        serial_number: d.serial_number,
                        masked_secret: d.masked_secret,
                    })
                    .collect(),
                duplicates_count: duplicates_count(counts.duplicates),
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

/// `duplicatesCount` of a job with `duplicates` in all: only when the embedded list, cut to its
/// first [`results::EMBEDDED_DUPLICATES`], does not hold them all.
fn duplicates_count(duplicates: i32) -> Option<i32> {
    (i64::from(duplicates) > results::EMBEDDED_DUPLICATES).then_some(duplicates)
}

pub(super) fn json_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))
}

crate::routes::page_type! {
    /// A page of jobs, newest first; `_links.next` when more follow.
    pub(super) JobPage { EmbeddedJobs "oathJobs": JobResource }
}

crate::routes::page_type! {
    /// A page of a job's results, in item order; `_links.next` when more follow.
    pub(super) ResultPage { EmbeddedResults "results": ResultView }
}

/// What happened to one item of a job.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = JobItemResult)]
pub(super) struct ResultView {
    /// The item's `rowNumber`, or its row in an imported file.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) row_number: Option<i64>,
    /// The item's position in the job, from 0.
    pub(super) index: i32,
    /// Create jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) serial_number: Option<String>,
    pub(super) outcome: ItemOutcome,
    /// The token created, revoked or already holding the serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) token_id: Option<Uuid>,
    /// Create jobs: the first two hex digits of the submitted secret, then six `*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) masked_secret: Option<String>,
    /// `INVALID` rows: why the row could not be read as a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(super) message: Option<String>,
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

/// Result cursors carry the last item index, in the same opaque form as id cursors.
pub(super) fn index_cursor(idx: i32) -> String {
    cursor::encode(Uuid::from_u128(idx as u128))
}

pub(super) fn decode_index_cursor(c: &str) -> Result<i32, ApiError> {
    i32::try_from(cursor::decode(c)?.as_u128())
        .map_err(|_| ApiError::InvalidRequest("The cursor is not valid.".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_count_only_when_the_list_is_cut() {
        let embedded = results::EMBEDDED_DUPLICATES as i32;
        assert_eq!(duplicates_count(0), None);
        assert_eq!(duplicates_count(1), None);
        assert_eq!(duplicates_count(embedded), None);
        assert_eq!(duplicates_count(embedded + 1), Some(embedded + 1));
    }
}
