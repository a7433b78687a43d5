//! The `cortex` command. Thin on purpose: each subcommand parses its arguments, loads the
//! configuration, and calls into the library crates.

#![allow(clippy::print_stdout)] // A CLI's output is stdout; logs go to stderr.

mod engines;
mod keys;
mod maintenance;
mod ops;
mod policies;
mod serve;
mod tenancy;

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
    /// Inference engines (SPEC §17): list, start, stop, restart, logs.
    #[command(subcommand)]
    Engines(engines::EnginesCommand),
    /// Manage organizations (SPEC §18): list, create, update, delete.
    #[command(subcommand)]
    Orgs(tenancy::OrgsCommand),
    /// Manage teams and their members.
    #[command(subcommand)]
    Teams(tenancy::TeamsCommand),
    /// Gateway policies (SPEC §21): the response cache and guardrails of an organization, a
    /// model or a key: list, create, delete.
    #[command(subcommand)]
    Policies(policies::PoliciesCommand),
    /// Verify, export or checkpoint the tamper-evident audit log.
    #[command(subcommand)]
    Audit(ops::AuditCommand),
    /// Print every hardening check with PASS/FAIL; exit 1 on any FAIL.
    Check {
        #[arg(long)]
        production: bool,
    },
    /// Export the configuration with every secret redacted, or import such an export.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the master key that seals stored secrets.
    #[command(subcommand)]
    Secrets(maintenance::SecretsCommand),
    /// Erase a user's personal data.
    #[command(subcommand)]
    Users(maintenance::UsersCommand),
    /// Write a consistent copy of the SQLite database (online) inside CORTEX_STORAGE_ROOT.
    Backup {
        /// A file name inside CORTEX_STORAGE_ROOT.
        #[arg(long)]
        output: String,
    },
    /// Replace the SQLite database with a backup from CORTEX_STORAGE_ROOT (stop servers first).
    Restore {
        /// The backup's file name inside CORTEX_STORAGE_ROOT.
        name: String,
        /// Replace an existing database (it is moved aside, not deleted).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Providers, models, roles, users and key metadata as JSON; secrets are `[REDACTED]`.
    Export {
        /// A file name inside CORTEX_STORAGE_ROOT (default: stdout).
        #[arg(long)]
        output: Option<String>,
    },
    /// Create or update providers and models from an export; nothing is deleted. Redacted
    /// secrets are not imported: the command names the providers that need one.
    Import {
        file: std::path::PathBuf,
        /// Check the file and print what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
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
            Command::Engines(command) => engines::run(&config, command).await,
            Command::Orgs(command) => tenancy::orgs(&config, command).await,
            Command::Teams(command) => tenancy::teams(&config, command).await,
            Command::Policies(command) => policies::run(&config, command).await,
            Command::Audit(command) => ops::audit(&config, command).await,
            Command::Check { production } => ops::check(&config, production).await,
            Command::Config(ConfigCommand::Export { output }) => {
                ops::config_export(&config, output).await
            }
            Command::Config(ConfigCommand::Import { file, dry_run }) => {
                maintenance::config_import(&config, &file, dry_run).await
            }
            Command::Secrets(command) => maintenance::secrets(&config, command).await,
            Command::Users(command) => maintenance::users(&config, command).await,
            Command::Backup { output } => maintenance::backup(&config, &output).await,
            Command::Restore { name, force } => maintenance::restore(&config, &name, force).await,
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
