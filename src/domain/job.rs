//! Bulk job requests, parsed whole: every invalid item is reported (up to a cap), or the job is
//! valid as a whole. Items are kept as raw JSON slices of the body until each is parsed, so a
//! 100,000-token body is never held as one JSON tree.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::token::{TokenRequestDoc, TokenSource};
use super::{shown_name, FieldError, NewToken};

/// Details listed in one error response; the message gives the total.
pub const MAX_DETAILS: usize = 1000;

/// Jobs of at least this many items are parsed, and their secrets sealed, on two threads.
pub const PARALLEL_ITEMS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub enum JobType {
    #[serde(rename = "CREATE_OATH_TOKENS")]
    #[schema(rename = "CREATE_OATH_TOKENS")]
    CreateTokens,
    #[serde(rename = "REVOKE_OATH_TOKENS")]
    #[schema(rename = "REVOKE_OATH_TOKENS")]
    RevokeTokens,
}

impl JobType {
    pub const CREATE_MEDIA_TYPE: &'static str =
        "application/vnd.pingidentity.job.oathtokens.create+json";
    pub const REVOKE_MEDIA_TYPE: &'static str =
        "application/vnd.pingidentity.job.oathtokens.revoke+json";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTokens => "CREATE_OATH_TOKENS",
            Self::RevokeTokens => "REVOKE_OATH_TOKENS",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CREATE_OATH_TOKENS" => Some(Self::CreateTokens),
            "REVOKE_OATH_TOKENS" => Some(Self::RevokeTokens),
            _ => None,
        }
    }

    pub fn from_media_type(essence: &str) -> Option<Self> {
        match essence {
            Self::CREATE_MEDIA_TYPE => Some(Self::CreateTokens),
            Self::REVOKE_MEDIA_TYPE => Some(Self::RevokeTokens),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    InProgress,
    Done,
    Failed,
    /// Stopped on request: the items processed before stay done, the rest were not processed.
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::InProgress => "IN_PROGRESS",
            Self::Done => "DONE",
            Self::Failed => "FAILED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "IN_PROGRESS" => Some(Self::InProgress),
            "DONE" => Some(Self::Done),
            "FAILED" => Some(Self::Failed),
            "CANCELED" => Some(Self::Canceled),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Canceled)
    }
}

/// What happened to one item of a job (stored in its chunk's `job_result_chunks` row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = Outcome, rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ItemOutcome {
    Created,
    Duplicate,
    Revoked,
    NotFound,
    SkippedPaired,
    LimitExceeded,
    Invalid,
}

impl ItemOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Duplicate => "DUPLICATE",
            Self::Revoked => "REVOKED",
            Self::NotFound => "NOT_FOUND",
            Self::SkippedPaired => "SKIPPED_PAIRED",
            Self::LimitExceeded => "LIMIT_EXCEEDED",
            Self::Invalid => "INVALID",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::Duplicate,
            Self::Revoked,
            Self::NotFound,
            Self::SkippedPaired,
            Self::LimitExceeded,
            Self::Invalid,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

// What `parse_job` accepts for a create job, for the OpenAPI document.
/// A bulk create job. Every item is validated before anything is stored: one invalid item refuses
/// the whole job, with a detail per problem (`tokens[12].secret`).
#[derive(ToSchema)]
#[schema(
    as = CreateJobRequest,
    example = json!({"type": "CREATE_OATH_TOKENS", "tokens": [
        {"serialNumber": "2308734700388", "secret": "6EBD59F71A634C48C4619CD33F6C385C9237C9BA",
         "type": "HOTP", "otpLength": 8}]})
)]
pub struct CreateJobRequestDoc {
    /// `CREATE_OATH_TOKENS`.
    #[schema(rename = "type", value_type = JobType)]
    pub job_type: String,
    /// Default true. `false`: the response waits (up to a configured time) for the job to finish.
    #[schema(rename = "async")]
    pub is_async: Option<bool>,
    /// 1 to 100,000 tokens (configurable).
    #[schema(min_items = 1, max_items = 100000)]
    pub tokens: Vec<TokenRequestDoc>,
}

// What `parse_job` accepts for a revoke job.
/// A bulk revoke job.
#[derive(ToSchema)]
#[schema(
    as = RevokeJobRequest,
    example = json!({"type": "REVOKE_OATH_TOKENS", "async": true, "forceUnpair": false,
                     "tokenIds": ["0193a8f0-5c1e-7c4d-9a51-1b2c3d4e5f60"]})
)]
pub struct RevokeJobRequestDoc {
    /// `REVOKE_OATH_TOKENS`.
    #[schema(rename = "type", value_type = JobType)]
    pub job_type: String,
    /// Default true.
    #[schema(rename = "async")]
    pub is_async: Option<bool>,
    /// Default false: paired tokens are left alone (`SKIPPED_PAIRED`); true unpairs and revokes them.
    #[schema(rename = "forceUnpair")]
    pub force_unpair: Option<bool>,
    /// 1 to 100,000 token ids (configurable).
    #[schema(rename = "tokenIds", min_items = 1, max_items = 100000)]
    pub token_ids: Vec<Uuid>,
}

/// One item of a create job: a token, or a row of an imported file that could not be read as a
/// token (it becomes an INVALID result, not a rejected request).
#[derive(Debug)]
pub enum CreateItem {
    Token(NewToken),
    Invalid(InvalidRow),
}

#[cfg(test)]
impl CreateItem {
    /// The token this item is; panics on an invalid row.
    pub fn token(&self) -> &NewToken {
        match self {
            Self::Token(t) => t,
            other => panic!("not a token: {other:?}"),
        }
    }

    /// The invalid row this item is; panics on a token.
    pub fn invalid(&self) -> &InvalidRow {
        match self {
            Self::Invalid(r) => r,
            other => panic!("not an invalid row: {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InvalidRow {
    pub row_number: i64,
    pub serial_number: Option<String>,
    pub message: String,
}

#[derive(Debug)]
pub enum NewJob {
    Create {
        is_async: bool,
        items: Vec<CreateItem>,
    },
    Revoke {
        is_async: bool,
        force_unpair: bool,
        token_ids: Vec<Uuid>,
    },
}

impl NewJob {
    pub fn job_type(&self) -> JobType {
        match self {
            Self::Create { .. } => JobType::CreateTokens,
            Self::Revoke { .. } => JobType::RevokeTokens,
        }
    }

    pub fn is_async(&self) -> bool {
        match self {
            Self::Create { is_async, .. } | Self::Revoke { is_async, .. } => *is_async,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Self::Create { items, .. } => items.len(),
            Self::Revoke { token_ids, .. } => token_ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a job body was refused.
#[derive(Debug)]
pub enum JobRequestError {
    /// Not JSON, or not an object: 400 INVALID_REQUEST.
    Syntax(String),
    /// Field problems: 400 INVALID_DATA. `total` counts all of them; `details` holds at most
    /// [`MAX_DETAILS`].
    Invalid {
        details: Vec<FieldError>,
        total: usize,
    },
}

/// Collects field errors, keeping the first [`MAX_DETAILS`] and counting the rest.
#[derive(Default)]
struct Problems {
    details: Vec<FieldError>,
    total: usize,
}

impl Problems {
    fn push(&mut self, e: FieldError) {
        self.total += 1;
        if self.details.len() < MAX_DETAILS {
            self.details.push(e);
        }
    }

    fn extend(&mut self, errors: Vec<FieldError>) {
        for e in errors {
            self.push(e);
        }
    }

    /// `other`'s problems after these: its details while there is room, and its total.
    fn append(&mut self, other: Problems) {
        let uncounted = other.total - other.details.len();
        self.extend(other.details);
        self.total += uncounted;
    }
}

/// Parses a job body sent with the media type of `expected`, allowing 1 to `max_items` items.
pub fn parse_job(
    body: &[u8],
    expected: JobType,
    max_items: usize,
) -> Result<NewJob, JobRequestError> {
    let fields: HashMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| {
        JobRequestError::Syntax(if e.is_data() {
            "The request body must be a JSON object.".into()
        } else {
            format!(
                "The request body is not valid JSON (line {}, column {}).",
                e.line(),
                e.column()
            )
        })
    })?;
    let mut problems = Problems::default();

    let allowed: &[&str] = match expected {
        JobType::CreateTokens => &["type", "async", "tokens"],
        JobType::RevokeTokens => &["type", "async", "forceUnpair", "tokenIds"],
    };
    let mut unknown: Vec<&String> = fields
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    unknown.sort();
    for key in unknown.into_iter().map(|k| shown_name(k)) {
        problems.push(FieldError::invalid(
            key.as_str(),
            format!("unknown property {key}"),
        ));
    }

    match fields.get("type").map(|raw| value_of(raw)) {
        None | Some(Value::Null) => problems.push(FieldError::required("type")),
        Some(Value::String(s)) if JobType::parse(&s) == Some(expected) => {}
        Some(_) => problems.push(FieldError::invalid(
            "type",
            format!("type must be {} for this Content-Type", expected.as_str()),
        )),
    }
    let is_async = optional_bool(&fields, "async", true, &mut problems);

    let job = match expected {
        JobType::CreateTokens => {
            let raw = items(&fields, "tokens", max_items, &mut problems);
            // Each part keeps at most MAX_DETAILS details of its own, so that a body of invalid
            // items is never held as all its errors; the first ones in item order are among them.
            let parts = crate::parallel::parts(&raw, PARALLEL_ITEMS, |first, part| {
                let mut found = Problems::default();
                let tokens: Vec<CreateItem> = part
                    .iter()
                    .enumerate()
                    .filter_map(|(i, raw)| {
                        NewToken::parse(&value_of(raw), TokenSource::JobItem(first + i))
                            .map(CreateItem::Token)
                            .map_err(|errors| found.extend(errors))
                            .ok()
                    })
                    .collect();
                (tokens, found)
            });
            let mut items = Vec::with_capacity(raw.len());
            for (tokens, found) in parts {
                items.extend(tokens);
                problems.append(found);
            }
            NewJob::Create { is_async, items }
        }
        JobType::RevokeTokens => {
            let force_unpair = optional_bool(&fields, "forceUnpair", false, &mut problems);
            let token_ids = items(&fields, "tokenIds", max_items, &mut problems)
                .into_iter()
                .enumerate()
                .filter_map(|(i, raw)| {
                    let parsed = value_of(raw).as_str().and_then(|s| Uuid::try_parse(s).ok());
                    if parsed.is_none() {
                        problems.push(FieldError::invalid(
                            format!("tokenIds[{i}]"),
                            "each token id must be a UUID string",
                        ));
                    }
                    parsed
                })
                .collect();
            NewJob::Revoke {
                is_async,
                force_unpair,
                token_ids,
            }
        }
    };
    if problems.total > 0 {
        return Err(JobRequestError::Invalid {
            details: problems.details,
            total: problems.total,
        });
    }
    Ok(job)
}

/// A raw value that is known to be valid JSON (it came out of a successful parse).
fn value_of(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn optional_bool(
    fields: &HashMap<String, &RawValue>,
    name: &str,
    default: bool,
    problems: &mut Problems,
) -> bool {
    match fields.get(name).map(|raw| value_of(raw)) {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            problems.push(FieldError::invalid(
                name,
                format!("{name} must be true or false"),
            ));
            default
        }
    }
}

/// The items of the array `name`: 1 to `max` of them.
fn items<'a>(
    fields: &HashMap<String, &'a RawValue>,
    name: &str,
    max: usize,
    problems: &mut Problems,
) -> Vec<&'a RawValue> {
    let Some(raw) = fields.get(name) else {
        problems.push(FieldError::required(name));
        return Vec::new();
    };
    match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        Ok(items) if (1..=max).contains(&items.len()) => items,
        Ok(items) => {
            problems.push(FieldError::invalid(
                name,
                format!("{name} must hold 1 to {max} items, not {}", items.len()),
            ));
            Vec::new()
        }
        Err(_) if raw.get() == "null" => {
            problems.push(FieldError::required(name));
            Vec::new()
        }
        Err(_) => {
            problems.push(FieldError::invalid(
                name,
                format!("{name} must be an array"),
            ));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn targets(body: Value, t: JobType) -> (Vec<String>, usize) {
        match parse_job(body.to_string().as_bytes(), t, 5) {
            Err(JobRequestError::Invalid { details, total }) => {
                (details.into_iter().map(|d| d.target).collect(), total)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_job_reports_item_paths() {
        let token = json!({"serialNumber": "A1", "secret": "00112233445566778899aabbccddeeff",
                           "type": "HOTP", "otpLength": 6});
        let mut bad = token.clone();
        bad["otpLength"] = json!(7);
        let (t, total) = targets(
            json!({"type": "CREATE_OATH_TOKENS", "tokens": [token, bad], "extra": 1}),
            JobType::CreateTokens,
        );
        assert_eq!(t, ["extra", "tokens[1].otpLength"]);
        assert_eq!(total, 2);
    }

    #[test]
    fn a_large_job_parsed_on_two_threads_keeps_item_order() {
        let n = 2 * PARALLEL_ITEMS + 1;
        let token = |i: usize| {
            json!({"serialNumber": format!("S{i}"), "secret": "00112233445566778899aabbccddeeff",
                   "type": "HOTP", "otpLength": 6})
        };
        let body = |bad: &[usize]| {
            let tokens: Vec<Value> = (0..n)
                .map(|i| {
                    let mut t = token(i);
                    if bad.contains(&i) {
                        t["otpLength"] = json!(7);
                    }
                    t
                })
                .collect();
            json!({"type": "CREATE_OATH_TOKENS", "tokens": tokens}).to_string()
        };
        match parse_job(body(&[]).as_bytes(), JobType::CreateTokens, n).unwrap() {
            NewJob::Create { items, .. } => {
                let serials: Vec<&str> = items
                    .iter()
                    .map(|item| item.token().serial_number.as_str())
                    .collect();
                let expected: Vec<String> = (0..n).map(|i| format!("S{i}")).collect();
                assert_eq!(serials, expected);
            }
            other => panic!("{other:?}"),
        }
        let bad = [3, PARALLEL_ITEMS, n - 1];
        match parse_job(body(&bad).as_bytes(), JobType::CreateTokens, n) {
            Err(JobRequestError::Invalid { details, total }) => {
                let targets: Vec<String> = details.into_iter().map(|d| d.target).collect();
                let expected: Vec<String> = bad
                    .iter()
                    .map(|i| format!("tokens[{i}].otpLength"))
                    .collect();
                assert_eq!((targets, total), (expected, 3));
            }
            other => panic!("{other:?}"),
        }
        // Every item invalid: the first MAX_DETAILS details in item order, every one counted.
        let empty = vec![json!({}); n];
        let body = json!({"type": "CREATE_OATH_TOKENS", "tokens": empty}).to_string();
        match parse_job(body.as_bytes(), JobType::CreateTokens, n) {
            Err(JobRequestError::Invalid { details, total }) => {
                assert_eq!((details.len(), total), (MAX_DETAILS, 4 * n));
                let per_item = 4;
                assert!(details[0].target.starts_with("tokens[0]."));
                let last = MAX_DETAILS / per_item - 1;
                assert!(details[MAX_DETAILS - 1]
                    .target
                    .starts_with(&format!("tokens[{last}].")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn type_must_match_media_type_and_items_are_bounded() {
        let (t, _) = targets(
            json!({"type": "REVOKE_OATH_TOKENS", "tokens": []}),
            JobType::CreateTokens,
        );
        assert_eq!(t, ["type", "tokens"]);
        let ids: Vec<String> = (0..6).map(|_| Uuid::new_v4().to_string()).collect();
        let (t, _) = targets(
            json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": ids}),
            JobType::RevokeTokens,
        );
        assert_eq!(t, ["tokenIds"]);
        let (t, _) = targets(
            json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": ["x", 5], "async": "no", "forceUnpair": 1}),
            JobType::RevokeTokens,
        );
        assert_eq!(t, ["async", "forceUnpair", "tokenIds[0]", "tokenIds[1]"]);
    }

    #[test]
    fn details_are_capped_but_counted() {
        let bad: Vec<Value> = (0..1500).map(|_| json!({})).collect();
        match parse_job(
            json!({"type": "CREATE_OATH_TOKENS", "tokens": bad})
                .to_string()
                .as_bytes(),
            JobType::CreateTokens,
            100_000,
        ) {
            Err(JobRequestError::Invalid { details, total }) => {
                assert_eq!(details.len(), MAX_DETAILS);
                assert_eq!(total, 1500 * 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn revoke_defaults() {
        let id = Uuid::new_v4();
        let job = parse_job(
            json!({"type": "REVOKE_OATH_TOKENS", "tokenIds": [id]})
                .to_string()
                .as_bytes(),
            JobType::RevokeTokens,
            10,
        )
        .unwrap();
        match job {
            NewJob::Revoke {
                is_async,
                force_unpair,
                token_ids,
            } => {
                assert!(is_async && !force_unpair);
                assert_eq!(token_ids, [id]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_objects_are_syntax_errors() {
        for body in ["[]", "1", "{", ""] {
            assert!(matches!(
                parse_job(body.as_bytes(), JobType::CreateTokens, 10),
                Err(JobRequestError::Syntax(_))
            ));
        }
    }
}
