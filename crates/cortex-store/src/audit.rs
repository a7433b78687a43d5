//! The audit log's storage: appends that keep one chain under concurrency, and reads for
//! listing, export and verification.

use std::borrow::Cow;

use cortex_domain::audit::{
    AuditRecord, AuditRecordRef, ChainReport, ChainVerifier, NewAuditEvent,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::{Store, StoreResult};

/// Appends one event inside the caller's transaction.
///
/// The first statement *writes* the head row: on PostgreSQL that takes the row lock and on
/// SQLite the database write lock before anything is read, so concurrent appenders (threads or
/// instances) queue here instead of forking the chain.
pub async fn append_in_tx(
    conn: &mut AnyConnection,
    event: &NewAuditEvent,
    now_millis: i64,
) -> StoreResult<AuditRecord> {
    let head = sqlx::query("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
        .fetch_one(&mut *conn)
        .await?;
    let seq: i64 = head.try_get("seq")?;
    let prev_hash: String = head.try_get("hash")?;
    let hash = event.chain_hash(&prev_hash, seq, now_millis);
    sqlx::query(
        "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq)
    .bind(now_millis)
    .bind(&event.actor)
    .bind(&event.action)
    .bind(&event.target)
    .bind(&event.details)
    .bind(&event.client_ip)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    Ok(AuditRecord {
        seq,
        at_millis: now_millis,
        actor: event.actor.clone(),
        action: event.action.clone(),
        target: event.target.clone(),
        details: event.details.clone(),
        client_ip: event.client_ip.clone(),
        prev_hash,
        hash,
    })
}

/// Appends many events in one transaction, as one chain continuing from the head. Used to load
/// large logs quickly (the audit-verify benchmark fills a million events with it); the head row
/// is written first, exactly as in [`append_in_tx`], so concurrent appenders still queue.
pub async fn append_batch_in_tx(
    conn: &mut AnyConnection,
    backend: crate::Backend,
    events: &[NewAuditEvent],
    now_millis: i64,
) -> StoreResult<i64> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        seq: i64,
        at: i64,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        details: &'a str,
        client_ip: &'a str,
        prev_hash: String,
        hash: String,
    }
    const ROWS_PER_STATEMENT: usize = 5000;
    let count = i64::try_from(events.len()).map_err(|_| crate::StoreError::Other)?;
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(count)
        .fetch_one(&mut *conn)
        .await?;
    let last_seq: i64 = head.try_get("seq")?;
    let mut prev_hash: String = head.try_get("hash")?;
    let mut seq = last_seq - count;
    let sql = match backend {
        crate::Backend::Sqlite => {
            "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash) \
             SELECT value ->> '$.seq', value ->> '$.at', value ->> '$.actor', value ->> '$.action', \
             value ->> '$.target', value ->> '$.details', value ->> '$.client_ip', value ->> '$.prev_hash', \
             value ->> '$.hash' FROM json_each($1)"
        }
        crate::Backend::Postgres => {
            "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash) \
             SELECT seq, at, actor, action, target, details, client_ip, prev_hash, hash \
             FROM json_to_recordset($1::json) AS x(seq bigint, at bigint, actor text, action text, \
             target text, details text, client_ip text, prev_hash text, hash text)"
        }
    };
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for event in chunk {
            seq += 1;
            let hash = event.chain_hash(&prev_hash, seq, now_millis);
            rows.push(Row {
                seq,
                at: now_millis,
                actor: &event.actor,
                action: &event.action,
                target: &event.target,
                details: &event.details,
                client_ip: &event.client_ip,
                prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
                hash,
            });
        }
        let json = serde_json::to_string(&rows).map_err(|_| crate::StoreError::Corrupt)?;
        sqlx::query(sql).bind(json).execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok(last_seq)
}

fn record_from_row(row: &AnyRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        at_millis: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        details: row.try_get("details")?,
        client_ip: row.try_get("client_ip")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

const AUDIT_COLUMNS: &str = "seq, at, actor, action, target, details, client_ip, prev_hash, hash";

/// Filters for the audit listing; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub before_seq: Option<i64>,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub limit: i64,
}

impl Store {
    /// Appends one event in its own transaction.
    pub async fn append_audit(
        &self,
        event: &NewAuditEvent,
        now_millis: i64,
    ) -> StoreResult<AuditRecord> {
        let mut tx = self.pool.begin().await?;
        let record = append_in_tx(&mut tx, event, now_millis).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Appends many events in one transaction (see [`append_batch_in_tx`]); returns the last seq.
    pub async fn append_audit_batch(
        &self,
        events: &[NewAuditEvent],
        now_millis: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await?;
        let last = append_batch_in_tx(&mut tx, self.backend, events, now_millis).await?;
        tx.commit().await?;
        Ok(last)
    }

    /// Newest first, paged by `before_seq`.
    pub async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let limit = filter.limit.clamp(1, 1000);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events \
             WHERE ($1 IS NULL OR seq < $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR actor = $3) \
             ORDER BY seq DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.before_seq)
            .bind(filter.action.as_deref())
            .bind(filter.actor.as_deref())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Oldest first from `after_seq`, for export and verification.
    pub async fn audit_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The head row: how many events the chain should have, and the last hash.
    pub async fn audit_head(&self) -> StoreResult<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get("seq")?, row.try_get("hash")?))
    }

    /// Walks the whole chain; `progress` is called with the number checked so far.
    ///
    /// Built for a million events in well under the 3 s budget (`scripts/bench-audit.sh`): each
    /// page of events arrives as *one* JSON value aggregated by the database, because moving rows
    /// one by one through the driver cost more than everything else together; pages are fixed
    /// seq ranges, so the next page is fetched while this one is hashed on a blocking thread; and
    /// hashing borrows from the page text without allocating per event.
    pub async fn verify_audit(&self, mut progress: impl FnMut(u64)) -> StoreResult<ChainReport> {
        const PAGE: i64 = 25_000;
        let (head_seq, _) = self.audit_head().await?;
        let mut verifier = ChainVerifier::default();
        let mut start = 0;
        let mut prefetched = None;
        loop {
            let current = match prefetched.take() {
                Some(task) => join(task).await?,
                None => self.audit_page_json(start, start + PAGE).await?,
            };
            if current == "[]" {
                // Past the end, or a hole (deleted events, a forged far-away seq): continue at
                // the next event that exists, so a hole costs one query, not one per page.
                match self.next_audit_seq_after(start).await? {
                    Some(next) => {
                        start = next - 1;
                        continue;
                    }
                    None => break,
                }
            }
            let next_start = start + PAGE;
            let store = self.clone();
            prefetched = Some(tokio::spawn(async move {
                store.audit_page_json(next_start, next_start + PAGE).await
            }));
            verifier = tokio::task::spawn_blocking(move || {
                verify_json_page(&current, &mut verifier).map(|()| verifier)
            })
            .await
            .map_err(|_| crate::StoreError::Other)??;
            progress(verifier.checked());
            if verifier.is_broken() {
                break;
            }
            start = next_start;
        }
        Ok(verifier.finish(head_seq))
    }

    /// The smallest seq above `after`, if any event has one.
    async fn next_audit_seq_after(&self, after: i64) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT MIN(seq) AS next FROM audit_events WHERE seq > $1")
            .bind(after)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("next")?)
    }

    /// Events with `after < seq <= until`, oldest first, as one JSON array of arrays.
    async fn audit_page_json(&self, after: i64, until: i64) -> StoreResult<String> {
        let sql = match self.backend {
            crate::Backend::Sqlite => {
                // seq is the rowid: the inner query reads the range in order without sorting,
                // and the aggregate keeps that order (an `ORDER BY` inside the aggregate would
                // build a temporary b-tree). A wrong order could only fail verification.
                "SELECT COALESCE(json_group_array(json_array(seq, at, actor, action, target, details, \
                 client_ip, prev_hash, hash)), '[]') AS page \
                 FROM (SELECT * FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq)"
            }
            crate::Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(seq, at, actor, action, target, details, \
                 client_ip, prev_hash, hash) ORDER BY seq)::text, '[]') AS page \
                 FROM audit_events WHERE seq > $1 AND seq <= $2"
            }
        };
        let row = sqlx::query(sql)
            .bind(after)
            .bind(until)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("page")?)
    }
}

async fn join(task: tokio::task::JoinHandle<StoreResult<String>>) -> StoreResult<String> {
    task.await.map_err(|_| crate::StoreError::Other)?
}

/// One event as the page query encodes it. Strings are borrowed from the page text unless they
/// hold JSON escapes (the details do).
#[derive(serde::Deserialize)]
struct PageRow<'a>(
    i64,
    i64,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
);

/// Feeds every event of one page to the verifier, streaming through the JSON array.
fn verify_json_page(page: &str, verifier: &mut ChainVerifier) -> StoreResult<()> {
    use serde::de::{Deserializer, SeqAccess, Visitor};

    struct PageVisitor<'v>(&'v mut ChainVerifier);

    impl<'de> Visitor<'de> for PageVisitor<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of audit events")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut rows: A) -> Result<(), A::Error> {
            while let Some(row) = rows.next_element::<PageRow<'de>>()? {
                let record = AuditRecordRef {
                    seq: row.0,
                    at_millis: row.1,
                    actor: &row.2,
                    action: &row.3,
                    target: &row.4,
                    details: &row.5,
                    client_ip: &row.6,
                    prev_hash: &row.7,
                    hash: &row.8,
                };
                if !self.0.push_ref(&record) {
                    // The rest of the page cannot change the verdict; skip it cheaply.
                    while rows.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                    return Ok(());
                }
            }
            Ok(())
        }
    }

    let mut deserializer = serde_json::Deserializer::from_str(page);
    deserializer
        .deserialize_seq(PageVisitor(verifier))
        .map_err(|e| {
            tracing::error!(error = %e, "an audit page could not be decoded");
            crate::StoreError::Corrupt
        })
}

/// A signed statement that the chain had `seq` events ending in `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub signature: String,
    pub created_at: i64,
}

impl Store {
    /// Records a checkpoint; a second one for the same seq is ignored.
    pub async fn write_checkpoint(&self, checkpoint: &Checkpoint) -> StoreResult<()> {
        sqlx::query("INSERT INTO audit_checkpoints (seq, hash, signature, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING")
            .bind(checkpoint.seq)
            .bind(&checkpoint.hash)
            .bind(&checkpoint.signature)
            .bind(checkpoint.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The sequence number the newest checkpoint covers (0 without any): one indexed row, so
    /// the 30-second checkpoint tick stays cheap however many checkpoints accumulate.
    pub async fn latest_checkpoint_seq(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_checkpoints")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    pub async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, hash, signature, created_at FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.try_get("seq")?,
                    hash: r.try_get("hash")?,
                    signature: r.try_get("signature")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The stored hash of one event, if it exists.
    pub async fn audit_hash_at(&self, seq: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT hash FROM audit_events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<String, _>("hash"))
            .transpose()
            .map_err(Into::into)
    }
}
