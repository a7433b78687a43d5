//! `cortex config import`, `cortex secrets rotate-master-key`, `cortex backup`, `cortex restore`
//! and `cortex users erase`: the operator's maintenance commands. The work is in
//! `cortex_control::ops`; this module parses, prints and chooses exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use cortex_config::{Config, MasterKeySource};
use cortex_control::bootstrap::write_private_file;
use cortex_control::ops::{audit, backup, import, secrets};
use cortex_control::ControlError;
use cortex_crypto::envelope::MasterKey;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Clock, SystemClock};
use cortex_store::Store;
use secrecy::ExposeSecret;

use crate::ops::{close, open};

/// The actor recorded in the audit log for command-line changes.
const CLI_ACTOR: &str = "cli";

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Re-seal every stored secret under a new master key, in one transaction. Stop every
    /// server first and start them with the new key afterwards.
    RotateMasterKey {
        /// Read the new key (32 bytes, hex or base64) from this file (mode 0600). Without it a
        /// key is generated into the data directory.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Erase a user's personal data: the account, the names of their keys, the user link and
    /// client IP of their usage. The audit log is kept (and records the erasure).
    Erase {
        /// The user's id, or the username of an existing user.
        user: String,
    },
}

pub async fn config_import(
    config: &Config,
    file: &Path,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (store, master_key) = open(config).await?;
    let now = SystemClock.now_millis();
    let result = import::import(&store, &master_key, &text, CLI_ACTOR, dry_run, now).await;
    close(&store, &master_key).await;
    let report = result.map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    println!("providers created: {}", list(&report.providers_created));
    println!("providers updated: {}", list(&report.providers_updated));
    println!("models created: {}", list(&report.models_created));
    println!("models updated: {}", list(&report.models_updated));
    if !report.providers_needing_secret.is_empty() {
        println!(
            "secrets were redacted in the export; set them for: {} (PATCH /admin/providers/{{id}} with api_key, or cortex.toml)",
            report.providers_needing_secret.join(", ")
        );
    }
    if !report.providers_key_dropped.is_empty() {
        println!(
            "stored keys dropped (the base URL moved to another host, port or scheme): {}; set a new key for each",
            report.providers_key_dropped.join(", ")
        );
    }
    if report.users_not_imported + report.keys_not_imported > 0 {
        println!(
            "not imported: {} users and {} keys (an export carries no passwords or key secrets; create them anew)",
            report.users_not_imported, report.keys_not_imported
        );
    }
    eprintln!(
        "{}",
        if dry_run {
            "dry run: nothing was changed"
        } else {
            "applied in one transaction (audited as config.import)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn secrets(config: &Config, command: SecretsCommand) -> anyhow::Result<ExitCode> {
    let SecretsCommand::RotateMasterKey { new_key_file } = command;
    let (store, old_key) = open(config).await?;
    let now = SystemClock.now_millis();
    let result = rotate(config, &store, &old_key, new_key_file.as_deref(), now).await;
    store.close().await;
    result
}

async fn rotate(
    config: &Config,
    store: &Store,
    old_key: &MasterKey,
    new_key_file: Option<&Path>,
    now: i64,
) -> anyhow::Result<ExitCode> {
    // Where the new key lives: the operator's file, or a new private file in the data dir. For
    // the generated default key it is written next to it and moved into place after the commit
    // (a start-up finishes that move if this process dies in between).
    let generated_default = match &config.master_key {
        MasterKeySource::Generated(path) => Some(path.clone()),
        _ => None,
    };
    let (new_key, staged) = match new_key_file {
        Some(path) => (read_new_key(path)?, None),
        None => {
            let key = MasterKey::generate();
            let path = match &generated_default {
                Some(current) => secrets::pending_key_path(current),
                None => config.data_dir.join(format!("master-{now}.key")),
            };
            // A leftover from a rotation that never committed (the current key still matches).
            if generated_default.is_some() {
                let _ = std::fs::remove_file(&path);
            }
            write_private_file(&path, key.to_base64().expose_secret().as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            (key, Some(path))
        }
    };
    let staged_default = match (&generated_default, new_key_file) {
        (Some(current), Some(_)) => {
            // The operator's key also becomes the data dir's key file, so `serve` keeps working
            // on defaults.
            let pending = secrets::pending_key_path(current);
            let _ = std::fs::remove_file(&pending);
            write_private_file(&pending, new_key.to_base64().expose_secret().as_bytes())
                .with_context(|| format!("cannot write {}", pending.display()))?;
            Some(pending)
        }
        (Some(_), None) => staged.clone(),
        (None, _) => None,
    };
    let report = match secrets::rotate_master_key(store, old_key, &new_key, CLI_ACTOR, now).await {
        Ok(report) => report,
        Err(err) => {
            // Nothing changed in the database: the new key must not be left where it could be
            // mistaken for the one in use.
            if let Some(path) = staged_default.as_ref().or(staged.as_ref()) {
                let _ = std::fs::remove_file(path);
            }
            bail!("rotation failed: {err}");
        }
    };
    println!(
        "re-sealed {} provider keys and {} TOTP secrets, re-signed {} audit checkpoints",
        report.counts.provider_keys, report.counts.totp_secrets, report.counts.checkpoints
    );
    println!(
        "checkpoint key: {} -> {}",
        report.old_checkpoint_key, report.new_checkpoint_key
    );
    match (&generated_default, staged_default) {
        (Some(current), Some(pending)) => {
            std::fs::rename(&pending, current).with_context(|| {
                format!(
                    "the database now uses the key in {}; move it to {} by hand",
                    pending.display(),
                    current.display()
                )
            })?;
            println!("the new key is in {}", current.display());
        }
        _ => {
            let path = new_key_file
                .map(Path::to_path_buf)
                .or(staged)
                .unwrap_or_default();
            match &config.master_key {
                MasterKeySource::Inline(_) => println!(
                    "the new key is in {}; unset CORTEX_MASTER_KEY and set CORTEX_MASTER_KEY_FILE={} before starting Cortex",
                    path.display(),
                    path.display()
                ),
                _ => println!(
                    "the new key is in {}; set CORTEX_MASTER_KEY_FILE={} before starting Cortex",
                    path.display(),
                    path.display()
                ),
            }
        }
    }
    eprintln!("start every server with the new key; back it up: backups taken before now need the old key");
    Ok(ExitCode::SUCCESS)
}

/// Reads a key the operator prepared; a file others can read is refused (fail closed).
fn read_new_key(path: &Path) -> anyhow::Result<MasterKey> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("--new-key-file: cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "--new-key-file: {} is readable by others; chmod 600 it first",
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--new-key-file: cannot read {}", path.display()))?;
    MasterKey::parse(text.trim()).map_err(|_| {
        anyhow!(
            "--new-key-file: {} does not hold a 32-byte key (hex or base64)",
            path.display()
        )
    })
}

pub async fn backup(config: &Config, output: &str) -> anyhow::Result<ExitCode> {
    if !config.is_sqlite() {
        eprintln!("cortex: {}", backup::POSTGRES_BACKUP_HELP);
        return Ok(ExitCode::from(2));
    }
    let (store, master_key) = open(config).await?;
    let result = backup::backup(config, &store, output).await;
    if result.is_ok() {
        let event = NewAuditEvent::new(CLI_ACTOR, "backup.create", output);
        store.append_audit(&event, SystemClock.now_millis()).await?;
    }
    close(&store, &master_key).await;
    let path = result.map_err(|e| anyhow!("--output: {e}"))?;
    println!("{}", path.display());
    eprintln!("backup written; it holds no master key: keep the key (and a copy of it) separately");
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(config: &Config, name: &str, force: bool) -> anyhow::Result<ExitCode> {
    if !config.is_sqlite() {
        eprintln!("cortex: {}", backup::POSTGRES_RESTORE_HELP);
        return Ok(ExitCode::from(2));
    }
    if let MasterKeySource::Generated(path) = &config.master_key {
        if !path.exists() {
            // Generating a key here would make a key that opens nothing in the backup.
            bail!(
                "no master key at {}: copy the key that was in use when the backup was taken there, or set CORTEX_MASTER_KEY_FILE",
                path.display()
            );
        }
    }
    cortex_store::create_private_dir(&config.data_dir).context("creating the data directory")?;
    let master_key =
        cortex_control::bootstrap::load_master_key(config).map_err(|e| anyhow!("{e}"))?;
    let now = SystemClock.now_millis();
    let report = backup::restore(config, &master_key, name, force, now)
        .await
        .map_err(|e| anyhow!("restore: {e}"))?;
    if let Some(aside) = &report.previous_moved_to {
        eprintln!("the previous database was moved to {}", aside.display());
    }
    // Open the restored database as the server would (migrations, key check), then verify it.
    let (store, master_key) = open(config).await?;
    let verified = audit::verify(&store, &master_key, now, |_| {}).await?;
    let event = NewAuditEvent::new(CLI_ACTOR, "backup.restore", name);
    store.append_audit(&event, now).await?;
    close(&store, &master_key).await;
    println!("restored {} into {}", name, report.restored_to.display());
    if verified.ok {
        println!("audit log: ok: {} events verified", verified.events_checked);
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "audit log: FAILED at or before event #{}",
            verified.first_bad_seq.unwrap_or(0)
        );
        Ok(ExitCode::FAILURE)
    }
}

pub async fn users(config: &Config, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let UsersCommand::Erase { user } = command;
    // The master key is needed: the erasure writes an event on the keyed audit chain.
    let (store, master_key) = open(config).await?;
    let id = match store
        .get_user_by_username(&cortex_store::Tenant::All, &user)
        .await?
    {
        Some(found) => found.id,
        None => user.clone(),
    };
    let result = cortex_control::users::erase(
        &store,
        &cortex_store::Tenant::All,
        &id,
        CLI_ACTOR,
        "",
        SystemClock.now_millis(),
    )
    .await;
    let report = match result {
        // Refused before anything was written: there is nothing to checkpoint.
        Err(ControlError::Conflict(_)) => {
            store.close().await;
            bail!("{user} is the last active admin; erasing it would leave no admin");
        }
        result => {
            close(&store, &master_key).await;
            match result {
                Ok(report) => report,
                Err(ControlError::Store(cortex_store::StoreError::NotFound)) => {
                    bail!("no user, key or usage row has id or username {user:?}")
                }
                Err(err) => return Err(err.into()),
            }
        }
    };
    println!(
        "erased user {id}: account {}, {} keys anonymised, {} usage rows anonymised",
        if report.user_deleted {
            "deleted"
        } else {
            "already gone"
        },
        report.keys_anonymised,
        report.usage_rows_anonymised
    );
    Ok(ExitCode::SUCCESS)
}
