//! The database as `database.url` names it: one host, or several of which the service uses the
//! writable one (`url`: libpq's multi-host form; `primary`: the watcher that keeps the pool on
//! that host across a failover; `reuse`: connections the login path hands on without the
//! pool's test).

pub mod primary;
pub mod reuse;
pub mod url;

pub use primary::{switches, Primary};
pub use reuse::Reuse;
pub use url::{DatabaseUrl, Host, SessionAttrs};
