//! `cortex serve` and `cortex migrate`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use cortex_config::{Config, LogFormat};
use cortex_domain::SystemClock;
use cortex_server::Gateway;
use cortex_store::Store;
use secrecy::ExposeSecret;
use tracing_subscriber::EnvFilter;

/// Structured logs to stderr (stdout stays clean for command output). `RUST_LOG` filters.
pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal; log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let listen = config.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "cortex: CORTEX_LISTEN: cannot listen on {listen}: {}",
                err.kind()
            );
            return Ok(ExitCode::from(2));
        }
    };
    let gateway = match Gateway::build(config, Arc::new(SystemClock)).await {
        Ok(gateway) => gateway,
        Err(err) => {
            eprintln!("cortex: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(password) = &gateway.generated_admin_password {
        print_generated_password(&gateway.state().config().admin_user, password);
    }
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| listen.to_string());
    // Signal handlers go in before readiness is announced: a SIGTERM or SIGHUP that arrives
    // just after the "listening" line must meet them, not the default action (exit, no drain).
    let shutdown = shutdown_signal();
    gateway.watch_sighup();
    tracing::info!(address = %bound, "cortex listening");
    gateway.serve(listener, shutdown).await.context("serving")?;
    tracing::info!("cortex stopped");
    Ok(ExitCode::SUCCESS)
}

/// Applies the schema and, on an empty database, creates the first admin (as `serve` would), so
/// that `cortex keys create` works before the first start.
pub async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    cortex_store::create_private_dir(&config.data_dir).context("creating the data directory")?;
    let store = Store::open(config.database_url.expose_secret()).await?;
    let now = cortex_domain::Clock::now_millis(&SystemClock);
    match cortex_control::bootstrap::ensure_first_admin(&store, config, now).await {
        Ok(Some(password)) => print_generated_password(&config.admin_user, &password),
        Ok(None) => {}
        Err(err) => {
            eprintln!("cortex: {err}");
            return Ok(ExitCode::from(2));
        }
    }
    println!("migrations applied ({})", store.backend().name());
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The one place a generated password is shown: stderr, once, at bootstrap.
fn print_generated_password(username: &str, password: &secrecy::SecretString) {
    eprintln!(
        "\n  Cortex created the first admin account.\n    username: {username}\n    password: {}\n  This password is shown once and must be changed at first login.\n",
        password.expose_secret()
    );
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). On Unix the handlers are installed when this is
/// called, not when the returned future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = [SignalKind::terminate(), SignalKind::interrupt()].map(signal);
    async move {
        let [terminate, interrupt] = streams.map(|stream| async move {
            match stream {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        });
        tokio::select! {
            () = terminate => {}
            () = interrupt => {}
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
