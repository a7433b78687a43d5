//! `cortex backup` and `cortex restore` for the embedded SQLite database (SPEC §10).
//!
//! A backup is one consistent snapshot taken while the server keeps running (`VACUUM INTO`),
//! written inside `CORTEX_STORAGE_ROOT` (mode 0600). It never contains the master key: keep that
//! separately. A restore checks the snapshot (SQLite's integrity check, and that its secrets are
//! sealed with the master key now configured) before it replaces anything, and replaces the
//! database file atomically. PostgreSQL deployments use `pg_dump`/`pg_restore` instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use cortex_config::Config;
use cortex_crypto::envelope::MasterKey;
use cortex_crypto::token::ct_eq;
use cortex_store::{Store, StoreError};
use secrecy::ExposeSecret;

use super::fingerprint::{fingerprint, FINGERPRINT_SETTING};
use super::storage::{
    create_in_storage_root, create_private_file, resolve_in_storage_root, PathError,
};

/// What the operator runs on PostgreSQL instead (also in the README).
pub const POSTGRES_BACKUP_HELP: &str = "on PostgreSQL, back up with pg_dump: \
pg_dump --format=custom --file=cortex.dump \"$DATABASE_URL\" (keep the master key separately)";
pub const POSTGRES_RESTORE_HELP: &str = "on PostgreSQL, restore with pg_restore: \
pg_restore --clean --if-exists --no-owner --dbname=\"$DATABASE_URL\" cortex.dump";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Postgres(&'static str),
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("{0} already exists; choose another name")]
    Exists(String),
    #[error("no backup named {0} in the storage root")]
    Missing(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}: {1}")]
    Io(String, std::io::ErrorKind),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

/// Writes a snapshot of the running database to `name` inside the storage root.
pub async fn backup(config: &Config, store: &Store, name: &str) -> Result<PathBuf, BackupError> {
    if !config.is_sqlite() {
        return Err(BackupError::Postgres(POSTGRES_BACKUP_HELP));
    }
    // VACUUM INTO accepts an empty file: create it first, so the snapshot is private (0600) from
    // its first byte and an existing file (or a link) is never written to.
    let (path, _file) =
        create_in_storage_root(&config.storage_root, name).map_err(|error| match error {
            PathError::Exists => BackupError::Exists(name.to_owned()),
            other => BackupError::Path(other),
        })?;
    if let Err(err) = store.backup_sqlite_into(&path).await {
        let _ = std::fs::remove_file(&path);
        return Err(err.into());
    }
    Ok(path)
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub restored_to: PathBuf,
    /// Where the database that was replaced went (with `--force`).
    pub previous_moved_to: Option<PathBuf>,
}

/// Replaces the configured SQLite database with the backup `name` from the storage root. Refuses
/// when a database already exists unless `force` (which moves it aside, never deletes it).
/// Stop every server using the database first.
pub async fn restore(
    config: &Config,
    master_key: &MasterKey,
    name: &str,
    force: bool,
    now: i64,
) -> Result<RestoreReport, BackupError> {
    if !config.is_sqlite() {
        return Err(BackupError::Postgres(POSTGRES_RESTORE_HELP));
    }
    let target = cortex_store::sqlite_file(config.database_url.expose_secret())
        .ok_or_else(|| BackupError::Refused("DATABASE_URL names no SQLite file".to_owned()))?;
    let source = resolve_in_storage_root(&config.storage_root, name)?;
    if !source.is_file() {
        return Err(BackupError::Missing(name.to_owned()));
    }
    check_backup(&source, master_key).await?;
    let existing = std::fs::metadata(&target).is_ok_and(|m| m.len() > 0);
    if existing && !force {
        return Err(BackupError::Refused(format!(
            "{} already holds a database; stop every server and pass --force to replace it (it is moved aside, not deleted)",
            target.display()
        )));
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        cortex_store::create_private_dir(parent).map_err(|e| {
            BackupError::Io(format!("cannot create {}", parent.display()), e.kind())
        })?;
    }
    // Copy next to the target first, so the database is replaced by one rename.
    let staging = with_suffix(&target, ".restoring");
    let _ = std::fs::remove_file(&staging);
    copy_private(&source, &staging)?;
    let previous_moved_to = if existing {
        let aside = with_suffix(&target, &format!(".pre-restore-{now}"));
        move_database(&target, &aside)?;
        Some(aside)
    } else {
        // A stale write-ahead log next to an empty target must not be replayed into the backup.
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(with_suffix(&target, suffix));
        }
        None
    };
    std::fs::rename(&staging, &target).map_err(|e| {
        BackupError::Io(
            format!("cannot move the backup to {}", target.display()),
            e.kind(),
        )
    })?;
    Ok(RestoreReport {
        restored_to: target,
        previous_moved_to,
    })
}

/// The snapshot must pass SQLite's integrity check and, when it records one, carry the
/// fingerprint of the configured master key (else its secrets could not be opened).
async fn check_backup(source: &Path, master_key: &MasterKey) -> Result<(), BackupError> {
    let backup = Store::open_sqlite_read_only(source).await.map_err(|_| {
        BackupError::Refused("the backup is not a readable SQLite database".to_owned())
    })?;
    let checked = async {
        if !backup.sqlite_integrity_ok().await? {
            return Ok(Err("the backup fails SQLite's integrity check"));
        }
        if backup.audit_head().await.is_err() {
            return Ok(Err("the backup is not a Cortex database"));
        }
        if let Some(stored) = backup.get_setting(FINGERPRINT_SETTING).await? {
            if !ct_eq(stored.as_bytes(), fingerprint(master_key).as_bytes()) {
                return Ok(Err("the backup's secrets are sealed with another master key; configure that key (CORTEX_MASTER_KEY or CORTEX_MASTER_KEY_FILE) and run the restore again"));
            }
        }
        Ok::<_, StoreError>(Ok(()))
    }
    .await;
    backup.close().await;
    match checked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(problem)) => Err(BackupError::Refused(problem.to_owned())),
        Err(_) => Err(BackupError::Refused(
            "the backup is not a readable Cortex database".to_owned(),
        )),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn copy_private(from: &Path, to: &Path) -> Result<(), BackupError> {
    let io = |what: &str, e: std::io::Error| BackupError::Io(what.to_owned(), e.kind());
    let mut reader = std::fs::File::open(from).map_err(|e| io("cannot read the backup", e))?;
    let mut writer = create_private_file(to).map_err(|e| io("cannot write the database", e))?;
    std::io::copy(&mut reader, &mut writer).map_err(|e| io("cannot copy the backup", e))?;
    writer
        .flush()
        .and_then(|()| writer.sync_all())
        .map_err(|e| io("cannot write the database", e))
}

/// Moves the database and its write-ahead log files aside, together.
fn move_database(from: &Path, to: &Path) -> Result<(), BackupError> {
    for suffix in ["", "-wal", "-shm"] {
        let source = with_suffix(from, suffix);
        if source.exists() {
            std::fs::rename(&source, with_suffix(to, suffix)).map_err(|e| {
                BackupError::Io(format!("cannot move {} aside", source.display()), e.kind())
            })?;
        }
    }
    Ok(())
}
