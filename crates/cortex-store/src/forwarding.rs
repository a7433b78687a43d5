//! How far the audit log has been forwarded to each SIEM sink, and which instance may forward.
//!
//! The cursor only moves forward and only for the lease holder, so events reach a sink at least
//! once and in order even with several instances and restarts in between. Signed checkpoints
//! have a cursor of their own in the same row: each is sent once the events it covers were.

use sqlx::Row;

use crate::audit::Checkpoint;
use crate::{Store, StoreResult};

/// The two cursors of a sink's row: events, and the signed checkpoints that follow them.
#[derive(Clone, Copy)]
enum Cursor {
    Events,
    Checkpoints,
}

impl Cursor {
    fn read_sql(self) -> &'static str {
        match self {
            Cursor::Events => {
                "SELECT forwarded_seq AS seq FROM audit_forward_cursors WHERE sink = $1"
            }
            Cursor::Checkpoints => {
                "SELECT checkpoint_seq AS seq FROM audit_forward_cursors WHERE sink = $1"
            }
        }
    }

    /// Moves the cursor to `$1` (time `$2`) for sink `$3`, only for lease holder `$4` and only
    /// forward.
    fn advance_sql(self) -> &'static str {
        match self {
            Cursor::Events => {
                "UPDATE audit_forward_cursors SET forwarded_seq = $1, updated_at = $2 \
                 WHERE sink = $3 AND lease_owner = $4 AND forwarded_seq < $1"
            }
            Cursor::Checkpoints => {
                "UPDATE audit_forward_cursors SET checkpoint_seq = $1, updated_at = $2 \
                 WHERE sink = $3 AND lease_owner = $4 AND checkpoint_seq < $1"
            }
        }
    }
}

impl Store {
    /// Takes (or renews) the forwarding lease for `sink` until `now + lease_millis`; returns the
    /// forwarded-up-to seq when this `owner` holds the lease, `None` when another instance does.
    pub async fn claim_forward_lease(
        &self,
        sink: &str,
        owner: &str,
        now: i64,
        lease_millis: i64,
    ) -> StoreResult<Option<i64>> {
        sqlx::query(
            "INSERT INTO audit_forward_cursors (sink, forwarded_seq, lease_owner, lease_until, updated_at) \
             VALUES ($1, 0, '', 0, $2) ON CONFLICT (sink) DO NOTHING",
        )
        .bind(sink)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "UPDATE audit_forward_cursors SET lease_owner = $1, lease_until = $2 \
             WHERE sink = $3 AND (lease_owner = $1 OR lease_until < $4) RETURNING forwarded_seq",
        )
        .bind(owner)
        .bind(now + lease_millis)
        .bind(sink)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get::<i64, _>("forwarded_seq"))
            .transpose()
            .map_err(Into::into)
    }

    /// Records that every event up to `seq` reached `sink`. Only the lease holder moves the
    /// cursor, and never backwards; returns whether it moved.
    pub async fn advance_forward_cursor(
        &self,
        sink: &str,
        owner: &str,
        seq: i64,
        now: i64,
    ) -> StoreResult<bool> {
        self.advance_cursor(Cursor::Events, sink, owner, seq, now)
            .await
    }

    /// Gives the lease up (at shutdown), so another instance takes over at once.
    pub async fn release_forward_lease(&self, sink: &str, owner: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE audit_forward_cursors SET lease_until = 0 WHERE sink = $1 AND lease_owner = $2",
        )
        .bind(sink)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The forwarded-up-to seq of `sink` (0 when nothing was sent yet).
    pub async fn forward_cursor(&self, sink: &str) -> StoreResult<i64> {
        self.read_cursor(Cursor::Events, sink).await
    }

    /// The seq of the newest checkpoint forwarded to `sink` (0 when none was).
    pub async fn forward_checkpoint_cursor(&self, sink: &str) -> StoreResult<i64> {
        self.read_cursor(Cursor::Checkpoints, sink).await
    }

    /// Records that every checkpoint up to `seq` reached `sink`; like
    /// [`Store::advance_forward_cursor`], only for the lease holder and never backwards.
    pub async fn advance_forward_checkpoint_cursor(
        &self,
        sink: &str,
        owner: &str,
        seq: i64,
        now: i64,
    ) -> StoreResult<bool> {
        self.advance_cursor(Cursor::Checkpoints, sink, owner, seq, now)
            .await
    }

    async fn read_cursor(&self, cursor: Cursor, sink: &str) -> StoreResult<i64> {
        let row = sqlx::query(cursor.read_sql())
            .bind(sink)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("seq"))
            .transpose()?
            .unwrap_or(0))
    }

    async fn advance_cursor(
        &self,
        cursor: Cursor,
        sink: &str,
        owner: &str,
        seq: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(cursor.advance_sql())
            .bind(seq)
            .bind(now)
            .bind(sink)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Checkpoints with `after < seq <= until`, oldest first, at most `limit`, each with the
    /// signature of the checkpoint it chains to (`None` for the first, or when that one is gone):
    /// what a SIEM needs to check each one on its own with the public key.
    pub async fn checkpoints_to_forward(
        &self,
        after: i64,
        until: i64,
        limit: i64,
    ) -> StoreResult<Vec<(Checkpoint, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT c.seq, c.hash, c.signature, c.created_at, c.prev_seq, p.signature AS prev_signature \
             FROM audit_checkpoints c LEFT JOIN audit_checkpoints p ON p.seq = c.prev_seq \
             WHERE c.seq > $1 AND c.seq <= $2 ORDER BY c.seq LIMIT $3",
        )
        .bind(after)
        .bind(until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Checkpoint {
                        seq: r.try_get("seq")?,
                        hash: r.try_get("hash")?,
                        signature: r.try_get("signature")?,
                        created_at: r.try_get("created_at")?,
                        prev_seq: r.try_get("prev_seq")?,
                    },
                    r.try_get("prev_signature")?,
                ))
            })
            .collect()
    }
}
