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
    assert!(store.list_models().await.unwrap().is_empty());
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
