use cortex_domain::{ProviderKind, RoutingStrategy};
use cortex_store::catalog::{ModelChange, ModelRow, ProviderChange, ProviderRow};
use cortex_store::{Store, StoreError};

use crate::{audit_event, on_both_backends};

fn provider(id: &str, name: &str) -> ProviderRow {
    ProviderRow {
        id: id.into(),
        name: name.into(),
        base_url: format!("http://127.0.0.1:9/{name}/v1"),
        api_key_sealed: Some(vec![1, 2, 3, 0, 255]),
        source: "api".into(),
        kind: ProviderKind::OpenAi,
        api_version: None,
        responses_api: false,
        weight: 1,
        health_check_path: None,
        created_at: 0,
        updated_at: 0,
    }
}

async fn catalog_crud(store: Store) {
    let v0 = store.catalog_version().await.unwrap();
    store
        .create_provider(
            &provider("p1", "vllm-a"),
            Some(&audit_event("provider.create")),
            10,
        )
        .await
        .unwrap();
    store
        .create_provider(&provider("p2", "vllm-b"), None, 11)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_provider("vllm-a")
            .await
            .unwrap()
            .unwrap()
            .api_key_sealed,
        Some(vec![1, 2, 3, 0, 255])
    );
    assert!(store.catalog_version().await.unwrap() > v0);

    let model = ModelRow {
        id: "m1".into(),
        name: "llama".into(),
        upstream_name: Some("meta/llama".into()),
        input_price_per_mtok: 0.25,
        output_price_per_mtok: 1.0,
        source: "api".into(),
        provider_ids: vec!["p2".into(), "p1".into()],
        strategy: RoutingStrategy::RoundRobin,
        max_output_tokens: None,
        created_at: 0,
        updated_at: 0,
    };
    let created = store.create_model(&model, None, 12).await.unwrap();
    assert_eq!(created.provider_ids, vec!["p2", "p1"]);
    assert!((created.input_price_per_mtok - 0.25).abs() < 1e-12);

    // A provider in use cannot be deleted.
    assert!(matches!(
        store.delete_provider("p1", None, 13).await,
        Err(StoreError::Conflict)
    ));

    let updated = store
        .update_model(
            "m1",
            ModelChange {
                provider_ids: Some(vec!["p2".into()]),
                upstream_name: Some(None),
                ..ModelChange::default()
            },
            None,
            14,
        )
        .await
        .unwrap();
    assert_eq!(updated.provider_ids, vec!["p2"]);
    assert_eq!(updated.upstream_name, None);
    store.delete_provider("p1", None, 15).await.unwrap();

    let cleared = store
        .update_provider(
            "p2",
            ProviderChange {
                api_key_sealed: Some(None),
                ..ProviderChange::default()
            },
            None,
            16,
        )
        .await
        .unwrap();
    assert_eq!(cleared.api_key_sealed, None);
    assert_eq!(cleared.name, "vllm-b");

    store.delete_model("m1", None, 17).await.unwrap();
    assert!(store
        .list_models(&cortex_store::Tenant::All)
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.delete_model("m1", None, 18).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .create_provider(&provider("p3", "vllm-b"), None, 19)
            .await,
        Err(StoreError::Conflict)
    ));
}

on_both_backends!(catalog_crud);

/// An operator who re-points a provider must not take its stored secret along: a base URL at
/// another origin without a new key drops the key, by PATCH and by import alike.
async fn moving_a_provider_to_another_origin_drops_its_key(store: Store) {
    use cortex_store::catalog::{CatalogImport, ProviderImport, SecretUpdate};
    let secret = Some(vec![1, 2, 3, 0, 255]);
    store
        .create_provider(&provider("p1", "vllm-a"), None, 10)
        .await
        .unwrap();
    let update = |base_url: &str, key: Option<Option<Vec<u8>>>| ProviderChange {
        base_url: Some(base_url.to_owned()),
        api_key_sealed: key,
        ..ProviderChange::default()
    };
    // A new path at the same origin keeps the key.
    let same = store
        .update_provider("p1", update("http://127.0.0.1:9/other/v1", None), None, 11)
        .await
        .unwrap();
    assert_eq!(same.api_key_sealed, secret);
    // Another host, port or scheme drops it.
    for (at, url) in [
        (12, "http://attacker.example:9/v1"),
        (14, "http://127.0.0.1:10/v1"),
        (16, "https://127.0.0.1:9/v1"),
    ] {
        let moved = store
            .update_provider("p1", update(url, None), None, at)
            .await
            .unwrap();
        assert_eq!(moved.api_key_sealed, None, "{url}");
        assert_eq!(moved.base_url, url);
        // Put it back with its key for the next case.
        store
            .update_provider(
                "p1",
                update("http://127.0.0.1:9/vllm-a/v1", Some(secret.clone())),
                None,
                at + 1,
            )
            .await
            .unwrap();
    }
    // A new key in the same change is the key the new origin gets.
    let rekeyed = store
        .update_provider(
            "p1",
            update("http://other.example/v1", Some(Some(vec![9, 9]))),
            None,
            20,
        )
        .await
        .unwrap();
    assert_eq!(rekeyed.api_key_sealed, Some(vec![9, 9]));

    // An import that moves a provider without a secret (redacted) drops the stored one; one
    // that keeps the origin keeps it.
    let import = |base_url: &str| CatalogImport {
        providers: vec![ProviderImport {
            id: "p1".into(),
            name: "vllm-a".into(),
            base_url: base_url.to_owned(),
            api_key: SecretUpdate::Keep,
            kind: ProviderKind::OpenAi,
            api_version: None,
            responses_api: false,
            weight: 1,
            health_check_path: None,
            create: false,
        }],
        models: Vec::new(),
    };
    store
        .import_catalog(
            &import("http://other.example/v2"),
            &audit_event("config.import"),
            21,
        )
        .await
        .unwrap();
    let kept = store.get_provider("p1").await.unwrap().unwrap();
    assert_eq!(kept.api_key_sealed, Some(vec![9, 9]));
    store
        .import_catalog(
            &import("http://attacker.example/v1"),
            &audit_event("config.import"),
            22,
        )
        .await
        .unwrap();
    let moved = store.get_provider("p1").await.unwrap().unwrap();
    assert_eq!(moved.api_key_sealed, None);
    assert_eq!(moved.base_url, "http://attacker.example/v1");
}

on_both_backends!(moving_a_provider_to_another_origin_drops_its_key);

/// A provider's kind, API version and Responses flag are stored, changed one at a time and
/// imported like its other fields; a kind this build does not know is refused, not guessed.
async fn provider_kinds_are_stored_changed_and_imported(store: Store) {
    use cortex_store::catalog::{CatalogImport, ProviderImport, SecretUpdate};
    let azure = ProviderRow {
        kind: ProviderKind::Azure,
        api_version: Some("2024-12-01-preview".into()),
        ..provider("p1", "azure")
    };
    let created = store.create_provider(&azure, None, 10).await.unwrap();
    assert_eq!(created.kind, ProviderKind::Azure);
    assert_eq!(created.api_version.as_deref(), Some("2024-12-01-preview"));
    assert!(!created.responses_api);
    let responses = ProviderRow {
        responses_api: true,
        ..provider("p2", "openai")
    };
    let created = store.create_provider(&responses, None, 11).await.unwrap();
    assert_eq!(created.kind, ProviderKind::OpenAi);
    assert!(created.responses_api);

    // Only what the change names moves.
    let renamed = store
        .update_provider(
            "p1",
            ProviderChange {
                name: Some("azure-east".into()),
                ..ProviderChange::default()
            },
            None,
            12,
        )
        .await
        .unwrap();
    assert_eq!(renamed.kind, ProviderKind::Azure);
    assert_eq!(renamed.api_version.as_deref(), Some("2024-12-01-preview"));
    let anthropic = store
        .update_provider(
            "p1",
            ProviderChange {
                kind: Some(ProviderKind::Anthropic),
                api_version: Some(None),
                ..ProviderChange::default()
            },
            None,
            13,
        )
        .await
        .unwrap();
    assert_eq!(anthropic.kind, ProviderKind::Anthropic);
    assert_eq!(anthropic.api_version, None);
    let flag_off = store
        .update_provider(
            "p2",
            ProviderChange {
                responses_api: Some(false),
                ..ProviderChange::default()
            },
            None,
            14,
        )
        .await
        .unwrap();
    assert!(!flag_off.responses_api);

    // An import sets all three, on new and on existing providers.
    let import = CatalogImport {
        providers: vec![
            ProviderImport {
                id: "p1".into(),
                name: "azure-east".into(),
                base_url: "http://127.0.0.1:9/azure/v1".into(),
                api_key: SecretUpdate::Keep,
                kind: ProviderKind::Azure,
                api_version: Some("2024-10-21".into()),
                responses_api: false,
                weight: 1,
                health_check_path: None,
                create: false,
            },
            ProviderImport {
                id: "p3".into(),
                name: "claude".into(),
                base_url: "http://127.0.0.1:9/claude/v1".into(),
                api_key: SecretUpdate::Set(vec![4, 5]),
                kind: ProviderKind::Anthropic,
                api_version: Some("2023-06-01".into()),
                responses_api: false,
                weight: 1,
                health_check_path: None,
                create: true,
            },
        ],
        models: Vec::new(),
    };
    store
        .import_catalog(&import, &audit_event("config.import"), 15)
        .await
        .unwrap();
    let listed = store.list_providers().await.unwrap();
    let find = |name: &str| listed.iter().find(|p| p.name == name).unwrap();
    assert_eq!(find("azure-east").kind, ProviderKind::Azure);
    assert_eq!(
        find("azure-east").api_version.as_deref(),
        Some("2024-10-21")
    );
    assert_eq!(find("claude").kind, ProviderKind::Anthropic);
    assert_eq!(find("claude").api_version.as_deref(), Some("2023-06-01"));
    assert_eq!(find("claude").source, "import");

    sqlx::query("UPDATE providers SET kind = 'bedrock' WHERE id = 'p2'")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(matches!(
        store.get_provider("p2").await,
        Err(StoreError::Corrupt)
    ));
}

on_both_backends!(provider_kinds_are_stored_changed_and_imported);

/// Providers stored before kinds existed are OpenAI-style servers after the upgrade: the
/// database is migrated to the migration before kinds, a row is written with the old columns,
/// and the full migration set then runs over it.
async fn providers_from_before_kinds_become_openai(store: Store) {
    let backend = store.backend().name();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    // `store` was opened (and so migrated) by the harness; start again from an empty database.
    let db = cortex_store::testing::TestDb::new(store.backend()).await;
    let fresh = Store::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(fresh.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO providers (id, name, base_url, api_key_sealed, source, created_at, updated_at) \
         VALUES ('p-old', 'vllm', 'http://127.0.0.1:8000/v1', NULL, 'api', 1, 1)",
    )
    .execute(fresh.pool())
    .await
    .unwrap();
    fresh.migrate().await.unwrap();
    let upgraded = fresh.get_provider("vllm").await.unwrap().unwrap();
    assert_eq!(upgraded.kind, ProviderKind::OpenAi);
    assert_eq!(upgraded.api_version, None);
    assert!(!upgraded.responses_api);
    fresh.close().await;
    db.cleanup().await;
}

on_both_backends!(providers_from_before_kinds_become_openai);

/// A provider's weight and health check path and a model's strategy (SPEC §16) are stored,
/// changed one at a time and imported like the other fields.
async fn routing_fields_are_stored_changed_and_imported(store: Store) {
    use cortex_store::catalog::{CatalogImport, ModelImport, ProviderImport, SecretUpdate};
    let weighted = ProviderRow {
        weight: 7,
        health_check_path: Some("health/ready".into()),
        ..provider("p1", "vllm-a")
    };
    let created = store.create_provider(&weighted, None, 10).await.unwrap();
    assert_eq!(created.weight, 7);
    assert_eq!(created.health_check_path.as_deref(), Some("health/ready"));
    let plain = store
        .create_provider(&provider("p2", "vllm-b"), None, 11)
        .await
        .unwrap();
    assert_eq!((plain.weight, plain.health_check_path), (1, None));

    // Only what the change names moves.
    let renamed = store
        .update_provider(
            "p1",
            ProviderChange {
                name: Some("vllm-east".into()),
                ..ProviderChange::default()
            },
            None,
            12,
        )
        .await
        .unwrap();
    assert_eq!(renamed.weight, 7);
    assert_eq!(renamed.health_check_path.as_deref(), Some("health/ready"));
    let reweighted = store
        .update_provider(
            "p1",
            ProviderChange {
                weight: Some(1000),
                health_check_path: Some(None),
                ..ProviderChange::default()
            },
            None,
            13,
        )
        .await
        .unwrap();
    assert_eq!(reweighted.weight, 1000);
    assert_eq!(reweighted.health_check_path, None);

    let model = ModelRow {
        id: "m1".into(),
        name: "llama".into(),
        upstream_name: None,
        input_price_per_mtok: 0.0,
        output_price_per_mtok: 0.0,
        source: "api".into(),
        provider_ids: vec!["p1".into(), "p2".into()],
        strategy: RoutingStrategy::Weighted,
        max_output_tokens: None,
        created_at: 0,
        updated_at: 0,
    };
    let created = store.create_model(&model, None, 14).await.unwrap();
    assert_eq!(created.strategy, RoutingStrategy::Weighted);
    let renamed = store
        .update_model(
            "m1",
            ModelChange {
                name: Some("llama-3".into()),
                ..ModelChange::default()
            },
            None,
            15,
        )
        .await
        .unwrap();
    assert_eq!(renamed.strategy, RoutingStrategy::Weighted);
    let priority = store
        .update_model(
            "m1",
            ModelChange {
                strategy: Some(RoutingStrategy::Priority),
                ..ModelChange::default()
            },
            None,
            16,
        )
        .await
        .unwrap();
    assert_eq!(priority.strategy, RoutingStrategy::Priority);

    // An import sets all three, on new and on existing rows.
    let import_provider =
        |id: &str, name: &str, weight: u32, path: Option<&str>, create: bool| ProviderImport {
            id: id.into(),
            name: name.into(),
            base_url: format!("http://127.0.0.1:9/{name}/v1"),
            api_key: SecretUpdate::Keep,
            kind: ProviderKind::OpenAi,
            api_version: None,
            responses_api: false,
            weight,
            health_check_path: path.map(str::to_owned),
            create,
        };
    let plan = CatalogImport {
        providers: vec![
            import_provider("p1", "vllm-east", 3, Some("ping"), false),
            import_provider("p3", "vllm-c", 9, None, true),
        ],
        models: vec![
            ModelImport {
                row: ModelRow {
                    strategy: RoutingStrategy::LeastLatency,
                    max_output_tokens: None,
                    ..priority.clone()
                },
                create: false,
            },
            ModelImport {
                row: ModelRow {
                    id: "m2".into(),
                    name: "mistral".into(),
                    provider_ids: vec!["p3".into()],
                    strategy: RoutingStrategy::Weighted,
                    max_output_tokens: None,
                    ..model.clone()
                },
                create: true,
            },
        ],
    };
    store
        .import_catalog(&plan, &audit_event("config.import"), 17)
        .await
        .unwrap();
    let east = store.get_provider("vllm-east").await.unwrap().unwrap();
    assert_eq!(east.weight, 3);
    assert_eq!(east.health_check_path.as_deref(), Some("ping"));
    let fresh = store.get_provider("vllm-c").await.unwrap().unwrap();
    assert_eq!((fresh.weight, fresh.health_check_path), (9, None));
    let models = store.list_models(&cortex_store::Tenant::All).await.unwrap();
    let strategy = |name: &str| models.iter().find(|m| m.name == name).unwrap().strategy;
    assert_eq!(strategy("llama-3"), RoutingStrategy::LeastLatency);
    assert_eq!(strategy("mistral"), RoutingStrategy::Weighted);
}

on_both_backends!(routing_fields_are_stored_changed_and_imported);

/// Values only a hand-written row can hold are read as something safe, with a warning, instead
/// of failing the catalogue: an unknown strategy (from a newer build) as round_robin, kept in
/// the row until the strategy itself is changed; a weight outside 1 to 1000 as the nearest
/// valid one; a health check path that could leave the base URL as the default.
async fn hand_written_routing_values_read_as_safe_defaults(store: Store) {
    store
        .create_provider(&provider("p1", "vllm-a"), None, 10)
        .await
        .unwrap();
    let model = ModelRow {
        id: "m1".into(),
        name: "llama".into(),
        upstream_name: None,
        input_price_per_mtok: 0.0,
        output_price_per_mtok: 0.0,
        source: "api".into(),
        provider_ids: vec!["p1".into()],
        strategy: RoutingStrategy::Priority,
        max_output_tokens: None,
        created_at: 0,
        updated_at: 0,
    };
    store.create_model(&model, None, 11).await.unwrap();
    sqlx::query("UPDATE models SET strategy = 'cheapest' WHERE id = 'm1'")
        .execute(store.pool())
        .await
        .unwrap();
    let read = store.get_model("m1").await.unwrap().unwrap();
    assert_eq!(read.strategy, RoutingStrategy::RoundRobin);
    // A change of another field leaves the stored text alone...
    store
        .update_model(
            "m1",
            ModelChange {
                input_price_per_mtok: Some(1.0),
                ..ModelChange::default()
            },
            None,
            12,
        )
        .await
        .unwrap();
    let stored = |store: Store| async move {
        use sqlx::Row;
        sqlx::query("SELECT strategy FROM models WHERE id = 'm1'")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get::<String, _>("strategy")
            .unwrap()
    };
    assert_eq!(stored(store.clone()).await, "cheapest");
    // ...and a change of the strategy replaces it.
    store
        .update_model(
            "m1",
            ModelChange {
                strategy: Some(RoutingStrategy::Weighted),
                ..ModelChange::default()
            },
            None,
            13,
        )
        .await
        .unwrap();
    assert_eq!(stored(store.clone()).await, "weighted");

    for (stored_weight, read_weight) in [(0, 1), (-5, 1), (5000, 1000), (250, 250)] {
        sqlx::query(&format!(
            "UPDATE providers SET weight = {stored_weight} WHERE id = 'p1'"
        ))
        .execute(store.pool())
        .await
        .unwrap();
        let provider = store.get_provider("p1").await.unwrap().unwrap();
        assert_eq!(provider.weight, read_weight, "{stored_weight}");
    }
    for (path, read) in [
        ("../../admin", None),
        ("http://evil/x", None),
        ("/models", None),
        ("v1/health", Some("v1/health")),
    ] {
        sqlx::query("UPDATE providers SET health_check_path = $1 WHERE id = 'p1'")
            .bind(path)
            .execute(store.pool())
            .await
            .unwrap();
        let provider = store.get_provider("p1").await.unwrap().unwrap();
        assert_eq!(provider.health_check_path.as_deref(), read, "{path}");
    }
}

on_both_backends!(hand_written_routing_values_read_as_safe_defaults);

/// Rows written before migration 0006 get the defaults they were routed and counted with:
/// weight 1, the default health check path, round_robin, one attempt per request.
async fn rows_from_before_routing_get_the_defaults(store: Store) {
    let backend = store.backend().name();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    let db = cortex_store::testing::TestDb::new(store.backend()).await;
    let fresh = Store::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(fresh.pool())
        .await
        .unwrap();
    for statement in [
        "INSERT INTO providers (id, name, base_url, api_key_sealed, source, created_at, updated_at) \
         VALUES ('p-old', 'vllm', 'http://127.0.0.1:8000/v1', NULL, 'api', 1, 1)",
        "INSERT INTO models (id, name, upstream_name, input_price_per_mtok, output_price_per_mtok, source, \
         created_at, updated_at) VALUES ('m-old', 'llama', NULL, 0, 0, 'api', 1, 1)",
        "INSERT INTO model_providers (model_id, provider_id, position) VALUES ('m-old', 'p-old', 0)",
        "INSERT INTO usage_records (request_id, key_id, user_id, model, provider, endpoint, prompt_tokens, \
         completion_tokens, cost_usd, latency_ms, status, client_ip, created_at) \
         VALUES ('req-old', 'k', 'u', 'llama', 'vllm', 'chat', 1, 1, 0, 1, 200, '127.0.0.1', 1)",
    ] {
        sqlx::query(statement).execute(fresh.pool()).await.unwrap();
    }
    fresh.migrate().await.unwrap();
    let provider = fresh.get_provider("vllm").await.unwrap().unwrap();
    assert_eq!((provider.weight, provider.health_check_path), (1, None));
    let model = fresh.get_model("llama").await.unwrap().unwrap();
    assert_eq!(model.strategy, RoutingStrategy::RoundRobin);
    assert_eq!(model.provider_ids, ["p-old"]);
    let usage = fresh
        .list_usage(
            &cortex_store::Tenant::All,
            &cortex_store::usage::UsageFilter::default(),
            10,
        )
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].attempts, 1);
    fresh.close().await;
    db.cleanup().await;
}

on_both_backends!(rows_from_before_routing_get_the_defaults);
