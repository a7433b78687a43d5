//! Gateway policies (SPEC §21): scoped by organization like every tenant query, one per scope
//! and target, every change in the audit log and visible to the data plane through the
//! catalogue's version; on both backends.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::policy::PolicyScope;
use cortex_domain::Tenant;
use cortex_store::organizations::NewOrg;
use cortex_store::policies::NewPolicy;
use cortex_store::{Store, StoreError};

use crate::on_both_backends;

fn event(action: &str, org: &str) -> NewAuditEvent {
    NewAuditEvent::new("tester", action, "target").with_org(org)
}

async fn org(store: &Store, id: &str) {
    store
        .create_org(
            &NewOrg {
                id: id.into(),
                name: format!("{id} inc"),
                budget: None,
                tokens_per_minute: None,
                allowed_models: None,
            },
            &event("org.create", id),
            1_000,
        )
        .await
        .unwrap();
}

fn policy(id: &str, org_id: &str, scope: PolicyScope, target: &str) -> NewPolicy {
    NewPolicy {
        id: id.into(),
        org_id: org_id.into(),
        scope,
        target: target.into(),
        spec: r#"{"cache":{"ttl_seconds":60}}"#.into(),
    }
}

async fn policies_are_scoped_versioned_and_audited(store: Store) {
    org(&store, "acme").await;
    org(&store, "globex").await;
    let acme = Tenant::Org("acme".into());
    let globex = Tenant::Org("globex".into());
    let v0 = store.catalog_version().await.unwrap();

    let created = store
        .create_policy(
            &acme,
            &policy("p1", "acme", PolicyScope::Model, "llama"),
            &event("policy.create", "acme"),
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.scope, PolicyScope::Model);
    assert_eq!((created.created_at, created.updated_at), (2_000, 2_000));
    assert!(store.catalog_version().await.unwrap() > v0);

    // One per scope and target in an organization; the same target in another is fine.
    let twice = store
        .create_policy(
            &acme,
            &policy("p2", "acme", PolicyScope::Model, "llama"),
            &event("policy.create", "acme"),
            2_000,
        )
        .await;
    assert!(matches!(twice, Err(StoreError::Conflict)));
    store
        .create_policy(
            &globex,
            &policy("g1", "globex", PolicyScope::Model, "llama"),
            &event("policy.create", "globex"),
            2_000,
        )
        .await
        .unwrap();

    // A caller of one organization cannot create in, read, change or delete another's.
    let foreign = store
        .create_policy(
            &globex,
            &policy("p3", "acme", PolicyScope::Organization, "acme"),
            &event("policy.create", "acme"),
            2_000,
        )
        .await;
    assert!(matches!(foreign, Err(StoreError::NotFound)));
    let missing_org = store
        .create_policy(
            &Tenant::All,
            &policy("p4", "nowhere", PolicyScope::Organization, "nowhere"),
            &event("policy.create", "nowhere"),
            2_000,
        )
        .await;
    assert!(matches!(missing_org, Err(StoreError::NotFound)));
    assert_eq!(store.get_policy(&globex, "p1").await.unwrap(), None);
    let seen: Vec<String> = store
        .list_policies(&globex)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(seen, ["g1"]);
    assert_eq!(store.list_policies(&Tenant::All).await.unwrap().len(), 2);
    assert!(matches!(
        store
            .update_policy(&globex, "p1", "{}", &event("policy.update", "acme"), 3_000)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .delete_policy(&globex, "p1", &event("policy.delete", "acme"), 3_000)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get_policy(&acme, "p1").await.unwrap(), Some(created));

    // An update replaces the spec and moves the version and the catalogue.
    let v1 = store.catalog_version().await.unwrap();
    let updated = store
        .update_policy(&acme, "p1", "{}", &event("policy.update", "acme"), 4_000)
        .await
        .unwrap();
    assert_eq!((updated.version, updated.spec.as_str()), (2, "{}"));
    assert_eq!((updated.created_at, updated.updated_at), (2_000, 4_000));
    assert!(store.catalog_version().await.unwrap() > v1);

    // The data plane sees every organization's.
    assert_eq!(store.list_all_for_gateway().await.unwrap().len(), 2);

    let v2 = store.catalog_version().await.unwrap();
    store
        .delete_policy(&acme, "p1", &event("policy.delete", "acme"), 5_000)
        .await
        .unwrap();
    assert!(store.catalog_version().await.unwrap() > v2);
    assert_eq!(store.get_policy(&Tenant::All, "p1").await.unwrap(), None);
    assert_eq!(store.list_all_for_gateway().await.unwrap().len(), 1);

    // Deleting the organization takes its policies, and the data plane hears of it.
    let v3 = store.catalog_version().await.unwrap();
    store
        .delete_org(
            &Tenant::All,
            "globex",
            &event("org.delete", "globex"),
            6_000,
        )
        .await
        .unwrap();
    assert!(store.catalog_version().await.unwrap() > v3);
    assert!(store.list_all_for_gateway().await.unwrap().is_empty());

    let report = store.verify_audit(|_| {}).await.unwrap();
    assert_eq!(report.first_bad_seq, None);
}

async fn guardrail_events_are_read_per_organization_newest_first(store: Store) {
    org(&store, "acme").await;
    org(&store, "globex").await;
    let mut events = Vec::new();
    for (n, (org_id, action)) in [
        ("acme", "guardrail.block"),
        ("globex", "guardrail.redact"),
        ("acme", "key.create"),
        ("acme", "guardrail.log"),
        ("acme", "guardrail.redact"),
    ]
    .into_iter()
    .enumerate()
    {
        events.push(NewAuditEvent::new(format!("key-{n}"), action, "policy").with_org(org_id));
    }
    store.append_audit_batch(&events, 9_000).await.unwrap();
    let acme: Vec<(String, String)> = store
        .guardrail_events(&Tenant::Org("acme".into()), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action))
        .collect();
    assert_eq!(
        acme,
        [
            ("key-4".to_owned(), "guardrail.redact".to_owned()),
            ("key-3".to_owned(), "guardrail.log".to_owned()),
            ("key-0".to_owned(), "guardrail.block".to_owned()),
        ]
    );
    let limited = store
        .guardrail_events(&Tenant::Org("acme".into()), 1)
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        store
            .guardrail_events(&Tenant::All, 50)
            .await
            .unwrap()
            .len(),
        4
    );
}

on_both_backends!(
    policies_are_scoped_versioned_and_audited,
    guardrail_events_are_read_per_organization_newest_first,
);
