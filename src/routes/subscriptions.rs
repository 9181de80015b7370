//! `/v1/environments/{envID}/subscriptions`: webhook subscriptions. The signing secret is shown
//! once, in the answer to the create; header values are never shown (nor logged).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{Authorized, PathIds, SubscriptionsRead, SubscriptionsWrite};
use super::page::{self, Paging};
use super::tokens::{environment_url, timestamp};
use super::{collection_url, cursor, json_object, AppState, EnvPath, IdRef, Link, Reply};
use crate::domain::{DetailCode, FieldError, Secret};
use crate::error::responses::AuthenticatedErrors;
use crate::error::ApiError;
use crate::events::{signature, target, EventType};
use crate::service::OrNotFound;
use crate::store::subscriptions::{self as store, NewSubscription, Subscription};

/// `{subscription_id}`.
pub struct SubscriptionId(pub Uuid);

impl PathIds for SubscriptionId {
    fn from_path(req: &HttpRequest) -> Result<Self, ApiError> {
        req.match_info()
            .get("subscription_id")
            .and_then(|s| Uuid::try_parse(s).ok())
            .map(Self)
            .ok_or_else(ApiError::not_found)
    }
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    /// The environment (tenant).
    pub env_id: Uuid,
    /// The subscription.
    pub subscription_id: Uuid,
}

/// What a header value is shown as.
const REDACTED: &str = "<redacted>";
/// Headers a subscription may set, at most.
const MAX_HEADERS: usize = 20;
/// Longest header value.
const MAX_HEADER_VALUE: usize = 4096;
/// Longest URL and name.
const MAX_URL: usize = 2048;
const MAX_NAME: usize = 100;
/// Headers the delivery sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "oath-signature",
    "oath-delivery-id",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// A subscription as shown: never its signing secret (but in the create's answer) nor its
/// header values.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Subscription)]
pub struct SubscriptionResource {
    #[serde(rename = "_links")]
    links: SubscriptionLinks,
    id: Uuid,
    environment: IdRef,
    name: String,
    enabled: bool,
    http_endpoint: EndpointView,
    /// Absent: every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    filter_options: Option<FilterOptions>,
    delivery: DeliveryView,
    /// Base64 of 32 random bytes: the HMAC-SHA256 key of `Oath-Signature`. In the answer to the
    /// create only; store it then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    signing_secret: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = SubscriptionLinks)]
struct SubscriptionLinks {
    #[serde(rename = "self")]
    self_: Link,
    environment: Link,
}

#[derive(Serialize, ToSchema)]
#[schema(as = HttpEndpoint)]
struct EndpointView {
    url: String,
    /// Names as given; every value shown as `<redacted>`.
    headers: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct FilterOptions {
    #[schema(example = json!(["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"]))]
    included_action_types: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SubscriptionDelivery)]
struct DeliveryView {
    /// Events of the subscription's types not yet delivered.
    pending: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    last_success_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    last_failure_at: Option<String>,
    /// `HTTP 503`, `timeout`, `connection refused`, ...: never the receiver's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_failure: Option<String>,
    /// Events dropped undelivered after `events.max_delivery_age_seconds`.
    dropped: i64,
}

fn subscription_url(base: &str, env: Uuid, id: Uuid) -> String {
    format!("{base}/v1/environments/{env}/subscriptions/{id}")
}

impl SubscriptionResource {
    fn new(base: &str, row: Subscription, pending: i64, signing_secret: Option<String>) -> Self {
        let env = row.environment_id;
        Self {
            links: SubscriptionLinks {
                self_: Link {
                    href: subscription_url(base, env, row.id),
                },
                environment: Link {
                    href: environment_url(base, env),
                },
            },
            id: row.id,
            environment: IdRef { id: env },
            name: row.name,
            enabled: row.enabled,
            http_endpoint: EndpointView {
                url: row.url,
                headers: row
                    .header_names
                    .into_iter()
                    .map(|name| (name, REDACTED.to_string()))
                    .collect(),
            },
            filter_options: row.included_types.map(|types| FilterOptions {
                included_action_types: types,
            }),
            delivery: DeliveryView {
                pending,
                last_success_at: row.last_success_at.map(timestamp),
                last_failure_at: row.last_failure_at.map(timestamp),
                last_failure: row.last_failure,
                dropped: row.dropped,
            },
            signing_secret,
            created_at: timestamp(row.created_at),
            updated_at: timestamp(row.updated_at),
        }
    }
}

/// A subscription's body, parsed: every problem reported with its path.
struct SubscriptionRequest {
    name: String,
    enabled: bool,
    url: String,
    /// Names and values, in the order given.
    headers: Vec<(String, String)>,
    included_types: Option<Vec<String>>,
}

/// The request body, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(as = SubscriptionRequest, example = json!({
    "name": "siem", "enabled": true,
    "httpEndpoint": {"url": "https://hooks.example.com/oath",
                     "headers": {"Authorization": "Basic c2llbTpzZWNyZXQ="}},
    "filterOptions": {"includedActionTypes": ["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"]}
}))]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct SubscriptionRequestDoc {
    #[schema(example = "siem")]
    name: String,
    /// Default true.
    enabled: Option<bool>,
    #[schema(value_type = Object, example = json!({"url": "https://hooks.example.com/oath", "headers": {"Authorization": "Basic ..."}}))]
    http_endpoint: Value,
    #[schema(value_type = Option<Object>, example = json!({"includedActionTypes": ["OATH_TOKEN.CREATED", "OATH_TOKEN.DELETED"]}))]
    filter_options: Option<Value>,
}

impl SubscriptionRequest {
    fn parse(body: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        for key in body.keys() {
            if !["name", "enabled", "httpEndpoint", "filterOptions"].contains(&key.as_str()) {
                errors.push(FieldError::invalid(key.as_str(), "unknown property"));
            }
        }
        let name = match body.get("name") {
            None => {
                errors.push(FieldError::required("name"));
                String::new()
            }
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_NAME => {
                s.clone()
            }
            Some(_) => {
                errors.push(FieldError::invalid(
                    "name",
                    format!("name must be a string of 1 to {MAX_NAME} characters"),
                ));
                String::new()
            }
        };
        let enabled = match body.get("enabled") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.push(FieldError::invalid(
                    "enabled",
                    "enabled must be true or false",
                ));
                true
            }
        };
        let (mut url, mut headers) = (String::new(), Vec::new());
        match body.get("httpEndpoint") {
            None => errors.push(FieldError::required("httpEndpoint")),
            Some(Value::Object(endpoint)) => {
                for key in endpoint.keys() {
                    if key != "url" && key != "headers" {
                        errors.push(FieldError::invalid(
                            format!("httpEndpoint.{key}"),
                            "unknown property",
                        ));
                    }
                }
                match endpoint.get("url") {
                    None => errors.push(FieldError::required("httpEndpoint.url")),
                    Some(Value::String(u)) if u.len() <= MAX_URL => url = u.clone(),
                    Some(_) => errors.push(FieldError::invalid(
                        "httpEndpoint.url",
                        format!("url must be a string of at most {MAX_URL} characters"),
                    )),
                }
                match endpoint.get("headers") {
                    None => {}
                    Some(Value::Object(h)) if h.len() <= MAX_HEADERS => {
                        for (name, value) in h {
                            let target = format!("httpEndpoint.headers.{name}");
                            let valid_name = header::HeaderName::from_bytes(name.as_bytes())
                                .is_ok()
                                && !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str());
                            if !valid_name {
                                errors.push(FieldError::invalid(
                                    target,
                                    "not a header name the subscription may set",
                                ));
                                continue;
                            }
                            match value {
                                Value::String(v)
                                    if v.len() <= MAX_HEADER_VALUE
                                        && header::HeaderValue::from_str(v).is_ok() =>
                                {
                                    headers.push((name.clone(), v.clone()))
                                }
                                // The value is never echoed: it may be a credential.
                                _ => errors.push(FieldError::invalid(
                                    target,
                                    "a header value must be a string of visible characters",
                                )),
                            }
                        }
                    }
                    Some(_) => errors.push(FieldError::invalid(
                        "httpEndpoint.headers",
                        format!("headers must be an object of at most {MAX_HEADERS} names and string values"),
                    )),
                }
            }
            Some(_) => errors.push(FieldError::invalid(
                "httpEndpoint",
                "httpEndpoint must be an object",
            )),
        }
        let included_types = match body.get("filterOptions") {
            None | Some(Value::Null) => None,
            Some(Value::Object(options)) => {
                for key in options.keys() {
                    if key != "includedActionTypes" {
                        errors.push(FieldError::invalid(
                            format!("filterOptions.{key}"),
                            "unknown property",
                        ));
                    }
                }
                match options.get("includedActionTypes") {
                    Some(Value::Array(types)) if !types.is_empty() => {
                        let mut parsed = Vec::new();
                        for (i, t) in types.iter().enumerate() {
                            match t.as_str().and_then(EventType::parse) {
                                Some(t) if !parsed.contains(&t.as_str().to_string()) => {
                                    parsed.push(t.as_str().to_string())
                                }
                                Some(_) => {}
                                None => errors.push(FieldError::invalid(
                                    format!("filterOptions.includedActionTypes[{i}]"),
                                    "not an event type",
                                )),
                            }
                        }
                        Some(parsed)
                    }
                    _ => {
                        errors.push(FieldError::invalid(
                            "filterOptions.includedActionTypes",
                            "includedActionTypes must be a non-empty array of event types",
                        ));
                        None
                    }
                }
            }
            Some(_) => {
                errors.push(FieldError::invalid(
                    "filterOptions",
                    "filterOptions must be an object",
                ));
                None
            }
        };
        if errors.is_empty() {
            Ok(Self {
                name,
                enabled,
                url,
                headers,
                included_types,
            })
        } else {
            Err(errors)
        }
    }
}

/// Reads and checks a create or update body: the fields, then the target against the rules
/// (its address, and the addresses its name resolves to).
async fn read_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<SubscriptionRequest, ApiError> {
    let (_, body) = json_object(req, payload, state, &["application/json"]).await?;
    let request = SubscriptionRequest::parse(&body).map_err(ApiError::invalid_data)?;
    let rules = rules(state);
    let bad_url =
        |m: String| ApiError::invalid_data(vec![FieldError::invalid("httpEndpoint.url", m)]);
    let url = target::parse(&request.url, rules).map_err(bad_url)?;
    // A name that does not resolve yet is accepted (delivery checks again); one that resolves
    // to an address the rules refuse is not.
    if let Ok(Err(m)) = tokio::time::timeout(RESOLVE_TIMEOUT, target::resolve(&url, rules)).await {
        if m != target::UNRESOLVED {
            return Err(bad_url(m));
        }
    }
    Ok(request)
}

/// How long a create waits for its target's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn rules(state: &AppState) -> target::Rules {
    target::Rules {
        allow_http: state.settings().events.allow_http,
        allow_private: state.settings().events.allow_private_targets,
    }
}

/// The header values sealed together, bound to the subscription.
fn seal_headers(
    state: &AppState,
    env: Uuid,
    id: Uuid,
    headers: &[(String, String)],
) -> crate::crypto::Sealed {
    let values: Vec<&str> = headers.iter().map(|(_, v)| v.as_str()).collect();
    let json = serde_json::to_vec(&values).expect("strings serialize");
    state
        .services
        .cipher
        .seal(&Secret::from_bytes(json), env, id)
}

async fn resource(
    state: &AppState,
    row: Subscription,
    signing_secret: Option<String>,
) -> Result<SubscriptionResource, ApiError> {
    let mut conn = state.db().acquire().await?;
    let pending = store::pending(&mut conn, row.environment_id, row.id).await?;
    Ok(SubscriptionResource::new(
        state.settings().base_url(),
        row,
        pending,
        signing_secret,
    ))
}

/// Create a webhook subscription.
///
/// The answer carries `signingSecret`, shown this once. At most
/// `events.max_subscriptions_per_environment` per environment (`400 INVALID_DATA`,
/// `LIMIT_EXCEEDED`). The URL must be `https://` and must not be or resolve to a loopback,
/// private, link-local, unique-local or unspecified address.
#[utoipa::path(
    post,
    path = "/v1/environments/{env_id}/subscriptions",
    tag = "Events",
    operation_id = "createSubscription",
    params(EnvPath),
    request_body(content = SubscriptionRequestDoc, content_type = "application/json"),
    responses(
        (status = 201, description = "The subscription, with its signing secret.", body = SubscriptionResource,
            headers(("Location" = String, description = "The subscription's URL"))),
        crate::error::responses::BodyErrors,
        crate::error::responses::AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:subscriptions:write"])),
)]
pub async fn create(
    auth: Authorized<SubscriptionsWrite>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let request = read_request(&req, payload, &state).await?;
    let id = Uuid::now_v7();
    let secret = signature::new_secret();
    let sealed_secret = state
        .services
        .cipher
        .seal(&Secret::from_bytes(secret.to_vec()), env, id);
    let headers = seal_headers(&state, env, id, &request.headers);
    let names: Vec<String> = request.headers.iter().map(|(n, _)| n.clone()).collect();
    let new = NewSubscription {
        name: &request.name,
        enabled: request.enabled,
        url: &request.url,
        header_names: &names,
        headers: &headers,
        included_types: request.included_types.as_deref(),
    };
    let max = state.settings().events.max_subscriptions_per_environment;
    let row = store::insert(state.db(), env, id, &new, &sealed_secret, max)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_data(vec![FieldError::new(
                DetailCode::LimitExceeded,
                "",
                format!("the environment already has its limit of {max} subscriptions"),
            )])
        })?;
    crate::audit::committed(&req, Some(id), StatusCode::CREATED);
    tracing::info!(subscription_id = %id, "subscription created");
    let resource = resource(&state, row, Some(signature::encode_secret(&secret))).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, resource.links.self_.href.clone()))
        .json(resource))
}

/// Replace a webhook subscription.
///
/// The body is as for the create; the signing secret and the delivery position stay.
#[utoipa::path(
    put,
    path = "/v1/environments/{env_id}/subscriptions/{subscription_id}",
    tag = "Events",
    operation_id = "updateSubscription",
    params(SubscriptionPath),
    request_body(content = SubscriptionRequestDoc, content_type = "application/json"),
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionResource),
        crate::error::responses::BodyErrors,
        crate::error::responses::AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:subscriptions:write"])),
)]
pub async fn update(
    auth: Authorized<SubscriptionsWrite, SubscriptionId>,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let (env, id) = (auth.env, auth.ids.0);
    let request = read_request(&req, payload, &state).await?;
    let headers = seal_headers(&state, env, id, &request.headers);
    let names: Vec<String> = request.headers.iter().map(|(n, _)| n.clone()).collect();
    let new = NewSubscription {
        name: &request.name,
        enabled: request.enabled,
        url: &request.url,
        header_names: &names,
        headers: &headers,
        included_types: request.included_types.as_deref(),
    };
    let row = store::update(state.db(), env, id, &new)
        .await?
        .or_not_found()?;
    crate::audit::committed(&req, None, StatusCode::OK);
    tracing::info!(subscription_id = %id, "subscription updated");
    Ok(HttpResponse::Ok().json(resource(&state, row, None).await?))
}

/// Read a webhook subscription, with where its delivery stands.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/subscriptions/{subscription_id}",
    tag = "Events",
    operation_id = "getSubscription",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The subscription.", body = SubscriptionResource),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:subscriptions:read"])),
)]
pub async fn get(
    auth: Authorized<SubscriptionsRead, SubscriptionId>,
    state: web::Data<AppState>,
) -> Reply {
    let (env, id) = (auth.env, auth.ids.0);
    let row = store::get(state.db(), env, id).await?.or_not_found()?;
    Ok(HttpResponse::Ok().json(resource(&state, row, None).await?))
}

/// Delete a webhook subscription: nothing more is delivered to it.
#[utoipa::path(
    delete,
    path = "/v1/environments/{env_id}/subscriptions/{subscription_id}",
    tag = "Events",
    operation_id = "deleteSubscription",
    params(SubscriptionPath),
    responses(
        (status = 204, description = "The subscription is gone."),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:subscriptions:write"])),
)]
pub async fn delete(
    auth: Authorized<SubscriptionsWrite, SubscriptionId>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let (env, id) = (auth.env, auth.ids.0);
    if !store::delete(state.db(), env, id).await? {
        return Err(ApiError::not_found());
    }
    crate::audit::committed(&req, None, StatusCode::NO_CONTENT);
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Subscriptions per page, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Opaque: taken from a page's `_links.next`.
    cursor: Option<String>,
}

super::page_type! {
    /// A page of subscriptions, oldest first; `_links.next` when more follow.
    SubscriptionPage { EmbeddedSubscriptions "subscriptions": SubscriptionResource }
}

/// List the environment's webhook subscriptions.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}/subscriptions",
    tag = "Events",
    operation_id = "listSubscriptions",
    params(EnvPath, ListQuery),
    responses(
        (status = 200, description = "A page of subscriptions.", body = SubscriptionPage),
        (status = 400, response = crate::error::responses::BadRequest),
        AuthenticatedErrors,
    ),
    security(("bearer" = ["oath:subscriptions:read"])),
)]
pub async fn list(
    auth: Authorized<SubscriptionsRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Reply {
    let env = auth.env;
    let q: ListQuery = page::query(req.query_string())?;
    let paging = Paging::parse(q.limit.as_deref(), q.cursor, cursor::decode)?;
    let mut rows = store::list(state.db(), env, paging.last, paging.fetch()).await?;
    let base = state.settings().base_url();
    let links = paging.links(
        &mut rows,
        |r| cursor::encode(r.id),
        &collection_url(base, env, "subscriptions"),
        &[("limit", paging.limit.to_string())],
    );
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(resource(&state, row, None).await?);
    }
    Ok(HttpResponse::Ok().json(SubscriptionPage::new(links, items)))
}
