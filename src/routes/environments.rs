//! `/v1/environments/{envID}`: the environment every `_links.environment` points at, with what it
//! holds against its limits.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{AnyRead, Authorized};
use super::tokens::environment_url;
use super::{AppState, EnvPath, Link, Reply};
use crate::error::responses::AuthenticatedErrors;
use crate::service::environments;

/// An environment: its tokens and unfinished jobs, each against its limit.
#[derive(Serialize, ToSchema)]
#[schema(as = Environment)]
pub struct EnvironmentResource {
    #[serde(rename = "_links")]
    links: EnvironmentLinks,
    id: uuid::Uuid,
    tokens: Usage,
    jobs: JobUsage,
}

#[derive(Serialize, ToSchema)]
struct EnvironmentLinks {
    #[serde(rename = "self")]
    self_: Link,
}

#[derive(Serialize, ToSchema)]
#[schema(as = TokenUsage)]
struct Usage {
    /// Tokens the environment holds.
    count: i64,
    /// `limits.tokens_per_environment`.
    limit: i64,
}

#[derive(Serialize, ToSchema)]
struct JobUsage {
    /// Jobs `PENDING` or `IN_PROGRESS`.
    unfinished: i64,
    /// `jobs.max_unfinished_per_environment`: beyond it a submission is `429`.
    limit: u32,
}

/// Read the environment: its token count and unfinished jobs against their limits.
#[utoipa::path(
    get,
    path = "/v1/environments/{env_id}",
    tag = "Environments",
    operation_id = "getEnvironment",
    params(EnvPath),
    responses(
        (status = 200, description = "The environment.", body = EnvironmentResource),
        AuthenticatedErrors,
    ),
    security(
        ("bearer" = ["oath:tokens:read"]),
        ("bearer" = ["oath:jobs:read"]),
        ("bearer" = ["oath:activities:read"]),
        ("bearer" = ["oath:subscriptions:read"]),
    ),
)]
pub async fn get(auth: Authorized<AnyRead>, state: web::Data<AppState>) -> Reply {
    let env = auth.env;
    let settings = state.settings();
    let usage = environments::usage(&state.services, env).await?;
    Ok(HttpResponse::Ok().json(EnvironmentResource {
        links: EnvironmentLinks {
            self_: Link {
                href: environment_url(settings.base_url(), env),
            },
        },
        id: env,
        tokens: Usage {
            count: usage.tokens,
            limit: settings.limits.tokens_per_environment,
        },
        jobs: JobUsage {
            unfinished: usage.unfinished_jobs,
            limit: settings.jobs.max_unfinished_per_environment,
        },
    }))
}
