//! The audit trail: one event with tracing target `audit` per mutating request and per OTP check,
//! with the fields `actor` (the JWT `sub`), `environment`, `action`, `target_id`, `outcome`,
//! `request_id` (and the HTTP `status`).
//!
//! The request middleware (`telemetry::request_context`) emits the event once the response is
//! known, so that every answer, errors included, has one. What only the handler knows travels in
//! the request's extensions: the caller (recorded by `AppState::authorize`), the id of a resource
//! it created, and the result of an OTP check. Only ids and fixed words are logged: never a body,
//! so never a secret or an OTP.

use actix_web::dev::ServiceResponse;
use actix_web::http::Method;
use actix_web::{HttpMessage, HttpRequest};
use uuid::Uuid;

/// The tracing target of audit events.
pub const TARGET: &str = "audit";

/// `actor` when the request carried no valid token.
const UNAUTHENTICATED: &str = "(unauthenticated)";
/// `actor` for a valid token without a `sub` claim.
const NO_SUBJECT: &str = "(no sub)";

/// The audited routes: (method, route pattern, action). Every POST and DELETE of
/// `routes::ROUTES` is here (a test checks it).
const ACTIONS: &[(Method, &str, &str)] = &[
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens",
        "token.create",
    ),
    (
        Method::DELETE,
        "/v1/environments/{env_id}/oathTokens/{token_id}",
        "token.delete",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens/{token_id}/validate",
        "otp.validate",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens/{token_id}/resync",
        "otp.resync",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens/{token_id}/pairing",
        "token.pair",
    ),
    (
        Method::DELETE,
        "/v1/environments/{env_id}/oathTokens/{token_id}/pairing",
        "token.unpair",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/oathJobs",
        "job.submit",
    ),
];

/// What the handler adds to the event.
#[derive(Clone, Default)]
struct Notes {
    /// `None`: not authenticated; `Some(None)`: a token without `sub`.
    actor: Option<Option<String>>,
    target_id: Option<Uuid>,
    outcome: Option<&'static str>,
}

fn note(req: &HttpRequest, f: impl FnOnce(&mut Notes)) {
    let mut extensions = req.extensions_mut();
    if let Some(notes) = extensions.get_mut::<Notes>() {
        f(notes);
    } else {
        let mut notes = Notes::default();
        f(&mut notes);
        extensions.insert(notes);
    }
}

/// The authenticated caller's `sub`.
pub fn actor(req: &HttpRequest, subject: Option<&str>) {
    note(req, |n| n.actor = Some(subject.map(str::to_string)));
}

/// The resource the request created (a token, a job).
pub fn target(req: &HttpRequest, id: Uuid) {
    note(req, |n| n.target_id = Some(id));
}

/// The result of an OTP check (`VALID`, `INVALID`, `LOCKED`), instead of one read off the status.
pub fn outcome(req: &HttpRequest, outcome: &'static str) {
    note(req, |n| n.outcome = Some(outcome));
}

/// Emits the audit event of an answered request, when its route is audited.
pub fn emit<B>(response: &ServiceResponse<B>, request_id: &str) {
    let req = response.request();
    // Reads are not audited; this keeps the route lookup off their path.
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return;
    }
    let Some(pattern) = req.match_pattern() else {
        return;
    };
    let Some(action) = action(req.method(), &pattern) else {
        return;
    };
    let notes = req.extensions().get::<Notes>().cloned().unwrap_or_default();
    let path_uuid = |name| {
        req.match_info()
            .get(name)
            .and_then(|s| Uuid::try_parse(s).ok())
    };
    let status = response.status();
    let outcome = notes.outcome.unwrap_or(match status.as_u16() {
        200..=299 => "SUCCESS",
        401 => "UNAUTHENTICATED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        429 => "RATE_LIMITED",
        400..=499 => "REJECTED",
        _ => "ERROR",
    });
    let actor = match &notes.actor {
        None => UNAUTHENTICATED,
        Some(None) => NO_SUBJECT,
        Some(Some(sub)) => sub.as_str(),
    };
    let environment = path_uuid("env_id")
        .map(|u| u.to_string())
        .unwrap_or_default();
    let target_id = path_uuid("token_id")
        .or(notes.target_id)
        .map(|u| u.to_string())
        .unwrap_or_default();
    tracing::info!(
        target: TARGET,
        actor,
        environment,
        action,
        target_id,
        outcome,
        request_id,
        status = status.as_u16(),
        "audit"
    );
}

fn action(method: &Method, pattern: &str) -> Option<&'static str> {
    ACTIONS
        .iter()
        .find(|(m, p, _)| m == method && *p == pattern)
        .map(|(_, _, action)| *action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    /// A new mutating route cannot go unaudited.
    #[test]
    fn every_mutating_route_has_an_action() {
        let mut audited = 0;
        for resource in ROUTES {
            for (method, _) in resource.methods {
                if *method == Method::GET {
                    continue;
                }
                for path in resource.paths {
                    assert!(
                        action(method, path).is_some(),
                        "{method} {path} has no audit action"
                    );
                    audited += 1;
                }
            }
        }
        assert_eq!(audited, ACTIONS.len(), "an action names no route");
    }
}
