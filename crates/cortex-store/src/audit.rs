//! The audit log's storage: appends that keep one chain under concurrency, reads for listing,
//! export and verification, signed checkpoints (chained to each other), and re-keying the chain
//! (the one-time upgrade of a database from before the chain was keyed, and master-key rotation).

use std::borrow::Cow;

use cortex_domain::audit::{
    AuditChainKey, AuditRecord, AuditRecordRef, ChainHasher, ChainReport, ChainVerifier,
    NewAuditEvent, GENESIS_HASH,
};
use cortex_domain::Tenant;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::{Backend, Store, StoreError, StoreResult};

/// Refuses to extend a chain that is under another key than `hasher`'s: an instance still
/// holding a rotated master key, or a command run without the key on a keyed database, would
/// otherwise append events that never verify. `stored` is the head row's `chain_key_id`; a chain
/// that is still empty takes the key of its first event.
fn check_chain_key(hasher: &ChainHasher, stored: Option<&str>, head_seq: i64) -> StoreResult<()> {
    match (hasher.key_id(), stored) {
        (None, None) => Ok(()),
        (Some(mine), Some(theirs)) if mine == theirs => Ok(()),
        (Some(_), None) if head_seq == 0 => Ok(()),
        (Some(_), None) => {
            tracing::error!("the audit chain has not been keyed yet (start `cortex serve` or run `cortex audit verify` with the master key once); no event appended");
            Err(StoreError::Other)
        }
        (None, Some(_)) => {
            tracing::error!(
                "the audit chain is keyed: appending needs the master key; no event appended"
            );
            Err(StoreError::Other)
        }
        (Some(_), Some(_)) => {
            tracing::error!("the audit chain is keyed with another master key (rotated while this process ran?); no event appended");
            Err(StoreError::Other)
        }
    }
}

/// Appends one event inside the caller's transaction, hashed by `hasher` (the store's:
/// [`Store::audit_hasher`]).
///
/// The first statement *writes* the head row: on PostgreSQL that takes the row lock and on
/// SQLite the database write lock before anything is read, so concurrent appenders (threads or
/// instances) queue here instead of forking the chain.
pub async fn append_in_tx(
    conn: &mut AnyConnection,
    hasher: &ChainHasher,
    event: &NewAuditEvent,
    now_millis: i64,
) -> StoreResult<AuditRecord> {
    let head = sqlx::query(
        "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, chain_key_id",
    )
    .fetch_one(&mut *conn)
    .await?;
    let seq: i64 = head.try_get("seq")?;
    let prev_hash: String = head.try_get("hash")?;
    let stored_key: Option<String> = head.try_get("chain_key_id")?;
    check_chain_key(hasher, stored_key.as_deref(), seq - 1)?;
    let hash = event.chain_hash(hasher, &prev_hash, seq, now_millis);
    sqlx::query(
        "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    .bind(&event.org_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE audit_head SET hash = $1, chain_key_id = $2 WHERE id = 1")
        .bind(&hash)
        .bind(hasher.key_id())
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
        org_id: event.org_id.clone(),
    })
}

/// Appends many events in one transaction, as one chain continuing from the head. Used to load
/// large logs quickly (the audit-verify benchmark fills a million events with it); the head row
/// is written first, exactly as in [`append_in_tx`], so concurrent appenders still queue.
pub async fn append_batch_in_tx(
    conn: &mut AnyConnection,
    backend: Backend,
    hasher: &ChainHasher,
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
        org_id: &'a str,
    }
    const ROWS_PER_STATEMENT: usize = 5000;
    let count = i64::try_from(events.len()).map_err(|_| StoreError::Other)?;
    let head = sqlx::query(
        "UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash, chain_key_id",
    )
    .bind(count)
    .fetch_one(&mut *conn)
    .await?;
    let last_seq: i64 = head.try_get("seq")?;
    let mut prev_hash: String = head.try_get("hash")?;
    let stored_key: Option<String> = head.try_get("chain_key_id")?;
    let mut seq = last_seq - count;
    check_chain_key(hasher, stored_key.as_deref(), seq)?;
    let sql = match backend {
        Backend::Sqlite => {
            "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id) \
             SELECT value ->> '$.seq', value ->> '$.at', value ->> '$.actor', value ->> '$.action', \
             value ->> '$.target', value ->> '$.details', value ->> '$.client_ip', value ->> '$.prev_hash', \
             value ->> '$.hash', value ->> '$.org_id' FROM json_each($1)"
        }
        Backend::Postgres => {
            "INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id) \
             SELECT seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id \
             FROM json_to_recordset($1::json) AS x(seq bigint, at bigint, actor text, action text, \
             target text, details text, client_ip text, prev_hash text, hash text, org_id text)"
        }
    };
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let mut rows = Vec::with_capacity(chunk.len());
        for event in chunk {
            seq += 1;
            let hash = event.chain_hash(hasher, &prev_hash, seq, now_millis);
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
                org_id: &event.org_id,
            });
        }
        let json = serde_json::to_string(&rows).map_err(|_| StoreError::Corrupt)?;
        sqlx::query(sql).bind(json).execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE audit_head SET hash = $1, chain_key_id = $2 WHERE id = 1")
        .bind(&prev_hash)
        .bind(hasher.key_id())
        .execute(&mut *conn)
        .await?;
    Ok(last_seq)
}

pub(crate) fn record_from_row(row: &AnyRow) -> StoreResult<AuditRecord> {
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
        org_id: row.try_get("org_id")?,
    })
}

const AUDIT_COLUMNS: &str =
    "seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id";

/// The verdict on a segment of the chain, with the last event that verified: what a checkpoint
/// may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub report: ChainReport,
    pub last_seq: i64,
    pub last_hash: String,
}

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
        let record = append_in_tx(&mut tx, &self.audit_hasher, event, now_millis).await?;
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
        let last = append_batch_in_tx(
            &mut tx,
            self.backend,
            &self.audit_hasher,
            events,
            now_millis,
        )
        .await?;
        tx.commit().await?;
        Ok(last)
    }

    /// The events `tenant` sees, newest first, paged by `before_seq`. (Verification walks the
    /// one chain of every organization: [`Store::verify_audit`].)
    pub async fn list_audit(
        &self,
        tenant: &Tenant,
        filter: &AuditFilter,
    ) -> StoreResult<Vec<AuditRecord>> {
        let limit = filter.limit.clamp(1, 1000);
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_events \
             WHERE ($1 IS NULL OR seq < $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR actor = $3) \
             AND ($5 IS NULL OR org_id = $5) ORDER BY seq DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(filter.before_seq)
            .bind(filter.action.as_deref())
            .bind(filter.actor.as_deref())
            .bind(limit)
            .bind(tenant.org_filter())
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

    /// The id of the key the chain is under (`None`: never keyed, a database from before keyed
    /// chains or one without events yet).
    pub async fn audit_chain_key_id(&self) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT chain_key_id FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("chain_key_id")?)
    }

    /// Walks the whole chain with this store's hasher; `progress` is called with the number
    /// checked so far.
    pub async fn verify_audit(&self, progress: impl FnMut(u64)) -> StoreResult<ChainReport> {
        self.verify_audit_with(&self.audit_hasher, progress).await
    }

    /// Walks the whole chain, hashing with `hasher`.
    ///
    /// Built for a million events in well under the 3 s budget (`scripts/bench-audit.sh`): each
    /// page of events arrives as *one* JSON value aggregated by the database, because moving rows
    /// one by one through the driver cost more than everything else together; pages are fixed
    /// seq ranges, so the next page is fetched while this one is hashed on a blocking thread; and
    /// hashing borrows from the page text without allocating per event.
    pub async fn verify_audit_with(
        &self,
        hasher: &ChainHasher,
        progress: impl FnMut(u64),
    ) -> StoreResult<ChainReport> {
        self.verify_from(ChainVerifier::new(hasher.clone()), 0, progress)
            .await
    }

    /// Walks the chain after event `after_seq`, whose hash must be `after_hash` (a signed
    /// checkpoint's), up to the head, hashing with `hasher`.
    pub async fn verify_audit_after(
        &self,
        hasher: &ChainHasher,
        after_seq: i64,
        after_hash: &str,
    ) -> StoreResult<SegmentReport> {
        let verifier = ChainVerifier::resume(hasher.clone(), after_seq, after_hash);
        let (verifier, head_seq) = self.walk_from(verifier, after_seq, |_| {}).await?;
        let last_seq = verifier.last_seq();
        let last_hash = verifier.last_hash().to_owned();
        Ok(SegmentReport {
            report: verifier.finish(head_seq),
            last_seq,
            last_hash,
        })
    }

    async fn verify_from(
        &self,
        verifier: ChainVerifier,
        after_seq: i64,
        progress: impl FnMut(u64),
    ) -> StoreResult<ChainReport> {
        let (verifier, head_seq) = self.walk_from(verifier, after_seq, progress).await?;
        Ok(verifier.finish(head_seq))
    }

    /// Feeds every event after `after_seq` to `verifier` until the chain breaks or ends; returns
    /// it with the head row's seq (read first).
    async fn walk_from(
        &self,
        mut verifier: ChainVerifier,
        after_seq: i64,
        mut progress: impl FnMut(u64),
    ) -> StoreResult<(ChainVerifier, i64)> {
        const PAGE: i64 = 25_000;
        let (head_seq, _) = self.audit_head().await?;
        let mut start = after_seq;
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
                for_each_json_row(&current, |record| verifier.push_ref(record)).map(|()| verifier)
            })
            .await
            .map_err(|_| StoreError::Other)??;
            progress(verifier.checked());
            if verifier.is_broken() {
                break;
            }
            start = next_start;
        }
        Ok((verifier, head_seq))
    }

    /// The smallest seq above `after`, if any event has one.
    async fn next_audit_seq_after(&self, after: i64) -> StoreResult<Option<i64>> {
        let mut conn = self.pool.acquire().await?;
        next_seq_after(&mut conn, after).await
    }

    /// Events with `after < seq <= until`, oldest first, as one JSON array of arrays.
    async fn audit_page_json(&self, after: i64, until: i64) -> StoreResult<String> {
        let mut conn = self.pool.acquire().await?;
        page_json(&mut conn, self.backend, after, until).await
    }
}

async fn next_seq_after(conn: &mut AnyConnection, after: i64) -> StoreResult<Option<i64>> {
    let row = sqlx::query("SELECT MIN(seq) AS next FROM audit_events WHERE seq > $1")
        .bind(after)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get::<Option<i64>, _>("next")?)
}

async fn page_json(
    conn: &mut AnyConnection,
    backend: Backend,
    after: i64,
    until: i64,
) -> StoreResult<String> {
    let sql = match backend {
        Backend::Sqlite => {
            // seq is the rowid: the inner query reads the range in order without sorting,
            // and the aggregate keeps that order (an `ORDER BY` inside the aggregate would
            // build a temporary b-tree). A wrong order could only fail verification.
            "SELECT COALESCE(json_group_array(json_array(seq, at, actor, action, target, details, \
             client_ip, prev_hash, hash)), '[]') AS page \
             FROM (SELECT * FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq)"
        }
        Backend::Postgres => {
            "SELECT COALESCE(json_agg(json_build_array(seq, at, actor, action, target, details, \
             client_ip, prev_hash, hash) ORDER BY seq)::text, '[]') AS page \
             FROM audit_events WHERE seq > $1 AND seq <= $2"
        }
    };
    let row = sqlx::query(sql)
        .bind(after)
        .bind(until)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("page")?)
}

async fn join(task: tokio::task::JoinHandle<StoreResult<String>>) -> StoreResult<String> {
    task.await.map_err(|_| StoreError::Other)?
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

/// Calls `each` with every event of one page, streaming through the JSON array, until it
/// returns false.
fn for_each_json_row(page: &str, each: impl FnMut(&AuditRecordRef<'_>) -> bool) -> StoreResult<()> {
    use serde::de::{Deserializer, SeqAccess, Visitor};

    struct PageVisitor<F>(F);

    impl<'de, F: FnMut(&AuditRecordRef<'_>) -> bool> Visitor<'de> for PageVisitor<F> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of audit events")
        }

        fn visit_seq<A: SeqAccess<'de>>(mut self, mut rows: A) -> Result<(), A::Error> {
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
                if !(self.0)(&record) {
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
        .deserialize_seq(PageVisitor(each))
        .map_err(|e| {
            tracing::error!(error = %e, "an audit page could not be decoded");
            StoreError::Corrupt
        })
}

/// A signed statement that the chain had `seq` events ending in `hash`, chained to the
/// checkpoint before it (`prev_seq`, 0 for the first; the signed message also covers that
/// checkpoint's signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub signature: String,
    pub created_at: i64,
    pub prev_seq: i64,
}

const CHECKPOINT_COLUMNS: &str = "seq, hash, signature, created_at, prev_seq";

fn checkpoint_from_row(row: &AnyRow) -> StoreResult<Checkpoint> {
    Ok(Checkpoint {
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        signature: row.try_get("signature")?,
        created_at: row.try_get("created_at")?,
        prev_seq: row.try_get("prev_seq")?,
    })
}

/// What [`Store::append_checkpoint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointAppend {
    Written(Checkpoint),
    /// A checkpoint at or past this seq exists already (another instance was quicker).
    Stale,
    /// The chain is under another key than the one the caller verified with (a rotation
    /// committed meanwhile): nothing was signed.
    KeyChanged,
}

/// The checkpoint side of re-keying: the store walks the checkpoints and knows nothing of keys.
pub trait CheckpointKeys {
    /// True when `checkpoint`'s stored signature is valid under the old key; `previous` is the
    /// checkpoint before it as stored (`None` for the first).
    fn verify_old(&self, checkpoint: &Checkpoint, previous: Option<&Checkpoint>) -> bool;
    /// A signature under the new key for the chain ending at (`seq`, `hash`), chained to
    /// `previous` as already re-signed (`None`: chained to the genesis).
    fn sign_new(&self, seq: i64, hash: &str, previous: Option<&Checkpoint>) -> String;
}

/// What re-keying the chain changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RekeyCounts {
    pub events: u64,
    pub checkpoints: u64,
}

/// Why the chain could not be re-keyed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the audit log does not verify at event #{0}; it was not re-keyed")]
    ChainBroken(i64),
    #[error("the audit checkpoint at event #{0} does not verify; the audit log was not re-keyed")]
    CheckpointInvalid(i64),
    #[error("the audit chain is not under the expected key; it was not re-keyed")]
    WrongKey,
}

impl From<sqlx::Error> for RekeyError {
    fn from(err: sqlx::Error) -> Self {
        RekeyError::Store(err.into())
    }
}

/// Re-hashes every event under `new` and re-signs every checkpoint, inside the caller's
/// transaction, after checking everything under the old key: the chain must verify under `old`
/// (the key recorded in the head row must be `old`'s, or the chain empty), every checkpoint's
/// signature must verify and name the hash the chain has at its seq. Any failure aborts with
/// nothing changed, so re-keying can never launder a forged chain or checkpoint. Returns the
/// counts and the newest checkpoint as re-signed.
///
/// The caller has taken the locks (SQLite: any write first; PostgreSQL: the checkpoint table).
pub async fn rekey_chain_in_tx(
    conn: &mut AnyConnection,
    backend: Backend,
    old: &ChainHasher,
    new: &AuditChainKey,
    keys: &dyn CheckpointKeys,
) -> Result<(RekeyCounts, Option<Checkpoint>), RekeyError> {
    const PAGE: i64 = 25_000;
    let head = sqlx::query(
        "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash, chain_key_id",
    )
    .fetch_one(&mut *conn)
    .await?;
    let head_seq: i64 = head.try_get("seq")?;
    let stored_key: Option<String> = head.try_get("chain_key_id")?;
    let key_matches = match (old.key_id(), stored_key.as_deref()) {
        (None, None) => true,
        (Some(mine), Some(theirs)) => mine == theirs,
        (Some(_), None) => head_seq == 0,
        (None, Some(_)) => false,
    };
    if !key_matches {
        return Err(RekeyError::WrongKey);
    }

    let old_checkpoints: Vec<Checkpoint> = sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(checkpoint_from_row)
    .collect::<StoreResult<_>>()?;
    let mut previous = None;
    for checkpoint in &old_checkpoints {
        if checkpoint.seq > head_seq || !keys.verify_old(checkpoint, previous) {
            return Err(RekeyError::CheckpointInvalid(checkpoint.seq));
        }
        previous = Some(checkpoint);
    }

    // Walk the chain page by page: verify each event under the old key, compute its new hash,
    // and write the page's new hashes back with one statement.
    let update = match backend {
        Backend::Sqlite => {
            "UPDATE audit_events SET prev_hash = j.value ->> '$.prev_hash', hash = j.value ->> '$.hash' \
             FROM json_each($1) AS j WHERE audit_events.seq = j.value ->> '$.seq'"
        }
        Backend::Postgres => {
            "UPDATE audit_events AS e SET prev_hash = x.prev_hash, hash = x.hash \
             FROM json_to_recordset($1::json) AS x(seq bigint, prev_hash text, hash text) \
             WHERE e.seq = x.seq"
        }
    };
    #[derive(serde::Serialize)]
    struct NewHash {
        seq: i64,
        prev_hash: String,
        hash: String,
    }
    let new_hasher = ChainHasher::Keyed(new.clone());
    let mut verifier = ChainVerifier::new(old.clone());
    let mut new_prev = GENESIS_HASH.to_owned();
    let mut pinned = old_checkpoints.iter().peekable();
    let mut new_checkpoint_hashes = Vec::with_capacity(old_checkpoints.len());
    let mut pin_broken = None;
    let mut start = 0;
    loop {
        let page = page_json(&mut *conn, backend, start, start + PAGE).await?;
        if page == "[]" {
            match next_seq_after(&mut *conn, start).await? {
                Some(next) => {
                    start = next - 1;
                    continue;
                }
                None => break,
            }
        }
        let mut rows = Vec::new();
        for_each_json_row(&page, |record| {
            if !verifier.push_ref(record) {
                return false;
            }
            let hash = new_hasher.hash_hex(
                &new_prev,
                record.seq,
                record.at_millis,
                record.actor,
                record.action,
                record.target,
                record.details,
                record.client_ip,
            );
            if let Some(checkpoint) = pinned.next_if(|c| c.seq == record.seq) {
                if checkpoint.hash != record.hash {
                    pin_broken = Some(checkpoint.seq);
                    return false;
                }
                new_checkpoint_hashes.push(hash.clone());
            }
            rows.push(NewHash {
                seq: record.seq,
                prev_hash: std::mem::replace(&mut new_prev, hash.clone()),
                hash,
            });
            true
        })?;
        if let Some(seq) = pin_broken {
            return Err(RekeyError::CheckpointInvalid(seq));
        }
        if verifier.is_broken() {
            break;
        }
        let json = serde_json::to_string(&rows).map_err(|_| StoreError::Corrupt)?;
        sqlx::query(update).bind(json).execute(&mut *conn).await?;
        start += PAGE;
    }
    let report = verifier.finish(head_seq);
    if let Some(seq) = report.first_bad_seq {
        return Err(RekeyError::ChainBroken(seq));
    }
    if let Some(checkpoint) = pinned.next() {
        return Err(RekeyError::CheckpointInvalid(checkpoint.seq));
    }

    let mut resigned: Option<Checkpoint> = None;
    for (checkpoint, hash) in old_checkpoints.iter().zip(new_checkpoint_hashes) {
        let signature = keys.sign_new(checkpoint.seq, &hash, resigned.as_ref());
        let prev_seq = resigned.as_ref().map_or(0, |c| c.seq);
        sqlx::query(
            "UPDATE audit_checkpoints SET hash = $1, signature = $2, prev_seq = $3 WHERE seq = $4",
        )
        .bind(&hash)
        .bind(&signature)
        .bind(prev_seq)
        .bind(checkpoint.seq)
        .execute(&mut *conn)
        .await?;
        resigned = Some(Checkpoint {
            seq: checkpoint.seq,
            hash,
            signature,
            created_at: checkpoint.created_at,
            prev_seq,
        });
    }
    sqlx::query("UPDATE audit_head SET hash = $1, chain_key_id = $2 WHERE id = 1")
        .bind(&new_prev)
        .bind(new.id())
        .execute(&mut *conn)
        .await?;
    Ok((
        RekeyCounts {
            events: report.events_checked,
            checkpoints: old_checkpoints.len() as u64,
        },
        resigned,
    ))
}

/// Signs the event `record` (just appended) as a new checkpoint after `previous`, inside the
/// caller's transaction: a re-keyed chain ends in a checkpoint covering its own audit event.
pub async fn checkpoint_in_tx(
    conn: &mut AnyConnection,
    keys: &dyn CheckpointKeys,
    record: &AuditRecord,
    previous: Option<&Checkpoint>,
    now: i64,
) -> StoreResult<Checkpoint> {
    let checkpoint = Checkpoint {
        seq: record.seq,
        hash: record.hash.clone(),
        signature: keys.sign_new(record.seq, &record.hash, previous),
        created_at: now,
        prev_seq: previous.map_or(0, |c| c.seq),
    };
    insert_checkpoint(conn, &checkpoint).await?;
    Ok(checkpoint)
}

async fn insert_checkpoint(conn: &mut AnyConnection, checkpoint: &Checkpoint) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, signature, created_at, prev_seq) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(checkpoint.seq)
    .bind(&checkpoint.hash)
    .bind(&checkpoint.signature)
    .bind(checkpoint.created_at)
    .bind(checkpoint.prev_seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Takes the locks a checkpoint writer or re-keyer needs before reading anything: on SQLite the
/// database write lock (a write first), on PostgreSQL the checkpoint table, which serialises
/// checkpoint writers with each other and with re-keying without touching the head row that
/// every appender locks (so no lock cycle with a rotation, which locks tables first).
async fn lock_checkpoints(conn: &mut AnyConnection, backend: Backend) -> StoreResult<()> {
    let sql = match backend {
        Backend::Sqlite => "UPDATE audit_head SET seq = seq WHERE id = 1",
        Backend::Postgres => "LOCK TABLE audit_checkpoints IN SHARE ROW EXCLUSIVE MODE",
    };
    sqlx::query(sql).execute(&mut *conn).await?;
    Ok(())
}

impl Store {
    /// Records a checkpoint at (`seq`, `hash`) chained to the newest one, in one transaction that
    /// serialises checkpoint writers: `sign` receives the newest checkpoint (`None` when there is
    /// none) and returns the signature. Refused when the chain is no longer under `key_id` (the
    /// caller verified the segment with that key) or a newer checkpoint exists.
    pub async fn append_checkpoint(
        &self,
        seq: i64,
        hash: &str,
        key_id: &str,
        now: i64,
        sign: impl FnOnce(Option<&Checkpoint>) -> String,
    ) -> StoreResult<CheckpointAppend> {
        let mut tx = self.pool.begin().await?;
        lock_checkpoints(&mut tx, self.backend).await?;
        let row = sqlx::query("SELECT chain_key_id FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let stored: Option<String> = row.try_get("chain_key_id")?;
        if stored.as_deref() != Some(key_id) {
            return Ok(CheckpointAppend::KeyChanged);
        }
        let newest = sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| checkpoint_from_row(&r))
        .transpose()?;
        if newest.as_ref().is_some_and(|c| c.seq >= seq) {
            return Ok(CheckpointAppend::Stale);
        }
        let checkpoint = Checkpoint {
            seq,
            hash: hash.to_owned(),
            signature: sign(newest.as_ref()),
            created_at: now,
            prev_seq: newest.as_ref().map_or(0, |c| c.seq),
        };
        insert_checkpoint(&mut tx, &checkpoint).await?;
        tx.commit().await?;
        Ok(CheckpointAppend::Written(checkpoint))
    }

    /// Re-keys the chain from `old` to `new` and re-signs every checkpoint (see
    /// [`rekey_chain_in_tx`]), appends `audit` (built from what was re-keyed) under the new key,
    /// and signs a checkpoint covering it, all in one transaction. `Ok(None)` when the chain is
    /// already under `new` (another instance did it first). Used once per database, for the
    /// upgrade from the unkeyed chain.
    pub async fn rekey_audit_chain(
        &self,
        old: &ChainHasher,
        new: &AuditChainKey,
        keys: &dyn CheckpointKeys,
        audit: impl FnOnce(&RekeyCounts) -> NewAuditEvent,
        now: i64,
    ) -> Result<Option<RekeyCounts>, RekeyError> {
        let mut tx = self.pool.begin().await?;
        lock_checkpoints(&mut tx, self.backend).await?;
        let row = sqlx::query("SELECT chain_key_id FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        if row.try_get::<Option<String>, _>("chain_key_id")?.as_deref() == Some(new.id()) {
            return Ok(None);
        }
        let (counts, newest) = rekey_chain_in_tx(&mut tx, self.backend, old, new, keys).await?;
        let new_hasher = ChainHasher::Keyed(new.clone());
        let record = append_in_tx(&mut tx, &new_hasher, &audit(&counts), now).await?;
        checkpoint_in_tx(&mut tx, keys, &record, newest.as_ref(), now).await?;
        tx.commit().await?;
        Ok(Some(counts))
    }

    /// The sequence number the newest checkpoint covers (0 without any): one indexed row, so
    /// the 30-second checkpoint tick stays cheap however many checkpoints accumulate.
    pub async fn latest_checkpoint_seq(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM audit_checkpoints")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    /// The newest `n` checkpoints, newest first.
    pub async fn latest_checkpoints(&self, n: i64) -> StoreResult<Vec<Checkpoint>> {
        sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC LIMIT $1"
        ))
        .bind(n)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_from_row)
        .collect()
    }

    /// The checkpoint at `seq`, if there is one.
    pub async fn checkpoint_at(&self, seq: i64) -> StoreResult<Option<Checkpoint>> {
        sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq = $1"
        ))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| checkpoint_from_row(&r))
        .transpose()
    }

    /// Every checkpoint, oldest first.
    pub async fn checkpoints(&self) -> StoreResult<Vec<Checkpoint>> {
        sqlx::query(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_from_row)
        .collect()
    }

    /// Every checkpoint, oldest first, with the stored hash of the event it names (`None` when
    /// that event is gone): one query however many checkpoints there are.
    pub async fn checkpoints_with_events(&self) -> StoreResult<Vec<(Checkpoint, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT c.seq, c.hash, c.signature, c.created_at, c.prev_seq, e.hash AS event_hash \
             FROM audit_checkpoints c LEFT JOIN audit_events e ON e.seq = c.seq ORDER BY c.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((checkpoint_from_row(r)?, r.try_get("event_hash")?)))
            .collect()
    }

    /// The time of the first event after `seq`, if there is one.
    pub async fn audit_event_time_after(&self, seq: i64) -> StoreResult<Option<i64>> {
        let row = sqlx::query(
            "SELECT at FROM audit_events WHERE seq = (SELECT MIN(seq) FROM audit_events WHERE seq > $1)",
        )
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get::<i64, _>("at"))
            .transpose()
            .map_err(Into::into)
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
