//! Builds the application (state, routes, middleware), binds it and runs it until stopped.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::config::Settings;
use crate::database::{DatabaseUrl, Primary, SessionAttrs};
use crate::error;
pub use crate::routes::AppState;
use crate::routes::Listener;
use crate::{routes, telemetry};

/// A lazily connected pool: the process starts and stays up while the database is away.
/// TLS follows the URL's `sslmode` and `sslrootcert`, as with libpq. With several hosts (or
/// `target_session_attrs=read-write`) a [`Primary`] watcher keeps the pool on the host to use;
/// it runs on the caller's runtime until the pool is closed.
pub fn pool(settings: &Settings) -> Result<PgPool, String> {
    let url = DatabaseUrl::parse(&settings.database.url)
        .map_err(|e| format!("configuration error: {e}"))?;
    check_tls_files(&settings.database.url)?;
    if url.hosts.len() == 1 && url.attrs == SessionAttrs::Any {
        let options = url.hosts[0].options.clone();
        return Ok(pool_with(settings, options));
    }
    let primary = Primary::new(
        url,
        settings.primary_check_interval(),
        settings.acquire_timeout(),
    );
    let watched = primary.clone();
    let pool = pool_options(settings, Some(primary.clone()))
        .after_connect(move |conn, _| {
            let primary = watched.clone();
            Box::pin(async move { primary.check_new(conn).await })
        })
        .connect_lazy_with(primary.first_options());
    tokio::spawn(primary.watch(pool.clone()));
    Ok(pool)
}

/// The certificate and key files that `database.url` names must be readable now: the pool
/// connects lazily, so otherwise the mistake would only show as a service that never gets ready.
fn check_tls_files(url: &str) -> Result<(), String> {
    // The parameters are the same for every host: look at the query alone.
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let Ok(url) = reqwest::Url::parse(&format!("postgres://host/?{query}")) else {
        return Ok(());
    };
    for (key, value) in url.query_pairs() {
        let file_keys = [
            "sslrootcert",
            "ssl-root-cert",
            "ssl-ca",
            "sslcert",
            "ssl-cert",
            "sslkey",
            "ssl-key",
        ];
        if file_keys.contains(&key.as_ref()) {
            std::fs::File::open(value.as_ref()).map_err(|e| {
                format!("configuration error: database.url: {key} {value:?} cannot be read: {e}")
            })?;
        }
    }
    Ok(())
}

pub fn pool_with(settings: &Settings, options: PgConnectOptions) -> PgPool {
    pool_options(settings, None).connect_lazy_with(options)
}

/// The pool's settings; with `primary`, connections opened before it last moved to another host
/// are closed instead of being handed out.
fn pool_options(settings: &Settings, primary: Option<Arc<Primary>>) -> PgPoolOptions {
    let max = settings.database.max_connections;
    PgPoolOptions::new()
        // The rest is the login path's own connections' (`database::reuse`).
        .max_connections(max - crate::database::reuse::login_share(max))
        .acquire_timeout(settings.acquire_timeout())
        // sqlx pings every connection as it returns to the pool. Pinging again as it leaves costs
        // each checkout a round trip, and only finds something for a connection that sat idle
        // (e.g. across a database restart): ping those only.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let primary = primary.clone();
            Box::pin(async move {
                if primary.is_some_and(|p| p.predates_switch(meta.age)) {
                    return Ok(false);
                }
                if meta.idle_for < RECENTLY_TESTED {
                    return Ok(true);
                }
                conn.ping().await.map(|()| true)
            })
        })
}

/// A pooled connection idle for less than this was tested when it was returned.
const RECENTLY_TESTED: Duration = Duration::from_secs(1);

pub struct Application {
    state: web::Data<AppState>,
    port: u16,
    server: Server,
    /// `server.admin_addr`'s port and server, when one is configured.
    admin: Option<(u16, Server)>,
}

impl Application {
    /// Binds `server.addr` and, when set, `server.admin_addr` (port 0 picks a free port) and
    /// prepares the servers; `run_until_stopped` runs them.
    pub fn build(state: AppState) -> Result<Self, String> {
        let settings = &state.settings().server;
        let (listener, port) = bind("server.addr", &settings.addr)?;
        let admin_listener = match settings.admin_addr() {
            Some(addr) => Some(bind("server.admin_addr", addr)?),
            None => None,
        };
        let workers = match settings.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let shutdown = Duration::from_secs(settings.shutdown_timeout_seconds);
        let state = web::Data::new(state);
        let (server, admin) = match admin_listener {
            None => (
                serve(&state, listener, Listener::All, workers, shutdown)?,
                None,
            ),
            Some((admin_listener, admin_port)) => (
                serve(&state, listener, Listener::Public, workers, shutdown)?,
                // Probes and scrapes are light: one worker keeps them off the API's threads.
                Some((
                    admin_port,
                    serve(&state, admin_listener, Listener::Admin, 1, shutdown)?,
                )),
            ),
        };
        Ok(Self {
            state,
            port,
            server,
            admin,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin listener's port, when `server.admin_addr` is set.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|(port, _)| *port)
    }

    /// Serves until SIGTERM or ctrl-c. Then readiness answers 503 at once while requests are
    /// still served for `server.shutdown_delay_seconds`, so that balancers stop sending, and
    /// then both servers drain their in-flight requests (for up to
    /// `server.shutdown_timeout_seconds`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until_stopped_then(|| {}).await
    }

    /// As [`Application::run_until_stopped`], calling `on_stop` once the delay has passed, just
    /// before the servers drain (the job runners are told to stop there, so that they hand
    /// their jobs back while requests drain, not after).
    pub async fn run_until_stopped_then(self, on_stop: impl FnOnce()) -> std::io::Result<()> {
        self.run_until(StopSignal::listen(), on_stop).await
    }

    /// As [`Application::run_until_stopped_then`], stopped by `stop`, a listener installed
    /// earlier (`serve` installs it before anything starts, so that a SIGTERM during start-up
    /// stops the process as one after it does, instead of killing it).
    pub async fn run_until(self, stop: StopSignal, on_stop: impl FnOnce()) -> std::io::Result<()> {
        let handles: Vec<ServerHandle> = std::iter::once(&self.server)
            .chain(self.admin.as_ref().map(|(_, admin)| admin))
            .map(Server::handle)
            .collect();
        let servers = async move {
            match self.admin {
                None => self.server.await,
                Some((_, admin)) => futures_util::future::try_join(self.server, admin)
                    .await
                    .map(|_| ()),
            }
        };
        tokio::pin!(servers);
        tokio::select! {
            stopped = &mut servers => return stopped,
            () = stop.received() => {}
        }
        let delay = Duration::from_secs(self.state.settings().server.shutdown_delay_seconds);
        self.state.stopping.store(true, Ordering::Relaxed);
        tracing::info!(
            delay_seconds = delay.as_secs(),
            "stop requested: not ready any more, serving on before draining"
        );
        if let Ok(stopped) = tokio::time::timeout(delay, &mut servers).await {
            return stopped;
        }
        on_stop();
        // A server handles its commands while it is polled: stop and await at once.
        let stops = futures_util::future::join_all(handles.iter().map(|h| h.stop(true)));
        let ((), stopped) = tokio::join!(stops.map(|_| ()), servers);
        stopped
    }
}

/// The stop signals, SIGTERM (what orchestrators send) and ctrl-c, listened for from its
/// creation on: a signal that arrives before [`StopSignal::received`] is awaited is kept.
pub struct StopSignal {
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    pub fn listen() -> Self {
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGTERM; ctrl-c only"))
            .ok();
        Self { terminate }
    }

    async fn received(self) {
        let terminate = async {
            match self.terminate {
                Some(mut terminate) => {
                    terminate.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = terminate => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}

/// Binds `addr`; errors name the setting `key`.
fn bind(key: &str, addr: &str) -> Result<(TcpListener, u16), String> {
    let listener =
        TcpListener::bind(addr).map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("{key}: {e}"))?
        .port();
    Ok((listener, port))
}

/// One HTTP server on `listener`, serving the routes of `routes`.
fn serve(
    state: &web::Data<AppState>,
    listener: TcpListener,
    routes: Listener,
    workers: usize,
    shutdown: Duration,
) -> Result<Server, String> {
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(telemetry::request_context))
            .configure(|cfg| routes::configure(cfg, routes))
            .default_service(web::to(error::not_found))
    })
    .workers(workers)
    // Stop signals are handled by `run_until_stopped`, which first turns readiness off.
    .disable_signals()
    .shutdown_timeout(shutdown.as_secs())
    .listen(listener)
    .map_err(|e| format!("cannot serve on a bound listener: {e}"))?
    .run();
    Ok(server)
}
