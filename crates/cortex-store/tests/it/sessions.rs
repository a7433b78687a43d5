use cortex_domain::audit::NewAuditEvent;
use cortex_domain::Role;
use cortex_store::sessions::{NewSession, RefreshOutcome};
use cortex_store::users::NewUser;
use cortex_store::Store;

use crate::{audit_event, on_both_backends};

async fn with_user(store: &Store) {
    store
        .create_user(
            &NewUser {
                id: "u1",
                username: "ann",
                password_hash: "h",
                role: Role::Admin,
                must_change_password: false,
                org_id: "default",
                budget: None,
            },
            &audit_event("user.create"),
            1,
        )
        .await
        .unwrap();
    store
        .create_session(
            &NewSession {
                session_id: "s1",
                user_id: "u1",
                token_hash: "cookie-hash",
                refresh_id: "r1",
                refresh_hash: "refresh-1",
                expires_at: 1_000_000,
                client_ip: "127.0.0.1",
                user_agent: "test",
                method: cortex_domain::SessionMethod::Password,
            },
            &audit_event("auth.login"),
            10,
        )
        .await
        .unwrap();
}

fn reuse(family: &str, user: &str) -> NewAuditEvent {
    NewAuditEvent::new("anonymous", "auth.refresh_token_reuse", user)
        .with_details(&serde_json::json!({ "family": family }))
}

async fn refresh_rotation_and_reuse(store: Store) {
    with_user(&store).await;
    assert_eq!(
        store
            .get_session_by_token_hash("cookie-hash")
            .await
            .unwrap()
            .unwrap()
            .id,
        "s1"
    );
    let first = store
        .rotate_refresh_token("refresh-1", "r2", "refresh-2", reuse, 20)
        .await
        .unwrap();
    assert_eq!(
        first,
        RefreshOutcome::Rotated {
            session_id: "s1".into(),
            user_id: "u1".into()
        }
    );
    let second = store
        .rotate_refresh_token("refresh-2", "r3", "refresh-3", reuse, 30)
        .await
        .unwrap();
    assert!(matches!(second, RefreshOutcome::Rotated { .. }));
    // Replaying the first token revokes the family and the session.
    let replay = store
        .rotate_refresh_token("refresh-1", "r4", "refresh-4", reuse, 40)
        .await
        .unwrap();
    assert!(
        matches!(replay, RefreshOutcome::Reused { ref family_id, .. } if family_id == "r1"),
        "{replay:?}"
    );
    assert_eq!(
        store
            .rotate_refresh_token("refresh-3", "r5", "refresh-5", reuse, 50)
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
    assert!(!store
        .get_session("s1")
        .await
        .unwrap()
        .unwrap()
        .is_active(60));
    assert_eq!(
        store
            .rotate_refresh_token("never-issued", "r6", "refresh-6", reuse, 60)
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
    let events = store
        .list_audit(
            &cortex_store::Tenant::All,
            &cortex_store::audit::AuditFilter {
                action: Some("auth.refresh_token_reuse".into()),
                limit: 5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

async fn totp_steps_and_recovery_codes_are_single_use(store: Store) {
    with_user(&store).await;
    assert!(store.claim_totp_step("u1", 100).await.unwrap());
    assert!(
        !store.claim_totp_step("u1", 100).await.unwrap(),
        "the same step twice"
    );
    assert!(
        !store.claim_totp_step("u1", 99).await.unwrap(),
        "an older step"
    );
    assert!(store.claim_totp_step("u1", 101).await.unwrap());
    store
        .enable_totp(
            "u1",
            101,
            &["code-a".into(), "code-b".into()],
            &audit_event("user.mfa_enabled"),
            70,
        )
        .await
        .unwrap();
    assert!(
        store
            .get_user(&cortex_store::Tenant::All, "u1")
            .await
            .unwrap()
            .unwrap()
            .totp_enabled
    );
    assert!(store
        .consume_recovery_code("u1", "code-a", &audit_event("auth.recovery_code_used"), 80)
        .await
        .unwrap());
    assert!(!store
        .consume_recovery_code("u1", "code-a", &audit_event("auth.recovery_code_used"), 81)
        .await
        .unwrap());
    assert_eq!(store.unused_recovery_codes("u1").await.unwrap(), 1);
    store
        .disable_totp("u1", &audit_event("user.mfa_disabled"), 90)
        .await
        .unwrap();
    assert_eq!(store.unused_recovery_codes("u1").await.unwrap(), 0);
}

async fn logout_and_password_change_revoke_sessions(store: Store) {
    with_user(&store).await;
    assert!(store.revoke_session("s1", None, 100).await.unwrap());
    assert!(!store.revoke_session("s1", None, 101).await.unwrap());
    assert_eq!(
        store
            .rotate_refresh_token("refresh-1", "r9", "refresh-9", reuse, 102)
            .await
            .unwrap(),
        RefreshOutcome::Invalid
    );
    assert_eq!(
        store.revoke_user_sessions("u1", None, 103).await.unwrap(),
        0
    );
}

on_both_backends!(
    refresh_rotation_and_reuse,
    totp_steps_and_recovery_codes_are_single_use,
    logout_and_password_change_revoke_sessions
);
