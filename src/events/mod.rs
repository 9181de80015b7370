//! Events: every change of a token or a job, written by the store in the transaction of the
//! change (`store::events`), shown as the environment's activity log (`routes::activities`)
//! and delivered to its webhook subscriptions (`delivery`), each delivery signed
//! (`signature`) and sent only to a target the rules allow (`target`).

pub mod delivery;
pub mod signature;
pub mod target;

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::events::Event;

pub use crate::domain::event::{EventType, Origin, SYSTEM};

/// An event as the feed shows it and deliveries carry it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Event)]
pub struct EventView {
    /// Stable: the same in the feed and in every delivery (a receiver deduplicates by it).
    id: Uuid,
    #[serde(rename = "type")]
    #[schema(example = "OATH_TOKEN.CREATED")]
    event_type: &'static str,
    /// RFC 3339, UTC, milliseconds.
    #[schema(format = DateTime, example = "2026-12-07T10:00:00.123Z")]
    occurred_at: String,
    environment: IdOf,
    actor: Actor,
    /// The `X-Request-Id` of the request that caused the change, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    request_id: Option<String>,
    resource: ResourceRef,
    /// The job that caused the change (token events of bulk jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    job: Option<IdOf>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = EventIdRef)]
struct IdOf {
    id: Uuid,
}

#[derive(Serialize, ToSchema)]
#[schema(as = EventActor)]
struct Actor {
    /// The JWT `sub` of the caller, or `system`.
    sub: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = EventResource)]
struct ResourceRef {
    /// `OATH_TOKEN` or `OATH_JOB`.
    #[serde(rename = "type")]
    resource_type: &'static str,
    id: Uuid,
    /// Tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    serial_number: Option<String>,
    /// `OATH_JOB.COMPLETED`, `FAILED`, `CANCELED`: the job's counts as the job resource shows
    /// them (`reason` when it failed); its duplicates are in the job's results.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Object)]
    result: Option<serde_json::Value>,
}

impl EventView {
    pub fn new(env: Uuid, event: Event) -> Self {
        let resource_type = event.event_type.resource_type();
        let is_job = resource_type == "OATH_JOB";
        Self {
            id: event.id,
            event_type: event.event_type.as_str(),
            occurred_at: event
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            environment: IdOf { id: env },
            actor: Actor { sub: event.actor },
            request_id: event.request_id,
            resource: ResourceRef {
                resource_type,
                id: event.resource_id,
                serial_number: event.serial_number,
                result: event.result,
            },
            job: event.job_id.filter(|_| !is_job).map(|id| IdOf { id }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(t.as_str().starts_with(t.resource_type()));
        }
        assert_eq!(EventType::parse("OATH_TOKEN.created"), None);
    }
}
