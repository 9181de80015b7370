//! `sqlx::migrate!` embeds `migrations/` when the crate compiles: rebuild when a migration is
//! added or changed, so that no binary runs with an older set than the source tree has.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
