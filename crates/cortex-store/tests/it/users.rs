use cortex_domain::Role;
use cortex_store::users::NewUser;
use cortex_store::{Store, StoreError};

use crate::{audit_event, on_both_backends};

async fn users_round_trip(store: Store) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    let user = store
        .create_user(
            &NewUser {
                id: "u1",
                username: "alice",
                password_hash: "$argon2id$x",
                role: Role::Developer,
                must_change_password: true,
                org_id: "default",
                budget: None,
            },
            &audit_event("user.create"),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(user.role, Role::Developer);
    assert!(user.must_change_password);
    assert!(!user.totp_enabled);
    assert_eq!(store.count_users().await.unwrap(), 1);

    let by_name = store
        .get_user_by_username(&cortex_store::Tenant::All, "alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_name.id, "u1");
    assert!(store
        .get_user_by_username(&cortex_store::Tenant::All, "bob")
        .await
        .unwrap()
        .is_none());

    let duplicate = store
        .create_user(
            &NewUser {
                id: "u2",
                username: "alice",
                password_hash: "h",
                role: Role::Viewer,
                must_change_password: false,
                org_id: "default",
                budget: None,
            },
            &audit_event("user.create"),
            1_001,
        )
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict)),
        "{duplicate:?}"
    );
    // The failed create wrote no audit event: the event shares the transaction.
    assert_eq!(store.audit_head().await.unwrap().0, 1);

    store
        .set_password(
            "u1",
            "$argon2id$y",
            false,
            &audit_event("user.password"),
            2_000,
        )
        .await
        .unwrap();
    let changed = store
        .get_user(&cortex_store::Tenant::All, "u1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.password_hash, "$argon2id$y");
    assert!(!changed.must_change_password);
    assert!(matches!(
        store
            .set_password("nobody", "h", false, &audit_event("user.password"), 2_000)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(!format!("{changed:?}").contains("argon2id"));
}

async fn settings_put_if_absent(store: Store) {
    assert_eq!(store.get_setting("k").await.unwrap(), None);
    assert_eq!(
        store.put_setting_if_absent("k", "first", 1).await.unwrap(),
        "first"
    );
    assert_eq!(
        store.put_setting_if_absent("k", "second", 2).await.unwrap(),
        "first"
    );
    store.put_setting("k", "third", 3).await.unwrap();
    assert_eq!(
        store.get_setting("k").await.unwrap().as_deref(),
        Some("third")
    );
}

on_both_backends!(users_round_trip, settings_put_if_absent);
