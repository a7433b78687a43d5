//! Catalogue administration shared by the admin API and the command line: providers and
//! models created, changed and deleted, each with its audit event in the same transaction.
//!
//! A provider's key is write-only: it is sealed with the master key (the provider id as
//! associated data) before it reaches the store, and no service hands it back. A provider
//! re-pointed at another origin without a new key loses its stored key, so the new host never
//! receives the old secret.
//!
//! A provider's kind decides the request body it takes (SPEC §15), and a model sends one body
//! to whichever of its providers it tries: a model whose providers mix Anthropic with
//! OpenAI-style kinds is refused.
//!
//! A provider's `weight` and `health_check_path` and a model's `strategy` (SPEC §16) are
//! checked by the same functions as in `cortex.toml` and a config import.
//!
//! The services do not refresh the catalogue cache: the caller does, once the change is
//! stored, and tells the other instances.

use cortex_config::{
    check_health_check_path, check_provider_dialect, check_strategy, check_weight, mixed_dialects,
    ConfigError, ProviderDialect,
};
use cortex_crypto::envelope::{seal, MasterKey};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::egress::EgressPolicy;
use cortex_domain::{ProviderKind, RoutingStrategy};
use cortex_store::catalog::{moves_origin, ModelChange, ModelRow, ProviderChange, ProviderRow};
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;

const PROVIDER_NAME_MAX: usize = 128;
const MODEL_NAME_MAX: usize = 256;
const API_KEY_MAX: usize = 4096;

/// What a new provider should be.
#[derive(Debug)]
pub struct NewProvider {
    pub name: String,
    /// Including the version prefix, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// `openai` (the default), `anthropic` or `azure`.
    pub kind: Option<String>,
    /// Azure's `api-version` or Anthropic's `anthropic-version`; the kind's default when absent.
    pub api_version: Option<String>,
    /// An `openai` provider that serves `/responses` itself.
    pub responses_api: bool,
    /// Its share under a model's `weighted` strategy: 1 to 1000, 1 when absent.
    pub weight: Option<u32>,
    /// The path below `base_url` the active health check asks; `models` when absent.
    pub health_check_path: Option<String>,
}

/// A change to a provider; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProviderUpdate {
    pub name: Option<String>,
    pub base_url: Option<String>,
    /// `Some(Some(key))` sets the key, `Some(None)` removes it.
    pub api_key: Option<Option<SecretString>>,
    /// A new kind; without `api_version` and `responses_api` in the same change, those go back
    /// to the new kind's defaults (a version belongs to the kind it was given for).
    pub kind: Option<String>,
    /// `Some(None)` goes back to the kind's default.
    pub api_version: Option<Option<String>>,
    pub responses_api: Option<bool>,
    pub weight: Option<u32>,
    /// `Some(None)` goes back to the default path (`models`).
    pub health_check_path: Option<Option<String>>,
}

/// A changed provider, and whether the change dropped its stored key (re-pointed at another
/// origin without a new key).
#[derive(Debug)]
pub struct UpdatedProvider {
    pub row: ProviderRow,
    pub api_key_dropped: bool,
}

/// What a new model should be. Providers are named by id or name; give `provider`,
/// `providers` or both (in that order, duplicates ignored).
#[derive(Debug, Default)]
pub struct NewModel {
    pub name: String,
    pub provider: Option<String>,
    pub providers: Option<Vec<String>>,
    pub upstream_name: Option<String>,
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
    /// `round_robin` (the default), `weighted`, `least_latency` or `priority`.
    pub strategy: Option<String>,
    /// The output cap set on a budgeted request that carries none (1 to 1,000,000).
    pub max_output_tokens: Option<u32>,
}

/// A change to a model; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ModelUpdate {
    pub name: Option<String>,
    pub provider: Option<String>,
    pub providers: Option<Vec<String>>,
    /// `Some(None)` removes the upstream name (the model's own name is sent).
    pub upstream_name: Option<Option<String>>,
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
    pub strategy: Option<String>,
    /// `Some(None)` goes back to the gateway's default.
    pub max_output_tokens: Option<Option<u32>>,
}

/// A stored model with the providers as they were read for the change, so the caller can
/// name the model's providers without reading them again.
#[derive(Debug)]
pub struct SavedModel {
    pub row: ModelRow,
    pub providers: Vec<ProviderRow>,
}

fn valid_name(name: &str, max: usize) -> Result<String, ControlError> {
    let name = name.trim();
    if name.is_empty() || name.len() > max || name.chars().any(char::is_control) {
        return Err(ControlError::invalid(format!(
            "`name` must be 1 to {max} printable characters"
        )));
    }
    Ok(name.to_owned())
}

/// A well-formed base URL whose host, when it is an address literal, the egress policy allows.
/// (Names are checked on every connect, after resolution; this is the clear early answer.)
fn valid_base_url(url: &str, upstream_allow: &EgressPolicy) -> Result<String, ControlError> {
    let url = url.trim();
    cortex_config::validate_base_url("base_url", url)
        .and_then(|()| cortex_config::check_egress("base_url", url, upstream_allow))
        .map_err(|e| ControlError::invalid(format!("`base_url`: {}", e.problem)))?;
    Ok(url.to_owned())
}

fn valid_price(field: &'static str, price: Option<f64>) -> Result<Option<f64>, ControlError> {
    match price {
        Some(p) if !(p.is_finite() && p >= 0.0) => Err(ControlError::invalid(format!(
            "`{field}` must be zero or more"
        ))),
        other => Ok(other),
    }
}

/// The kind, API version and Responses flag, checked together (the config file's rules).
fn valid_dialect(
    kind: Option<&str>,
    api_version: Option<&str>,
    responses_api: bool,
) -> Result<ProviderDialect, ControlError> {
    check_provider_dialect("", kind, api_version, responses_api)
        .map_err(|e| ControlError::invalid(format!("`{}` {}", e.setting, e.problem)))
}

/// A routing setting refused in the admin API's words: the body field, then the problem.
fn invalid_field(ConfigError { setting, problem }: ConfigError) -> ControlError {
    ControlError::invalid(format!("`{setting}` {problem}"))
}

fn valid_weight(weight: Option<u32>) -> Result<u32, ControlError> {
    check_weight("", weight).map_err(invalid_field)
}

fn valid_health_check_path(path: Option<&str>) -> Result<Option<String>, ControlError> {
    check_health_check_path("", path).map_err(invalid_field)
}

fn valid_strategy(strategy: Option<&str>) -> Result<RoutingStrategy, ControlError> {
    check_strategy("", strategy).map_err(invalid_field)
}

/// What a provider becomes after `update`: the fields it names, and for the others the
/// provider's current values — except that a change of kind resets the API version and the
/// Responses flag it does not name, which belonged to the old kind.
fn updated_dialect(
    current: &ProviderRow,
    update: &ProviderUpdate,
) -> Result<ProviderDialect, ControlError> {
    let kind = update.kind.as_deref().unwrap_or(current.kind.as_str());
    let kind_changes = kind != current.kind.as_str();
    let api_version = match &update.api_version {
        Some(version) => version.as_deref(),
        None if kind_changes => None,
        None => current.api_version.as_deref(),
    };
    let responses_api = match update.responses_api {
        Some(flag) => flag,
        None if kind_changes => false,
        None => current.responses_api,
    };
    valid_dialect(Some(kind), api_version, responses_api)
}

/// A model's providers must take one request body (the config file's rule).
fn one_dialect(provider_ids: &[String], providers: &[ProviderRow]) -> Result<(), ControlError> {
    let kinds = provider_ids.iter().filter_map(|id| {
        let provider = providers.iter().find(|p| &p.id == id)?;
        Some((provider.name.as_str(), provider.kind))
    });
    match mixed_dialects(kinds) {
        Some(why) => Err(ControlError::invalid(why)),
        None => Ok(()),
    }
}

/// Seals a provider key for storage, bound to the provider's id.
fn seal_key(
    master_key: &MasterKey,
    provider_id: &str,
    key: &SecretString,
) -> Result<Vec<u8>, ControlError> {
    let plain = key.expose_secret();
    if plain.is_empty() || plain.len() > API_KEY_MAX {
        return Err(ControlError::invalid(
            "`api_key` must be 1 to 4096 characters",
        ));
    }
    seal(master_key, plain.as_bytes(), provider_id.as_bytes()).map_err(|cause| {
        ControlError::Internal {
            context: "sealing a provider key failed",
            cause: cause.to_string(),
        }
    })
}

/// Whether re-pointing `current` at `new_base_url` without a new key drops its stored key:
/// the key was given for the provider's origin (the store enforces the same in its
/// transaction; this says so in the answer and the audit event).
fn drops_key(current: &ProviderRow, new_base_url: Option<&str>, key_given: bool) -> bool {
    let moves = new_base_url.is_some_and(|url| moves_origin(&current.base_url, url));
    moves && !key_given && current.api_key_sealed.is_some()
}

/// A store conflict in words for this operation; other store errors as they are.
fn conflict(err: StoreError, what: &'static str) -> ControlError {
    match err {
        StoreError::Conflict => ControlError::Conflict(what.into()),
        other => other.into(),
    }
}

pub async fn create_provider(
    store: &Store,
    master_key: &MasterKey,
    upstream_allow: &EgressPolicy,
    spec: &NewProvider,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<ProviderRow, ControlError> {
    let id = new_id();
    let name = valid_name(&spec.name, PROVIDER_NAME_MAX)?;
    let base_url = valid_base_url(&spec.base_url, upstream_allow)?;
    let dialect = valid_dialect(
        spec.kind.as_deref(),
        spec.api_version.as_deref(),
        spec.responses_api,
    )?;
    let weight = valid_weight(spec.weight)?;
    let health_check_path = valid_health_check_path(spec.health_check_path.as_deref())?;
    let sealed = spec
        .api_key
        .as_ref()
        .map(|key| seal_key(master_key, &id, key))
        .transpose()?;
    let row = ProviderRow {
        id: id.clone(),
        name,
        base_url,
        api_key_sealed: sealed,
        source: "api".into(),
        kind: dialect.kind,
        api_version: dialect.api_version,
        responses_api: dialect.responses_api,
        weight,
        health_check_path,
        created_at: now,
        updated_at: now,
    };
    let event = NewAuditEvent::new(actor, "provider.create", &id)
        .with_details(&json!({
            "name": row.name,
            "base_url": row.base_url,
            "has_api_key": row.api_key_sealed.is_some(),
            "kind": row.kind.as_str(),
            "api_version": row.api_version,
            "responses_api": row.responses_api,
            "weight": row.weight,
            "health_check_path": row.health_check_path,
        }))
        .with_ip(ip);
    store
        .create_provider(&row, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a provider with that name exists"))
}

/// Changes the provider with id `id` (not a name: 404 otherwise).
// Each argument is one thing the caller supplies (a struct would only regroup them).
#[allow(clippy::too_many_arguments)]
pub async fn update_provider(
    store: &Store,
    master_key: &MasterKey,
    upstream_allow: &EgressPolicy,
    id: &str,
    update: &ProviderUpdate,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<UpdatedProvider, ControlError> {
    let current = store
        .get_provider(id)
        .await?
        .filter(|p| p.id == id)
        .ok_or(ControlError::NotFound)?;
    let base_url = update
        .base_url
        .as_deref()
        .map(|url| valid_base_url(url, upstream_allow))
        .transpose()?;
    let api_key_dropped = drops_key(&current, base_url.as_deref(), update.api_key.is_some());
    let dialect = updated_dialect(&current, update)?;
    let touches_dialect =
        update.kind.is_some() || update.api_version.is_some() || update.responses_api.is_some();
    let change = ProviderChange {
        name: update
            .name
            .as_deref()
            .map(|n| valid_name(n, PROVIDER_NAME_MAX))
            .transpose()?,
        base_url,
        api_key_sealed: match &update.api_key {
            None if api_key_dropped => Some(None),
            None => None,
            Some(None) => Some(None),
            Some(Some(key)) => Some(Some(seal_key(master_key, &current.id, key)?)),
        },
        source: None,
        kind: touches_dialect.then_some(dialect.kind),
        api_version: touches_dialect.then(|| dialect.api_version.clone()),
        responses_api: touches_dialect.then_some(dialect.responses_api),
        weight: update.weight.map(|w| valid_weight(Some(w))).transpose()?,
        health_check_path: update
            .health_check_path
            .as_ref()
            .map(|path| valid_health_check_path(path.as_deref()))
            .transpose()?,
    };
    let event = NewAuditEvent::new(actor, "provider.update", id)
        .with_details(&json!({
            "name": change.name,
            "base_url": change.base_url,
            "api_key_changed": change.api_key_sealed.is_some(),
            "api_key_dropped": api_key_dropped,
            "kind": change.kind.map(ProviderKind::as_str),
            "api_version": change.api_version,
            "responses_api": change.responses_api,
            "weight": change.weight,
            "health_check_path": change.health_check_path,
        }))
        .with_ip(ip);
    let row = store
        .update_provider(id, change, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a provider with that name exists"))?;
    Ok(UpdatedProvider {
        row,
        api_key_dropped,
    })
}

/// Deletes a provider no model uses (409 otherwise).
pub async fn delete_provider(
    store: &Store,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let event = NewAuditEvent::new(actor, "provider.delete", id).with_ip(ip);
    store
        .delete_provider(id, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "models still use this provider"))
}

/// Resolves `provider` / `providers` (ids or names) to provider ids, in order; `None` when
/// neither is given.
fn resolve_providers(
    all: &[ProviderRow],
    provider: Option<&String>,
    providers: Option<&Vec<String>>,
) -> Result<Option<Vec<String>>, ControlError> {
    let wanted: Vec<&String> = provider
        .into_iter()
        .chain(providers.into_iter().flatten())
        .collect();
    if provider.is_none() && providers.is_none() {
        return Ok(None);
    }
    if wanted.is_empty() {
        return Err(ControlError::invalid(
            "give `provider` or a non-empty `providers`",
        ));
    }
    let mut ids: Vec<String> = Vec::new();
    for name in wanted {
        let found = all
            .iter()
            .find(|p| &p.id == name || &p.name == name)
            .ok_or(ControlError::invalid(
                "`provider` names an unknown provider",
            ))?;
        if !ids.contains(&found.id) {
            ids.push(found.id.clone());
        }
    }
    Ok(Some(ids))
}

/// The row a new model would be, checked; `providers` is the catalogue's providers.
fn new_model_row(
    spec: &NewModel,
    providers: &[ProviderRow],
    now: i64,
) -> Result<ModelRow, ControlError> {
    let provider_ids =
        resolve_providers(providers, spec.provider.as_ref(), spec.providers.as_ref())?
            .ok_or(ControlError::invalid("give `provider` or `providers`"))?;
    one_dialect(&provider_ids, providers)?;
    Ok(ModelRow {
        id: new_id(),
        name: valid_name(&spec.name, MODEL_NAME_MAX)?,
        upstream_name: spec
            .upstream_name
            .as_deref()
            .map(|u| valid_name(u, MODEL_NAME_MAX))
            .transpose()?,
        input_price_per_mtok: valid_price("input_price_per_mtok", spec.input_price_per_mtok)?
            .unwrap_or(0.0),
        output_price_per_mtok: valid_price("output_price_per_mtok", spec.output_price_per_mtok)?
            .unwrap_or(0.0),
        source: "api".into(),
        provider_ids,
        strategy: valid_strategy(spec.strategy.as_deref())?,
        max_output_tokens: valid_output_cap(spec.max_output_tokens)?,
        created_at: now,
        updated_at: now,
    })
}

/// The store change an update asks for, checked; `providers` is the catalogue's providers.
fn model_change(
    update: &ModelUpdate,
    providers: &[ProviderRow],
) -> Result<ModelChange, ControlError> {
    let provider_ids = resolve_providers(
        providers,
        update.provider.as_ref(),
        update.providers.as_ref(),
    )?;
    if let Some(ids) = &provider_ids {
        one_dialect(ids, providers)?;
    }
    Ok(ModelChange {
        name: update
            .name
            .as_deref()
            .map(|n| valid_name(n, MODEL_NAME_MAX))
            .transpose()?,
        upstream_name: update
            .upstream_name
            .as_ref()
            .map(|u| {
                u.as_deref()
                    .map(|u| valid_name(u, MODEL_NAME_MAX))
                    .transpose()
            })
            .transpose()?,
        input_price_per_mtok: valid_price("input_price_per_mtok", update.input_price_per_mtok)?,
        output_price_per_mtok: valid_price("output_price_per_mtok", update.output_price_per_mtok)?,
        provider_ids,
        strategy: update
            .strategy
            .as_deref()
            .map(|s| valid_strategy(Some(s)))
            .transpose()?,
        max_output_tokens: update.max_output_tokens.map(valid_output_cap).transpose()?,
    })
}

/// The largest output cap a model may set: far above any model's real output limit, low
/// enough that the reserved worst case stays a sane number.
pub const MAX_OUTPUT_TOKENS: u32 = 1_000_000;

fn valid_output_cap(cap: Option<u32>) -> Result<Option<u32>, ControlError> {
    match cap {
        Some(cap) if cap == 0 || cap > MAX_OUTPUT_TOKENS => Err(ControlError::invalid(format!(
            "`max_output_tokens` must be 1 to {MAX_OUTPUT_TOKENS}"
        ))),
        other => Ok(other),
    }
}

pub async fn create_model(
    store: &Store,
    spec: &NewModel,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<SavedModel, ControlError> {
    let providers = store.list_providers().await?;
    let row = new_model_row(spec, &providers, now)?;
    let event = NewAuditEvent::new(actor, "model.create", &row.id)
        .with_details(&json!({
            "name": row.name,
            "providers": row.provider_ids,
            "strategy": row.strategy.as_str(),
            "max_output_tokens": row.max_output_tokens,
        }))
        .with_ip(ip);
    let row = store
        .create_model(&row, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a model with that name exists"))?;
    Ok(SavedModel { row, providers })
}

pub async fn update_model(
    store: &Store,
    id: &str,
    update: &ModelUpdate,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<SavedModel, ControlError> {
    let providers = store.list_providers().await?;
    let change = model_change(update, &providers)?;
    let event = NewAuditEvent::new(actor, "model.update", id)
        .with_details(&json!({
            "name": change.name,
            "providers": change.provider_ids,
            "strategy": change.strategy.map(RoutingStrategy::as_str),
            "max_output_tokens": change.max_output_tokens,
        }))
        .with_ip(ip);
    let row = store
        .update_model(id, change, Some(&event), now)
        .await
        .map_err(|e| conflict(e, "a model with that name exists"))?;
    Ok(SavedModel { row, providers })
}

pub async fn delete_model(
    store: &Store,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let event = NewAuditEvent::new(actor, "model.delete", id).with_ip(ip);
    store.delete_model(id, Some(&event), now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_crypto::envelope::open;

    fn message(err: ControlError) -> String {
        match err {
            ControlError::Invalid(message) => message.into_owned(),
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    fn provider(id: &str, name: &str, base_url: &str, has_key: bool) -> ProviderRow {
        ProviderRow {
            id: id.into(),
            name: name.into(),
            base_url: base_url.into(),
            api_key_sealed: has_key.then(|| vec![1, 2, 3]),
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

    #[test]
    fn store_conflicts_are_named_for_the_operation_and_other_errors_pass_through() {
        let err = conflict(StoreError::Conflict, "models still use this provider");
        assert_eq!(err.to_string(), "models still use this provider");
        let api = cortex_gateway::ApiError::from(err);
        assert_eq!(api.code(), "conflict");
        assert!(matches!(
            conflict(StoreError::NotFound, "unused"),
            ControlError::Store(StoreError::NotFound)
        ));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(valid_name("  vllm  ", 128).unwrap(), "vllm");
        for bad in ["", "   ", "a\u{7}b"] {
            assert_eq!(
                message(valid_name(bad, 128).unwrap_err()),
                "`name` must be 1 to 128 printable characters"
            );
        }
        assert!(valid_name(&"x".repeat(256), 256).is_ok());
        assert_eq!(
            message(valid_name(&"x".repeat(257), 256).unwrap_err()),
            "`name` must be 1 to 256 printable characters"
        );
    }

    #[test]
    fn base_urls_must_be_plain_http_urls() {
        let open_policy = EgressPolicy::default();
        assert_eq!(
            valid_base_url(" http://127.0.0.1:8000/v1 ", &open_policy).unwrap(),
            "http://127.0.0.1:8000/v1"
        );
        assert_eq!(
            message(valid_base_url("ftp://example.com/v1", &open_policy).unwrap_err()),
            "`base_url`: base_url must start with http:// or https://"
        );
        for bad in [
            "http://user:pw@example.com/v1",
            "http://example.com/v1?x=1",
            "http:///v1",
        ] {
            assert!(
                message(valid_base_url(bad, &open_policy).unwrap_err())
                    .starts_with("`base_url`: base_url must be http(s)://host[:port]/path"),
                "{bad}"
            );
        }
    }

    #[test]
    fn base_urls_at_refused_addresses_are_refused_up_front() {
        let open_policy = EgressPolicy::default();
        let metadata = valid_base_url("http://169.254.169.254/v1", &open_policy).unwrap_err();
        assert!(message(metadata).contains("which the egress policy refuses"));
        let restricted = EgressPolicy::allow_list(["10.0.0.0/8"]).unwrap();
        assert!(valid_base_url("http://10.1.2.3:8000/v1", &restricted).is_ok());
        assert!(valid_base_url("http://192.0.2.1/v1", &restricted).is_err());
        // A name is decided when it is resolved, on every connect.
        assert!(valid_base_url("https://api.example.com/v1", &restricted).is_ok());
    }

    #[test]
    fn prices_must_be_finite_and_not_negative() {
        assert_eq!(valid_price("input_price_per_mtok", None).unwrap(), None);
        assert_eq!(
            valid_price("input_price_per_mtok", Some(0.0)).unwrap(),
            Some(0.0)
        );
        for bad in [-0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(
                message(valid_price("output_price_per_mtok", Some(bad)).unwrap_err()),
                "`output_price_per_mtok` must be zero or more"
            );
        }
    }

    #[test]
    fn provider_keys_are_bounded_and_sealed_to_the_provider() {
        let master = MasterKey::generate();
        for bad in [String::new(), "k".repeat(4097)] {
            assert_eq!(
                message(seal_key(&master, "p1", &SecretString::from(bad)).unwrap_err()),
                "`api_key` must be 1 to 4096 characters"
            );
        }
        let sealed = seal_key(&master, "p1", &SecretString::from("k".repeat(4096))).unwrap();
        assert_eq!(
            open(&master, &sealed, b"p1").unwrap().as_slice(),
            "k".repeat(4096).as_bytes()
        );
        assert!(open(&master, &sealed, b"p2").is_err());
    }

    #[test]
    fn a_key_is_dropped_only_when_the_origin_moves_without_a_new_key() {
        let keyed = provider("p1", "vllm", "http://10.0.0.1:8000/v1", true);
        assert!(drops_key(&keyed, Some("http://10.0.0.2:8000/v1"), false));
        assert!(!drops_key(&keyed, Some("http://10.0.0.2:8000/v1"), true));
        assert!(!drops_key(&keyed, Some("http://10.0.0.1:8000/v2"), false));
        assert!(!drops_key(&keyed, None, false));
        let keyless = provider("p1", "vllm", "http://10.0.0.1:8000/v1", false);
        assert!(!drops_key(&keyless, Some("http://10.0.0.2:8000/v1"), false));
    }

    #[test]
    fn providers_resolve_by_id_or_name_in_order_without_duplicates() {
        let all = [
            provider("p1", "a", "http://10.0.0.1/v1", false),
            provider("p2", "b", "http://10.0.0.2/v1", false),
        ];
        assert_eq!(resolve_providers(&all, None, None).unwrap(), None);
        let ids = resolve_providers(
            &all,
            Some(&"b".to_owned()),
            Some(&vec!["p1".to_owned(), "p2".to_owned()]),
        )
        .unwrap();
        assert_eq!(ids, Some(vec!["p2".to_owned(), "p1".to_owned()]));
        assert_eq!(
            message(resolve_providers(&all, None, Some(&Vec::new())).unwrap_err()),
            "give `provider` or a non-empty `providers`"
        );
        assert_eq!(
            message(resolve_providers(&all, Some(&"c".to_owned()), None).unwrap_err()),
            "`provider` names an unknown provider"
        );
    }

    #[test]
    fn a_new_model_needs_a_provider_and_gets_zero_prices_by_default() {
        let all = [provider("p1", "a", "http://10.0.0.1/v1", false)];
        let spec = NewModel {
            name: " llama ".into(),
            ..NewModel::default()
        };
        assert_eq!(
            message(new_model_row(&spec, &all, 7).unwrap_err()),
            "give `provider` or `providers`"
        );
        let spec = NewModel {
            provider: Some("a".into()),
            ..spec
        };
        let row = new_model_row(&spec, &all, 7).unwrap();
        assert_eq!(row.name, "llama");
        assert_eq!(row.provider_ids, ["p1"]);
        assert_eq!(
            (row.input_price_per_mtok, row.output_price_per_mtok),
            (0.0, 0.0)
        );
        assert_eq!((row.created_at, row.updated_at), (7, 7));
        assert_eq!(row.source, "api");
    }

    #[test]
    fn a_model_update_checks_only_what_it_changes() {
        let change = model_change(&ModelUpdate::default(), &[]).unwrap();
        assert!(change.name.is_none() && change.provider_ids.is_none());
        let clear = ModelUpdate {
            upstream_name: Some(None),
            ..ModelUpdate::default()
        };
        assert_eq!(model_change(&clear, &[]).unwrap().upstream_name, Some(None));
        let bad = ModelUpdate {
            upstream_name: Some(Some(String::new())),
            ..ModelUpdate::default()
        };
        assert_eq!(
            message(model_change(&bad, &[]).unwrap_err()),
            "`name` must be 1 to 256 printable characters"
        );
    }

    fn of_kind(id: &str, name: &str, kind: ProviderKind) -> ProviderRow {
        ProviderRow {
            kind,
            ..provider(id, name, "http://10.0.0.1/v1", false)
        }
    }

    #[test]
    fn provider_kinds_are_checked_with_the_field_named() {
        let azure = valid_dialect(Some("azure"), Some("2024-10-21"), false).unwrap();
        assert_eq!(azure.kind, ProviderKind::Azure);
        assert_eq!(
            message(valid_dialect(Some("bedrock"), None, false).unwrap_err()),
            "`kind` must be one of openai, anthropic, azure"
        );
        assert_eq!(
            message(valid_dialect(None, Some("2024-10-21"), false).unwrap_err()),
            "`api_version` is only for anthropic and azure providers"
        );
        assert_eq!(
            message(valid_dialect(Some("azure"), Some("x&y=z"), false).unwrap_err()),
            "`api_version` must be 1 to 64 letters, digits, '-', '.' or '_'"
        );
        assert_eq!(
            message(valid_dialect(Some("anthropic"), None, true).unwrap_err()),
            "`responses_api` is only for openai providers"
        );
    }

    #[test]
    fn a_change_of_kind_resets_what_belonged_to_the_old_kind() {
        let azure = ProviderRow {
            api_version: Some("2024-12-01-preview".into()),
            ..of_kind("p1", "az", ProviderKind::Azure)
        };
        let untouched = updated_dialect(&azure, &ProviderUpdate::default()).unwrap();
        assert_eq!(untouched.api_version.as_deref(), Some("2024-12-01-preview"));
        let to_openai = ProviderUpdate {
            kind: Some("openai".into()),
            ..ProviderUpdate::default()
        };
        let openai = updated_dialect(&azure, &to_openai).unwrap();
        assert_eq!(
            (openai.kind, openai.api_version),
            (ProviderKind::OpenAi, None)
        );
        let to_anthropic = ProviderUpdate {
            kind: Some("anthropic".into()),
            api_version: Some(Some("2023-06-01".into())),
            ..ProviderUpdate::default()
        };
        let anthropic = updated_dialect(&azure, &to_anthropic).unwrap();
        assert_eq!(anthropic.api_version.as_deref(), Some("2023-06-01"));
        // Naming a version for the kind the provider keeps is checked against that kind.
        let openai_row = ProviderRow {
            responses_api: true,
            ..of_kind("p2", "oa", ProviderKind::OpenAi)
        };
        let version_on_openai = ProviderUpdate {
            api_version: Some(Some("2024-10-21".into())),
            ..ProviderUpdate::default()
        };
        assert_eq!(
            message(updated_dialect(&openai_row, &version_on_openai).unwrap_err()),
            "`api_version` is only for anthropic and azure providers"
        );
        let to_azure = ProviderUpdate {
            kind: Some("azure".into()),
            ..ProviderUpdate::default()
        };
        assert!(
            !updated_dialect(&openai_row, &to_azure)
                .unwrap()
                .responses_api
        );
    }

    #[test]
    fn a_model_cannot_mix_anthropic_with_openai_style_providers() {
        let all = [
            of_kind("p1", "claude", ProviderKind::Anthropic),
            of_kind("p2", "oa", ProviderKind::OpenAi),
            of_kind("p3", "az", ProviderKind::Azure),
        ];
        let mixed = NewModel {
            name: "m".into(),
            providers: Some(vec!["claude".into(), "az".into()]),
            ..NewModel::default()
        };
        let why = message(new_model_row(&mixed, &all, 1).unwrap_err());
        assert!(
            why.contains("\"claude\" (anthropic) and \"az\" (azure)"),
            "{why}"
        );
        let openai_and_azure = NewModel {
            providers: Some(vec!["oa".into(), "az".into()]),
            ..mixed
        };
        assert!(new_model_row(&openai_and_azure, &all, 1).is_ok());
        let patch = ModelUpdate {
            provider: Some("oa".into()),
            providers: Some(vec!["p1".into()]),
            ..ModelUpdate::default()
        };
        assert!(message(model_change(&patch, &all).unwrap_err()).contains("different dialects"));
    }

    #[test]
    fn routing_fields_are_checked_with_the_field_named() {
        assert_eq!(valid_weight(None).unwrap(), 1);
        assert_eq!(valid_weight(Some(1000)).unwrap(), 1000);
        for bad in [0, 1001] {
            assert_eq!(
                message(valid_weight(Some(bad)).unwrap_err()),
                "`weight` must be a whole number from 1 to 1000"
            );
        }
        assert_eq!(valid_health_check_path(None).unwrap(), None);
        for bad in ["../x", "http://evil", "/models", ""] {
            let why = message(valid_health_check_path(Some(bad)).unwrap_err());
            assert!(why.starts_with("`health_check_path` must be"), "{why}");
            assert!(!why.contains("evil"), "{why}");
        }
        assert_eq!(valid_strategy(None).unwrap(), RoutingStrategy::RoundRobin);
        assert_eq!(
            message(valid_strategy(Some("fastest")).unwrap_err()),
            "`strategy` must be one of round_robin, weighted, least_latency, priority"
        );
    }

    #[test]
    fn models_take_a_strategy_and_updates_change_it_only_when_named() {
        let all = [provider("p1", "a", "http://10.0.0.1/v1", false)];
        let spec = NewModel {
            name: "m".into(),
            provider: Some("a".into()),
            ..NewModel::default()
        };
        assert_eq!(
            new_model_row(&spec, &all, 1).unwrap().strategy,
            RoutingStrategy::RoundRobin
        );
        let weighted = NewModel {
            strategy: Some("weighted".into()),
            ..spec
        };
        assert_eq!(
            new_model_row(&weighted, &all, 1).unwrap().strategy,
            RoutingStrategy::Weighted
        );
        assert_eq!(
            model_change(&ModelUpdate::default(), &all)
                .unwrap()
                .strategy,
            None
        );
        let patch = ModelUpdate {
            strategy: Some("least_latency".into()),
            ..ModelUpdate::default()
        };
        assert_eq!(
            model_change(&patch, &all).unwrap().strategy,
            Some(RoutingStrategy::LeastLatency)
        );
        let bad = ModelUpdate {
            strategy: Some("fastest".into()),
            ..ModelUpdate::default()
        };
        assert!(message(model_change(&bad, &all).unwrap_err()).contains("round_robin"));
    }
}
