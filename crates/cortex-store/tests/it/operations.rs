//! Operations at the storage layer: batch appends, the SIEM forwarding cursor and its lease,
//! erasure, catalogue import and master-key rotation — each all-or-nothing.

use cortex_domain::audit::{AuditChainKey, ChainHasher, NewAuditEvent};
use cortex_domain::{KeyLimits, ProviderKind, Role, RoutingStrategy, Scope};
use cortex_store::catalog::{
    CatalogImport, ModelImport, ModelRow, ProviderImport, ProviderRow, SecretUpdate,
};
use cortex_store::keys::NewApiKey;
use cortex_store::secrets::{ChainRotation, RotateError};
use cortex_store::usage::{UsageFilter, UsageRecord};
use cortex_store::users::{NewUser, ERASED};
use cortex_store::{Store, StoreError};
use sqlx::Executor;

use crate::audit::FakeCheckpointKeys;
use crate::{audit_event, chain_key, on_both_backends};

async fn batch_appends_continue_one_chain(store: Store) {
    store.append_audit(&audit_event("first"), 1).await.unwrap();
    let events: Vec<NewAuditEvent> = (0..12_000)
        .map(|i| audit_event(&format!("bulk.{i}")).with_details(&serde_json::json!({ "i": i })))
        .collect();
    assert_eq!(store.append_audit_batch(&events, 2).await.unwrap(), 12_001);
    store.append_audit(&audit_event("after"), 3).await.unwrap();
    let report = store.verify_audit(|_| {}).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.events_checked, 12_002);
    assert_eq!(store.audit_head().await.unwrap().0, 12_002);
}

async fn forwarding_cursor_moves_forward_for_the_lease_holder_only(store: Store) {
    let sink = "syslog+tcp://127.0.0.1:514";
    assert_eq!(store.forward_cursor(sink).await.unwrap(), 0);
    assert_eq!(
        store
            .claim_forward_lease(sink, "a", 1_000, 30_000)
            .await
            .unwrap(),
        Some(0)
    );
    // Another instance cannot take a live lease, nor move the cursor.
    assert_eq!(
        store
            .claim_forward_lease(sink, "b", 2_000, 30_000)
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .advance_forward_cursor(sink, "b", 5, 2_000)
        .await
        .unwrap());
    assert!(store
        .advance_forward_cursor(sink, "a", 5, 2_000)
        .await
        .unwrap());
    // Never backwards.
    assert!(!store
        .advance_forward_cursor(sink, "a", 3, 2_100)
        .await
        .unwrap());
    assert_eq!(store.forward_cursor(sink).await.unwrap(), 5);
    // The holder renews; once it lapses another instance takes over where it left off.
    assert_eq!(
        store
            .claim_forward_lease(sink, "a", 3_000, 30_000)
            .await
            .unwrap(),
        Some(5)
    );
    assert_eq!(
        store
            .claim_forward_lease(sink, "b", 40_000, 30_000)
            .await
            .unwrap(),
        Some(5)
    );
    assert!(!store
        .advance_forward_cursor(sink, "a", 9, 40_001)
        .await
        .unwrap());
    store.release_forward_lease(sink, "b").await.unwrap();
    assert_eq!(
        store
            .claim_forward_lease(sink, "a", 40_002, 30_000)
            .await
            .unwrap(),
        Some(5)
    );
    // Each sink has its own cursor.
    assert_eq!(
        store
            .forward_cursor("https://other.example/")
            .await
            .unwrap(),
        0
    );
}

fn usage(key: &str, user: &str) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{key}"),
        key_id: key.into(),
        user_id: user.into(),
        model: "llama".into(),
        provider: "p".into(),
        endpoint: "chat".into(),
        prompt_tokens: 1,
        completion_tokens: 1,
        cost_usd: 0.0,
        latency_ms: 1,
        status: 200,
        client_ip: "203.0.113.9".into(),
        created_at: 5_000,
        attempts: 1,
        org_id: "default".into(),
        team_id: None,
        ttft_ms: None,
        cached: false,
    }
}

async fn erasure_removes_the_person_and_keeps_the_audit_chain(store: Store) {
    for (id, name) in [("u-erase", "carol.personal"), ("u-keep", "dave")] {
        store
            .create_user(
                &NewUser {
                    id,
                    username: name,
                    password_hash: "$argon2id$x",
                    role: Role::Developer,
                    must_change_password: false,
                    org_id: "default",
                    budget: None,
                },
                &audit_event("user.create").with_details(&serde_json::json!({ "username": name })),
                1_000,
            )
            .await
            .unwrap();
    }
    store
        .create_api_key(
            &NewApiKey {
                id: "k-erase".into(),
                public_id: "pub1".into(),
                secret_hash: "h".into(),
                name: "carol's laptop".into(),
                owner_user_id: "u-erase".into(),
                scopes: vec![Scope::Chat],
                models: None,
                limits: KeyLimits::default(),
                expires_at: None,
                org_id: "default".into(),
                team_id: None,
                allowed_ips: None,
            },
            &audit_event("key.create"),
            1_100,
        )
        .await
        .unwrap();
    store
        .insert_usage(&[usage("k-erase", "u-erase"), usage("k-keep", "u-keep")])
        .await
        .unwrap();
    let head_before = store.audit_head().await.unwrap().0;

    let report = store
        .erase_user(
            &cortex_store::Tenant::All,
            "u-erase",
            &audit_event("user.erase"),
            2_000,
        )
        .await
        .unwrap();
    assert!(report.user_deleted);
    assert_eq!(report.keys_anonymised, 1);
    assert_eq!(report.usage_rows_anonymised, 1);

    assert!(store
        .get_user(&cortex_store::Tenant::All, "u-erase")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_user_by_username(&cortex_store::Tenant::All, "carol.personal")
        .await
        .unwrap()
        .is_none());
    let key = store
        .get_api_key(&cortex_store::Tenant::All, "k-erase")
        .await
        .unwrap()
        .unwrap();
    assert!(key.revoked_at.is_some());
    assert_eq!(key.name, ERASED);
    assert_eq!(key.owner_user_id, ERASED);
    let rows = store
        .list_usage(&cortex_store::Tenant::All, &UsageFilter::default(), 10)
        .await
        .unwrap();
    let erased: Vec<_> = rows.iter().filter(|r| r.key_id == "k-erase").collect();
    assert_eq!(erased[0].user_id, ERASED);
    assert_eq!(erased[0].client_ip, "");
    let kept: Vec<_> = rows.iter().filter(|r| r.key_id == "k-keep").collect();
    assert_eq!(kept[0].user_id, "u-keep");
    assert_eq!(kept[0].client_ip, "203.0.113.9");
    assert_eq!(
        store
            .get_user(&cortex_store::Tenant::All, "u-keep")
            .await
            .unwrap()
            .unwrap()
            .username,
        "dave"
    );

    // The audit log was appended to, not rewritten: it still verifies.
    assert_eq!(store.audit_head().await.unwrap().0, head_before + 1);
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
    // Nothing left to erase: NotFound, and no audit event for it.
    assert!(matches!(
        store
            .erase_user(
                &cortex_store::Tenant::All,
                "u-erase",
                &audit_event("user.erase"),
                3_000
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.audit_head().await.unwrap().0, head_before + 1);
}

fn provider(id: &str, name: &str, create: bool) -> ProviderImport {
    ProviderImport {
        id: id.into(),
        name: name.into(),
        base_url: format!("http://127.0.0.1:9/{name}/v1"),
        api_key: SecretUpdate::Keep,
        kind: ProviderKind::OpenAi,
        api_version: None,
        responses_api: false,
        weight: 1,
        health_check_path: None,
        create,
    }
}

async fn a_failing_import_changes_nothing(store: Store) {
    store
        .create_provider(
            &ProviderRow {
                id: "p-existing".into(),
                name: "existing".into(),
                base_url: "http://127.0.0.1:9/v1".into(),
                api_key_sealed: Some(vec![1, 2, 3]),
                source: "api".into(),
                kind: ProviderKind::OpenAi,
                api_version: None,
                responses_api: false,
                weight: 1,
                health_check_path: None,
                created_at: 1,
                updated_at: 1,
            },
            None,
            1,
        )
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap().0;
    let version = store.catalog_version().await.unwrap();
    // The second provider's name is taken: the first must not be created either.
    let plan = CatalogImport {
        providers: vec![
            provider("p-new", "fresh", true),
            provider("p-dup", "existing", true),
        ],
        models: vec![],
    };
    let failed = store
        .import_catalog(&plan, &audit_event("config.import"), 2)
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
    assert!(store.get_provider("fresh").await.unwrap().is_none());
    assert_eq!(store.audit_head().await.unwrap().0, head);
    assert_eq!(store.catalog_version().await.unwrap(), version);

    // A good plan applies whole; a kept secret stays.
    let plan = CatalogImport {
        providers: vec![
            provider("p-new", "fresh", true),
            provider("p-existing", "existing", false),
        ],
        models: vec![ModelImport {
            row: ModelRow {
                id: "m1".into(),
                name: "llama".into(),
                upstream_name: Some("meta/llama".into()),
                input_price_per_mtok: 1.5,
                output_price_per_mtok: 2.5,
                source: "import".into(),
                provider_ids: vec!["p-new".into(), "p-existing".into()],
                strategy: RoutingStrategy::RoundRobin,
                max_output_tokens: None,
                created_at: 0,
                updated_at: 0,
            },
            create: true,
        }],
    };
    store
        .import_catalog(&plan, &audit_event("config.import"), 3)
        .await
        .unwrap();
    let existing = store.get_provider("existing").await.unwrap().unwrap();
    assert_eq!(existing.base_url, "http://127.0.0.1:9/existing/v1");
    assert_eq!(existing.api_key_sealed, Some(vec![1, 2, 3]));
    let model = store.get_model("llama").await.unwrap().unwrap();
    assert_eq!(
        model.provider_ids,
        vec!["p-new".to_owned(), "p-existing".to_owned()]
    );
    assert_eq!(store.audit_head().await.unwrap().0, head + 1);
}

async fn rotation_is_all_or_nothing(store: Store) {
    for (id, key) in [("p1", vec![1u8]), ("p2", vec![2u8])] {
        store
            .create_provider(
                &ProviderRow {
                    id: id.into(),
                    name: id.into(),
                    base_url: "http://127.0.0.1:9/v1".into(),
                    api_key_sealed: Some(key),
                    source: "api".into(),
                    kind: ProviderKind::OpenAi,
                    api_version: None,
                    responses_api: false,
                    weight: 1,
                    health_check_path: None,
                    created_at: 1,
                    updated_at: 1,
                },
                None,
                1,
            )
            .await
            .unwrap();
    }
    store.append_audit(&audit_event("x"), 1).await.unwrap();
    let (_, first_hash) = store.audit_head().await.unwrap();
    store
        .append_checkpoint(1, &first_hash, chain_key().id(), 1, |_| "old:1".into())
        .await
        .unwrap();
    let head = store.audit_head().await.unwrap().0;
    let old_chain = ChainHasher::Keyed(chain_key());
    let new_key = AuditChainKey::from_bytes(&[8; 32]);
    let accepting = FakeCheckpointKeys { old_ok: true };
    let rotation = |keys| ChainRotation {
        old: &old_chain,
        new: &new_key,
        checkpoints: keys,
    };
    // p2's value cannot be re-wrapped: nothing changes, p1 included.
    let failed = store
        .rotate_sealed_secrets(
            |sealed, _| (sealed != [2u8]).then(|| vec![sealed[0] + 10]),
            &rotation(&accepting),
            &[("master_key_fingerprint", "new")],
            &audit_event("secrets.rotate_master_key"),
            2,
        )
        .await;
    assert!(
        matches!(failed, Err(RotateError::Unreadable(ref what)) if what.contains("p2")),
        "{failed:?}"
    );
    assert_eq!(
        store
            .get_provider("p1")
            .await
            .unwrap()
            .unwrap()
            .api_key_sealed,
        Some(vec![1])
    );
    assert_eq!(store.checkpoints().await.unwrap()[0].signature, "old:1");
    assert_eq!(
        store.get_setting("master_key_fingerprint").await.unwrap(),
        None
    );
    assert_eq!(store.audit_head().await.unwrap().0, head);

    // A checkpoint that does not verify under the old key aborts too.
    let failed = store
        .rotate_sealed_secrets(
            |sealed, _| Some(vec![sealed[0] + 10]),
            &rotation(&FakeCheckpointKeys { old_ok: false }),
            &[],
            &audit_event("secrets.rotate_master_key"),
            2,
        )
        .await;
    assert!(
        matches!(failed, Err(RotateError::Unreadable(ref what)) if what.contains("checkpoint"))
    );
    assert_eq!(
        store
            .get_provider("p1")
            .await
            .unwrap()
            .unwrap()
            .api_key_sealed,
        Some(vec![1])
    );

    // So does a chain that does not verify under the old key (an event changed in place).
    store
        .pool()
        .execute("UPDATE audit_events SET details = '{\"x\":1}' WHERE seq = 1")
        .await
        .unwrap();
    let failed = store
        .rotate_sealed_secrets(
            |sealed, id| Some([sealed, id].concat()),
            &rotation(&accepting),
            &[],
            &audit_event("secrets.rotate_master_key"),
            2,
        )
        .await;
    assert!(
        matches!(failed, Err(RotateError::AuditChainBroken(1))),
        "{failed:?}"
    );
    assert_eq!(store.audit_hash_at(1).await.unwrap().unwrap(), first_hash);
    store
        .pool()
        .execute("UPDATE audit_events SET details = '{}' WHERE seq = 1")
        .await
        .unwrap();

    let counts = store
        .rotate_sealed_secrets(
            |sealed, id| Some([sealed, id].concat()),
            &rotation(&accepting),
            &[("master_key_fingerprint", "new")],
            &audit_event("secrets.rotate_master_key"),
            3,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            counts.provider_keys,
            counts.totp_secrets,
            counts.audit_events,
            counts.checkpoints
        ),
        (2, 0, 1, 1)
    );
    assert_eq!(
        store
            .get_provider("p2")
            .await
            .unwrap()
            .unwrap()
            .api_key_sealed,
        Some(b"\x02p2".to_vec())
    );
    assert_eq!(
        store
            .get_setting("master_key_fingerprint")
            .await
            .unwrap()
            .as_deref(),
        Some("new")
    );
    // The chain is under the new key now, and ends in a checkpoint covering the rotation.
    assert_eq!(store.audit_head().await.unwrap().0, head + 1);
    let rotated = store.clone().with_audit_chain_key(new_key.clone());
    assert!(rotated.verify_audit(|_| {}).await.unwrap().ok());
    assert_eq!(
        store.verify_audit(|_| {}).await.unwrap().first_bad_seq,
        Some(1)
    );
    assert!(store.append_audit(&audit_event("stale"), 4).await.is_err());
    let checkpoints = store.checkpoints().await.unwrap();
    assert_eq!(checkpoints.len(), 2);
    assert!(checkpoints[0].signature.starts_with("new:1:"));
    assert_eq!((checkpoints[1].seq, checkpoints[1].prev_seq), (head + 1, 1));
    assert_eq!(
        checkpoints[1].hash,
        rotated.audit_hash_at(head + 1).await.unwrap().unwrap()
    );
}

on_both_backends!(
    batch_appends_continue_one_chain,
    forwarding_cursor_moves_forward_for_the_lease_holder_only,
    erasure_removes_the_person_and_keeps_the_audit_chain,
    a_failing_import_changes_nothing,
    rotation_is_all_or_nothing,
);
