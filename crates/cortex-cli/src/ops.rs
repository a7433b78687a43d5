//! `cortex audit …`, `cortex check --production` and `cortex config export`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use cortex_config::Config;
use cortex_domain::{Clock, SystemClock};
use cortex_server::bootstrap::{load_master_key, verify_master_key};
use cortex_server::ops_service::{audit, check, export, storage};
use cortex_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exit 1 at the first bad event.
    Verify,
    /// Write every event as JSON Lines (to stdout, or a file inside CORTEX_STORAGE_ROOT).
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// A file name inside CORTEX_STORAGE_ROOT.
        #[arg(long)]
        output: Option<String>,
    },
    /// Sign the current head now (the server also does every 30 s and at shutdown).
    Checkpoint,
    /// Print the checkpoint verifying key, for offline verification of exports.
    PublicKey,
}

/// Opens the database and the master key, checked against the database (as `serve` does).
pub async fn open(config: &Config) -> anyhow::Result<(Store, cortex_crypto::envelope::MasterKey)> {
    cortex_store::create_private_dir(&config.data_dir).context("creating the data directory")?;
    let master_key = load_master_key(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::open(config.database_url.expose_secret()).await?;
    let master_key =
        match verify_master_key(&store, config, master_key, SystemClock.now_millis()).await {
            Ok(key) => key,
            Err(err) => {
                store.close().await;
                return Err(anyhow::anyhow!("{err}"));
            }
        };
    Ok((store, master_key))
}

pub async fn audit(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let (store, master_key) = open(config).await?;
    let now = SystemClock.now_millis();
    let code = match command {
        AuditCommand::Verify => {
            let (total, _) = store.audit_head().await?;
            let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            if total < 100_000 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let report = audit::verify(&store, &master_key, |n| bar.set_position(n)).await?;
            bar.finish_and_clear();
            if report.ok {
                println!("ok: {} events verified", report.events_checked);
                ExitCode::SUCCESS
            } else {
                println!(
                    "FAILED: the audit log was changed at or before event #{}",
                    report.first_bad_seq.unwrap_or(0)
                );
                ExitCode::FAILURE
            }
        }
        AuditCommand::Export { format, output } => {
            if format != "jsonl" {
                bail!("--format: only jsonl is supported");
            }
            let mut out: Box<dyn Write> = match &output {
                Some(name) => {
                    let (_, file) = storage::create_in_storage_root(&config.storage_root, name)
                        .map_err(|e| anyhow::anyhow!("--output {name}: {e}"))?;
                    Box::new(std::io::BufWriter::new(file))
                }
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut after = 0;
            loop {
                let page = store.audit_page(after, 10_000).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    writeln!(out, "{}", audit::event_json(e))?;
                }
            }
            out.flush()?;
            ExitCode::SUCCESS
        }
        AuditCommand::Checkpoint => {
            match audit::write_checkpoint(&store, &master_key, now).await? {
                Some(seq) => println!("checkpoint written at event #{seq}"),
                None => println!("nothing new to sign"),
            }
            ExitCode::SUCCESS
        }
        AuditCommand::PublicKey => {
            println!("{}", audit::signer(&master_key).verifying_key_hex());
            ExitCode::SUCCESS
        }
    };
    store.close().await;
    Ok(code)
}

pub async fn check(config: &Config, production: bool) -> anyhow::Result<ExitCode> {
    if !production {
        bail!("say what to check: `cortex check --production`");
    }
    let (store, master_key) = open(config).await?;
    let report = check::run(config, &store, &master_key).await;
    for c in &report.checks {
        if c.status == "PASS" {
            println!("PASS  {}", c.name);
        } else {
            println!("FAIL  {}  — {}", c.name, c.hint);
        }
    }
    store.close().await;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn config_export(config: &Config, output: Option<String>) -> anyhow::Result<ExitCode> {
    let (store, _) = open(config).await?;
    let now = SystemClock.now_millis();
    let document = export::export(&store, now).await?;
    let text = serde_json::to_string_pretty(&document)?;
    match output {
        Some(name) => {
            let (path, mut file) = storage::create_in_storage_root(&config.storage_root, &name)
                .map_err(|e| anyhow::anyhow!("--output {name}: {e}"))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => println!("{text}"),
    }
    let event = cortex_domain::audit::NewAuditEvent::new("cli", "config.export", "config");
    store.append_audit(&event, now).await?;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
