//! `cortex engines list|start|stop|restart|logs` (SPEC §17), against the database like the other
//! commands. Start, stop and restart record what the operator asked (with its audit event);
//! every serving process reconciles its engines to the stored state within about two seconds
//! (`cortex-server`'s engine module). `logs` reads the last lines a serving process on this
//! host mirrors into `CORTEX_DATA_DIR/engine-logs/` (redacted before they are written).

use std::process::ExitCode;

use anyhow::anyhow;
use clap::Subcommand;
use cortex_config::Config;
use cortex_control::engines::{command_engine, EngineCommand};
use cortex_domain::{Clock, SystemClock};
use cortex_store::engines::EngineRow;
use cortex_store::Store;

/// The actor recorded in the audit log for command-line changes.
const CLI_ACTOR: &str = "cli";

#[derive(Subcommand)]
pub enum EnginesCommand {
    /// List engines with what was asked of them.
    List,
    /// Ask every serving process to start the engine (id or name).
    Start { engine: String },
    /// Ask every serving process to stop the engine (out of routing first).
    Stop { engine: String },
    /// Ask every serving process to restart the engine.
    Restart { engine: String },
    /// The engine's last output lines (secrets redacted), as a serving process on this host
    /// last wrote them.
    Logs {
        engine: String,
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
}

async fn find(store: &Store, id_or_name: &str) -> anyhow::Result<EngineRow> {
    store
        .get_engine(id_or_name)
        .await?
        .ok_or_else(|| anyhow!("no engine with id or name {id_or_name:?}"))
}

pub async fn run(config: &Config, command: EnginesCommand) -> anyhow::Result<ExitCode> {
    let (store, master_key) = crate::ops::open(config).await?;
    let now = SystemClock.now_millis();
    let result = execute(config, &store, command, now).await;
    crate::ops::close(&store, &master_key).await;
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn execute(
    config: &Config,
    store: &Store,
    command: EnginesCommand,
    now: i64,
) -> anyhow::Result<()> {
    match command {
        EnginesCommand::List => {
            println!(
                "{:<36}  {:<24}  {:<8}  {:<7}  {:<8}  auto_start",
                "id", "name", "engine", "runtime", "desired"
            );
            for row in store.list_engines().await? {
                println!(
                    "{:<36}  {:<24}  {:<8}  {:<7}  {:<8}  {}",
                    row.id,
                    row.name,
                    row.engine,
                    row.runtime,
                    row.desired_state.as_str(),
                    row.auto_start
                );
            }
        }
        EnginesCommand::Start { engine } => ask(store, &engine, EngineCommand::Start, now).await?,
        EnginesCommand::Stop { engine } => ask(store, &engine, EngineCommand::Stop, now).await?,
        EnginesCommand::Restart { engine } => {
            ask(store, &engine, EngineCommand::Restart, now).await?;
        }
        EnginesCommand::Logs { engine, tail } => {
            let row = find(store, &engine).await?;
            let path = cortex_server::engines::log_mirror_path(&config.data_dir, &row.id);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                anyhow!(
                    "no logs for {:?} at {} ({}): the engine has not run under a serving process on this host",
                    row.name,
                    path.display(),
                    e.kind()
                )
            })?;
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(tail)..] {
                println!("{line}");
            }
        }
    }
    Ok(())
}

async fn ask(store: &Store, engine: &str, command: EngineCommand, now: i64) -> anyhow::Result<()> {
    let row = find(store, engine).await?;
    let row = command_engine(store, &row.id, command, CLI_ACTOR, "", now).await?;
    println!(
        "{}: desired state {} (serving processes act on it within about 2 s)",
        row.name,
        row.desired_state.as_str()
    );
    Ok(())
}
