//! `cortex audit …`, `cortex check --production` and `cortex config export`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use cortex_config::Config;
use cortex_control::bootstrap::{load_master_key, verify_master_key};
use cortex_control::ops::{audit, check, export, storage};
use cortex_domain::{Clock, SystemClock};
use cortex_store::Store;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints; exit 1 at the first bad event.
    Verify,
    /// Write every event as JSON Lines (to stdout, or a file inside CORTEX_STORAGE_ROOT), each
    /// signed checkpoint (`"kind": "audit.checkpoint"`) after the event it covers.
    Export {
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// A file name inside CORTEX_STORAGE_ROOT.
        #[arg(long)]
        output: Option<String>,
    },
    /// Sign the current head now (the server also does every 30 s and at shutdown).
    Checkpoint,
    /// Print the checkpoint verifying key, for offline verification of exported and forwarded
    /// checkpoints (the event hashes themselves need the master key).
    PublicKey,
}

/// Opens the database and the master key, checked against the database (as `serve` does), with
/// the audit chain under that key (an unkeyed chain from an older version is verified and
/// re-keyed here, once; one that does not verify is refused).
pub async fn open(config: &Config) -> anyhow::Result<(Store, cortex_crypto::envelope::MasterKey)> {
    let (store, master_key) = open_unchained(config).await?;
    match audit::open_chain(store.clone(), &master_key, SystemClock.now_millis()).await {
        Ok(store) => Ok((store, master_key)),
        Err(err) => {
            store.close().await;
            Err(anyhow::anyhow!("{err}"))
        }
    }
}

/// [`open`] without the audit chain step.
async fn open_unchained(
    config: &Config,
) -> anyhow::Result<(Store, cortex_crypto::envelope::MasterKey)> {
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

/// Signs a checkpoint over the events this command wrote (after verifying the chain since the
/// last one), so they do not wait for the next server start; then closes the database.
pub async fn close(store: &Store, master_key: &cortex_crypto::envelope::MasterKey) {
    match audit::write_checkpoint(store, master_key, SystemClock.now_millis()).await {
        Ok(audit::CheckpointOutcome::Refused(seq)) => {
            eprintln!("cortex: the audit log does not verify at event #{seq}: no checkpoint signed; run `cortex audit verify`");
        }
        Ok(_) => {}
        Err(err) => eprintln!("cortex: writing an audit checkpoint failed: {err}"),
    }
    store.close().await;
}

/// How `cortex audit verify` reports a failure.
fn print_failed(first_bad_seq: i64, problem: &str) {
    println!("FAILED: the audit log was changed at or before event #{first_bad_seq}: {problem}");
}

pub async fn audit(config: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now_millis();
    match command {
        // Verify opens the database itself: a chain that cannot be re-keyed is its verdict,
        // not an error.
        AuditCommand::Verify => audit_verify(config, now).await,
        AuditCommand::Export { format, output } => {
            let (store, _) = open(config).await?;
            let result = audit_export(config, &store, &format, output.as_deref()).await;
            store.close().await;
            result
        }
        AuditCommand::Checkpoint => {
            let (store, master_key) = open(config).await?;
            let outcome = audit::write_checkpoint(&store, &master_key, now).await;
            store.close().await;
            Ok(checkpoint_verdict(outcome?))
        }
        AuditCommand::PublicKey => {
            let (store, master_key) = open(config).await?;
            store.close().await;
            println!("{}", audit::signer(&master_key).verifying_key_hex());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cortex audit export`: every event, each signed checkpoint after the event it covers (as
/// forwarded to a SIEM), so an export can be checked offline with `cortex audit public-key`.
async fn audit_export(
    config: &Config,
    store: &Store,
    format: &str,
    output: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if format != "jsonl" {
        bail!("--format: only jsonl is supported");
    }
    let mut out: Box<dyn Write> = match output {
        Some(name) => {
            let (_, file) = storage::create_in_storage_root(&config.storage_root, name)
                .map_err(|e| anyhow::anyhow!("--output {name}: {e}"))?;
            Box::new(std::io::BufWriter::new(file))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let checkpoints = store.checkpoints_to_forward(0, i64::MAX, i64::MAX).await?;
    let mut pending = checkpoints.iter().peekable();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            writeln!(out, "{}", audit::event_json(e))?;
            while let Some((checkpoint, prev)) = pending.next_if(|c| c.0.seq <= e.seq) {
                writeln!(
                    out,
                    "{}",
                    audit::checkpoint_json(checkpoint, prev.as_deref())
                )?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What `cortex audit checkpoint` prints, and its exit code.
fn checkpoint_verdict(outcome: audit::CheckpointOutcome) -> ExitCode {
    match outcome {
        audit::CheckpointOutcome::Written(seq) => {
            println!("checkpoint written at event #{seq}");
            ExitCode::SUCCESS
        }
        audit::CheckpointOutcome::UpToDate => {
            println!("nothing new to sign");
            ExitCode::SUCCESS
        }
        audit::CheckpointOutcome::Refused(seq) => {
            println!("REFUSED: the audit log does not verify at event #{seq}; nothing was signed (run `cortex audit verify`)");
            ExitCode::FAILURE
        }
        audit::CheckpointOutcome::KeyRetired => {
            println!("REFUSED: the database is under another master key; nothing was signed");
            ExitCode::FAILURE
        }
    }
}

/// `cortex audit verify`. A database from an older version whose unkeyed chain does not verify
/// is reported like any broken chain (it was not re-keyed).
async fn audit_verify(config: &Config, now: i64) -> anyhow::Result<ExitCode> {
    let (store, master_key) = open_unchained(config).await?;
    let store = match audit::open_chain(store.clone(), &master_key, now).await {
        Ok(store) => store,
        Err(audit::ChainOpenError::Rekey(cortex_store::audit::RekeyError::ChainBroken(seq))) => {
            store.close().await;
            print_failed(seq, audit::VerifyProblem::ChainBroken.describe());
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => {
            store.close().await;
            return Err(anyhow::anyhow!("{err}"));
        }
    };
    let (total, _) = store.audit_head().await?;
    let bar = ProgressBar::new(u64::try_from(total).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if total < 100_000 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = audit::verify(&store, &master_key, now, |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    store.close().await;
    let report = report?;
    Ok(match (report.first_bad_seq, report.problem) {
        (Some(seq), Some(problem)) => {
            print_failed(seq, problem.describe());
            ExitCode::FAILURE
        }
        _ if report.ok => {
            println!("ok: {} events verified", report.events_checked);
            ExitCode::SUCCESS
        }
        _ => {
            print_failed(0, "");
            ExitCode::FAILURE
        }
    })
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
    let (store, master_key) = open(config).await?;
    let now = SystemClock.now_millis();
    let document = export::export(&store, &cortex_store::Tenant::All, now).await?;
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
    close(&store, &master_key).await;
    Ok(ExitCode::SUCCESS)
}
