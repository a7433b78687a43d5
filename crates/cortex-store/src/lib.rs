//! Storage: the one place that speaks SQL. Runs the same queries on SQLite (default) and
//! PostgreSQL through sqlx's `Any` driver; the two migration sets describe the same schema.
//!
//! Invariants kept here:
//! - every admin change that the caller marks with an audit event commits the event in the same
//!   transaction (see [`audit::append_in_tx`]);
//! - errors never carry SQL text or driver messages to callers: [`StoreError`] holds a category,
//!   and the driver detail is logged here, once;
//! - tenant data is scoped here, in the SQL: every query of keys, users, usage, audit events,
//!   organizations, teams and an organization's models takes a [`Tenant`], and another
//!   organization's row is simply not found;
//! - no secret is stored in plaintext: API key secrets as SHA-256, provider keys and TOTP secrets
//!   sealed by `cortex-crypto` before they reach this crate.

pub mod audit;
pub mod catalog;
pub mod challenges;
pub mod engines;
pub mod forwarding;
pub mod identities;
pub mod keys;
pub mod organizations;
pub mod passkeys;
pub mod policies;
pub mod secrets;
pub mod service_accounts;
pub mod sessions;
pub mod settings;
pub mod testing;
pub mod usage;
pub mod users;

/// Which organizations a query may see; every query of keys, users, usage, audit events,
/// organizations, teams and the models an organization may use takes one (SPEC §18).
pub use cortex_domain::Tenant;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database is behind the pool; a few statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Storage failures, by what the caller can do about them. The driver's text is logged, not
/// carried, so nothing here can leak SQL or file paths into an HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    #[error("the database is unavailable")]
    Unavailable,
    #[error("stored data is invalid")]
    Corrupt,
    #[error("database error")]
    Other,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => {
                tracing::warn!(error = %err, "database unavailable");
                StoreError::Unavailable
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => {
                tracing::error!(error = %err, "stored data could not be decoded");
                StoreError::Corrupt
            }
            _ => {
                tracing::error!(error = %err, "database error");
                StoreError::Other
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Reads a boolean column. SQLite has no boolean type: through the `Any` driver its 0/1 comes
/// back as an integer, PostgreSQL's as a real boolean; both mean the same.
pub(crate) fn get_bool(row: &sqlx::any::AnyRow, column: &str) -> StoreResult<bool> {
    use sqlx::Row;
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(_) => Ok(row.try_get::<i64, _>(column)? != 0),
    }
}

/// The storage handle: a pool, the backend it talks to, and how audit events are hashed (under
/// the chain key once [`Store::with_audit_chain_key`] installed it). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    audit_hasher: cortex_domain::audit::ChainHasher,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Why the database could not be opened; shown to the operator at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("DATABASE_URL is not a valid sqlite: or postgres:// URL")]
    BadUrl,
    #[error("cannot create the data directory: {0}")]
    DataDir(std::io::ErrorKind),
    #[error("cannot connect to the database ({0})")]
    Connect(String),
    #[error("migrations failed ({0})")]
    Migrate(String),
}

impl Store {
    /// Opens (and for SQLite creates) the database and runs the migrations.
    pub async fn open(url: &str) -> Result<Store, OpenError> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating.
    pub async fn connect(url: &str) -> Result<Store, OpenError> {
        Store::connect_with(url, false).await
    }

    /// Opens a SQLite file read-only, without touching it (no journal mode change, no
    /// migration): for checking a backup before it is restored.
    pub async fn open_sqlite_read_only(path: &Path) -> Result<Store, OpenError> {
        let url = format!("sqlite://{}?mode=ro", path.display());
        Store::connect_with(&url, true).await
    }

    async fn connect_with(url: &str, read_only: bool) -> Result<Store, OpenError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(OpenError::BadUrl);
        };
        if backend == Backend::Sqlite && !read_only {
            ensure_sqlite_parent(url)?;
        }
        let options = AnyConnectOptions::from_str(url)
            .map_err(|_| OpenError::BadUrl)?
            .disable_statement_logging();
        let max_connections = match backend {
            // SQLite has one writer; a few readers are plenty and keep lock waits short.
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite && !read_only {
                        // 16 KiB pages for a new file (SQLite ignores this once the file has
                        // pages): a quarter of the WAL frames per usage row (ARCHITECTURE.md).
                        // WAL lets readers run beside the writer; busy_timeout makes writers
                        // wait for each other instead of failing.
                        conn.execute("PRAGMA page_size = 16384").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| OpenError::Connect(describe_connect_error(&e)))?;
        Ok(Store {
            pool,
            backend,
            audit_hasher: cortex_domain::audit::ChainHasher::Legacy,
        })
    }

    pub async fn migrate(&self) -> Result<(), OpenError> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| OpenError::Migrate(e.to_string()))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This handle with the audit chain key installed: its appends are keyed, and refused when
    /// the database's chain is under another key (see [`audit::append_in_tx`]). Without a key a
    /// store can append only to a chain that was never keyed (`cortex migrate`'s first admin).
    pub fn with_audit_chain_key(mut self, key: cortex_domain::audit::AuditChainKey) -> Store {
        self.audit_hasher = cortex_domain::audit::ChainHasher::Keyed(key);
        self
    }

    /// This handle without a chain key: it can append only to a chain that was never keyed (the
    /// state of a database from before keyed chains, which tests of the upgrade recreate).
    pub fn without_audit_chain_key(mut self) -> Store {
        self.audit_hasher = cortex_domain::audit::ChainHasher::Legacy;
        self
    }

    /// How this handle hashes the audit events it appends.
    pub fn audit_hasher(&self) -> &cortex_domain::audit::ChainHasher {
        &self.audit_hasher
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// For `/readyz`: one trivial round trip.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A short, secret-free description of a connection failure for the start-up line.
fn describe_connect_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => format!("io: {}", io.kind()),
        sqlx::Error::Tls(_) => "tls handshake failed".to_owned(),
        sqlx::Error::Database(db) => format!("server said: {}", db.message()),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        other => other.to_string().chars().take(200).collect(),
    }
}

/// Creates the directory that holds the SQLite file, mode 0700 on Unix.
/// The file behind a `sqlite:` URL; `None` for other URLs and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

fn ensure_sqlite_parent(url: &str) -> Result<(), OpenError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(());
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(|e| OpenError::DataDir(e.kind()))?;
    }
    Ok(())
}

/// Creates a directory (and parents) readable only by the owner.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// A new random id: a v4 UUID without dashes (122 random bits from the OS generator).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
