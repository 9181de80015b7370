//! What this binary is: the crate's version and the source revision it was built from
//! (`build.rs`: `OATH_REVISION`, else `git rev-parse --short HEAD`, else "unknown").

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub const REVISION: &str = env!("OATH_REVISION");

/// What `oath-service --version` prints after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("OATH_REVISION"),
    ")"
);
