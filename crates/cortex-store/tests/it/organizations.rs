//! Organizations and teams, and the scoping every tenant query applies (SPEC §18): a caller of
//! one organization finds nothing of another's, on both backends.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Budget, BudgetPeriod, KeyLimits, Role, RoutingStrategy, Scope, Tenant};
use cortex_store::audit::AuditFilter;
use cortex_store::catalog::ModelRow;
use cortex_store::keys::NewApiKey;
use cortex_store::organizations::{NewOrg, NewTeam, OrgChange, TeamChange};
use cortex_store::usage::{UsageFilter, UsageGrouping, UsageRecord};
use cortex_store::users::{NewUser, UserChange};
use cortex_store::{Store, StoreError};

use crate::on_both_backends;

fn event(action: &str, org: &str) -> NewAuditEvent {
    NewAuditEvent::new("tester", action, "target").with_org(org)
}

fn acme() -> Tenant {
    Tenant::Org("acme".into())
}

fn globex() -> Tenant {
    Tenant::Org("globex".into())
}

async fn org(store: &Store, id: &str, allowed_models: Option<Vec<String>>) {
    store
        .create_org(
            &NewOrg {
                id: id.into(),
                name: format!("{id} inc"),
                budget: None,
                tokens_per_minute: None,
                allowed_models,
            },
            &event("org.create", id),
            1_000,
        )
        .await
        .unwrap();
}

async fn user(store: &Store, id: &str, org_id: &str) {
    store
        .create_user(
            &NewUser {
                id,
                username: id,
                password_hash: "$argon2id$x",
                role: Role::Developer,
                must_change_password: false,
                org_id,
                budget: None,
            },
            &event("user.create", org_id),
            1_000,
        )
        .await
        .unwrap();
}

fn new_key(id: &str, owner: &str, org_id: &str, team_id: Option<&str>) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        public_id: format!("pub{id:0>9}"),
        secret_hash: "ab".repeat(32),
        name: format!("key {id}"),
        owner_user_id: owner.into(),
        scopes: vec![Scope::Chat],
        models: None,
        limits: KeyLimits::default(),
        expires_at: None,
        org_id: org_id.into(),
        team_id: team_id.map(str::to_owned),
        allowed_ips: None,
    }
}

async fn key(store: &Store, id: &str, owner: &str, org_id: &str) {
    store
        .create_api_key(
            &new_key(id, owner, org_id, None),
            &event("key.create", org_id),
            1_000,
        )
        .await
        .unwrap();
}

fn usage(key: &str, user: &str, org_id: &str, team_id: Option<&str>) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{key}"),
        key_id: key.into(),
        user_id: user.into(),
        model: "llama".into(),
        provider: "p".into(),
        endpoint: "chat".into(),
        prompt_tokens: 10,
        completion_tokens: 20,
        cost_usd: 0.5,
        latency_ms: 5,
        status: 200,
        client_ip: "127.0.0.1".into(),
        created_at: 2_000,
        attempts: 1,
        org_id: org_id.into(),
        team_id: team_id.map(str::to_owned),
        ttft_ms: None,
        cached: false,
    }
}

/// Two organizations with a user, a key, a usage row and audit events each.
async fn two_orgs(store: &Store) {
    org(store, "acme", None).await;
    org(store, "globex", None).await;
    user(store, "ann", "acme").await;
    user(store, "gus", "globex").await;
    key(store, "ka", "ann", "acme").await;
    key(store, "kg", "gus", "globex").await;
    store
        .insert_usage(&[
            usage("ka", "ann", "acme", None),
            usage("kg", "gus", "globex", None),
        ])
        .await
        .unwrap();
}

async fn every_tenant_query_stays_in_its_organization(store: Store) {
    two_orgs(&store).await;

    // Users.
    let names = |users: Vec<cortex_store::users::UserRow>| {
        users.into_iter().map(|u| u.username).collect::<Vec<_>>()
    };
    assert_eq!(names(store.list_users(&acme()).await.unwrap()), ["ann"]);
    assert_eq!(names(store.list_users(&globex()).await.unwrap()), ["gus"]);
    assert_eq!(
        names(store.list_users(&Tenant::All).await.unwrap()),
        ["ann", "gus"]
    );
    assert!(store.get_user(&acme(), "gus").await.unwrap().is_none());
    assert!(store
        .get_user_by_username(&acme(), "gus")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .get_user(&Tenant::All, "gus")
            .await
            .unwrap()
            .unwrap()
            .org_id,
        "globex"
    );
    let disable = UserChange {
        disabled: Some(true),
        ..UserChange::default()
    };
    assert!(matches!(
        store
            .update_user(
                &acme(),
                "gus",
                &disable,
                &event("user.update", "acme"),
                3_000
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .delete_user(&acme(), "gus", &event("user.delete", "acme"), 3_000)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .erase_user(&acme(), "gus", &event("user.erase", "acme"), 3_000)
            .await,
        Err(StoreError::NotFound)
    ));
    let gus = store.get_user(&Tenant::All, "gus").await.unwrap().unwrap();
    assert!(!gus.disabled, "the refused changes changed nothing");

    // Keys.
    let key_ids = |keys: Vec<cortex_store::keys::ApiKeyRow>| {
        keys.into_iter().map(|k| k.id).collect::<Vec<_>>()
    };
    assert_eq!(
        key_ids(store.list_api_keys(&acme(), None).await.unwrap()),
        ["ka"]
    );
    assert!(key_ids(store.list_api_keys(&acme(), Some("gus")).await.unwrap()).is_empty());
    assert_eq!(
        store.list_api_keys(&Tenant::All, None).await.unwrap().len(),
        2
    );
    assert!(store.get_api_key(&acme(), "kg").await.unwrap().is_none());
    assert!(store
        .get_api_key_by_public_id(&acme(), "pub0000000kg")
        .await
        .unwrap()
        .is_none());
    assert!(!store
        .revoke_api_key(&acme(), "kg", &event("key.revoke", "acme"), 3_000)
        .await
        .unwrap());
    let kg = store.get_api_key(&globex(), "kg").await.unwrap().unwrap();
    assert!(kg.revoked_at.is_none());
    assert_eq!(kg.org_id, "globex");

    // Usage.
    let rows = store
        .list_usage(&acme(), &UsageFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key_id, "ka");
    // Asking for the other organization from inside one finds nothing.
    let other = UsageFilter {
        org_id: Some("globex".into()),
        ..UsageFilter::default()
    };
    assert!(store
        .list_usage(&acme(), &other, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_usage(&Tenant::All, &other, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    let by_org = store
        .usage_summary(&Tenant::All, &UsageFilter::default(), UsageGrouping::Org)
        .await
        .unwrap();
    assert_eq!(
        by_org.iter().map(|b| b.group.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"]
    );
    // What an organization's or a team's budget counter is rebuilt from.
    use cortex_store::usage::SpendOf;
    assert_eq!(
        store.spend_since(SpendOf::Org("acme"), 0).await.unwrap(),
        0.5
    );
    assert_eq!(
        store
            .spend_since(SpendOf::Org("acme"), 2_001)
            .await
            .unwrap(),
        0.0
    );
    assert_eq!(
        store.spend_since(SpendOf::Team("nobody"), 0).await.unwrap(),
        0.0
    );
    let summary = store
        .usage_summary(&globex(), &UsageFilter::default(), UsageGrouping::Key)
        .await
        .unwrap();
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].group, "kg");

    // Audit: one chain, listed per organization.
    let filter = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    let acme_events = store.list_audit(&acme(), &filter).await.unwrap();
    assert!(!acme_events.is_empty());
    assert!(acme_events.iter().all(|e| e.org_id == "acme"));
    let all_events = store.list_audit(&Tenant::All, &filter).await.unwrap();
    assert!(all_events.iter().any(|e| e.org_id == "globex"));
    assert!(store.verify_audit(|_| {}).await.unwrap().ok());
    let exported = store.audit_page(0, 1_000).await.unwrap();
    assert_eq!(exported.len(), all_events.len());

    // Organizations.
    let orgs = store.list_orgs(&acme()).await.unwrap();
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0].id, "acme");
    assert!(store.get_org(&acme(), "globex").await.unwrap().is_none());
    assert_eq!(
        store.list_orgs(&Tenant::All).await.unwrap().len(),
        3,
        "default too"
    );
    let rename = OrgChange {
        name: Some("taken over".into()),
        ..OrgChange::default()
    };
    assert!(matches!(
        store
            .update_org(
                &acme(),
                "globex",
                &rename,
                &event("org.update", "acme"),
                3_000
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .delete_org(&acme(), "globex", &event("org.delete", "acme"), 3_000)
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn rows_from_before_organizations_belong_to_default(store: Store) {
    // Rows written without naming an organization (the columns' defaults) are the default
    // organization's, as every row from before the migration is.
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, must_change_password, totp_enabled, disabled, created_at, updated_at) \
         VALUES ('old', 'old', 'h', 'viewer', FALSE, FALSE, FALSE, 1, 1)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let old = store.get_user(&Tenant::All, "old").await.unwrap().unwrap();
    assert_eq!(old.org_id, "default");
    assert_eq!(old.budget, None);
    assert!(store
        .get_user(&Tenant::Org("default".into()), "old")
        .await
        .unwrap()
        .is_some());
    store
        .append_audit(&NewAuditEvent::new("tester", "x", "y"), 1)
        .await
        .unwrap();
    let events = store
        .list_audit(
            &Tenant::Org("default".into()),
            &AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(events[0].org_id, "default");
    let default = store
        .get_org(&Tenant::All, "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(default.name, "default");
    assert!(
        default.created_at > 1_600_000_000_000,
        "stamped at migration"
    );
}

async fn organizations_are_deleted_only_when_empty_and_never_the_default(store: Store) {
    two_orgs(&store).await;
    let team = store
        .create_team(
            &acme(),
            &NewTeam {
                id: "t1".into(),
                org_id: "acme".into(),
                name: "research".into(),
                budget: None,
                tokens_per_minute: None,
            },
            &event("team.create", "acme"),
            1_500,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .delete_org(
                &Tenant::All,
                "default",
                &event("org.delete", "default"),
                2_000
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .delete_org(&Tenant::All, "acme", &event("org.delete", "acme"), 2_000)
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.org_members("acme").await.unwrap(), (1, 1));
    // The user goes (their key is revoked with them): now it is empty.
    store
        .delete_user(&acme(), "ann", &event("user.delete", "acme"), 2_100)
        .await
        .unwrap();
    assert_eq!(store.org_members("acme").await.unwrap(), (0, 0));
    store
        .delete_org(&Tenant::All, "acme", &event("org.delete", "acme"), 2_200)
        .await
        .unwrap();
    assert!(store.get_org(&Tenant::All, "acme").await.unwrap().is_none());
    assert!(
        store
            .get_team(&Tenant::All, &team.id)
            .await
            .unwrap()
            .is_none(),
        "its teams went with it"
    );
    // Usage and audit rows are history: they stay.
    assert_eq!(
        store
            .list_usage(&acme(), &UsageFilter::default(), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    // A user cannot be created in an organization that does not exist.
    let orphan = store
        .create_user(
            &NewUser {
                id: "late",
                username: "late",
                password_hash: "h",
                role: Role::Viewer,
                must_change_password: true,
                org_id: "acme",
                budget: None,
            },
            &event("user.create", "acme"),
            2_300,
        )
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound)));
    // Names are unique.
    let taken = store
        .create_org(
            &NewOrg {
                id: "other".into(),
                name: "globex inc".into(),
                budget: None,
                tokens_per_minute: None,
                allowed_models: None,
            },
            &event("org.create", "other"),
            2_400,
        )
        .await;
    assert!(matches!(taken, Err(StoreError::Conflict)));
}

async fn teams_hold_members_of_their_organization_and_charge_their_keys(store: Store) {
    two_orgs(&store).await;
    user(&store, "amy", "acme").await;
    let new_team = |id: &str, org_id: &str| NewTeam {
        id: id.into(),
        org_id: org_id.into(),
        name: "research".into(),
        budget: Some(Budget {
            usd: 25.0,
            period: BudgetPeriod::Monthly,
        }),
        tokens_per_minute: Some(10_000),
    };
    // A caller of acme cannot create a team in globex.
    assert!(matches!(
        store
            .create_team(
                &acme(),
                &new_team("tx", "globex"),
                &event("team.create", "acme"),
                1_500
            )
            .await,
        Err(StoreError::NotFound)
    ));
    let team = store
        .create_team(
            &acme(),
            &new_team("t1", "acme"),
            &event("team.create", "acme"),
            1_500,
        )
        .await
        .unwrap();
    assert_eq!(team.budget.unwrap().period, BudgetPeriod::Monthly);
    assert_eq!(team.tokens_per_minute, Some(10_000));
    // The same name in another organization is fine; twice in one is not.
    store
        .create_team(
            &globex(),
            &new_team("t2", "globex"),
            &event("team.create", "globex"),
            1_500,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_team(
                &acme(),
                &new_team("t3", "acme"),
                &event("team.create", "acme"),
                1_500
            )
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.list_teams(&acme()).await.unwrap().len(), 1);
    assert_eq!(store.list_teams(&Tenant::All).await.unwrap().len(), 2);
    assert!(store.get_team(&globex(), "t1").await.unwrap().is_none());

    // Members come from the team's organization only; a refused set changes nothing.
    let set = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert!(matches!(
        store
            .set_team_members(
                &acme(),
                "t1",
                &set(&["ann", "gus"]),
                &event("team.members", "acme"),
                1_600
            )
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(store
        .get_team(&acme(), "t1")
        .await
        .unwrap()
        .unwrap()
        .members
        .is_empty());
    assert!(matches!(
        store
            .set_team_members(
                &globex(),
                "t1",
                &set(&["gus"]),
                &event("team.members", "globex"),
                1_600
            )
            .await,
        Err(StoreError::NotFound)
    ));
    let team = store
        .set_team_members(
            &acme(),
            "t1",
            &set(&["ann", "amy"]),
            &event("team.members", "acme"),
            1_600,
        )
        .await
        .unwrap();
    assert_eq!(team.members, ["amy", "ann"]);
    assert_eq!(store.teams_of_user(&acme(), "ann").await.unwrap().len(), 1);

    // A key is charged to a team only when its owner is a member of it in the key's
    // organization.
    let not_member = store
        .create_api_key(
            &new_key("kx", "gus", "globex", Some("t1")),
            &event("key.create", "globex"),
            1_700,
        )
        .await;
    assert!(matches!(not_member, Err(StoreError::NotFound)));
    let charged = store
        .create_api_key(
            &new_key("kt", "ann", "acme", Some("t1")),
            &event("key.create", "acme"),
            1_700,
        )
        .await
        .unwrap();
    assert_eq!(charged.team_id.as_deref(), Some("t1"));

    // Removing ann from the team stops her key being charged to it, with a new key version
    // (so every cache sees it).
    store
        .set_team_members(
            &acme(),
            "t1",
            &set(&["amy"]),
            &event("team.members", "acme"),
            1_800,
        )
        .await
        .unwrap();
    let changed = store.api_keys_changed_after(charged.version).await.unwrap();
    let kt = changed.iter().find(|k| k.id == "kt").unwrap();
    assert_eq!(kt.team_id, None);

    // Renaming and budgets.
    let renamed = store
        .update_team(
            &acme(),
            "t1",
            &TeamChange {
                name: Some("applied".into()),
                budget: Some(None),
                tokens_per_minute: None,
            },
            &event("team.update", "acme"),
            1_900,
        )
        .await
        .unwrap();
    assert_eq!(renamed.name, "applied");
    assert_eq!(renamed.budget, None);
    assert_eq!(renamed.tokens_per_minute, Some(10_000));
    assert!(matches!(
        store
            .update_team(
                &globex(),
                "t1",
                &TeamChange::default(),
                &event("team.update", "globex"),
                1_900
            )
            .await,
        Err(StoreError::NotFound)
    ));

    // Deleting the team clears it from its keys.
    store
        .set_team_members(
            &acme(),
            "t1",
            &set(&["ann"]),
            &event("team.members", "acme"),
            2_000,
        )
        .await
        .unwrap();
    let again = store
        .create_api_key(
            &new_key("kt2", "ann", "acme", Some("t1")),
            &event("key.create", "acme"),
            2_000,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .delete_team(&globex(), "t1", &event("team.delete", "globex"), 2_100)
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .delete_team(&acme(), "t1", &event("team.delete", "acme"), 2_100)
        .await
        .unwrap();
    let kt2 = store.get_api_key(&acme(), "kt2").await.unwrap().unwrap();
    assert_eq!(kt2.team_id, None);
    assert!(kt2.version > again.version);
}

async fn an_organizations_model_allow_list_reaches_its_keys_and_its_catalogue(store: Store) {
    two_orgs(&store).await;
    for (id, name) in [("m1", "llama"), ("m2", "mistral"), ("m3", "qwen")] {
        store
            .create_model(
                &ModelRow {
                    id: id.into(),
                    name: name.into(),
                    upstream_name: None,
                    input_price_per_mtok: 0.0,
                    output_price_per_mtok: 0.0,
                    source: "api".into(),
                    provider_ids: vec![],
                    strategy: RoutingStrategy::RoundRobin,
                    max_output_tokens: None,
                    created_at: 0,
                    updated_at: 0,
                },
                None,
                10,
            )
            .await
            .unwrap();
    }
    let names = |models: Vec<ModelRow>| models.into_iter().map(|m| m.name).collect::<Vec<_>>();
    assert_eq!(names(store.list_models(&acme()).await.unwrap()).len(), 3);
    let before = store.get_api_key(&acme(), "ka").await.unwrap().unwrap();
    assert_eq!(before.org_models, None);
    let newest = store
        .list_api_keys(&Tenant::All, None)
        .await
        .unwrap()
        .iter()
        .map(|k| k.version)
        .max()
        .unwrap();

    let restrict = OrgChange {
        allowed_models: Some(Some(vec!["llama".into(), "qwen".into()])),
        budget: Some(Some(Budget {
            usd: 100.0,
            period: BudgetPeriod::Daily,
        })),
        ..OrgChange::default()
    };
    let updated = store
        .update_org(
            &Tenant::All,
            "acme",
            &restrict,
            &event("org.update", "acme"),
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(updated.budget.unwrap().usd, 100.0);
    assert_eq!(
        names(store.list_models(&acme()).await.unwrap()),
        ["llama", "qwen"]
    );
    assert_eq!(names(store.list_models(&globex()).await.unwrap()).len(), 3);
    assert_eq!(
        names(store.list_models(&Tenant::All).await.unwrap()).len(),
        3
    );
    assert!(
        store
            .list_models(&Tenant::Org("nowhere".into()))
            .await
            .unwrap()
            .is_empty(),
        "an unknown organization sees no model"
    );

    // The organization's keys got a new version carrying the list; the other's did not.
    let changed = store.api_keys_changed_after(newest).await.unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].id, "ka");
    assert_eq!(
        changed[0].org_models.as_deref(),
        Some(&["llama".to_owned(), "qwen".to_owned()][..])
    );

    // Lifting the list again lets every model through.
    store
        .update_org(
            &Tenant::All,
            "acme",
            &OrgChange {
                allowed_models: Some(None),
                ..OrgChange::default()
            },
            &event("org.update", "acme"),
            3_100,
        )
        .await
        .unwrap();
    assert_eq!(names(store.list_models(&acme()).await.unwrap()).len(), 3);
    assert_eq!(
        store
            .get_api_key(&acme(), "ka")
            .await
            .unwrap()
            .unwrap()
            .org_models,
        None
    );
}

async fn user_budgets_are_stored_and_cleared(store: Store) {
    two_orgs(&store).await;
    let change = UserChange {
        budget: Some(Some(Budget {
            usd: 5.5,
            period: BudgetPeriod::Total,
        })),
        ..UserChange::default()
    };
    let ann = store
        .update_user(
            &acme(),
            "ann",
            &change,
            &event("user.update", "acme"),
            3_000,
        )
        .await
        .unwrap();
    assert_eq!(
        ann.budget,
        Some(Budget {
            usd: 5.5,
            period: BudgetPeriod::Total
        })
    );
    let cleared = UserChange {
        budget: Some(None),
        ..UserChange::default()
    };
    let ann = store
        .update_user(
            &acme(),
            "ann",
            &cleared,
            &event("user.update", "acme"),
            3_100,
        )
        .await
        .unwrap();
    assert_eq!(ann.budget, None);
    // A half-written budget is refused as corrupt rather than read as "no budget".
    sqlx::query("UPDATE users SET budget_usd = 3 WHERE id = 'ann'")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(matches!(
        store.get_user(&acme(), "ann").await,
        Err(StoreError::Corrupt)
    ));
}

/// A key is read with the budgets and token rates above it, and a change to any of them gives
/// the keys under it (and only those) a new version, so every instance's cache re-reads them.
async fn the_limits_above_a_key_travel_with_it(store: Store) {
    two_orgs(&store).await;
    let monthly = |usd| Budget {
        usd,
        period: BudgetPeriod::Monthly,
    };
    store
        .create_team(
            &acme(),
            &NewTeam {
                id: "t1".into(),
                org_id: "acme".into(),
                name: "research".into(),
                budget: None,
                tokens_per_minute: None,
            },
            &event("team.create", "acme"),
            1_500,
        )
        .await
        .unwrap();
    store
        .set_team_members(
            &acme(),
            "t1",
            &["ann".into()],
            &event("team.members", "acme"),
            1_600,
        )
        .await
        .unwrap();
    store
        .create_api_key(
            &new_key("kt", "ann", "acme", Some("t1")),
            &event("key.create", "acme"),
            1_700,
        )
        .await
        .unwrap();
    let bare = store.get_api_key(&acme(), "kt").await.unwrap().unwrap();
    assert_eq!(bare.above, Default::default());

    let newest = |store: Store| async move {
        store
            .list_api_keys(&Tenant::All, None)
            .await
            .unwrap()
            .iter()
            .map(|k| k.version)
            .max()
            .unwrap()
    };
    // The team's budget and rate reach only its key.
    let mark = newest(store.clone()).await;
    store
        .update_team(
            &acme(),
            "t1",
            &TeamChange {
                budget: Some(Some(monthly(3.0))),
                tokens_per_minute: Some(Some(700)),
                ..TeamChange::default()
            },
            &event("team.update", "acme"),
            2_000,
        )
        .await
        .unwrap();
    let changed = store.api_keys_changed_after(mark).await.unwrap();
    assert_eq!(
        changed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["kt"]
    );
    assert_eq!(changed[0].above.team_budget, Some(monthly(3.0)));
    assert_eq!(changed[0].above.team_tokens_per_minute, Some(700));

    // The organization's reach both of its keys, not the other organization's.
    let mark = newest(store.clone()).await;
    store
        .update_org(
            &Tenant::All,
            "acme",
            &OrgChange {
                budget: Some(Some(monthly(9.0))),
                tokens_per_minute: Some(Some(900)),
                ..OrgChange::default()
            },
            &event("org.update", "acme"),
            2_100,
        )
        .await
        .unwrap();
    let mut changed: Vec<_> = store.api_keys_changed_after(mark).await.unwrap();
    changed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        changed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["ka", "kt"]
    );
    assert!(changed
        .iter()
        .all(|k| k.above.org_budget == Some(monthly(9.0))
            && k.above.org_tokens_per_minute == Some(900)));

    // The owner's reaches the owner's keys.
    let mark = newest(store.clone()).await;
    store
        .update_user(
            &acme(),
            "ann",
            &UserChange {
                budget: Some(Some(monthly(2.0))),
                ..UserChange::default()
            },
            &event("user.update", "acme"),
            2_200,
        )
        .await
        .unwrap();
    let changed = store.api_keys_changed_after(mark).await.unwrap();
    assert_eq!(changed.len(), 2);
    assert!(changed
        .iter()
        .all(|k| k.above.user_budget == Some(monthly(2.0))));

    // A rename alone changes no key.
    let mark = newest(store.clone()).await;
    store
        .update_team(
            &acme(),
            "t1",
            &TeamChange {
                name: Some("renamed".into()),
                ..TeamChange::default()
            },
            &event("team.update", "acme"),
            2_300,
        )
        .await
        .unwrap();
    assert!(store.api_keys_changed_after(mark).await.unwrap().is_empty());
    // The globex key saw none of it.
    let kg = store.get_api_key(&globex(), "kg").await.unwrap().unwrap();
    assert_eq!(kg.above, Default::default());
}

on_both_backends!(
    the_limits_above_a_key_travel_with_it,
    every_tenant_query_stays_in_its_organization,
    rows_from_before_organizations_belong_to_default,
    organizations_are_deleted_only_when_empty_and_never_the_default,
    teams_hold_members_of_their_organization_and_charge_their_keys,
    an_organizations_model_allow_list_reaches_its_keys_and_its_catalogue,
    user_budgets_are_stored_and_cleared,
);
