//! Liveness (the process answers), readiness (the database answers and every migration this
//! binary knows is applied), and the Prometheus metrics.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::error::ApiError;
use crate::startup::AppState;
use crate::store;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "UP"}))
}

pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match store::migrations_applied(&state.db).await {
        Ok(true) => Ok(HttpResponse::Ok().json(json!({"status": "UP"}))),
        Ok(false) => Err(ApiError::Unavailable("migrations are not applied".into())),
        // No migrations table yet: reachable but not migrated.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
            Err(ApiError::Unavailable("migrations are not applied".into()))
        }
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::METRICS.render(&state.db))
}
