use cortex_domain::audit::{AuditChainKey, ChainHasher};
use cortex_store::audit::{Checkpoint, CheckpointAppend, CheckpointKeys, RekeyError};
use cortex_store::testing::forge_audit_chain;
use cortex_store::Store;
use sqlx::Executor;

use crate::{audit_event, chain_key, on_both_backends};

async fn append_many(store: &Store, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(&audit_event(&format!("test.{i}")), 1_000 + i as i64)
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn concurrent_appends_form_one_chain(store: Store) {
    append_many(&store, 24).await;
    let report = store.verify_audit(|_| {}).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events_checked, 24);
    assert_eq!(store.audit_head().await.unwrap().0, 24);
}

async fn tampering_is_detected(store: Store) {
    append_many(&store, 6).await;
    store
        .pool()
        .execute("UPDATE audit_events SET details = '{\"x\":1}' WHERE seq = 3")
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(3)
    );
}

async fn deletion_is_detected(store: Store) {
    append_many(&store, 6).await;
    store
        .pool()
        .execute("DELETE FROM audit_events WHERE seq = 4")
        .await
        .unwrap();
    // The removed event itself is named.
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(4)
    );
}

async fn swap_is_detected(store: Store) {
    append_many(&store, 6).await;
    // Swap the contents of rows 2 and 3 (keeping seq order): row 2 no longer links.
    store
        .pool()
        .execute("UPDATE audit_events SET seq = -2 WHERE seq = 2")
        .await
        .unwrap();
    store
        .pool()
        .execute("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        .await
        .unwrap();
    store
        .pool()
        .execute("UPDATE audit_events SET seq = 3 WHERE seq = -2")
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(2)
    );
}

async fn truncation_is_detected(store: Store) {
    append_many(&store, 6).await;
    store
        .pool()
        .execute("DELETE FROM audit_events WHERE seq >= 5")
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(5)
    );
}

/// Holes wider than a verification page and a forged event far beyond the head are named (the
/// verifier jumps over empty ranges; walking 40 million empty pages would never finish).
async fn wide_holes_and_far_forged_events_are_named(store: Store) {
    let events: Vec<_> = (0..60_000)
        .map(|i| audit_event(&format!("bulk.{i}")))
        .collect();
    store.append_audit_batch(&events, 7).await.unwrap();
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
    store
        .pool()
        .execute("INSERT INTO audit_events (seq, at, actor, action, target, details, client_ip, prev_hash, hash) SELECT 1000000000000, at, actor, action, target, details, client_ip, prev_hash, hash FROM audit_events WHERE seq = 60000")
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(60_001)
    );
    store
        .pool()
        .execute("DELETE FROM audit_events WHERE seq >= 3 AND seq <= 55000")
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(3)
    );
}

on_both_backends!(
    wide_holes_and_far_forged_events_are_named,
    concurrent_appends_form_one_chain,
    tampering_is_detected,
    deletion_is_detected,
    swap_is_detected,
    truncation_is_detected,
);

/// Checkpoint keys for tests: "signatures" are readable strings naming what they cover, so a
/// test sees exactly what was signed and chained; `old_ok` decides whether old ones verify.
pub struct FakeCheckpointKeys {
    pub old_ok: bool,
}

impl CheckpointKeys for FakeCheckpointKeys {
    fn verify_old(&self, checkpoint: &Checkpoint, _previous: Option<&Checkpoint>) -> bool {
        self.old_ok && checkpoint.signature.starts_with("old:")
    }

    fn sign_new(&self, seq: i64, hash: &str, previous: Option<&Checkpoint>) -> String {
        let prev = previous.map_or("genesis", |p| p.signature.as_str());
        format!("new:{seq}:{}:{}", &hash[..8], &prev[..prev.len().min(12)])
    }
}

/// The attack of issue 24 at the storage layer: two events deleted, the rest renumbered and
/// re-hashed with plain SHA-256 (the public algorithm), or with HMAC under a guessed key. The
/// keyed chain no longer verifies; before the chain was keyed, the plain recomputation did.
async fn a_chain_recomputed_without_the_key_does_not_verify(store: Store) {
    append_many(&store, 8).await;
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
    let head = forge_audit_chain(&store, &[3, 5], &ChainHasher::Legacy).await;
    assert_eq!(head, 6);
    let report = store.verify_audit(|_| {}).await.unwrap();
    assert_eq!(report.first_bad_seq, Some(1), "{report:?}");
    // The attacker's own view (plain SHA-256) is consistent: only the key tells them apart.
    assert!(store
        .verify_audit_with(&ChainHasher::Legacy, |_| {})
        .await
        .unwrap()
        .ok());

    let guessed = ChainHasher::Keyed(AuditChainKey::from_bytes(&[8; 32]));
    forge_audit_chain(&store, &[], &guessed).await;
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(1)
    );
}

/// A handle without the key, or with another one, cannot extend a keyed chain (its events would
/// never verify): the append fails and nothing is written.
async fn appends_under_another_key_are_refused(store: Store) {
    append_many(&store, 2).await;
    let unkeyed = store.clone().without_audit_chain_key();
    assert!(unkeyed
        .append_audit(&audit_event("no.key"), 5)
        .await
        .is_err());
    let other = unkeyed
        .clone()
        .with_audit_chain_key(AuditChainKey::from_bytes(&[9; 32]));
    assert!(other
        .append_audit(&audit_event("other.key"), 5)
        .await
        .is_err());
    assert_eq!(store.audit_head().await.unwrap().0, 2);
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
}

/// A database from before keyed chains: its plain chain and unchained checkpoint are verified,
/// then re-hashed and re-signed in one transaction with an audit event and a checkpoint covering
/// it; a second run finds nothing to do. A legacy chain that does not verify is refused and left
/// exactly as it was.
async fn a_legacy_chain_is_rekeyed_once_and_only_when_it_verifies(store: Store) {
    let legacy = store.clone().without_audit_chain_key();
    for i in 0..5 {
        legacy
            .append_audit(&audit_event(&format!("old.{i}")), 100 + i)
            .await
            .unwrap();
    }
    assert_eq!(store.audit_chain_key_id().await.unwrap(), None);
    legacy
        .pool()
        .execute(
            format!(
                "INSERT INTO audit_checkpoints (seq, hash, signature, created_at) VALUES (3, '{}', 'old:3', 1)",
                legacy.audit_hash_at(3).await.unwrap().unwrap()
            )
            .as_str(),
        )
        .await
        .unwrap();
    // The keyed handle refuses to append until the chain is re-keyed.
    assert!(store.append_audit(&audit_event("early"), 1).await.is_err());

    let rekey = |keys: FakeCheckpointKeys| {
        let store = store.clone();
        async move {
            store
                .rekey_audit_chain(
                    &ChainHasher::Legacy,
                    &chain_key(),
                    &keys,
                    |counts| {
                        audit_event("audit.chain_keyed")
                            .with_details(&serde_json::json!({ "events": counts.events }))
                    },
                    200,
                )
                .await
        }
    };
    // A checkpoint that does not verify under the old key stops it.
    let refused = rekey(FakeCheckpointKeys { old_ok: false }).await;
    assert!(
        matches!(refused, Err(RekeyError::CheckpointInvalid(3))),
        "{refused:?}"
    );
    assert_eq!(store.audit_chain_key_id().await.unwrap(), None);

    let counts = rekey(FakeCheckpointKeys { old_ok: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((counts.events, counts.checkpoints), (5, 1));
    assert_eq!(
        store.audit_chain_key_id().await.unwrap().as_deref(),
        Some(chain_key().id())
    );
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
    assert!(!store
        .verify_audit_with(&ChainHasher::Legacy, |_| {})
        .await
        .unwrap()
        .ok());
    let head = store.audit_head().await.unwrap();
    assert_eq!(head.0, 6);
    let checkpoints = store.checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(
        checkpoints[0].hash,
        store.audit_hash_at(3).await.unwrap().unwrap()
    );
    assert!(checkpoints[0].signature.starts_with("new:3:"));
    assert!(checkpoints[0].signature.ends_with(":genesis"));
    assert_eq!((checkpoints[1].seq, checkpoints[1].prev_seq), (6, 3));
    assert_eq!(checkpoints[1].hash, head.1);
    // Appends are keyed from now on; a second re-keying has nothing to do.
    store
        .append_audit(&audit_event("after"), 300)
        .await
        .unwrap();
    assert!(rekey(FakeCheckpointKeys { old_ok: true })
        .await
        .unwrap()
        .is_none());
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());

    // Another legacy database, changed before the upgrade: refused, untouched.
    legacy
        .pool()
        .execute("UPDATE audit_head SET chain_key_id = NULL WHERE id = 1")
        .await
        .unwrap();
    legacy
        .pool()
        .execute("DELETE FROM audit_checkpoints")
        .await
        .unwrap();
    forge_audit_chain(&legacy, &[], &ChainHasher::Legacy).await;
    legacy
        .pool()
        .execute("UPDATE audit_events SET details = '{\"x\":1}' WHERE seq = 4")
        .await
        .unwrap();
    let before = legacy.audit_page(0, 100).await.unwrap();
    let refused = rekey(FakeCheckpointKeys { old_ok: true }).await;
    assert!(
        matches!(refused, Err(RekeyError::ChainBroken(4))),
        "{refused:?}"
    );
    assert_eq!(legacy.audit_page(0, 100).await.unwrap(), before);
    assert_eq!(store.audit_chain_key_id().await.unwrap(), None);
}

/// Checkpoints chain: each new one names the newest before it; one for a seq already covered
/// is not written; one under a key the chain is no longer under is refused.
async fn checkpoints_chain_to_their_predecessor(store: Store) {
    append_many(&store, 3).await;
    let key_id = chain_key().id().to_owned();
    let sign =
        |seq: i64| move |prev: Option<&Checkpoint>| format!("sig{seq}<{:?}", prev.map(|p| p.seq));
    let hash = store.audit_hash_at(2).await.unwrap().unwrap();
    let first = store
        .append_checkpoint(2, &hash, &key_id, 10, sign(2))
        .await
        .unwrap();
    assert!(
        matches!(first, CheckpointAppend::Written(ref c) if c.prev_seq == 0 && c.signature == "sig2<None")
    );
    assert_eq!(
        store
            .append_checkpoint(2, &hash, &key_id, 11, sign(2))
            .await
            .unwrap(),
        CheckpointAppend::Stale
    );
    let hash = store.audit_hash_at(3).await.unwrap().unwrap();
    assert_eq!(
        store
            .append_checkpoint(3, &hash, "another-key", 12, sign(3))
            .await
            .unwrap(),
        CheckpointAppend::KeyChanged
    );
    let second = store
        .append_checkpoint(3, &hash, &key_id, 12, sign(3))
        .await
        .unwrap();
    assert!(
        matches!(second, CheckpointAppend::Written(ref c) if c.prev_seq == 2 && c.signature == "sig3<Some(2)")
    );
    let stored = store.checkpoints_with_events().await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].1.as_deref(), Some(hash.as_str()));
    let forwarded = store.checkpoints_to_forward(0, 3, 10).await.unwrap();
    assert_eq!(forwarded[1].1.as_deref(), Some("sig2<None"));
    assert_eq!(forwarded[0].1, None);
}

on_both_backends!(
    a_chain_recomputed_without_the_key_does_not_verify,
    appends_under_another_key_are_refused,
    a_legacy_chain_is_rekeyed_once_and_only_when_it_verifies,
    checkpoints_chain_to_their_predecessor,
);
