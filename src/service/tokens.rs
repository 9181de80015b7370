//! Single tokens: create, read, list (all, by serial number, by user), enable or disable, unlock,
//! unpair and delete.

use sqlx::PgConnection;
use uuid::Uuid;

use super::verification::lockout_rule;
use super::{OrNotFound, ServiceError, Services};
use crate::domain::{DetailCode, FieldError, NewToken, SerialNumber, UserId};
use crate::events::Origin;
use crate::store::otp as otp_store;
use crate::store::tokens::{self as store, InsertError, Token};

/// Which tokens a list holds.
pub enum TokenFilter {
    All,
    Serial(SerialNumber),
    /// The tokens paired to a user.
    User(UserId),
}

/// Creates `token` in `env` and answers it as stored. Its secret is sealed here, for the id it
/// gets. Within `tx` (a request's `Idempotency-Key` claim) it is written there, for the caller to
/// commit; otherwise it commits with the environment's other creates in flight
/// ([`super::create_batch`]).
pub async fn create(
    services: &Services,
    env: Uuid,
    token: &NewToken,
    tx: Option<&mut PgConnection>,
    origin: &Origin,
) -> Result<Token, ServiceError> {
    let id = Uuid::now_v7();
    let sealed = services.cipher.seal(&token.secret, env, id);
    let limit = services.settings.limits.tokens_per_environment;
    let created = match tx {
        None => {
            services
                .creates
                .create(env, id, token, sealed, origin.clone())
                .await
        }
        Some(tx) => store::insert(tx, env, id, token, &sealed, limit, origin).await,
    };
    let token_row = created.map_err(|e| match e {
        InsertError::Duplicate => ServiceError::invalid(FieldError::new(
            DetailCode::UniquenessViolation,
            "serialNumber",
            "a token with this serialNumber already exists in the environment",
        )),
        InsertError::LimitExceeded => ServiceError::invalid(FieldError::new(
            DetailCode::LimitExceeded,
            "",
            format!("the environment already holds its limit of {limit} tokens"),
        )),
        InsertError::Db(e) => e.into(),
        InsertError::Shared(e) => ServiceError::SharedDatabase(e),
    })?;
    tracing::info!(token_id = %id, serial_number = %token.serial_number.as_str(), "token created");
    Ok(token_row)
}

pub async fn get(services: &Services, env: Uuid, id: Uuid) -> Result<Token, ServiceError> {
    let mut db = services.reuse.acquire().await?;
    let token = store::get(&mut *db, env, id).await?;
    db.done();
    token.or_not_found()
}

/// One page of the environment's tokens that `filter` selects, in id order after `after`, at
/// most `limit`.
pub async fn list(
    services: &Services,
    env: Uuid,
    filter: &TokenFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Token>, ServiceError> {
    let db = &services.db;
    Ok(match filter {
        TokenFilter::User(user) => {
            store::list_by_user(db, env, user.as_str(), after, limit).await?
        }
        TokenFilter::Serial(serial) => {
            store::list(db, env, Some(serial.as_str()), after, limit).await?
        }
        TokenFilter::All => store::list(db, env, None, after, limit).await?,
    })
}

/// Enables or disables a token.
pub async fn set_enabled(
    services: &Services,
    env: Uuid,
    id: Uuid,
    enabled: bool,
    origin: &Origin,
) -> Result<Token, ServiceError> {
    let token = store::set_enabled(&services.db, env, id, enabled, origin)
        .await?
        .or_not_found()?;
    tracing::info!(token_id = %id, enabled, "token updated");
    Ok(token)
}

/// Clears a token's lock and failed attempts, whichever the lockout policy.
pub async fn unlock(
    services: &Services,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<Token, ServiceError> {
    let rule = lockout_rule(&services.settings.otp);
    let token = store::unlock(&services.db, env, id, rule, origin)
        .await?
        .or_not_found()?;
    tracing::info!(token_id = %id, "token unlocked");
    Ok(token)
}

/// Unpairs a token; unpairing an unpaired token changes nothing and is no error.
pub async fn unpair(
    services: &Services,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<(), ServiceError> {
    let was_paired = otp_store::unpair(&services.db, env, id, origin)
        .await?
        .or_not_found()?;
    if was_paired {
        tracing::info!(token_id = %id, "token unpaired");
    }
    Ok(())
}

/// Revokes (deletes) a token, paired or not.
pub async fn delete(
    services: &Services,
    env: Uuid,
    id: Uuid,
    origin: &Origin,
) -> Result<(), ServiceError> {
    if !store::delete(&services.db, env, id, origin).await? {
        return Err(ServiceError::NotFound);
    }
    tracing::info!(token_id = %id, "token deleted");
    Ok(())
}
