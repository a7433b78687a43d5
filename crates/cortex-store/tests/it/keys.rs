use std::collections::HashSet;

use cortex_domain::{KeyLimits, Role, Scope};
use cortex_store::keys::NewApiKey;
use cortex_store::users::{NewUser, UserChange};
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
        org_id: "default".into(),
        team_id: None,
        allowed_ips: None,
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

    assert_eq!(
        store
            .list_api_keys(&cortex_store::Tenant::All, None)
            .await
            .unwrap()
            .len(),
        2
    );
    let own = store
        .list_api_keys(&cortex_store::Tenant::All, Some("u1"))
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].id, "k1");
    assert_eq!(
        store
            .get_api_key_by_public_id(&cortex_store::Tenant::All, "pub000000002")
            .await
            .unwrap()
            .unwrap()
            .id,
        "k2"
    );

    // Revocation is visible to the cache poller through the row's version.
    let before = store
        .get_api_key(&cortex_store::Tenant::All, "k2")
        .await
        .unwrap()
        .unwrap()
        .version;
    assert!(store
        .revoke_api_key(
            &cortex_store::Tenant::All,
            "k1",
            &audit_event("key.revoke"),
            2_000
        )
        .await
        .unwrap());
    assert!(!store
        .revoke_api_key(
            &cortex_store::Tenant::All,
            "k1",
            &audit_event("key.revoke"),
            2_001
        )
        .await
        .unwrap());
    let changed = store.api_keys_changed_after(before).await.unwrap();
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
    let old = store
        .get_api_key(&cortex_store::Tenant::All, "k2")
        .await
        .unwrap()
        .unwrap();
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
        .get_api_key(&cortex_store::Tenant::All, "k3")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());

    store.touch_api_keys(&[("k4".into(), 9_000)]).await.unwrap();
    let touched = store
        .get_api_key(&cortex_store::Tenant::All, "k4")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(touched.last_used_at, Some(9_000));
    assert_eq!(
        touched.updated_at, 3_000,
        "last-used must not trigger cache reloads"
    );
    assert!(
        store
            .api_keys_changed_after(rotated.version)
            .await
            .unwrap()
            .iter()
            .all(|k| k.id != "k4" || k.version == touched.version),
        "last-used does not move the version"
    );
    // Five events: 2 creates, 1 revoke, 2 rotations; all on one chain.
    assert_eq!(store.audit_head().await.unwrap().0, 5);
}

on_both_backends!(
    keys_lifecycle,
    versions_come_from_the_database_not_from_clocks,
    a_poller_misses_no_concurrent_write,
    disabling_the_owner_suspends_keys_and_enabling_revives_no_revoked_one,
);

/// Issue 24, item 9: a revocation written by a host whose clock is five minutes behind the
/// host that created the key is still the newer version, and the poll finds it.
async fn versions_come_from_the_database_not_from_clocks(store: Store) {
    let now = 1_700_000_000_000;
    let created = store
        .create_api_key(
            &new_key("k1", "pub000000001", "u1"),
            &audit_event("key.create"),
            now,
        )
        .await
        .unwrap();
    assert!(store
        .revoke_api_key(
            &cortex_store::Tenant::All,
            "k1",
            &audit_event("key.revoke"),
            now - 300_000
        )
        .await
        .unwrap());
    let changed = store.api_keys_changed_after(created.version).await.unwrap();
    assert_eq!(changed.len(), 1);
    assert!(changed[0].version > created.version);
    assert!(changed[0].revoked_at.is_some());
    assert!(store
        .api_keys_changed_after(changed[0].version)
        .await
        .unwrap()
        .is_empty());
}

/// Writers with scattered clocks commit concurrently while a poller reads only rows newer
/// than the newest version it has seen: it still sees every row. This holds because every
/// key-writing transaction first takes the next version from one counter row, which serializes
/// them: a transaction with a higher version cannot commit before one with a lower version.
async fn a_poller_misses_no_concurrent_write(store: Store) {
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let id = format!("w{w}k{i}");
                    let public_id = format!("pub{w:04}{i:05}");
                    // Host clocks up to 10 minutes apart.
                    let now = 1_700_000_000_000 - (w * 100_000 + i * 7_000);
                    store
                        .create_api_key(
                            &new_key(&id, &public_id, "u1"),
                            &audit_event("key.create"),
                            now,
                        )
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        store
                            .revoke_api_key(
                                &cortex_store::Tenant::All,
                                &id,
                                &audit_event("key.revoke"),
                                now - 400_000,
                            )
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let mut newest = 0;
    let mut seen = HashSet::new();
    let mut revoked = HashSet::new();
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
        for row in store.api_keys_changed_after(newest).await.unwrap() {
            newest = newest.max(row.version);
            if row.revoked_at.is_some() {
                revoked.insert(row.id.clone());
            }
            seen.insert(row.id);
        }
        if finished {
            break;
        }
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(seen.len(), 60, "the poller missed a key");
    assert_eq!(revoked.len(), 24, "the poller missed a revocation");
}

/// Issue 24, item 4 at the store: disabling a user suspends their keys in the same transaction
/// (a new version, so every instance's cache sees it); enabling lifts only the suspension.
async fn disabling_the_owner_suspends_keys_and_enabling_revives_no_revoked_one(store: Store) {
    store
        .create_user(
            &NewUser {
                id: "u1",
                username: "dana",
                password_hash: "$argon2id$x",
                role: Role::Developer,
                must_change_password: false,
                org_id: "default",
                budget: None,
            },
            &audit_event("user.create"),
            1_000,
        )
        .await
        .unwrap();
    for (id, public_id) in [("k1", "pub000000001"), ("k2", "pub000000002")] {
        store
            .create_api_key(
                &new_key(id, public_id, "u1"),
                &audit_event("key.create"),
                1_100,
            )
            .await
            .unwrap();
    }
    store
        .revoke_api_key(
            &cortex_store::Tenant::All,
            "k2",
            &audit_event("key.revoke"),
            1_200,
        )
        .await
        .unwrap();
    let before = store
        .get_api_key(&cortex_store::Tenant::All, "k1")
        .await
        .unwrap()
        .unwrap();
    assert!(!before.owner_disabled);
    let disable = UserChange {
        disabled: Some(true),
        ..UserChange::default()
    };
    store
        .update_user(
            &cortex_store::Tenant::All,
            "u1",
            &disable,
            &audit_event("user.update"),
            1_300,
        )
        .await
        .unwrap();
    let suspended = store
        .get_api_key(&cortex_store::Tenant::All, "k1")
        .await
        .unwrap()
        .unwrap();
    assert!(suspended.owner_disabled);
    assert!(suspended.version > before.version);
    assert!(!suspended.is_active(1_301), "a suspended key is not active");
    let changed = store.api_keys_changed_after(before.version).await.unwrap();
    assert_eq!(changed.len(), 2, "both keys carry the suspension");

    // A key created for a disabled user starts suspended.
    let late = store
        .create_api_key(
            &new_key("k3", "pub000000003", "u1"),
            &audit_event("key.create"),
            1_400,
        )
        .await
        .unwrap();
    assert!(late.owner_disabled);

    let enable = UserChange {
        disabled: Some(false),
        ..UserChange::default()
    };
    store
        .update_user(
            &cortex_store::Tenant::All,
            "u1",
            &enable,
            &audit_event("user.update"),
            1_500,
        )
        .await
        .unwrap();
    let k1 = store
        .get_api_key(&cortex_store::Tenant::All, "k1")
        .await
        .unwrap()
        .unwrap();
    let k2 = store
        .get_api_key(&cortex_store::Tenant::All, "k2")
        .await
        .unwrap()
        .unwrap();
    assert!(!k1.owner_disabled && k1.is_active(1_501));
    assert!(
        !k2.owner_disabled && !k2.is_active(1_501),
        "revoked stays revoked"
    );
    assert!(store
        .get_api_key(&cortex_store::Tenant::All, "k3")
        .await
        .unwrap()
        .unwrap()
        .is_active(1_501));
    // create user, three keys, a revocation, disable, enable: one chain.
    assert_eq!(store.audit_head().await.unwrap().0, 7);
}
