//! `Idempotency-Key` on POST: a retry with the same key and the same request returns the first
//! response without doing the work again; the same key with another request is 409.

use actix_web::http::header::{self, HeaderName};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::AppState;
use crate::error::ApiError;
use crate::store::idempotency::{self as store, Stored};

pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// The header's description in the OpenAPI document.
pub const DOC: &str = "1-255 visible ASCII characters. A retry with the same key and the same \
    request within 24 hours answers the first response (with `Idempotent-Replayed: true`) without \
    doing the work again; the same key with another request is 409.";
const MAX_KEY_LEN: usize = 255;

pub struct IdempotencyKey {
    key: String,
    request_hash: Vec<u8>,
}

impl IdempotencyKey {
    /// The request's key, if it sent one, bound to what it asks: method, path, media type, the
    /// PSKC key headers, body. The binding is an HMAC under the server's `hash_key`: bodies and
    /// headers hold secrets, and a plain hash in the database would let its reader confirm a
    /// guessed one.
    pub fn from_request(
        req: &HttpRequest,
        body: &[u8],
        hash_key: &[u8],
    ) -> Result<Option<Self>, ApiError> {
        let Some(value) = req.headers().get(&HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| {
                (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters."
                ))
            })?;
        let header_bytes = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| v.as_bytes())
                .unwrap_or_default()
        };
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(hash_key).expect("HMAC takes keys of any length");
        // A PSKC file means something else under another key or password: they are part of
        // the request.
        for part in [
            req.method().as_str().as_bytes(),
            req.path().as_bytes(),
            header_bytes(header::CONTENT_TYPE.as_str()),
            header_bytes(super::jobs::PSKC_KEY_ID_HEADER),
            header_bytes(super::jobs::PSKC_KEY_HEADER),
            header_bytes(super::jobs::PSKC_PASSWORD_HEADER),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(body);
        Ok(Some(Self {
            key: key.to_string(),
            request_hash: mac.finalize().into_bytes().to_vec(),
        }))
    }

    fn respond(&self, stored: Stored) -> Result<HttpResponse, ApiError> {
        if stored.request_hash != self.request_hash {
            return Err(ApiError::Conflict(
                "This Idempotency-Key was used for a different request.".into(),
            ));
        }
        let status = StatusCode::from_u16(stored.status as u16)
            .map_err(|_| ApiError::Internal("stored idempotent response has no status".into()))?;
        let mut res = HttpResponse::build(status);
        res.content_type("application/json")
            .insert_header(("idempotent-replayed", "true"));
        if let Some(location) = stored.location {
            res.insert_header((header::LOCATION, location));
        }
        Ok(res.body(stored.body))
    }

    pub async fn record(
        &self,
        conn: &mut PgConnection,
        env: Uuid,
        status: StatusCode,
        location: Option<&str>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        store::record(conn, env, &self.key, status.as_u16(), location, body).await?;
        Ok(())
    }
}

/// The first response to `key`'s request, when one has committed: a retry is answered with it
/// before any work. [`begin`] decides again, race-free, for a request that gets past this.
pub async fn replay(
    key: Option<&IdempotencyKey>,
    state: &AppState,
    env: Uuid,
) -> Result<Option<HttpResponse>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    match store::find(state.db(), env, &key.key).await? {
        Some(stored) if stored.status != 0 => key.respond(stored).map(Some),
        _ => Ok(None),
    }
}

/// A POST's write in one transaction, under the request's `Idempotency-Key` when it sent one:
/// the key is claimed first in the transaction (a concurrent retry waits for it to commit, then
/// replays), and the response is recorded in it before it commits.
pub struct Write<'k> {
    pub tx: Transaction<'static, Postgres>,
    key: Option<&'k IdempotencyKey>,
    env: Uuid,
}

/// Begins the write; `Err` carries the response to answer instead (the first request's, or 409)
/// when the key was used before.
pub async fn begin<'k>(
    key: Option<&'k IdempotencyKey>,
    state: &AppState,
    env: Uuid,
) -> Result<Result<Write<'k>, HttpResponse>, ApiError> {
    let mut tx = state.db().begin().await?;
    if let Some(key) = key {
        if !store::claim(&mut tx, env, &key.key, &key.request_hash).await? {
            drop(tx);
            return Ok(Err(match store::find(state.db(), env, &key.key).await? {
                Some(stored) => key.respond(stored)?,
                // Expired between the two statements: extremely unlikely; ask for a retry.
                None => {
                    return Err(ApiError::Conflict(
                        "A request with this Idempotency-Key is being processed; retry it.".into(),
                    ))
                }
            }));
        }
    }
    Ok(Ok(Write { tx, key, env }))
}

impl Write<'_> {
    /// Records the response under the key (if any) and commits.
    pub async fn commit(
        mut self,
        status: StatusCode,
        location: Option<&str>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        if let Some(key) = self.key {
            key.record(&mut self.tx, self.env, status, location, body)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}
