//! The configuration as an operator meets it, through the real binary: unknown settings,
//! secrets read from files, `oath-service config check`.

use serde_json::Value;
use uuid::Uuid;

use crate::support::app::HS256_SECRET;
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

/// `OATH__AUTH__HS256_SECRET_FILE`: `dev-token` signs with the file's content, its final newline
/// left out; the file and the value at once stop start-up.
#[test]
fn a_secret_is_read_from_the_file_a_variable_names() {
    let dir = scratch_dir("secret-file");
    let file = dir.join("hs256");
    std::fs::write(&file, format!("{HS256_SECRET}\n")).unwrap();
    let file = ("OATH__AUTH__HS256_SECRET_FILE", file.display().to_string());
    let env = Uuid::new_v4();
    let out = command(std::slice::from_ref(&file))
        .args(["dev-token", "--env", &env.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let token = String::from_utf8(out.stdout).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["oath-service"]);
    let claims = jsonwebtoken::decode::<Value>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(HS256_SECRET.as_bytes()),
        &validation,
    )
    .expect("signed with the file's content");
    assert_eq!(claims.claims["env"], env.to_string());

    let stderr = refused(&[file], "both forms");
    assert!(
        stderr.contains("both OATH__AUTH__HS256_SECRET and OATH__AUTH__HS256_SECRET_FILE are set"),
        "{stderr}"
    );
    assert!(!stderr.contains(HS256_SECRET), "{stderr}");
}
