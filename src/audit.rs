//! The audit trail: one event with tracing target `audit` per mutating request and per OTP check
//! of an authenticated caller, with the fields `actor` (the JWT `sub`), `caller_environment` (its
//! `env` claim), `environment` (the path's), `action`, `target_id`, `outcome`, `request_id` (and the
//! HTTP `status`). Requests without a valid token log none: anyone can send them, and they change
//! nothing.
//!
//! A change's event is written where the change commits ([`committed`]), so it does not depend
//! on the client waiting for the answer: the request middleware (`telemetry::request_context`)
//! runs every audited request to its end even when the client has gone, and emits the event of a
//! request that committed nothing (a refusal, an error) once its response is known. What only
//! the handler knows travels in the request's extensions: the caller (recorded by the
//! `Authorized` extractor), the id of a resource it created, the result of an OTP check. Only ids
//! and fixed words are logged: never a body, so never a secret or an OTP.

use actix_web::dev::ServiceResponse;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest};
use uuid::Uuid;

/// The tracing target of audit events.
pub const TARGET: &str = "audit";

/// `actor` for a valid token without a `sub` claim.
const NO_SUBJECT: &str = "(no sub)";

/// The audited routes: (method, route pattern, action). Every POST, PATCH and DELETE of
/// `routes::ROUTES` is here (a test checks it).
const ACTIONS: &[(Method, &str, &str)] = &[
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens",
        "token.create",
    ),
    (
        Method::PATCH,
        "/v1/environments/{env_id}/oathTokens/{token_id}",
        "token.update",
    ),
    (
        Method::DELETE,
        "/v1/environments/{env_id}/oathTokens/{token_id}",
        "token.delete",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/oathTokens/{token_id}/unlock",
        "token.unlock",
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
    (
        Method::POST,
        "/v1/environments/{env_id}/oathJobs/{job_id}/cancel",
        "job.cancel",
    ),
    (
        Method::POST,
        "/v1/environments/{env_id}/subscriptions",
        "subscription.create",
    ),
    (
        Method::PUT,
        "/v1/environments/{env_id}/subscriptions/{subscription_id}",
        "subscription.update",
    ),
    (
        Method::DELETE,
        "/v1/environments/{env_id}/subscriptions/{subscription_id}",
        "subscription.delete",
    ),
];

/// What the handler adds to the event.
#[derive(Clone, Default)]
struct Notes {
    /// `None`: not authenticated; `Some(None)`: a token without `sub`.
    actor: Option<Option<String>>,
    /// The caller's `env` claim.
    caller_env: Option<Uuid>,
    target_id: Option<Uuid>,
    outcome: Option<&'static str>,
    /// The event was written at the change's commit.
    emitted: bool,
}

/// The request's id, as the request middleware chose it (for audited requests).
#[derive(Clone)]
pub struct RequestId(pub String);

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

/// The authenticated caller: its `sub` and `env` claims.
pub fn actor(req: &HttpRequest, subject: Option<&str>, env: Uuid) {
    note(req, |n| {
        n.actor = Some(subject.map(str::to_string));
        n.caller_env = Some(env);
    });
}

/// The authenticated caller's `sub`, when it has one.
pub fn subject(req: &HttpRequest) -> Option<String> {
    req.extensions()
        .get::<Notes>()
        .and_then(|n| n.actor.clone().flatten())
}

/// The result of an OTP check (`VALID`, `INVALID`, `LOCKED`, `DISABLED`), instead of one read
/// off the status.
pub fn outcome(req: &HttpRequest, outcome: &'static str) {
    note(req, |n| n.outcome = Some(outcome));
}

/// Writes the event of the change the request has just committed, which it will answer with
/// `status`; `created` is the resource it created, if any. Call it right after the commit.
pub fn committed(req: &HttpRequest, created: Option<Uuid>, status: StatusCode) {
    note(req, |n| {
        n.target_id = n.target_id.or(created);
        n.emitted = true;
    });
    let extensions = req.extensions();
    let request_id = extensions.get::<RequestId>().map_or("", |r| r.0.as_str());
    write(req, request_id, status);
}

/// Writes the event of an answered request that committed no change, when its route is audited
/// and its caller authenticated.
pub fn answered<B>(response: &ServiceResponse<B>, request_id: &str) {
    let req = response.request();
    let emitted = req.extensions().get::<Notes>().is_some_and(|n| n.emitted);
    if !emitted {
        write(req, request_id, response.status());
    }
}

fn write(req: &HttpRequest, request_id: &str, status: StatusCode) {
    // Reads are not audited; this keeps the route lookup off their path.
    if !is_audited(req.method()) {
        return;
    }
    let Some(pattern) = req.match_pattern() else {
        return;
    };
    let Some(action) = action(req.method(), &pattern) else {
        return;
    };
    let notes = req.extensions().get::<Notes>().cloned().unwrap_or_default();
    let Some(actor) = &notes.actor else {
        return;
    };
    let actor = actor.as_deref().unwrap_or(NO_SUBJECT);
    let path_uuid = |name| {
        req.match_info()
            .get(name)
            .and_then(|s| Uuid::try_parse(s).ok())
    };
    let outcome = notes.outcome.unwrap_or(match status.as_u16() {
        200..=299 => "SUCCESS",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        429 => "RATE_LIMITED",
        400..=499 => "REJECTED",
        _ => "ERROR",
    });
    let shown = |id: Option<Uuid>| id.map(|u| u.to_string()).unwrap_or_default();
    tracing::info!(
        target: TARGET,
        actor,
        caller_environment = shown(notes.caller_env),
        environment = shown(path_uuid("env_id")),
        action,
        target_id = shown(
            path_uuid("token_id")
                .or(path_uuid("job_id"))
                .or(path_uuid("subscription_id"))
                .or(notes.target_id)
        ),
        outcome,
        request_id,
        status = status.as_u16(),
        "audit"
    );
}

/// Whether requests of `method` may be audited: the changes.
pub fn is_audited(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
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
