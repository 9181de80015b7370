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

/// `config check` validates without connecting (the database host does not exist) and prints
/// the settings in force as TOML, no secret among them.
#[test]
fn config_check_prints_the_settings_with_every_secret_redacted() {
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let hash_key = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";
    let pskc_key = "000102030405060708090a0b0c0d0e0f";
    let password = "db-password-2f9c";
    let env = [
        ("OATH__AUTH__HS256_SECRET", HS256_SECRET.to_string()),
        ("OATH__CRYPTO__ACTIVE_KEY_ID", "k1".into()),
        ("OATH__CRYPTO__KEYS__K1", key.into()),
        ("OATH__CRYPTO__REQUEST_HASH_KEY", hash_key.into()),
        ("OATH__IMPORT__PSKC_KEYS__V7__KEY", pskc_key.into()),
        ("OATH__IMPORT__PSKC_KEYS__V7__ENVIRONMENTS", "*".into()),
        (
            "DATABASE_URL",
            format!("postgres://svc:{password}@db.invalid:5432/oath?sslmode=disable"),
        ),
        ("OATH__JOBS__RUNNERS", "3".into()),
    ];
    let out = command(&env).args(["config", "check"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [HS256_SECRET, key, hash_key, pskc_key, password] {
        assert!(!stdout.contains(secret), "{secret} in {stdout}");
    }
    let shown: toml::Table = stdout.parse().expect("TOML");
    let redacted = toml::Value::String("<redacted>".into());
    assert_eq!(shown["auth"]["hs256_secret"], redacted);
    assert_eq!(shown["crypto"]["keys"]["k1"], redacted);
    assert_eq!(shown["crypto"]["request_hash_key"], redacted);
    assert_eq!(shown["import"]["pskc_keys"]["v7"]["key"], redacted);
    assert_eq!(
        shown["database"]["url"].as_str(),
        Some("postgres://svc:<redacted>@db.invalid:5432/oath?sslmode=disable")
    );
    assert_eq!(shown["jobs"]["runners"].as_integer(), Some(3));
    assert_eq!(shown["crypto"]["active_key_id"].as_str(), Some("k1"));

    // What stops `serve` stops the check, with the same line.
    let mut bad = env.to_vec();
    bad.push(("OATH__CRYPTO__ACTIVE_KEY_ID", "k2".into()));
    let out = command(&bad).args(["config", "check"]).output().unwrap();
    assert!(out.stdout.is_empty());
    let stderr = assert_start_up_refused(&out, "config check");
    assert!(
        stderr.contains("crypto.active_key_id is \"k2\" but crypto.keys.k2 is not set"),
        "{stderr}"
    );
}

/// `--version` names the version and the source revision, as `oath_build_info` does.
#[test]
fn version_prints_the_version_and_revision() {
    let out = command(&[]).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!(
            "oath-service {} (revision {})",
            env!("CARGO_PKG_VERSION"),
            oath_service::version::REVISION
        )
    );
}
