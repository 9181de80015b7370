//! The activity log: an environment's events in the order they occurred.

use uuid::Uuid;

use super::{ServiceError, Services};
use crate::store::events::{self as store, Event, Filter, Position};

/// The events after `from` that `filter` selects, oldest first, at most `limit`: only events
/// whose transactions every reader can see, so that a cursor never skips one that commits late.
pub async fn after(
    services: &Services,
    env: Uuid,
    from: Position,
    filter: Filter,
    limit: i64,
) -> Result<Vec<Event>, ServiceError> {
    Ok(store::after(&services.db, env, from, filter, limit).await?)
}
