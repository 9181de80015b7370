//! `GET /docs` in a real browser: headless Chromium (Debian's `chromium`; `CHROMIUM` names another
//! binary) loads the page from the running service with every host but 127.0.0.1 unresolvable,
//! and the rendered page lists every operation of `/openapi.json`. Without a browser this test
//! fails: scripts/check installs one.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::support::app::spawn_app;

/// Longest wait for the browser; it usually takes a few seconds.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The DOM of `url` after its scripts ran, as Chromium serialises it, and Chromium's log (with
/// the page's console messages).
fn rendered_dom(url: &str) -> (String, String) {
    let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = std::env::temp_dir().join(format!("oath-docs-chromium-{}", uuid::Uuid::new_v4()));
    let child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Nothing but the service can be reached: a page that needed another host would not
            // render.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {browser:?} ({e}): install Debian's chromium package \
                 (scripts/check does, as root) or set CHROMIUM"
            )
        });
    // Read the output while waiting: a DOM is larger than a pipe's buffer.
    let pid = child.id();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let out = match result.recv_timeout(BROWSER_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{browser} did not finish within {BROWSER_TIMEOUT:?}");
        }
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "{browser} failed: {:?}", out.status);
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[sqlx::test]
async fn the_api_reference_renders_every_operation_in_a_browser(pool: PgPool) {
    let app = spawn_app(pool).await;

    // No authentication; a policy that lets the page load from this origin only.
    let page = app.get_anonymous("/docs").await;
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("http"), "{csp}");
    let script = app
        .get_anonymous_ok("/docs/redoc.standalone.js", "text/javascript")
        .await;
    assert!(script.bytes().await.unwrap().len() > 500_000);

    let doc: Value = app
        .get_anonymous("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let url = app.url("/docs");
    let (dom, log) = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .unwrap();

    // Redoc renders each operation with its summary, its path, and an anchor named after its
    // operationId; the page as served holds none of them.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(dom.contains(path.as_str()), "{path} is not on the page");
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(
                dom.contains(&format!("operation/{id}\"")),
                "{method} {path} ({id}) is not on the page"
            );
            let summary = op["summary"].as_str().unwrap();
            assert!(
                dom.contains(summary),
                "{id}: {summary:?} is not on the page"
            );
            operations += 1;
        }
    }
    assert!(operations >= 19, "{operations} operations");
    // The page tried to load nothing from another host: the policy refused nothing, and no
    // name had to be resolved.
    for refused in [
        "Content Security Policy",
        "ERR_NAME_NOT_RESOLVED",
        "net::ERR_",
    ] {
        let line = log.lines().find(|l| l.contains(refused));
        assert!(line.is_none(), "{}", line.unwrap_or_default());
    }
    // Everything the rendered page loads comes from the service.
    for (i, _) in dom.match_indices(" src=\"") {
        let value = &dom[i + 6..];
        let value = &value[..value.find('"').unwrap()];
        assert!(
            !value.contains("//") || value.starts_with(&app.address),
            "the page loads {value}"
        );
    }
}
