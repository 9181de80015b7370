//! Webhook subscriptions: create, replace, read, list and delete them. Their delivery is
//! [`crate::events::delivery`]'s.

use std::time::Duration;

use uuid::Uuid;

use super::{OrNotFound, ServiceError, Services};
use crate::crypto::Sealed;
use crate::domain::subscription::SubscriptionRequest;
use crate::domain::{DetailCode, FieldError, Secret};
use crate::events::{signature, target};
use crate::store::subscriptions::{self as store, NewSubscription, Subscription};

/// A subscription with the number of events waiting for it.
pub struct SubscriptionView {
    pub subscription: Subscription,
    pub pending: i64,
}

/// How long a create or an update waits for its target's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The target rules of `events.allow_http` and `events.allow_private_targets`.
pub fn rules(services: &Services) -> target::Rules {
    let events = &services.settings.events;
    target::Rules {
        allow_http: events.allow_http,
        allow_private: events.allow_private_targets,
    }
}

/// Creates a subscription; answers it with its signing secret (encoded), shown this once.
pub async fn create(
    services: &Services,
    env: Uuid,
    request: &SubscriptionRequest,
) -> Result<(SubscriptionView, String), ServiceError> {
    check_target(services, &request.url).await?;
    let id = Uuid::now_v7();
    let secret = signature::new_secret();
    let sealed_secret = services
        .cipher
        .seal(&Secret::from_bytes(secret.to_vec()), env, id);
    let headers = seal_headers(services, env, id, &request.headers);
    let names = header_names(request);
    let max = services.settings.events.max_subscriptions_per_environment;
    let new = stored(request, &names, &headers);
    let subscription = store::insert(&services.db, env, id, &new, &sealed_secret, max)
        .await?
        .ok_or_else(|| {
            ServiceError::invalid(FieldError::new(
                DetailCode::LimitExceeded,
                "",
                format!("the environment already has its limit of {max} subscriptions"),
            ))
        })?;
    tracing::info!(subscription_id = %id, "subscription created");
    let view = view(services, subscription).await?;
    Ok((view, signature::encode_secret(&secret)))
}

/// Replaces a subscription; its signing secret and delivery position stay.
pub async fn update(
    services: &Services,
    env: Uuid,
    id: Uuid,
    request: &SubscriptionRequest,
) -> Result<SubscriptionView, ServiceError> {
    check_target(services, &request.url).await?;
    let headers = seal_headers(services, env, id, &request.headers);
    let names = header_names(request);
    let new = stored(request, &names, &headers);
    let subscription = store::update(&services.db, env, id, &new)
        .await?
        .or_not_found()?;
    tracing::info!(subscription_id = %id, "subscription updated");
    view(services, subscription).await
}

pub async fn get(
    services: &Services,
    env: Uuid,
    id: Uuid,
) -> Result<SubscriptionView, ServiceError> {
    let subscription = store::get(&services.db, env, id).await?.or_not_found()?;
    view(services, subscription).await
}

/// One page of the environment's subscriptions, oldest first after `after`, at most `limit`.
pub async fn list(
    services: &Services,
    env: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<SubscriptionView>, ServiceError> {
    let mut views = Vec::new();
    for subscription in store::list(&services.db, env, after, limit).await? {
        views.push(view(services, subscription).await?);
    }
    Ok(views)
}

/// Deletes a subscription: nothing more is delivered to it.
pub async fn delete(services: &Services, env: Uuid, id: Uuid) -> Result<(), ServiceError> {
    if !store::delete(&services.db, env, id).await? {
        return Err(ServiceError::NotFound);
    }
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(())
}

/// The target's URL against the rules: its address, and the addresses its name resolves to. A
/// name that does not resolve yet is accepted (delivery checks again); one that resolves to an
/// address the rules refuse is not.
async fn check_target(services: &Services, url: &str) -> Result<(), ServiceError> {
    let rules = rules(services);
    let bad_url = |m: String| ServiceError::invalid(FieldError::invalid("httpEndpoint.url", m));
    let url = target::parse(url, rules).map_err(bad_url)?;
    if let Ok(Err(m)) = tokio::time::timeout(RESOLVE_TIMEOUT, target::resolve(&url, rules)).await {
        if m != target::UNRESOLVED {
            return Err(bad_url(m));
        }
    }
    Ok(())
}

/// The header values sealed together, bound to the subscription.
fn seal_headers(services: &Services, env: Uuid, id: Uuid, headers: &[(String, String)]) -> Sealed {
    let values: Vec<&str> = headers.iter().map(|(_, v)| v.as_str()).collect();
    let json = serde_json::to_vec(&values).expect("strings serialize");
    services.cipher.seal(&Secret::from_bytes(json), env, id)
}

fn header_names(request: &SubscriptionRequest) -> Vec<String> {
    request.headers.iter().map(|(n, _)| n.clone()).collect()
}

fn stored<'a>(
    request: &'a SubscriptionRequest,
    names: &'a [String],
    headers: &'a Sealed,
) -> NewSubscription<'a> {
    NewSubscription {
        name: &request.name,
        enabled: request.enabled,
        url: &request.url,
        header_names: names,
        headers,
        included_types: request.included_types.as_deref(),
    }
}

async fn view(
    services: &Services,
    subscription: Subscription,
) -> Result<SubscriptionView, ServiceError> {
    let mut conn = services.db.acquire().await?;
    let pending = store::pending(&mut conn, subscription.environment_id, subscription.id).await?;
    Ok(SubscriptionView {
        subscription,
        pending,
    })
}
