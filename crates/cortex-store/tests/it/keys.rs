use cortex_domain::{KeyLimits, Scope};
use cortex_store::keys::NewApiKey;
use cortex_store::Store;

use crate::{audit_event, on_both_backends};

fn new_key(id: &str, public_id: &str, owner: &str) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        public_id: public_id.into(),
        secret_hash: "ab".repeat(32),
        name: format!("key {id}"),
        owner_user_id: owner.into(),
        scopes: vec![Scope::Chat, Scope::Embeddings],
        models: Some(vec!["llama".into()]),
        limits: KeyLimits {
            burst: Some(3),
            budget_usd: Some(1.5),
            ..KeyLimits::default()
        },
        expires_at: None,
    }
}

async fn keys_lifecycle(store: Store) {
    let created = store
        .create_api_key(
            &new_key("k1", "pub000000001", "u1"),
            &audit_event("key.create"),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(created.scopes, vec![Scope::Chat, Scope::Embeddings]);
    assert_eq!(created.models.as_deref(), Some(&["llama".to_owned()][..]));
    assert_eq!(created.limits.burst, Some(3));
    assert!(created.is_active(1_001));
    store
        .create_api_key(
            &new_key("k2", "pub000000002", "u2"),
            &audit_event("key.create"),
            1_100,
        )
        .await
        .unwrap();

    assert_eq!(store.list_api_keys(None).await.unwrap().len(), 2);
    let own = store.list_api_keys(Some("u1")).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].id, "k1");
    assert_eq!(
        store
            .get_api_key_by_public_id("pub000000002")
            .await
            .unwrap()
            .unwrap()
            .id,
        "k2"
    );

    // Revocation is visible to the cache poller through updated_at.
    assert!(store
        .revoke_api_key("k1", &audit_event("key.revoke"), 2_000)
        .await
        .unwrap());
    assert!(!store
        .revoke_api_key("k1", &audit_event("key.revoke"), 2_001)
        .await
        .unwrap());
    let changed = store.api_keys_changed_since(2_000).await.unwrap();
    assert_eq!(changed.len(), 1);
    assert!(!changed[0].is_active(2_000));

    // Rotation with a grace period: the old key lives until then, the new one now.
    let rotated = store
        .rotate_api_key(
            "k2",
            &new_key("k3", "pub000000003", "u2"),
            5_000,
            &audit_event("key.rotate"),
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(rotated.id, "k3");
    let old = store.get_api_key("k2").await.unwrap().unwrap();
    assert_eq!(old.expires_at, Some(5_000));
    assert_eq!(old.rotated_to.as_deref(), Some("k3"));
    assert!(old.is_active(4_999));
    assert!(!old.is_active(5_000));

    // Zero grace revokes at once.
    store
        .rotate_api_key(
            "k3",
            &new_key("k4", "pub000000004", "u2"),
            3_000,
            &audit_event("key.rotate"),
            3_000,
        )
        .await
        .unwrap();
    assert!(store
        .get_api_key("k3")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());

    store.touch_api_keys(&[("k4".into(), 9_000)]).await.unwrap();
    let touched = store.get_api_key("k4").await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(9_000));
    assert_eq!(
        touched.updated_at, 3_000,
        "last-used must not trigger cache reloads"
    );
    // Five events: 2 creates, 1 revoke, 2 rotations; all on one chain.
    assert_eq!(store.audit_head().await.unwrap().0, 5);
}

on_both_backends!(keys_lifecycle);
