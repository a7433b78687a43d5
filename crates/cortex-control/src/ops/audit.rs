//! Audit verification beyond the hash chain, and the keys behind it.
//!
//! - The chain is keyed: every event's hash is an HMAC under a key derived from the master key
//!   ([`chain_key`]), so a database writer without the master key cannot recompute it after
//!   removing or changing events. A database from before keyed chains is verified and re-keyed
//!   once, when it is first opened with the master key ([`open_chain`]).
//! - Signed checkpoints (Ed25519, key derived from the master key) let `verify` detect a cut tail
//!   even when the head row was rewritten to match. Each checkpoint's signed message names the
//!   one before it (seq and signature; the first names the genesis), so a checkpoint deleted from
//!   the middle is detected; a missing newest one is detected once the events it covered are
//!   older than [`CHECKPOINT_GRACE_MILLIS`] and no checkpoint covers them.
//! - Before signing, the writer verifies the chain from the newest checkpoint to the head (and
//!   that checkpoint's own signature) and refuses to sign anything that does not verify.
//!
//! Events after the newest checkpoint are protected by the keyed chain only; checkpoints are
//! written every 30 seconds while the server runs, at shutdown, after each `cortex` command that
//! wrote events, and on demand (`cortex audit checkpoint`).

use std::sync::Mutex;

use cortex_crypto::envelope::MasterKey;
use cortex_crypto::signing::AuditSigner;
use cortex_domain::audit::{
    checkpoint_message, legacy_checkpoint_message, AuditChainKey, AuditRecord, ChainHasher,
    NewAuditEvent, GENESIS_CHECKPOINT, GENESIS_HASH,
};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_store::audit::{Checkpoint, CheckpointAppend, CheckpointKeys, RekeyError};
use cortex_store::{Store, StoreError, StoreResult};
use secrecy::ExposeSecret;

/// Events older than this must be covered by a signed checkpoint, or `verify` fails: ten
/// checkpoint intervals, so a slow tick, a restart or clock skew between instances does not
/// raise a false alarm.
pub const CHECKPOINT_GRACE_MILLIS: i64 = 5 * 60 * 1000;

/// Counter: checkpoints the writer refused to sign because the chain or the newest checkpoint
/// did not verify.
pub const CHECKPOINT_REFUSALS: &str = "gateway_audit_checkpoint_refusals_total";

/// Actor of the audit event that records the one-time re-keying.
const SYSTEM_ACTOR: &str = "system";

/// Why `verify` failed, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyProblem {
    /// An event was changed, removed or reordered, or the chain recomputed without the key.
    ChainBroken,
    /// A checkpoint's signature does not verify (forged, or signed with another key).
    CheckpointForged,
    /// A signed checkpoint names an event that is gone or has another hash (a cut tail).
    CheckpointEventMissing,
    /// A checkpoint was deleted: one names a predecessor that is not there, or events older
    /// than the grace period are covered by none.
    CheckpointMissing,
}

impl VerifyProblem {
    /// One line for the operator.
    pub fn describe(self) -> &'static str {
        match self {
            VerifyProblem::ChainBroken => "an event was changed, removed or reordered, or the chain was recomputed without the master key",
            VerifyProblem::CheckpointForged => "a signed checkpoint does not verify with the checkpoint key",
            VerifyProblem::CheckpointEventMissing => "a signed checkpoint names an event that is gone or was changed (the tail was cut)",
            VerifyProblem::CheckpointMissing => "signed checkpoints were deleted (or the server stopped without its final checkpoint: `cortex audit checkpoint` signs the tail after checking the chain)",
        }
    }
}

/// What `GET /admin/audit/verify` and `cortex audit verify` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: u64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<VerifyProblem>,
}

pub fn signer(master_key: &MasterKey) -> AuditSigner {
    AuditSigner::from_seed(
        master_key
            .derive_subkey("cortex-audit-signing-v1")
            .expose_secret(),
    )
}

/// The key of the audit hash chain: a sub-key of the master key for this purpose only.
pub fn chain_key(master_key: &MasterKey) -> AuditChainKey {
    AuditChainKey::from_bytes(
        master_key
            .derive_subkey("cortex-audit-chain-v1")
            .expose_secret(),
    )
}

/// True when `checkpoint`'s signature, by `public_key`, covers it chained to `previous` (the
/// checkpoint stored before it; `None`: it must chain to the genesis).
pub fn checkpoint_verifies(
    public_key: &str,
    checkpoint: &Checkpoint,
    previous: Option<&Checkpoint>,
) -> bool {
    let (prev_seq, prev_signature) =
        previous.map_or((0, GENESIS_CHECKPOINT), |p| (p.seq, p.signature.as_str()));
    checkpoint.prev_seq == prev_seq
        && AuditSigner::verify(
            public_key,
            &checkpoint_message(checkpoint.seq, &checkpoint.hash, prev_seq, prev_signature),
            &checkpoint.signature,
        )
}

/// Signs (`seq`, `hash`) chained to `previous`.
fn sign_chained(
    signer: &AuditSigner,
    seq: i64,
    hash: &str,
    previous: Option<&Checkpoint>,
) -> String {
    let (prev_seq, prev_signature) =
        previous.map_or((0, GENESIS_CHECKPOINT), |p| (p.seq, p.signature.as_str()));
    signer.sign(&checkpoint_message(seq, hash, prev_seq, prev_signature))
}

/// Checkpoint keys for re-keying: old signatures are checked with the old public key (in the
/// unchained v1 form for a database from before keyed chains), new ones signed chained.
pub(crate) struct Resigner {
    pub(crate) old_public: String,
    pub(crate) old_unchained: bool,
    pub(crate) new_signer: AuditSigner,
}

impl CheckpointKeys for Resigner {
    fn verify_old(&self, checkpoint: &Checkpoint, previous: Option<&Checkpoint>) -> bool {
        if self.old_unchained {
            AuditSigner::verify(
                &self.old_public,
                &legacy_checkpoint_message(checkpoint.seq, &checkpoint.hash),
                &checkpoint.signature,
            )
        } else {
            checkpoint_verifies(&self.old_public, checkpoint, previous)
        }
    }

    fn sign_new(&self, seq: i64, hash: &str, previous: Option<&Checkpoint>) -> String {
        sign_chained(&self.new_signer, seq, hash, previous)
    }
}

/// Why the audit chain could not be opened with the master key.
#[derive(Debug, thiserror::Error)]
pub enum ChainOpenError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The unkeyed chain of an older database did not verify, so it was not re-keyed.
    #[error("{0}; run `cortex audit verify` and investigate (restore a backup from before the change to go on)")]
    Rekey(RekeyError),
    #[error("the audit chain is keyed with another master key than this one; start with the key the database is sealed with")]
    OtherKey,
}

/// The store with the audit chain key of `master_key` installed, after making sure the chain is
/// under that key: a chain from before keyed chains is verified and re-keyed here, once, in one
/// transaction with its audit event (`audit.chain_keyed`) and a checkpoint covering it; one that
/// does not verify is refused (re-keying it would launder whatever was changed).
pub async fn open_chain(
    store: Store,
    master_key: &MasterKey,
    now: i64,
) -> Result<Store, ChainOpenError> {
    let key = chain_key(master_key);
    let store = store.with_audit_chain_key(key.clone());
    match store.audit_chain_key_id().await? {
        Some(id) if id == key.id() => return Ok(store),
        Some(_) => return Err(ChainOpenError::OtherKey),
        None if store.audit_head().await?.0 == 0 => return Ok(store),
        None => {}
    }
    let checkpoint_signer = signer(master_key);
    let resigner = Resigner {
        old_public: checkpoint_signer.verifying_key_hex(),
        old_unchained: true,
        new_signer: checkpoint_signer,
    };
    let rekeyed = store
        .rekey_audit_chain(
            &ChainHasher::Legacy,
            &key,
            &resigner,
            |counts| {
                NewAuditEvent::new(SYSTEM_ACTOR, "audit.chain_keyed", "audit_log").with_details(
                    &serde_json::json!({ "events": counts.events, "checkpoints": counts.checkpoints }),
                )
            },
            now,
        )
        .await
        .map_err(|e| match e {
            RekeyError::Store(e) => ChainOpenError::Store(e),
            other => ChainOpenError::Rekey(other),
        })?;
    if let Some(counts) = rekeyed {
        tracing::warn!(
            events = counts.events,
            checkpoints = counts.checkpoints,
            "the audit chain was verified and re-keyed under the master key (HMAC-SHA256); checkpoints re-signed chained"
        );
    }
    Ok(store)
}

/// One event as exported, listed and forwarded: JSON with RFC 3339 time and the details parsed.
pub fn event_json(event: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": event.seq,
        "at": millis_to_rfc3339(event.at_millis),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "details": serde_json::from_str::<serde_json::Value>(&event.details).unwrap_or(serde_json::Value::Null),
        "client_ip": event.client_ip,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "org_id": event.org_id,
    })
}

/// One signed checkpoint as forwarded to a SIEM: a copy outside the database, checkable with
/// `cortex audit public-key` (the message is [`checkpoint_message`]).
pub fn checkpoint_json(checkpoint: &Checkpoint, prev_signature: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "kind": "audit.checkpoint",
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "signature": checkpoint.signature,
        "prev_seq": checkpoint.prev_seq,
        "prev_signature": prev_signature.unwrap_or(GENESIS_CHECKPOINT),
        "at": millis_to_rfc3339(checkpoint.created_at),
    })
}

/// What one call of [`write_checkpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// A checkpoint now covers the chain up to this seq.
    Written(i64),
    /// Nothing new to sign (or another instance just signed it).
    UpToDate,
    /// The chain from the newest checkpoint on, or that checkpoint itself, does not verify (at
    /// this seq): nothing was signed; logged as an error and counted.
    Refused(i64),
    /// The database's secrets or chain are under another master key (a rotation while this
    /// process ran): nothing was signed.
    KeyRetired,
}

/// The checkpoint this process wrote last. A running server remembers it, so checkpoints
/// deleted behind its back are noticed instead of being silently replaced by a fresh chain.
#[derive(Debug, Default)]
pub struct CheckpointTrail(Mutex<Option<(i64, String)>>);

impl CheckpointTrail {
    fn last(&self) -> Option<(i64, String)> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }

    fn remember(&self, checkpoint: &Checkpoint) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some((checkpoint.seq, checkpoint.signature.clone()));
        }
    }
}

/// [`write_checkpoint_with`] without memory of earlier checkpoints (one-shot commands).
pub async fn write_checkpoint(
    store: &Store,
    master_key: &MasterKey,
    now: i64,
) -> StoreResult<CheckpointOutcome> {
    write_checkpoint_with(store, master_key, &CheckpointTrail::default(), now).await
}

/// Signs the head if it moved since the newest checkpoint, chained to that checkpoint — after
/// verifying that checkpoint's signature and the chain from it to the head under the chain key.
/// Nothing is signed when the database's secrets were re-sealed under another master key (a
/// rotation while this process ran): a checkpoint signed with a retired key would read as forged.
pub async fn write_checkpoint_with(
    store: &Store,
    master_key: &MasterKey,
    trail: &CheckpointTrail,
    now: i64,
) -> StoreResult<CheckpointOutcome> {
    if !super::fingerprint::check_master_key(store, master_key, now).await? {
        tracing::error!("the master key was rotated by another process; restart this instance with the new key (no audit checkpoint written)");
        return Ok(CheckpointOutcome::KeyRetired);
    }
    let (head_seq, _) = store.audit_head().await?;
    let newest = store.latest_checkpoints(2).await?;
    let latest = newest.first();
    let covered = latest.map_or(0, |c| c.seq);
    if let Some((seq, signature)) = trail.last() {
        let still_there = store
            .checkpoint_at(seq)
            .await?
            .is_some_and(|c| c.signature == signature);
        if !still_there || covered < seq {
            return Ok(refuse(
                seq,
                "a checkpoint this instance signed is gone or was changed",
            ));
        }
    }
    if head_seq == 0 || covered >= head_seq {
        return Ok(CheckpointOutcome::UpToDate);
    }
    let checkpoint_signer = signer(master_key);
    if let Some(latest) = latest {
        let previous = newest.get(1);
        if !checkpoint_verifies(&checkpoint_signer.verifying_key_hex(), latest, previous) {
            return Ok(refuse(
                latest.seq,
                "the newest audit checkpoint does not verify",
            ));
        }
    }
    let key = chain_key(master_key);
    let (after_seq, after_hash) = latest.map_or((0, GENESIS_HASH), |c| (c.seq, c.hash.as_str()));
    let segment = store
        .verify_audit_after(&ChainHasher::Keyed(key.clone()), after_seq, after_hash)
        .await?;
    if let Some(bad) = segment.report.first_bad_seq {
        return Ok(refuse(bad, "the audit chain does not verify"));
    }
    if segment.last_seq <= after_seq {
        return Ok(CheckpointOutcome::UpToDate);
    }
    let appended = store
        .append_checkpoint(
            segment.last_seq,
            &segment.last_hash,
            key.id(),
            now,
            |previous| {
                sign_chained(
                    &checkpoint_signer,
                    segment.last_seq,
                    &segment.last_hash,
                    previous,
                )
            },
        )
        .await?;
    Ok(match appended {
        CheckpointAppend::Written(checkpoint) => {
            trail.remember(&checkpoint);
            CheckpointOutcome::Written(checkpoint.seq)
        }
        CheckpointAppend::Stale => CheckpointOutcome::UpToDate,
        CheckpointAppend::KeyChanged => {
            tracing::error!("the audit chain is under another key (a master key rotation committed meanwhile); restart this instance with the new key (no audit checkpoint written)");
            CheckpointOutcome::KeyRetired
        }
    })
}

fn refuse(first_bad_seq: i64, why: &'static str) -> CheckpointOutcome {
    metrics::counter!(CHECKPOINT_REFUSALS).increment(1);
    tracing::error!(
        first_bad_seq,
        problem = why,
        "refusing to sign an audit checkpoint: the log may have been tampered with; run `cortex audit verify`"
    );
    CheckpointOutcome::Refused(first_bad_seq)
}

/// The chain from the first event to the head under the chain key, then the checkpoints: each
/// one's signature chained to its predecessor, and the event it names still there with the same
/// hash; finally, no event older than [`CHECKPOINT_GRACE_MILLIS`] (by `now`) left uncovered.
pub async fn verify(
    store: &Store,
    master_key: &MasterKey,
    now: i64,
    progress: impl FnMut(u64),
) -> StoreResult<VerifyReport> {
    let hasher = ChainHasher::Keyed(chain_key(master_key));
    let chain = store.verify_audit_with(&hasher, progress).await?;
    let failed = |seq: i64, problem: VerifyProblem| VerifyReport {
        ok: false,
        events_checked: chain.events_checked,
        first_bad_seq: Some(seq),
        problem: Some(problem),
    };
    if let Some(seq) = chain.first_bad_seq {
        return Ok(failed(seq, VerifyProblem::ChainBroken));
    }
    let public_key = signer(master_key).verifying_key_hex();
    let (head_seq, _) = store.audit_head().await?;
    let mut previous: Option<Checkpoint> = None;
    for (checkpoint, event_hash) in store.checkpoints_with_events().await? {
        let expected_prev = previous.as_ref().map_or(0, |p| p.seq);
        if checkpoint.prev_seq != expected_prev {
            // It names a predecessor that is not the one stored before it: deleted.
            let gone = if checkpoint.prev_seq > expected_prev {
                checkpoint.prev_seq
            } else {
                checkpoint.seq
            };
            return Ok(failed(gone.max(1), VerifyProblem::CheckpointMissing));
        }
        if !checkpoint_verifies(&public_key, &checkpoint, previous.as_ref()) {
            return Ok(failed(checkpoint.seq, VerifyProblem::CheckpointForged));
        }
        if event_hash.as_deref() != Some(checkpoint.hash.as_str()) {
            // Missing: the tail was cut (and the head rewritten); name the first lost event.
            let seq = if event_hash.is_none() {
                (head_seq + 1).min(checkpoint.seq)
            } else {
                checkpoint.seq
            };
            return Ok(failed(seq, VerifyProblem::CheckpointEventMissing));
        }
        previous = Some(checkpoint);
    }
    let covered = previous.as_ref().map_or(0, |c| c.seq);
    if let Some(at) = store.audit_event_time_after(covered).await? {
        if at < now - CHECKPOINT_GRACE_MILLIS {
            return Ok(failed(covered + 1, VerifyProblem::CheckpointMissing));
        }
    }
    Ok(VerifyReport {
        ok: true,
        events_checked: chain.events_checked,
        first_bad_seq: None,
        problem: None,
    })
}
