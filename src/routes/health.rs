//! Liveness (the process answers), readiness (the database answers and every migration this
//! binary knows is applied), and the Prometheus metrics.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{operation, Reply};
use crate::error::responses::{Unavailable, Unexpected};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::store;

#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
pub struct Health {
    #[schema(example = "UP")]
    status: &'static str,
}

const UP: Health = Health { status: "UP" };

operation! {
    /// Liveness: the process answers. Never looks at the database.
    get "/health/live" as "live" in "Operations",
    responses((status = 200, description = "The process is up.", body = Health));
    pub async fn live() -> HttpResponse {
        HttpResponse::Ok().json(UP)
    }
}

operation! {
    /// Readiness: the database answers and every migration this binary knows is applied, and
    /// the process has not been told to stop.
    get "/health/ready" as "ready" in "Operations",
    responses(
        (status = 200, description = "Ready to serve.", body = Health),
        (status = 500, response = Unexpected),
        (status = 503, response = Unavailable),
    );
    pub async fn ready(state: web::Data<AppState>) -> Reply {
        if state.stopping.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable("the process is stopping".into()));
        }
        match store::migrations_applied(&state.db).await {
            Ok(true) => Ok(HttpResponse::Ok().json(UP)),
            Ok(false) => Err(ApiError::Unavailable("migrations are not applied".into())),
            Err(e) => Err(ApiError::Unavailable(e.to_string())),
        }
    }
}

operation! {
    /// Prometheus metrics in the text exposition format.
    get "/metrics" as "metrics" in "Operations",
    responses((status = 200, description = "Every metric of this process.", body = String,
        content_type = "text/plain; version=0.0.4"));
    pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(crate::metrics::METRICS.render(&state.db, &state.limits))
    }
}
