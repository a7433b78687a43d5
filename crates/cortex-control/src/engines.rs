//! Inference engines (SPEC §17) administered by the admin API and the command line: created,
//! changed, deleted, and asked to start, stop or restart, each with its audit event in the same
//! transaction.
//!
//! A definition is parsed strictly and checked by [`EngineSpec::validate`] (names, settings,
//! the host/port/key/TLS deny-lists) and its model is resolved against `CORTEX_MODELS_DIR`
//! (path containment) before anything is stored: a refused body creates nothing.
//!
//! `hf_token` is write-only: it is sealed with the master key (the engine id as associated
//! data) before it reaches the store, the stored spec is the body without it, and audit events
//! say `had_hf_token` / `hf_token_changed`, never the token.
//!
//! Start, stop and restart only record what the operator asked (`desired_state`, and a new
//! generation for a start or restart). The serving process reconciles its supervisor to the
//! stored rows (`cortex-server`'s engine module), at once for its own admin API and by polling
//! for the command line and the other instances.

use cortex_crypto::envelope::{open, seal, MasterKey};
use cortex_domain::audit::NewAuditEvent;
use cortex_engines::models_dir::resolve_without_models_dir;
use cortex_engines::{EngineSpec, ModelsDir, SpecError};
use cortex_store::engines::{DesiredState, EngineRow};
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;

/// What the operator asked an engine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCommand {
    Start,
    Stop,
    Restart,
}

impl EngineCommand {
    fn action(self) -> &'static str {
        match self {
            EngineCommand::Start => "engine.start",
            EngineCommand::Stop => "engine.stop",
            EngineCommand::Restart => "engine.restart",
        }
    }
}

/// A refused definition: the message names the field, flag or variable (never a value).
pub fn spec_error(err: &SpecError) -> ControlError {
    ControlError::invalid(err.to_string())
}

/// Parses a create body as strictly as the engine crate does.
pub fn parse_spec(body: serde_json::Value) -> Result<EngineSpec, ControlError> {
    serde_json::from_value::<EngineSpec>(body).map_err(|e| ControlError::invalid(e.to_string()))
}

/// Every check a definition must pass before it is stored or previewed: the spec's own
/// checks, then its model resolved under the models directory (no `..`, nothing outside it,
/// symlinks followed and checked) or as a Hugging Face repo id.
pub fn check_spec(spec: &EngineSpec, models_dir: Option<&ModelsDir>) -> Result<(), ControlError> {
    spec.validate().map_err(|e| spec_error(&e))?;
    let resolved = match models_dir {
        Some(dir) => dir.resolve(&spec.model),
        None => resolve_without_models_dir(&spec.model),
    };
    resolved.map_err(|e| spec_error(&SpecError::Model(e)))?;
    Ok(())
}

fn seal_token(
    master_key: &MasterKey,
    engine_id: &str,
    token: &SecretString,
) -> Result<Vec<u8>, ControlError> {
    seal(
        master_key,
        token.expose_secret().as_bytes(),
        engine_id.as_bytes(),
    )
    .map_err(|cause| ControlError::Internal {
        context: "sealing an engine's hf_token failed",
        cause: cause.to_string(),
    })
}

/// The stored engine as a spec, with its `hf_token` opened.
pub fn load_spec(master_key: &MasterKey, row: &EngineRow) -> Result<EngineSpec, ControlError> {
    let corrupt = |cause: String| ControlError::Internal {
        context: "a stored engine cannot be read",
        cause,
    };
    let mut spec: EngineSpec =
        serde_json::from_str(&row.spec).map_err(|e| corrupt(e.to_string()))?;
    spec.hf_token = match &row.hf_token_sealed {
        None => None,
        Some(sealed) => {
            let plain = open(master_key, sealed, row.id.as_bytes())
                .map_err(|_| corrupt("the hf_token cannot be opened".into()))?;
            let text = String::from_utf8(plain.to_vec())
                .map_err(|_| corrupt("the hf_token is not text".into()))?;
            Some(SecretString::from(text))
        }
    };
    Ok(spec)
}

/// The row for `spec` (its JSON never holds the token: `hf_token` does not serialize).
fn row_for(
    master_key: &MasterKey,
    id: &str,
    spec: &EngineSpec,
    now: i64,
) -> Result<EngineRow, ControlError> {
    let text = serde_json::to_string(spec).map_err(|e| ControlError::Internal {
        context: "serializing an engine failed",
        cause: e.to_string(),
    })?;
    Ok(EngineRow {
        id: id.to_owned(),
        name: spec.name.clone(),
        engine: spec.engine.as_str().to_owned(),
        runtime: spec.runtime.as_str().to_owned(),
        spec: text,
        hf_token_sealed: spec
            .hf_token
            .as_ref()
            .map(|t| seal_token(master_key, id, t))
            .transpose()?,
        desired_state: DesiredState::Stopped,
        generation: 0,
        auto_start: spec.auto_start,
        created_at: now,
        updated_at: now,
    })
}

fn conflict(err: StoreError) -> ControlError {
    match err {
        StoreError::Conflict => ControlError::Conflict("an engine with that name exists".into()),
        other => other.into(),
    }
}

/// What an audit event says about a definition: no secret, no environment value.
fn audit_details(spec: &EngineSpec) -> serde_json::Value {
    json!({
        "name": spec.name,
        "engine": spec.engine.as_str(),
        "runtime": spec.runtime.as_str(),
        "model": spec.model,
        "served_model_name": spec.served_model_name(),
        "image": spec.image,
        "gpus": spec.gpus,
        "extra_args": spec.extra_args.len(),
        "env": spec.env.keys().collect::<Vec<_>>(),
        "auto_start": spec.auto_start,
        "had_hf_token": spec.has_hf_token(),
    })
}

/// Stores a new engine (stopped; `auto_start` starts it at the next boot).
pub async fn create_engine(
    store: &Store,
    master_key: &MasterKey,
    models_dir: Option<&ModelsDir>,
    spec: &EngineSpec,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<EngineRow, ControlError> {
    check_spec(spec, models_dir)?;
    let id = new_id();
    let row = row_for(master_key, &id, spec, now)?;
    let event = NewAuditEvent::new(actor, "engine.create", &id)
        .with_details(&audit_details(spec))
        .with_ip(ip);
    store
        .create_engine(&row, Some(&event), now)
        .await
        .map_err(conflict)
}

/// Applies a JSON merge patch to the engine with id `id` (not a name); the next start uses it.
// Each argument is one thing the caller supplies (a struct would only regroup them).
#[allow(clippy::too_many_arguments)]
pub async fn update_engine(
    store: &Store,
    master_key: &MasterKey,
    models_dir: Option<&ModelsDir>,
    id: &str,
    patch: &serde_json::Value,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<EngineRow, ControlError> {
    let current = store
        .get_engine(id)
        .await?
        .filter(|e| e.id == id)
        .ok_or(ControlError::NotFound)?;
    let spec = load_spec(master_key, &current)?
        .patched(patch)
        .map_err(ControlError::invalid)?;
    check_spec(&spec, models_dir)?;
    let mut row = row_for(master_key, id, &spec, now)?;
    row.desired_state = current.desired_state;
    row.generation = current.generation;
    row.created_at = current.created_at;
    let mut details = audit_details(&spec);
    details["hf_token_changed"] = json!(patch.get("hf_token").is_some());
    let event = NewAuditEvent::new(actor, "engine.update", id)
        .with_details(&details)
        .with_ip(ip);
    store
        .update_engine(&row, Some(&event), now)
        .await
        .map_err(conflict)
}

pub async fn delete_engine(
    store: &Store,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let event = NewAuditEvent::new(actor, "engine.delete", id).with_ip(ip);
    store
        .delete_engine(id, Some(&event), now)
        .await
        .map_err(Into::into)
}

/// Records a start, stop or restart of the engine with id `id`.
pub async fn command_engine(
    store: &Store,
    id: &str,
    command: EngineCommand,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<EngineRow, ControlError> {
    let (state, new_generation) = match command {
        EngineCommand::Start | EngineCommand::Restart => (DesiredState::Running, true),
        EngineCommand::Stop => (DesiredState::Stopped, false),
    };
    let event = NewAuditEvent::new(actor, command.action(), id).with_ip(ip);
    store
        .set_engine_desired_state(id, state, new_generation, Some(&event), now)
        .await
        .map_err(Into::into)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spec(body: serde_json::Value) -> EngineSpec {
        parse_spec(body).unwrap()
    }

    fn body() -> serde_json::Value {
        json!({"name": "small", "engine": "llamacpp", "runtime": "process",
               "model": "tiny.gguf", "hf_token": "hf_secret_value_123"})
    }

    #[test]
    fn the_token_is_sealed_to_the_engine_and_never_in_the_stored_spec_or_audit() {
        let master = MasterKey::from_bytes([3; 32]);
        let spec = spec(body());
        let row = row_for(&master, "e1", &spec, 5).unwrap();
        assert!(!row.spec.contains("hf_secret_value_123"));
        assert!(!audit_details(&spec)
            .to_string()
            .contains("hf_secret_value_123"));
        assert_eq!(audit_details(&spec)["had_hf_token"], json!(true));
        let sealed = row.hf_token_sealed.clone().unwrap();
        assert!(open(&master, &sealed, b"e2").is_err());
        let loaded = load_spec(&master, &row).unwrap();
        assert_eq!(
            loaded.hf_token.unwrap().expose_secret(),
            "hf_secret_value_123"
        );
    }

    #[test]
    fn model_paths_are_contained_in_the_models_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("tiny.gguf"), b"GGUF").unwrap();
        std::fs::write(tmp.path().join("secret.gguf"), b"GGUF").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.gguf"), root.join("escape.gguf"))
            .unwrap();
        let dir = ModelsDir::new(&root).unwrap();
        assert!(check_spec(&spec(body()), Some(&dir)).is_ok());
        let outside = tmp.path().join("secret.gguf");
        for model in [
            "../secret.gguf",
            outside.to_str().unwrap(),
            "escape.gguf",
            "/etc/passwd",
        ] {
            let mut b = body();
            b["model"] = json!(model);
            let err = check_spec(&spec(b), Some(&dir)).unwrap_err().to_string();
            assert!(err.starts_with("model:"), "{model}: {err}");
        }
        // Without a models directory only Hugging Face repo ids are accepted.
        assert!(check_spec(&spec(body()), None).is_err());
    }

    #[test]
    fn denied_arguments_are_refused_with_the_flag_named() {
        let mut b = body();
        b["extra_args"] = json!(["--host=0.0.0.0"]);
        let err = check_spec(&spec(b), None).unwrap_err().to_string();
        assert!(err.contains("--host"), "{err}");
    }
}
