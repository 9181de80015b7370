//! Liveness (the process answers), readiness (the database answers and every migration this
//! binary knows is applied), and the Prometheus metrics.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, Reply};
use crate::error::responses::{Unavailable, Unexpected};
use crate::error::ApiError;
use crate::store;

#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct Health {
    #[schema(example = "UP")]
    status: &'static str,
}

const UP: Health = Health { status: "UP" };

/// Liveness: the process answers. Never looks at the database.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "Operations",
    operation_id = "live",
    responses(
        (status = 200, description = "The process is up.", body = Health),
    ),
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(UP)
}

/// Readiness: the database answers and every migration this binary knows is applied, and
/// the process has not been told to stop.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "Operations",
    operation_id = "ready",
    responses(
        (status = 200, description = "Ready to serve.", body = Health),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn ready(state: web::Data<AppState>) -> Reply {
    if state.stopping.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("the process is stopping".into()));
    }
    match store::migrations_applied(state.db()).await {
        Ok(true) => Ok(HttpResponse::Ok().json(UP)),
        Ok(false) => Err(ApiError::Unavailable("migrations are not applied".into())),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Every metric of this process.", body = String,
        content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::METRICS.render(state.db(), &state.limits))
}
