use cortex_domain::{AccountKind, Role, SessionMethod, Tenant};
use cortex_store::service_accounts::{NewServiceAccount, NewServiceToken};
use cortex_store::users::UserChange;
use cortex_store::{Store, StoreError};

use crate::{audit_event, on_both_backends};

fn token<'a>(session_id: &'a str, unusable: &'a str) -> NewServiceToken<'a> {
    NewServiceToken {
        session_id,
        unusable_token_hash: unusable,
        expires_at: 10_000,
        client_ip: "127.0.0.1",
        user_agent: "test",
    }
}

async fn service_accounts_round_trip(store: Store) {
    let account = store
        .create_service_account(
            &NewServiceAccount {
                id: "sa1",
                name: "ci-bot",
                role: Role::Developer,
                org_id: "default",
                client_id: "sa_client",
                secret_hash: "hash-1",
                description: "deploys",
            },
            &audit_event("service_account.create"),
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(account.user.kind, AccountKind::Service);
    assert_eq!(
        (
            account.user.username.as_str(),
            account.user.role,
            account.client_id.as_str()
        ),
        ("ci-bot", Role::Developer, "sa_client")
    );
    assert!(!account.user.must_change_password);
    assert_eq!(account.secret_rotated_at, 1_000);
    assert_eq!(account.last_token_at, None);
    // The same name as any user is taken; an unknown organization is not found.
    let taken = store
        .create_service_account(
            &NewServiceAccount {
                id: "sa2",
                name: "ci-bot",
                role: Role::Viewer,
                org_id: "default",
                client_id: "sa_other",
                secret_hash: "h",
                description: "",
            },
            &audit_event("service_account.create"),
            1_001,
        )
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict)), "{taken:?}");
    let nowhere = store
        .create_service_account(
            &NewServiceAccount {
                id: "sa3",
                name: "lost",
                role: Role::Viewer,
                org_id: "missing",
                client_id: "sa_lost",
                secret_hash: "h",
                description: "",
            },
            &audit_event("service_account.create"),
            1_001,
        )
        .await;
    assert!(matches!(nowhere, Err(StoreError::NotFound)), "{nowhere:?}");

    let by_client = store
        .get_service_account_by_client_id("sa_client")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_client.user.id, "sa1");
    let acme = Tenant::Org("acme".to_owned());
    assert!(store
        .get_service_account(&acme, "sa1")
        .await
        .unwrap()
        .is_none());
    assert!(store.list_service_accounts(&acme).await.unwrap().is_empty());
    assert_eq!(
        store
            .list_service_accounts(&Tenant::All)
            .await
            .unwrap()
            .len(),
        1
    );

    // A token only under the current secret.
    assert!(!store
        .issue_service_token(
            "sa1",
            "wrong",
            &token("s0", "t0"),
            &audit_event("service_account.token"),
            2_000
        )
        .await
        .unwrap());
    assert!(store
        .issue_service_token(
            "sa1",
            "hash-1",
            &token("s1", "t1"),
            &audit_event("service_account.token"),
            2_000
        )
        .await
        .unwrap());
    let session = store.get_session("s1").await.unwrap().unwrap();
    assert_eq!(session.method, SessionMethod::ClientCredentials);
    assert!(session.is_active(2_001));
    assert_eq!(
        store
            .get_service_account(&Tenant::All, "sa1")
            .await
            .unwrap()
            .unwrap()
            .last_token_at,
        Some(2_000)
    );

    // Rotation from another organization is not found; from its own it ends the tokens.
    let rotated = store
        .rotate_service_account_secret(
            &acme,
            "sa1",
            "hash-2",
            &audit_event("service_account.rotate"),
            3_000,
        )
        .await;
    assert!(matches!(rotated, Err(StoreError::NotFound)));
    let rotated = store
        .rotate_service_account_secret(
            &Tenant::Org("default".to_owned()),
            "sa1",
            "hash-2",
            &audit_event("service_account.rotate"),
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(
        (rotated.secret_hash.as_str(), rotated.secret_rotated_at),
        ("hash-2", 3_000)
    );
    assert!(!store
        .get_session("s1")
        .await
        .unwrap()
        .unwrap()
        .is_active(3_001));
    assert!(!store
        .issue_service_token(
            "sa1",
            "hash-1",
            &token("s2", "t2"),
            &audit_event("service_account.token"),
            3_001
        )
        .await
        .unwrap());

    // Disabled: no token, even with the current secret.
    store
        .update_user(
            &Tenant::All,
            "sa1",
            &UserChange {
                disabled: Some(true),
                ..Default::default()
            },
            &audit_event("service_account.update"),
            4_000,
        )
        .await
        .unwrap();
    assert!(!store
        .issue_service_token(
            "sa1",
            "hash-2",
            &token("s3", "t3"),
            &audit_event("service_account.token"),
            4_001
        )
        .await
        .unwrap());

    // Service accounts do not keep an organization's last admin: no person signs in as one.
    store
        .create_service_account(
            &NewServiceAccount {
                id: "sa4",
                name: "admin-bot",
                role: Role::Admin,
                org_id: "default",
                client_id: "sa_admin",
                secret_hash: "h4",
                description: "",
            },
            &audit_event("service_account.create"),
            5_000,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .count_other_active_admins("default", "nobody")
            .await
            .unwrap(),
        0
    );

    // Deleting the account removes its credentials and sessions.
    store
        .delete_user(
            &Tenant::All,
            "sa1",
            &audit_event("service_account.delete"),
            6_000,
        )
        .await
        .unwrap();
    assert!(store
        .get_service_account_by_client_id("sa_client")
        .await
        .unwrap()
        .is_none());
    assert!(store.get_session("s1").await.unwrap().is_none());
}

on_both_backends!(service_accounts_round_trip);
