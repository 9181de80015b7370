//! The database going away: requests answer 503 with Retry-After, the process stays up, and it
//! recovers by itself when the database returns. The outage is made with a TCP proxy between the
//! app and Postgres, so other tests sharing the server are not disturbed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::app::{expect_error, parts, pool_via, seed_token, spawn_app, test_settings};

/// Forwards connections to Postgres while up; while cut, drops every open connection and refuses
/// new ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropping `client` closes it
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Self { port, up, links }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[sqlx::test]
async fn database_outage_is_503_then_recovers(_opts: PgPoolOptions, connect: PgConnectOptions) {
    let upstream = format!("{}:{}", connect.get_host(), connect.get_port());
    let proxy = Proxy::start(upstream).await;
    let pool = pool_via(
        &test_settings(),
        connect.clone().host("127.0.0.1").port(proxy.port),
    );
    let app = spawn_app(pool).await;

    let (status, created) = parts(app.create_token(&seed_token()).await).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("{}/{}", app.tokens_path(), created["id"].as_str().unwrap());

    proxy.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let res = app.get_path(&path).await;
        assert_eq!(res.headers()["retry-after"], "5");
        expect_error(res, 503, "SERVICE_UNAVAILABLE").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "503 must come promptly"
        );
    }
    let res = app.create_token(&seed_token()).await;
    expect_error(res, 503, "SERVICE_UNAVAILABLE").await;
    let res = app.get_anonymous("/health/ready").await;
    assert_eq!(res.status(), 503);
    // Liveness does not depend on the database.
    let res = app.get_anonymous("/health/live").await;
    assert_eq!(res.status(), 200);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = app.get_json(&path).await;
        if status == 200 {
            assert_eq!(body["serialNumber"], "2333734700388");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let res = app.get_anonymous("/health/ready").await;
    assert_eq!(res.status(), 200);
}
