//! Audit verification beyond the hash chain: signed checkpoints (Ed25519, key derived from the
//! master key) let `verify` detect a cut tail even when the head row was rewritten to match.
//! Events after the newest checkpoint are protected by the chain only; checkpoints are written
//! every 30 seconds while the server runs, and on demand (`cortex audit checkpoint`).

use cortex_crypto::envelope::MasterKey;
use cortex_crypto::signing::AuditSigner;
use cortex_domain::audit::AuditRecord;
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_store::audit::Checkpoint;
use cortex_store::{Store, StoreResult};
use secrecy::ExposeSecret;

/// What `GET /admin/audit/verify` and `cortex audit verify` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: u64,
    pub first_bad_seq: Option<i64>,
}

pub fn signer(master_key: &MasterKey) -> AuditSigner {
    AuditSigner::from_seed(
        master_key
            .derive_subkey("cortex-audit-signing-v1")
            .expose_secret(),
    )
}

pub(crate) fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("cortex-audit-checkpoint-v1:{seq}:{hash}").into_bytes()
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
    })
}

/// Signs the current head if it moved since the newest checkpoint; returns the seq signed.
/// Nothing is signed when the database's secrets were re-sealed under another master key (a
/// rotation while this process ran): a checkpoint signed with a retired key would read as forged.
pub async fn write_checkpoint(
    store: &Store,
    master_key: &MasterKey,
    now: i64,
) -> StoreResult<Option<i64>> {
    if !super::secrets::check_master_key(store, master_key, now).await? {
        tracing::error!("the master key was rotated by another process; restart this instance with the new key (no audit checkpoint written)");
        return Ok(None);
    }
    let (seq, hash) = store.audit_head().await?;
    if seq == 0 || store.latest_checkpoint_seq().await? >= seq {
        return Ok(None);
    }
    let signature = signer(master_key).sign(&checkpoint_message(seq, &hash));
    store
        .write_checkpoint(&Checkpoint {
            seq,
            hash,
            signature,
            created_at: now,
        })
        .await?;
    Ok(Some(seq))
}

/// The chain from the first event to the head, then every checkpoint: a valid signature, and the
/// event it names still there with the same hash.
pub async fn verify(
    store: &Store,
    master_key: &MasterKey,
    progress: impl FnMut(u64),
) -> StoreResult<VerifyReport> {
    let chain = store.verify_audit(progress).await?;
    let mut first_bad = chain.first_bad_seq;
    if first_bad.is_none() {
        let public_key = signer(master_key).verifying_key_hex();
        let (head_seq, _) = store.audit_head().await?;
        for checkpoint in store.checkpoints().await? {
            let signed = AuditSigner::verify(
                &public_key,
                &checkpoint_message(checkpoint.seq, &checkpoint.hash),
                &checkpoint.signature,
            );
            let present = store.audit_hash_at(checkpoint.seq).await?;
            if !signed {
                first_bad = Some(checkpoint.seq);
            } else if present.as_deref() != Some(checkpoint.hash.as_str()) {
                // Missing: the tail was cut (and the head rewritten); name the first lost event.
                first_bad = Some(if present.is_none() {
                    (head_seq + 1).min(checkpoint.seq)
                } else {
                    checkpoint.seq
                });
            }
            if first_bad.is_some() {
                break;
            }
        }
    }
    Ok(VerifyReport {
        ok: first_bad.is_none(),
        events_checked: chain.events_checked,
        first_bad_seq: first_bad,
    })
}
