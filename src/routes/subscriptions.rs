//! `/v1/environments/{envID}/subscriptions`: webhook subscriptions. The signing secret is shown
//! once, in the answer to the create; header values are never shown (nor logged).

use std::collections::BTreeMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::{Authorized, PathIds, SubscriptionsRead, SubscriptionsWrite};
use super::page::{self, Paging};
use super::tokens::{environment_url, timestamp};
use super::{collection_url, cursor, json_object, AppState, EnvPath, IdRef, Link, Reply};
use crate::domain::subscription::SubscriptionRequest;
use crate::error::responses::AuthenticatedErrors;
use crate::error::ApiError;
use crate::service::subscriptions::{self, SubscriptionView};

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
    fn new(base: &str, view: SubscriptionView, signing_secret: Option<String>) -> Self {
        let SubscriptionView {
            subscription: row,
            pending,
        } = view;
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

/// A create or update body, parsed.
async fn read_request(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<SubscriptionRequest, ApiError> {
    let (_, body) = json_object(req, payload, state, &["application/json"]).await?;
    SubscriptionRequest::parse(&body).map_err(ApiError::invalid_data)
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
    let request = read_request(&req, payload, &state).await?;
    let (created, secret) = subscriptions::create(&state.services, auth.env, &request).await?;
    crate::audit::committed(&req, Some(created.subscription.id), StatusCode::CREATED);
    let resource = SubscriptionResource::new(state.settings().base_url(), created, Some(secret));
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
    let request = read_request(&req, payload, &state).await?;
    let (env, id) = (auth.env, auth.ids.0);
    let updated = subscriptions::update(&state.services, env, id, &request).await?;
    crate::audit::committed(&req, None, StatusCode::OK);
    let base = state.settings().base_url();
    Ok(HttpResponse::Ok().json(SubscriptionResource::new(base, updated, None)))
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
    let found = subscriptions::get(&state.services, auth.env, auth.ids.0).await?;
    let base = state.settings().base_url();
    Ok(HttpResponse::Ok().json(SubscriptionResource::new(base, found, None)))
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
    subscriptions::delete(&state.services, auth.env, auth.ids.0).await?;
    crate::audit::committed(&req, None, StatusCode::NO_CONTENT);
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
    let mut found = subscriptions::list(&state.services, env, paging.last, paging.fetch()).await?;
    let base = state.settings().base_url();
    let links = paging.links(
        &mut found,
        |v| cursor::encode(v.subscription.id),
        &collection_url(base, env, "subscriptions"),
        &[("limit", paging.limit.to_string())],
    );
    let items = found
        .into_iter()
        .map(|v| SubscriptionResource::new(base, v, None))
        .collect();
    Ok(HttpResponse::Ok().json(SubscriptionPage::new(links, items)))
}
