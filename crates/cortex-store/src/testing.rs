//! Throwaway databases for tests: a fresh SQLite file or a fresh PostgreSQL schema each.
//!
//! PostgreSQL tests use the server at `CORTEX_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). There is no skip: when the server is missing the
//! test fails, so CI cannot pass without having run both backends.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, Row};

use crate::Backend;

/// The base URL of the test PostgreSQL server.
pub fn postgres_base_url() -> String {
    std::env::var("CORTEX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database that exists for one test. For PostgreSQL it is a schema that [`TestDb::cleanup`]
/// drops; schemas left behind by crashed tests are dropped after an hour by the next test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres().await,
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
        TestDb {
            backend: Backend::Sqlite,
            url,
            schema: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> TestDb {
        let base = postgres_base_url();
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| {
                fail(&format!(
                    "PostgreSQL is required for this test and is not reachable at {base}: {e}. \
                 Start it (the README's test command does) or set CORTEX_TEST_POSTGRES_URL."
                ))
            });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        drop_stale_schemas(&mut conn, now).await;
        let schema = format!("t_{now}_{}", &crate::new_id()[..12]);
        conn.execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap_or_else(|e| fail(&format!("create schema: {e}")));
        let _ = conn.close().await;
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
        TestDb {
            backend: Backend::Postgres,
            url,
            schema: Some(schema),
            _dir: None,
        }
    }

    /// Drops the PostgreSQL schema (SQLite files go with the temp dir).
    pub async fn cleanup(self) {
        if let Some(schema) = &self.schema {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_base_url()).await {
                let _ = conn
                    .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                    .await;
                let _ = conn.close().await;
            }
        }
    }
}

async fn drop_stale_schemas(conn: &mut sqlx::PgConnection, now: u64) {
    let Ok(rows) = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")
        .fetch_all(&mut *conn)
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String, _>("nspname") else {
            continue;
        };
        let created = name.split('_').nth(1).and_then(|t| t.parse::<u64>().ok());
        if created.is_some_and(|t| t + 3600 < now) {
            let _ = conn
                .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                .await;
        }
    }
}

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    // Test support only: a missing database must fail the test loudly, never skip it.
    panic!("{message}")
}
