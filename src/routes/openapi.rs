//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the handlers'
//! `#[utoipa::path]` attributes and the response types. The API test checks that it lists
//! exactly the routes of [`super::ROUTES`].

use std::sync::LazyLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{activities, docs, environments, health, jobs, otp, subscriptions, tokens};
use crate::error::responses::{
    BadRequest, Conflict, Forbidden, NotFound, RequestTimeout, TooLarge, TooManyRequests,
    Unauthorized, Unavailable, Unexpected, UnsupportedMediaType,
};
use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "oath-service",
        description = "Stores and validates OATH hardware tokens (HOTP, RFC 4226; TOTP, RFC 6238) \
            for many tenants (environments); wire-compatible with the PingOne OATH Tokens API. \
            Every `/v1` operation needs a bearer JWT whose `env` claim is the path's environment \
            and whose `scope` grants the operation. A method a path does not serve answers 405 \
            `METHOD_NOT_ALLOWED`, an unknown path 404 `NOT_FOUND`, both with the error body. \
            Every response carries `X-Request-Id` (the caller's, when it is 1-128 characters of \
            `[A-Za-z0-9._:-]`, else a generated one), also found in the service's log lines."
    ),
    paths(
        health::live,
        health::ready,
        health::metrics,
        document,
        docs::page,
        docs::script,
        tokens::list,
        tokens::create,
        tokens::get,
        tokens::update,
        tokens::delete,
        tokens::unlock,
        jobs::list,
        jobs::submit,
        jobs::get,
        jobs::results,
        jobs::cancel,
        environments::get,
        otp::validate,
        otp::resync,
        otp::pair,
        otp::unpair,
        activities::list,
        subscriptions::list,
        subscriptions::create,
        subscriptions::get,
        subscriptions::update,
        subscriptions::delete,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            RequestTimeout,
            TooLarge,
            UnsupportedMediaType,
            TooManyRequests,
            Unexpected,
            Unavailable
        )
    ),
    modifiers(&BearerAuth, &SelfLinkAlias),
    tags(
        (name = "Tokens", description = "Single tokens: create, read, list, find a user's, enable or disable, unlock, revoke."),
        (name = "Jobs", description = "Bulk create and revoke jobs, their per-item results, and cancelling them."),
        (name = "OTP", description = "Validate OTPs, resynchronise and pair tokens."),
        (name = "Events", description = "The activity log of an environment's token and job changes, and webhook subscriptions that deliver them, signed."),
        (name = "Environments", description = "An environment and what it holds against its limits."),
        (name = "Operations", description = "Health, metrics, this document and its HTML rendering; no authentication."),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the operations name with their scopes (OpenAPI 3.1 allows
/// required scopes, "roles", on any scheme).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (RS256, ES256 or EdDSA from the configured key set) with `iss`, \
                         `aud`, `exp`, the environment id in `env` and space-separated scopes in \
                         `scope`: oath:tokens:read, oath:tokens:write, oath:jobs:read, \
                         oath:jobs:write, oath:otp:validate, oath:activities:read, \
                         oath:subscriptions:read, oath:subscriptions:write.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `/jobs/{job_id}`, the form of a job's self link, serves the resource of `/oathJobs/{job_id}`
/// (one handler on two paths): documented as a copy of it, listed right after it.
struct SelfLinkAlias;

impl Modify for SelfLinkAlias {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        const PATH: &str = "/v1/environments/{env_id}/oathJobs/{job_id}";
        const ALIAS: &str = "/v1/environments/{env_id}/jobs/{job_id}";
        let paths = std::mem::take(&mut openapi.paths.paths);
        for (path, item) in paths {
            let alias = (path == PATH).then(|| {
                let mut alias = item.clone();
                if let Some(get) = alias.get.as_mut() {
                    get.operation_id = Some("getJobBySelfLink".into());
                    get.summary = Some("Read a job, by its self link.".into());
                    get.description = Some("The same resource as `/oathJobs/{job_id}`.".into());
                }
                alias
            });
            openapi.paths.paths.insert(path, item);
            if let Some(alias) = alias {
                openapi.paths.paths.insert(ALIAS.into(), alias);
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "Operations",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = serde_json::Value),
    ),
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}
