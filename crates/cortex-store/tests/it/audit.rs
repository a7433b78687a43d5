use cortex_store::Store;
use sqlx::Executor;

use crate::{audit_event, on_both_backends};

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
