//! Request bodies cost what arrives, not what a request declares, and for no longer than
//! `server.body_timeout_seconds`.

use std::time::{Duration, Instant};

use oath_service::auth::Scope;
use oath_service::domain::job::JobType;
use sqlx::PgPool;

use crate::support::app::{assert_error, environment_path, spawn_app, spawn_app_with};
use crate::support::raw::{post_head, read_response};
use crate::support::service::{database_url, service_env, Service};

/// A body that stops arriving is answered 408 once the deadline passes, on every route that
/// reads one, and a file upload that timed out frees its environment's upload slot.
#[sqlx::test]
async fn a_body_that_does_not_arrive_in_time_is_408(pool: PgPool) {
    let app = spawn_app_with(pool, |s| s.server.body_timeout_seconds = 1).await;
    let bearer = app.token(&Scope::ALL);
    let token = uuid::Uuid::new_v4();
    let cases = [
        (app.tokens_path(), "application/json"),
        (
            app.tokens_path() + &format!("/{token}/validate"),
            "application/json",
        ),
        (app.jobs_path(), JobType::CREATE_MEDIA_TYPE),
        (app.jobs_path(), "text/csv"),
    ];
    for (path, media_type) in cases {
        let started = Instant::now();
        let mut stream = post_head(&app.address, &path, &bearer, media_type, 1000, b"{\"ot").await;
        let (status, _, body) = read_response(&mut stream, Duration::from_secs(20)).await;
        assert_error(status, &body, 408, "INVALID_REQUEST");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1), "{path}: {waited:?}");
    }
    let csv = b"serialNumber,secret,type,otpLength,hashAlgorithm,counter,timeStep\n\
        T1,3132333435363738393031323334353637383930,HOTP,6,,,\n";
    let (status, body) = app.post_file(app.env, "text/csv", csv.to_vec(), &[]).await;
    assert_eq!(
        status, 202,
        "the environment's upload slot is free again: {body}"
    );
}

/// Connections that declare the largest body a job may have and then send a few bytes hold no
/// memory for what they declared: the process's address space grows by far less than one of
/// them declared, while all of them are open.
#[sqlx::test]
async fn declared_lengths_reserve_no_memory(pool: PgPool) {
    const CONNECTIONS: usize = 20;
    let app = spawn_app(pool.clone()).await;
    let mut env = service_env();
    env.extend([
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("OATH__JOBS__RUNNERS", "0".to_string()),
        ("OATH__SERVER__WORKERS", "1".to_string()),
        ("OATH__LOG__LEVEL", "warn".to_string()),
    ]);
    let log = std::env::temp_dir().join(format!("declared-lengths-{}.log", app.env));
    let mut service = Service::start(&["serve", "--no-migrate"], &env, log);
    service.wait_ready(Duration::from_secs(60)).await;
    let declared = app.settings.jobs.max_body_bytes - 1;
    let before = vm_size_bytes(service.pid());
    let bearer = app.token(&Scope::ALL);
    let path = environment_path(app.env, "/oathJobs");
    let mut open = Vec::new();
    for _ in 0..CONNECTIONS {
        open.push(
            post_head(
                &service.base,
                &path,
                &bearer,
                JobType::CREATE_MEDIA_TYPE,
                declared,
                b"{\"type\": \"CRE",
            )
            .await,
        );
    }
    // The service reads each head within milliseconds; watch its address space for a while.
    let mut grown = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        grown = grown.max(vm_size_bytes(service.pid()).saturating_sub(before));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.assert_running();
    // Each thread that allocates may reserve a malloc arena of 64 MiB; what the connections
    // declared is 20 times the largest body.
    assert!(
        grown < CONNECTIONS * declared / 4,
        "{CONNECTIONS} connections declaring {declared} bytes grew the address space by {grown} bytes"
    );
    drop(open);
}

/// `VmSize` of process `pid`: reserved memory counts whether or not it is touched.
fn vm_size_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/PID/status");
    kb * 1024
}
