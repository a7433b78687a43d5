use cortex_domain::Role;
use cortex_store::passkeys::NewPasskey;
use cortex_store::users::NewUser;
use cortex_store::{Store, StoreError};

use crate::{audit_event, on_both_backends};

fn passkey<'a>(id: &'a str, credential_id: &'a str, name: &'a str) -> NewPasskey<'a> {
    NewPasskey {
        id,
        user_id: "u1",
        credential_id,
        name,
        credential: "{}",
        sign_count: 0,
    }
}

async fn passkeys_are_named_counted_forward_and_never_all_removed_from_a_passkey_only_user(
    store: Store,
) {
    store
        .create_user(
            &NewUser {
                id: "u1",
                username: "ann",
                password_hash: "$argon2id$x",
                role: Role::Developer,
                must_change_password: false,
                org_id: "default",
                budget: None,
            },
            &audit_event("user.create"),
            1,
        )
        .await
        .unwrap();
    // Passkey-only needs a passkey.
    assert!(matches!(
        store
            .set_passkey_only("u1", true, &audit_event("auth.passkey_only"), 2)
            .await,
        Err(StoreError::Conflict)
    ));
    let laptop = store
        .add_passkey(
            &passkey("p1", "cred-1", "laptop"),
            &audit_event("auth.passkey_add"),
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        (laptop.name.as_str(), laptop.sign_count, laptop.last_used_at),
        ("laptop", 0, None)
    );
    // A name twice for one user, or a credential registered already: conflicts.
    for (id, cred, name) in [("p2", "cred-2", "laptop"), ("p3", "cred-1", "phone")] {
        let again = store
            .add_passkey(
                &passkey(id, cred, name),
                &audit_event("auth.passkey_add"),
                4,
            )
            .await;
        assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    }
    store
        .add_passkey(
            &passkey("p2", "cred-2", "phone"),
            &audit_event("auth.passkey_add"),
            5,
        )
        .await
        .unwrap();
    assert_eq!(store.count_passkeys("u1").await.unwrap(), 2);
    assert_eq!(
        store
            .list_passkeys("u1")
            .await
            .unwrap()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["laptop", "phone"]
    );

    // The counter only moves forward.
    assert!(store
        .record_passkey_use("p1", "{\"c\":5}", 5, 10)
        .await
        .unwrap());
    assert!(!store
        .record_passkey_use("p1", "{\"c\":5}", 5, 11)
        .await
        .unwrap());
    assert!(!store
        .record_passkey_use("p1", "{\"c\":3}", 3, 12)
        .await
        .unwrap());
    assert!(
        store.record_passkey_use("p2", "{}", 0, 13).await.unwrap(),
        "no counter: stays 0"
    );
    let used = store.list_passkeys("u1").await.unwrap();
    assert_eq!((used[0].sign_count, used[0].last_used_at), (5, Some(10)));

    // A passkey-only user keeps at least one passkey.
    store
        .set_passkey_only("u1", true, &audit_event("auth.passkey_only"), 20)
        .await
        .unwrap();
    store
        .remove_passkey("u1", "p1", &audit_event("auth.passkey_remove"), 21)
        .await
        .unwrap();
    assert!(matches!(
        store
            .remove_passkey("u1", "p2", &audit_event("auth.passkey_remove"), 22)
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .remove_passkey("u1", "missing", &audit_event("auth.passkey_remove"), 22)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .remove_passkey(
                "someone-else",
                "p2",
                &audit_event("auth.passkey_remove"),
                22
            )
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .set_passkey_only("u1", false, &audit_event("auth.passkey_only"), 23)
        .await
        .unwrap();
    store
        .remove_passkey("u1", "p2", &audit_event("auth.passkey_remove"), 24)
        .await
        .unwrap();
    assert_eq!(store.count_passkeys("u1").await.unwrap(), 0);
}

on_both_backends!(
    passkeys_are_named_counted_forward_and_never_all_removed_from_a_passkey_only_user
);
