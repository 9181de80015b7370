//! Command line: `serve` (default), `migrate`, `dev-token`, `reencrypt`, `keys status`,
//! `healthcheck`, `config check`, and `import`, a client of the API (`cli/import.rs`), in builds
//! with the `import-cli` feature (the default; the container image leaves it out).

#[cfg(feature = "import-cli")]
pub mod import;

use std::time::Duration;

use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::auth::{self, Scope};
use crate::config::Settings;
use crate::crypto::SecretCipher;
use crate::jobs::runner::RunnerPool;
use crate::startup::{self, AppState, Application};
use crate::{healthcheck, keys, store, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "oath-service",
    version = crate::version::LONG,
    about = "OATH (HOTP/TOTP) token service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default). Applies pending migrations first.
    Serve {
        /// Do not apply pending migrations on start.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a development access token signed with auth.hs256_secret.
    DevToken {
        /// The environment (tenant) the token is valid for.
        #[arg(long)]
        env: Uuid,
        /// A scope to grant; repeat for several. Default: every scope.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Re-encrypt every stored secret, of tokens and of queued job items, with
    /// crypto.active_key_id, then exit.
    Reencrypt,
    /// The encryption keys: what each key id seals in the database.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Upload a seed file (PSKC, CSV or a JSON create job) to a running service and follow the
    /// job. The bearer token comes from the OATH_TOKEN environment variable.
    #[cfg(feature = "import-cli")]
    Import(Box<import::ImportArgs>),
    /// Without the import-cli feature: `import` is refused with a line saying why, instead of
    /// clap's "unrecognized subcommand".
    #[cfg(not(feature = "import-cli"))]
    #[command(hide = true, disable_help_flag = true)]
    Import {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Exit 0 when BASE/health/ready answers 200, else 1 (for container health checks).
    Healthcheck {
        /// The service's base URL [default: http://127.0.0.1:<port of server.addr>].
        #[arg(long = "url", value_name = "BASE")]
        url: Option<String>,
    },
    /// The configuration, without connecting to anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// For each key id, configured or found in the database: whether it is active and
    /// configured, and how many token secrets and queued job items it seals. Exit 1 when the
    /// database holds a key id that is not configured.
    Status {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration as `serve` would, without connecting; print the
    /// settings in force as TOML, every secret shown as "<redacted>".
    Check,
}

/// The answer to `import` in a build without it.
#[cfg(not(feature = "import-cli"))]
const NO_IMPORT: &str = "this build has no `import` command (it was built without the import-cli \
                         feature, as the container image is): run `import` from a default build";

/// Runs the command; the error is one line for the operator.
pub async fn run(cli: Cli) -> Result<(), String> {
    let command = cli.command.unwrap_or(Command::Serve { no_migrate: false });
    // A client of a service elsewhere: it reads no service configuration.
    #[cfg(feature = "import-cli")]
    if let Command::Import(args) = command {
        return match import::run(*args).await? {
            import::Completion::AllCreated => Ok(()),
            import::Completion::SomeNotCreated => std::process::exit(import::EXIT_SOME_NOT_CREATED),
        };
    }
    #[cfg(not(feature = "import-cli"))]
    if let Command::Import { .. } = command {
        return Err(NO_IMPORT.into());
    }
    // A probe given its URL needs no configuration (nor the secrets it would check).
    if let Command::Healthcheck { url: Some(url) } = &command {
        return healthcheck::probe(url).await;
    }
    let settings = Settings::load().map_err(|e| e.to_string())?;
    match command {
        Command::Config(ConfigCommand::Check) => {
            check_offline(&settings)?;
            print!("{}", settings.to_redacted_toml()?);
            Ok(())
        }
        Command::Serve { no_migrate } => serve(settings, !no_migrate).await,
        Command::Migrate => {
            telemetry::init(&settings.log);
            migrate(&startup::pool(&settings)?).await
        }
        Command::DevToken { env, scopes, ttl } => {
            let scopes = if scopes.is_empty() {
                Scope::ALL.iter().map(|s| s.as_str().to_string()).collect()
            } else {
                scopes
            };
            let token =
                auth::mint_dev_token(&settings.auth, env, &scopes, Duration::from_secs(ttl))?;
            println!("{token}");
            Ok(())
        }
        Command::Reencrypt => {
            telemetry::init(&settings.log);
            let pool = startup::pool(&settings)?;
            let state = AppState::new(settings, pool).await?;
            let moved = store::secrets::reencrypt_all(state.db(), &state.services.cipher)
                .await
                .map_err(|e| format!("re-encryption failed: {e}"))?;
            let queued = store::secrets::reencrypt_queued(state.db(), &state.services.cipher)
                .await
                .map_err(|e| format!("re-encryption of queued job items failed: {e}"))?;
            let subscriptions =
                store::secrets::reencrypt_subscriptions(state.db(), &state.services.cipher)
                    .await
                    .map_err(|e| format!("re-encryption of subscriptions failed: {e}"))?;
            tracing::info!(moved, queued, subscriptions, "re-encryption finished");
            Ok(())
        }
        Command::Keys(KeysCommand::Status { json }) => {
            let pool = startup::pool(&settings)?;
            let (active, keys) = settings.crypto.decoded_keys().map_err(|e| e.to_string())?;
            let cipher = SecretCipher::new(active, &keys).map_err(|e| e.to_string())?;
            let uses = store::secrets::key_uses(&pool)
                .await
                .map_err(|e| format!("cannot read the key ids in use: {e}"))?;
            let statuses = keys::statuses(&cipher, &uses);
            if json {
                let doc = serde_json::json!({ "keys": statuses });
                println!("{doc}");
            } else {
                print!("{}", keys::table(&statuses));
            }
            let unconfigured = keys::unconfigured(&statuses);
            if unconfigured.is_empty() {
                Ok(())
            } else {
                Err(keys::unconfigured_error(&unconfigured))
            }
        }
        #[cfg(feature = "import-cli")]
        Command::Import(_) => unreachable!("handled above"),
        #[cfg(not(feature = "import-cli"))]
        Command::Import { .. } => unreachable!("handled above"),
        Command::Healthcheck { url } => {
            let base = match url {
                Some(url) => url,
                None => healthcheck::local_base_url(&settings.server.addr)?,
            };
            healthcheck::probe(&base).await
        }
    }
}

/// What `serve` checks before it connects: the database URL and its TLS files, the keys, the
/// auth settings and files (the JWKS URL is not fetched).
fn check_offline(settings: &Settings) -> Result<(), String> {
    startup::pool(settings)?;
    let (active, keys) = settings.crypto.decoded_keys().map_err(|e| e.to_string())?;
    SecretCipher::new(active, &keys).map_err(|e| e.to_string())?;
    settings
        .crypto
        .request_hash_key()
        .map_err(|e| e.to_string())?;
    settings.import.keyring().map_err(|e| e.to_string())?;
    auth::check_offline(&settings.auth)
}

async fn serve(settings: Settings, apply_migrations: bool) -> Result<(), String> {
    // First of all: a SIGTERM while starting (migrating, or runners claiming) stops the process
    // in order once it serves, instead of killing it by the signal's default action.
    let stop = startup::StopSignal::listen();
    let export = telemetry::init_serving(&settings.log, &settings.telemetry)?;
    let pool = startup::pool(&settings)?;
    if apply_migrations {
        migrate(&pool).await?;
    }
    let state = AppState::new(settings, pool).await?;
    check_key_ids(&state).await?;
    let runners = RunnerPool::start(state.db().clone(), state.services.settings.clone());
    let deliveries = crate::events::delivery::DeliveryPool::start(
        state.db().clone(),
        state.services.settings.clone(),
        state.services.cipher.clone(),
    )?;
    let addr = state.settings().server.addr.clone();
    let app = Application::build(state)?;
    tracing::info!(%addr, port = app.port(), admin_port = ?app.admin_port(), "listening");
    // After SIGTERM/ctrl-c and the shutdown delay, the runners are told to stop (each finishes
    // its current chunk and hands its job back) while the servers drain; then both are awaited.
    let served = app
        .run_until(stop, || {
            runners.begin_stop();
            deliveries.begin_stop();
        })
        .await;
    runners.stop().await;
    deliveries.stop().await;
    // The spans of the last requests and chunks, sent before the process ends.
    if let Some(export) = export {
        export.shutdown().await;
    }
    tracing::info!("stopped");
    served.map_err(|e| format!("server error: {e}"))
}

/// Refuses to serve when the database holds secrets sealed with a key id that is not
/// configured. Without a database (`serve --no-migrate` while it is away) the check is skipped,
/// with a warning: the process must start and wait for its database.
async fn check_key_ids(state: &AppState) -> Result<(), String> {
    match store::secrets::key_uses(state.db()).await {
        Ok(uses) => {
            let statuses = keys::statuses(&state.services.cipher, &uses);
            let unconfigured = keys::unconfigured(&statuses);
            if unconfigured.is_empty() {
                Ok(())
            } else {
                Err(keys::unconfigured_error(&unconfigured))
            }
        }
        Err(e) if store::is_unavailable(&e) => {
            tracing::warn!(error = %e, "the key ids of stored secrets were not checked: the database is unavailable");
            Ok(())
        }
        Err(e) => Err(format!("cannot read the key ids of stored secrets: {e}")),
    }
}

async fn migrate(pool: &sqlx::PgPool) -> Result<(), String> {
    let unknown = store::migrate(pool)
        .await
        .map_err(|e| format!("cannot apply migrations: {e}"))?;
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        // A rollback: the newer release's migrations are additive, so this binary serves on.
        tracing::warn!(
            "the database is ahead of this binary: migration(s) {} of a newer release are \
             applied; they are additive, so this binary works with the schema it knows",
            list.join(", ")
        );
    }
    tracing::info!("migrations applied");
    Ok(())
}
