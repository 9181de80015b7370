//! `sqlx::migrate!` embeds `migrations/` when the crate compiles: rebuild when a migration is
//! added or changed, so that no binary runs with an older set than the source tree has.
//!
//! The revision the binary reports (`--version`, `oath_build_info`): the `OATH_REVISION`
//! environment variable when set (a build without `.git`, e.g. the Dockerfile's), else
//! `git rev-parse --short HEAD`, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=OATH_REVISION");
    let given = std::env::var("OATH_REVISION")
        .ok()
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let revision = given
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OATH_REVISION={revision}");
}

/// The short hash of HEAD; asks cargo to run this again when HEAD moves.
fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let revision = git(&["rev-parse", "--short", "HEAD"])?;
    // HEAD names a branch whose ref moves with each commit (loose, or packed after a gc). A
    // path that does not exist would make cargo run this script on every build: left out.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let files = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_string)
        .chain(branch);
    for file in files {
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    Some(revision)
}
