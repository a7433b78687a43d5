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

/// What a database writer without the master key can do to the audit log (tests perform the
/// attack with it): delete the events `remove`, renumber the rest so the seqs have no gap, and
/// recompute every `prev_hash`/`hash` with `hasher` — plain SHA-256 ([`ChainHasher::Legacy`],
/// the public algorithm) or HMAC under a guessed key — then point the head row at the new end.
/// Checkpoints are left alone (tests delete them themselves). Returns the new head seq.
///
/// [`ChainHasher::Legacy`]: cortex_domain::audit::ChainHasher::Legacy
pub async fn forge_audit_chain(
    store: &crate::Store,
    remove: &[i64],
    hasher: &cortex_domain::audit::ChainHasher,
) -> i64 {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .audit_page(after, 10_000)
            .await
            .unwrap_or_else(|e| fail(&format!("read audit page: {e}")));
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page.into_iter().filter(|e| !remove.contains(&e.seq)));
    }
    let pool = store.pool();
    sqlx::query("DELETE FROM audit_events")
        .execute(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("delete events: {e}")));
    let mut prev = cortex_domain::audit::GENESIS_HASH.to_owned();
    let mut seq = 0;
    for mut event in events {
        seq += 1;
        event.seq = seq;
        event.prev_hash = prev;
        event.hash = event.expected_hash(hasher);
        prev = event.hash.clone();
        sqlx::query(
            "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(event.seq)
        .bind(event.at_millis)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(&event.details)
        .bind(&event.client_ip)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("insert forged event: {e}")));
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&prev)
        .execute(pool)
        .await
        .unwrap_or_else(|e| fail(&format!("rewrite head: {e}")));
    seq
}

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    // Test support only: a missing database must fail the test loudly, never skip it.
    panic!("{message}")
}
