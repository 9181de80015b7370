//! The configuration as an operator meets it, through the real binary: unknown settings,
//! secrets read from files, `oath-service config check`.

use crate::support::service::{assert_start_up_refused, command, service_env};
use crate::support::tls::scratch_dir;

/// `serve` with the test service's secrets plus `extra`, stopped at start-up: its one line.
fn refused(extra: &[(&str, String)], case: &str) -> String {
    let mut env = service_env();
    env.extend(extra.iter().cloned());
    let out = command(&env)
        .args(["serve", "--no-migrate"])
        .output()
        .unwrap();
    assert_start_up_refused(&out, case)
}

#[test]
fn an_unknown_setting_stops_start_up_naming_the_closest_key() {
    let stderr = refused(
        &[("OATH__SERVER__ADRR", "0.0.0.0:8080".into())],
        "OATH__SERVER__ADRR",
    );
    assert!(
        stderr.contains(
            "unknown setting server.adrr from OATH__SERVER__ADRR (did you mean server.addr?)"
        ),
        "{stderr}"
    );

    let dir = scratch_dir("unknown-setting");
    std::fs::write(dir.join("production.toml"), "[jobs]\nrunner = 0\n").unwrap();
    let stderr = refused(
        &[
            ("OATH_CONFIG_DIR", dir.display().to_string()),
            ("OATH_ENV", "production".into()),
        ],
        "production.toml",
    );
    assert!(
        stderr.contains("unknown setting jobs.runner in ")
            && stderr.contains("production.toml")
            && stderr.contains("(did you mean jobs.runners?)"),
        "{stderr}"
    );
}
