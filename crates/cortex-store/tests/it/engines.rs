use cortex_store::engines::{DesiredState, EngineRow};
use cortex_store::{Store, StoreError};

use crate::{audit_event, on_both_backends};

fn row(id: &str, name: &str) -> EngineRow {
    EngineRow {
        id: id.into(),
        name: name.into(),
        engine: "llamacpp".into(),
        runtime: "process".into(),
        spec: r#"{"name":"x"}"#.into(),
        hf_token_sealed: Some(vec![1, 2, 3]),
        desired_state: DesiredState::Stopped,
        generation: 5,
        auto_start: true,
        created_at: 0,
        updated_at: 0,
    }
}

async fn engines_round_trip(store: Store) {
    let created = store
        .create_engine(&row("e1", "small"), Some(&audit_event("engine.create")), 10)
        .await
        .unwrap();
    assert_eq!(created.hf_token_sealed, Some(vec![1, 2, 3]));
    assert!(created.auto_start);
    assert_eq!(created.desired_state, DesiredState::Stopped);
    assert!(matches!(
        store.create_engine(&row("e2", "small"), None, 11).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.get_engine("small").await.unwrap().unwrap().id, "e1");

    let mut changed = created.clone();
    changed.spec = r#"{"name":"y"}"#.into();
    changed.hf_token_sealed = None;
    changed.auto_start = false;
    let updated = store.update_engine(&changed, None, 20).await.unwrap();
    assert_eq!(updated.spec, r#"{"name":"y"}"#);
    assert_eq!(updated.hf_token_sealed, None);
    assert!(!updated.auto_start);
    assert_eq!(updated.updated_at, 20);

    let running = store
        .set_engine_desired_state("e1", DesiredState::Running, true, None, 30)
        .await
        .unwrap();
    assert_eq!(running.desired_state, DesiredState::Running);
    assert_eq!(running.updated_at, 30);
    assert_eq!(running.generation, 1, "a new engine starts at generation 0");
    let stopped = store
        .set_engine_desired_state("e1", DesiredState::Stopped, false, None, 31)
        .await
        .unwrap();
    assert_eq!(stopped.generation, 1);
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    assert_eq!(store.list_engines().await.unwrap().len(), 1);

    store.delete_engine("e1", None, 40).await.unwrap();
    assert!(matches!(
        store.delete_engine("e1", None, 41).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .set_engine_desired_state("e1", DesiredState::Running, true, None, 42)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.list_engines().await.unwrap().is_empty());
}

on_both_backends!(engines_round_trip);
