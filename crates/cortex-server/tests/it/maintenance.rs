//! Maintenance operations through the library and the admin API: config import (round trip,
//! strict refusal that changes nothing), master-key rotation (new key opens, old does not, a
//! failure leaves the old key valid, verify passes after), and erasure of a user's personal data
//! that keeps the audit chain verifiable.

use cortex_control::keys::KeySpec;
use cortex_control::ops::{audit, export, import, secrets};
use cortex_crypto::envelope::{open, seal, MasterKey};
use cortex_domain::{KeyLimits, ProviderKind, Role, Scope};
use cortex_store::catalog::ProviderChange;
use cortex_store::secrets::RotateError;
use cortex_testkit::{eventually, TestServer};
use serde_json::{json, Value};
use sqlx::Row;

use crate::admin::{admin, user_with_role};
use crate::{assert_error, audit_events, chat_body, gateway_with_upstream};

fn master(server: &TestServer) -> MasterKey {
    let text = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    MasterKey::parse(&text).unwrap()
}

async fn catalog_json(server: &TestServer) -> (Value, Value) {
    let state = server.state();
    let document = export::export(
        state.store(),
        &cortex_store::Tenant::All,
        state.now_millis(),
    )
    .await
    .unwrap();
    (document["providers"].clone(), document["models"].clone())
}

fn source_server() -> cortex_testkit::TestServerBuilder {
    TestServer::builder()
        .provider(
            "vllm-a",
            "http://127.0.0.1:9/v1",
            Some("sk-import-planted-1"),
        )
        .provider("vllm-b", "https://gpu.internal.example/v1", None)
        .model("llama", &["vllm-a", "vllm-b"], 0.5, 1.5)
        .model("mistral", &["vllm-b"], 0.0, 0.0)
}

#[tokio::test]
async fn export_then_import_into_a_fresh_database_reproduces_the_catalogue() {
    let source = source_server().start().await;
    let state = source.state();
    // Kinds travel too (openai and azure may serve one model).
    for (name, change) in [
        (
            "vllm-a",
            ProviderChange {
                responses_api: Some(true),
                ..ProviderChange::default()
            },
        ),
        (
            "vllm-b",
            ProviderChange {
                kind: Some(ProviderKind::Azure),
                api_version: Some(Some("2024-12-01-preview".into())),
                ..ProviderChange::default()
            },
        ),
    ] {
        let id = state.store().get_provider(name).await.unwrap().unwrap().id;
        state
            .store()
            .update_provider(&id, change, None, state.now_millis())
            .await
            .unwrap();
    }
    let text = serde_json::to_string(
        &export::export(
            state.store(),
            &cortex_store::Tenant::All,
            state.now_millis(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert!(!text.contains("sk-import-planted-1"));
    let (source_providers, source_models) = catalog_json(&source).await;
    source.stop().await;

    let target = TestServer::builder().start().await;
    let state = target.state();
    let head = state.store().audit_head().await.unwrap().0;
    let report = import::import(
        state.store(),
        &master(&target),
        &text,
        "test",
        false,
        state.now_millis(),
    )
    .await
    .unwrap();
    assert_eq!(report.providers_created, vec!["vllm-a", "vllm-b"]);
    assert_eq!(report.models_created, vec!["llama", "mistral"]);
    // The redacted secret is not imported: the operator is told which provider needs one.
    assert_eq!(report.providers_needing_secret, vec!["vllm-a"]);
    assert_eq!(state.store().audit_head().await.unwrap().0, head + 1);
    let event = &audit_events(state.store(), None, 1).await[0];
    assert_eq!(event.action, "config.import");

    let (providers, models) = catalog_json(&target).await;
    assert_eq!(models, source_models, "models differ after the round trip");
    for (got, want) in providers
        .as_array()
        .unwrap()
        .iter()
        .zip(source_providers.as_array().unwrap())
    {
        assert_eq!(got["name"], want["name"]);
        assert_eq!(got["base_url"], want["base_url"]);
        for field in ["kind", "api_version", "responses_api"] {
            assert_eq!(got[field], want[field], "{field}");
        }
    }
    assert_eq!(providers[0]["responses_api"], true);
    assert_eq!(providers[1]["kind"], "azure");
    assert_eq!(providers[1]["api_version"], "2024-12-01-preview");
    assert!(
        providers[0]["api_key"].is_null(),
        "no secret was stored for vllm-a"
    );
    // The routing table picked the import up.
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            state.store().catalog_version().await.unwrap() > 0
        })
        .await
    );

    // Importing again changes nothing but says so; a literal secret in the file is sealed.
    let with_secret = text.replace("\"[REDACTED]\"", "\"sk-literal-in-file\"");
    let report = import::import(
        state.store(),
        &master(&target),
        &with_secret,
        "test",
        false,
        state.now_millis(),
    )
    .await
    .unwrap();
    assert_eq!(report.providers_updated, vec!["vllm-a", "vllm-b"]);
    assert!(report.providers_needing_secret.is_empty());
    let stored = state.store().get_provider("vllm-a").await.unwrap().unwrap();
    let sealed = stored.api_key_sealed.unwrap();
    assert!(!sealed.windows(10).any(|w| w == b"sk-literal"));
    assert_eq!(
        open(&master(&target), &sealed, stored.id.as_bytes())
            .unwrap()
            .as_slice(),
        b"sk-literal-in-file"
    );
    // A later import with the secret redacted keeps the stored one.
    import::import(
        state.store(),
        &master(&target),
        &text,
        "test",
        false,
        state.now_millis(),
    )
    .await
    .unwrap();
    let kept = state.store().get_provider("vllm-a").await.unwrap().unwrap();
    assert!(kept.api_key_sealed.is_some());
    target.stop().await;
}

#[tokio::test]
async fn malformed_imports_are_refused_with_one_line_and_change_nothing() {
    let source = source_server().start().await;
    let state = source.state();
    let good: Value = export::export(
        state.store(),
        &cortex_store::Tenant::All,
        state.now_millis(),
    )
    .await
    .unwrap();
    source.stop().await;

    let target = TestServer::builder().start().await;
    let state = target.state();
    let head = state.store().audit_head().await.unwrap().0;
    let version = state.store().catalog_version().await.unwrap();
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut doc = good.clone();
        f(&mut doc);
        doc.to_string()
    };
    let cases: Vec<(&str, String)> = vec![
        ("not json", "{ providers: ".to_owned()),
        (
            "unknown top-level field",
            mutate(&|d| d["extra"] = json!(1)),
        ),
        (
            "unknown provider field",
            mutate(&|d| d["providers"][0]["token"] = json!("x")),
        ),
        (
            "unknown model field",
            mutate(&|d| d["models"][0]["temperature"] = json!(1)),
        ),
        (
            "wrong format",
            mutate(&|d| d["manifest"]["format"] = json!("something-else")),
        ),
        (
            "future version",
            mutate(&|d| d["manifest"]["version"] = json!(2)),
        ),
        (
            "bad base_url",
            mutate(&|d| d["providers"][1]["base_url"] = json!("ftp://x")),
        ),
        (
            "duplicate provider",
            mutate(&|d| d["providers"][1]["name"] = d["providers"][0]["name"].clone()),
        ),
        (
            "unknown provider reference",
            mutate(&|d| d["models"][0]["providers"] = json!(["nope"])),
        ),
        (
            "unknown provider kind",
            mutate(&|d| d["providers"][0]["kind"] = json!("bedrock")),
        ),
        (
            "api_version on an openai provider",
            mutate(&|d| d["providers"][0]["api_version"] = json!("2024-10-21")),
        ),
        (
            "responses_api on an azure provider",
            mutate(&|d| {
                d["providers"][0]["kind"] = json!("azure");
                d["providers"][0]["responses_api"] = json!(true);
            }),
        ),
        (
            "a model mixing anthropic with openai",
            mutate(&|d| d["providers"][1]["kind"] = json!("anthropic")),
        ),
        (
            "negative price",
            mutate(&|d| d["models"][0]["input_price_per_mtok"] = json!(-1.0)),
        ),
        (
            "weight 0",
            mutate(&|d| d["providers"][0]["weight"] = json!(0)),
        ),
        (
            "weight 1001",
            mutate(&|d| d["providers"][0]["weight"] = json!(1001)),
        ),
        (
            "negative weight",
            mutate(&|d| d["providers"][0]["weight"] = json!(-1)),
        ),
        (
            "health check path leaving base_url",
            mutate(&|d| d["providers"][0]["health_check_path"] = json!("../x")),
        ),
        (
            "health check path with a scheme",
            mutate(&|d| d["providers"][0]["health_check_path"] = json!("http://evil")),
        ),
        (
            "unknown strategy",
            mutate(&|d| d["models"][0]["strategy"] = json!("fastest")),
        ),
        (
            "unknown role",
            mutate(&|d| d["roles"][0]["name"] = json!("root")),
        ),
        (
            "unknown scope",
            mutate(&|d| d["keys"] = json!([{ "id": "k", "name": "k", "scopes": ["shell"] }])),
        ),
        (
            "missing manifest",
            mutate(&|d| {
                d.as_object_mut().unwrap().remove("manifest");
            }),
        ),
    ];
    for (what, text) in cases {
        // The last provider is valid and would be created if anything were half-applied.
        let err = import::import(
            state.store(),
            &master(&target),
            &text,
            "test",
            false,
            state.now_millis(),
        )
        .await
        .expect_err(what);
        let message = err.to_string();
        assert!(
            matches!(err, import::ImportError::Invalid(_)),
            "{what}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{what}: {message}");
    }
    assert!(state.store().list_providers().await.unwrap().is_empty());
    assert!(state
        .store()
        .list_models(&cortex_store::Tenant::All)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(state.store().audit_head().await.unwrap().0, head);
    assert_eq!(state.store().catalog_version().await.unwrap(), version);
    // A dry run checks and reports without writing.
    let report = import::import(
        state.store(),
        &master(&target),
        &good.to_string(),
        "test",
        true,
        state.now_millis(),
    )
    .await
    .unwrap();
    assert_eq!(report.providers_created.len(), 2);
    assert!(state.store().list_providers().await.unwrap().is_empty());
    target.stop().await;
}

#[tokio::test]
async fn rotation_moves_every_secret_to_the_new_key_and_keeps_the_audit_verifiable() {
    let server = TestServer::builder()
        .provider("vllm", "http://127.0.0.1:9/v1", Some("sk-rotate-planted-2"))
        .model("llama", &["vllm"], 0.0, 0.0)
        .start()
        .await;
    let admin_session = admin(&server).await;
    // A TOTP secret (pending enrolment is enough: it is sealed the same way).
    let enrolled = server
        .http()
        .post(server.url("/admin/me/totp"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(enrolled.status(), 200);
    let state = server.state();
    let store = state.store();
    let old = master(&server);
    assert!(matches!(
        audit::write_checkpoint(store, &old, state.now_millis())
            .await
            .unwrap(),
        audit::CheckpointOutcome::Written(_)
    ));
    let new = MasterKey::generate();
    let provider = store.get_provider("vllm").await.unwrap().unwrap();
    let admin_row = store
        .get_user_by_username(&cortex_store::Tenant::All, "admin")
        .await
        .unwrap()
        .unwrap();

    // A record that cannot be opened aborts everything: the old key stays valid.
    let stranger = MasterKey::generate();
    sqlx::query("UPDATE users SET totp_secret_sealed = $1 WHERE id = $2")
        .bind(seal(&stranger, b"JBSWY3DPEHPK3PXP", admin_row.id.as_bytes()).unwrap())
        .bind(&admin_row.id)
        .execute(store.pool())
        .await
        .unwrap();
    let failed = secrets::rotate_master_key(store, &old, &new, "test", state.now_millis()).await;
    assert!(
        matches!(failed, Err(RotateError::Unreadable(ref what)) if what.contains("admin")),
        "{failed:?}"
    );
    let unchanged = store.get_provider("vllm").await.unwrap().unwrap();
    assert_eq!(unchanged.api_key_sealed, provider.api_key_sealed);
    assert!(secrets::check_master_key(store, &old, state.now_millis())
        .await
        .unwrap());
    assert!(
        audit::verify(store, &old, state.now_millis(), |_| {})
            .await
            .unwrap()
            .ok
    );
    sqlx::query("UPDATE users SET totp_secret_sealed = $1 WHERE id = $2")
        .bind(admin_row.totp_secret_sealed.clone())
        .bind(&admin_row.id)
        .execute(store.pool())
        .await
        .unwrap();

    // An audit chain that does not verify under the old key aborts it too: rotation re-keys
    // the chain, and must never launder a changed event into a valid-looking one.
    let (head_seq, head_hash) = store.audit_head().await.unwrap();
    let changed: String = sqlx::query_scalar("SELECT details FROM audit_events WHERE seq = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET details = '{\"forged\":true}' WHERE seq = 1")
        .execute(store.pool())
        .await
        .unwrap();
    let failed = secrets::rotate_master_key(store, &old, &new, "test", state.now_millis()).await;
    assert!(
        matches!(failed, Err(RotateError::AuditChainBroken(1))),
        "{failed:?}"
    );
    assert_eq!(
        store.audit_head().await.unwrap(),
        (head_seq, head_hash.clone())
    );
    assert!(secrets::check_master_key(store, &old, state.now_millis())
        .await
        .unwrap());
    sqlx::query("UPDATE audit_events SET details = $1 WHERE seq = 1")
        .bind(&changed)
        .execute(store.pool())
        .await
        .unwrap();

    // The new key must differ from the current one.
    assert!(matches!(
        secrets::rotate_master_key(store, &old, &old, "test", state.now_millis()).await,
        Err(RotateError::SameKey)
    ));
    // And the "old" key must really be the database's key.
    assert!(matches!(
        secrets::rotate_master_key(store, &stranger, &new, "test", state.now_millis()).await,
        Err(RotateError::WrongKey)
    ));

    let report = secrets::rotate_master_key(store, &old, &new, "test", state.now_millis())
        .await
        .unwrap();
    assert_eq!(report.counts.provider_keys, 1);
    assert_eq!(report.counts.totp_secrets, 1);
    assert!(report.counts.checkpoints >= 1);
    assert_eq!(report.counts.audit_events, u64::try_from(head_seq).unwrap());
    let rotated = store.get_provider("vllm").await.unwrap().unwrap();
    let sealed = rotated.api_key_sealed.unwrap();
    assert_eq!(
        open(&new, &sealed, rotated.id.as_bytes())
            .unwrap()
            .as_slice(),
        b"sk-rotate-planted-2"
    );
    assert!(open(&old, &sealed, rotated.id.as_bytes()).is_err());
    let totp = store
        .get_user(&cortex_store::Tenant::All, &admin_row.id)
        .await
        .unwrap()
        .unwrap()
        .totp_secret_sealed
        .unwrap();
    assert!(open(&new, &totp, admin_row.id.as_bytes()).is_ok());
    assert!(open(&old, &totp, admin_row.id.as_bytes()).is_err());
    // The fingerprint moved: the old key is refused from now on, the new one accepted.
    assert!(!secrets::check_master_key(store, &old, state.now_millis())
        .await
        .unwrap());
    assert!(secrets::check_master_key(store, &new, state.now_millis())
        .await
        .unwrap());
    // The chain (re-keyed: every event's HMAC is under the new chain key) and the re-signed,
    // re-chained checkpoints verify under the new key, not the old one.
    let now = state.now_millis();
    let verified = audit::verify(store, &new, now, |_| {}).await.unwrap();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(
        verified.events_checked,
        u64::try_from(head_seq).unwrap() + 1
    );
    let stale = audit::verify(store, &old, now, |_| {}).await.unwrap();
    assert_eq!(
        (stale.first_bad_seq, stale.problem),
        (Some(1), Some(audit::VerifyProblem::ChainBroken))
    );
    assert_ne!(
        store.audit_hash_at(head_seq).await.unwrap().unwrap(),
        head_hash
    );
    // The rotation ends in a checkpoint covering its own event, chained to the re-signed ones.
    let checkpoints = store.checkpoints().await.unwrap();
    let newest = checkpoints.last().unwrap();
    assert_eq!(newest.seq, head_seq + 1);
    assert_eq!(newest.prev_seq, checkpoints[checkpoints.len() - 2].seq);
    let event = &audit_events(store, None, 1).await[0];
    assert_eq!(event.action, "secrets.rotate_master_key");
    assert!(event.details.contains(&report.new_checkpoint_key));
    // This instance still holds the old key: it refuses to sign with it.
    assert_eq!(
        audit::write_checkpoint(store, &old, state.now_millis())
            .await
            .unwrap(),
        audit::CheckpointOutcome::KeyRetired
    );
    // Nor can it append events under the retired chain key: they would never verify.
    assert!(store
        .append_audit(
            &cortex_domain::audit::NewAuditEvent::new("test", "stale.key", "x"),
            state.now_millis()
        )
        .await
        .is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_removes_the_user_from_users_and_usage_and_the_chain_still_verifies() {
    let (server, _upstream) = gateway_with_upstream().await;
    let admin_session = admin(&server).await;
    let person = user_with_role(&server, &admin_session, "erin.personal", Role::Developer).await;
    let (key_id, key) = server
        .create_key_with(KeySpec {
            name: "erin's laptop".to_owned(),
            owner_user_id: person.user_id.clone(),
            scopes: vec![Scope::Chat],
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: None,
        })
        .await;
    let answered = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    let store = server.state().store().clone();
    let filter = cortex_store::usage::UsageFilter {
        user_id: Some(person.user_id.clone()),
        ..Default::default()
    };
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            !store
                .list_usage(&cortex_store::Tenant::All, &filter, 10)
                .await
                .unwrap()
                .is_empty()
        })
        .await,
        "the usage row was not written"
    );
    let url = server.url(&format!("/admin/users/{}", person.user_id));
    // Strict query: anything but a boolean `erase` is refused.
    for bad in ["?erase=yes", "?wipe=true"] {
        let response = server
            .http()
            .delete(format!("{url}{bad}"))
            .bearer_auth(&admin_session.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    // Only admins erase; nobody erases themselves.
    let forbidden = server
        .http()
        .delete(format!("{url}?erase=true"))
        .bearer_auth(&person.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let own = server
        .http()
        .delete(server.url(&format!(
            "/admin/users/{}?erase=true",
            admin_session.user_id
        )))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap();
    assert_error(own, 409, "conflict").await;

    let erased: Value = server
        .http()
        .delete(format!("{url}?erase=true"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(erased["erased"], true, "{erased}");
    assert_eq!(erased["usage_rows_anonymised"], 1);

    // The username and id are gone from users, keys and usage...
    let pool = store.pool();
    for (table, columns) in [
        ("users", "id || username"),
        ("api_keys", "owner_user_id || name"),
        ("usage_records", "user_id || client_ip"),
        ("sessions", "user_id"),
    ] {
        let rows = sqlx::query(&format!("SELECT {columns} AS v FROM {table}"))
            .fetch_all(pool)
            .await
            .unwrap();
        for row in rows {
            let value: String = row.try_get("v").unwrap();
            assert!(!value.contains("erin"), "{table} still names the user");
            assert!(
                !value.contains(&person.user_id),
                "{table} still links the user"
            );
        }
    }
    let usage = store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
        .await
        .unwrap();
    assert!(usage
        .iter()
        .all(|u| u.client_ip.is_empty() || u.key_id != key_id));
    // ...the key no longer works, the erasure is audited by id only, and the chain verifies.
    let refused = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let events = audit_events(&store, Some("user.erase"), 5).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].target, person.user_id);
    assert!(!events[0].details.contains("erin"));
    let verify: Value = server
        .http()
        .get(server.url("/admin/audit/verify"))
        .bearer_auth(&admin_session.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verify["ok"], true, "{verify}");
    server.stop().await;
}
