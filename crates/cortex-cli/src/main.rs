//! The `cortex` command. Thin on purpose: each subcommand parses its arguments, loads the
//! configuration, and calls into the library crates.

#![allow(clippy::print_stdout)] // A CLI's output is stdout; logs go to stderr.

mod keys;
mod ops;
mod serve;

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: under load the gateway allocates small buffers on every
/// worker thread, and glibc's arena locks showed up as futex waits in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use cortex_config::Config;

#[derive(Parser)]
#[command(name = "cortex", version, about = "Cortex: a security-first, self-hosted AI gateway", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway (settings from cortex.toml and the environment).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Manage API keys directly in the database.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Verify, export or checkpoint the tamper-evident audit log.
    #[command(subcommand)]
    Audit(ops::AuditCommand),
    /// Print every hardening check with PASS/FAIL; exit 1 on any FAIL.
    Check {
        #[arg(long)]
        production: bool,
    },
    /// Export the configuration with every secret redacted.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Providers, models, roles, users and key metadata as JSON; secrets are `[REDACTED]`.
    Export {
        /// A file name inside CORTEX_STORAGE_ROOT (default: stdout).
        #[arg(long)]
        output: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_process_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("cortex: {err}");
            return ExitCode::from(2);
        }
    };
    serve::init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cortex: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve::run(config).await,
            Command::Migrate => serve::migrate(&config).await,
            Command::Keys(command) => keys::run(&config, command).await,
            Command::Audit(command) => ops::audit(&config, command).await,
            Command::Check { production } => ops::check(&config, production).await,
            Command::Config(ConfigCommand::Export { output }) => {
                ops::config_export(&config, output).await
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("cortex: {err:#}");
            ExitCode::FAILURE
        }
    }
}
