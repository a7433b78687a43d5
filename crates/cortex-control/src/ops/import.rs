//! `cortex config import`: reads back what the config export writes (SPEC §9).
//!
//! The file is checked whole before anything is written: unknown fields, a wrong format or
//! version, bad names, URLs, prices, weights, health check paths, strategies or references
//! refuse the file with one line (the admin API's and `cortex.toml`'s rules). Fields an older
//! export lacks (`kind`, `weight`, `health_check_path`, `strategy`) take their defaults. Then providers
//! and models are created or updated by name in one transaction with one audit event; nothing is
//! deleted. Secrets: `[REDACTED]` (or no key) leaves a provider's stored secret as it is — a new
//! provider gets none, and the report names the providers that need one set; a provider moved
//! to another origin without a secret in the file loses its stored one (reported too). Roles are built in,
//! users need passwords and keys need secrets, none of which an export carries: those sections
//! are validated and reported, not applied.

use cortex_domain::Tenant;
use std::collections::{HashMap, HashSet};

use cortex_config::{ConfigError, ProviderDialect};
use cortex_crypto::envelope::{seal, MasterKey};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::time_fmt::rfc3339_to_millis;
use cortex_domain::{KeyLimits, Permission, Role, Scope};
use cortex_domain::{ProviderKind, RoutingStrategy};
use cortex_store::catalog::{
    moves_origin, CatalogImport, ModelImport, ModelRow, ProviderImport, SecretUpdate,
};
use cortex_store::{new_id, Store, StoreError};
use serde::Deserialize;
use serde_json::json;

use super::export::REDACTED;

/// Why a file was refused or could not be applied. Messages are one line and never echo a secret.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

fn invalid(message: impl Into<String>) -> ImportError {
    ImportError::Invalid(message.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    manifest: Manifest,
    #[serde(default)]
    providers: Vec<ProviderEntry>,
    #[serde(default)]
    models: Vec<ModelEntry>,
    #[serde(default)]
    roles: Vec<RoleEntry>,
    #[serde(default)]
    users: Vec<UserEntry>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

// Some fields are part of the format but not applied: they are checked by type (and below),
// which is all an import does with them.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: String,
    version: u32,
    #[serde(default)]
    exported_at: Option<String>,
    #[serde(default)]
    secrets_redacted: Option<bool>,
    #[serde(default)]
    secrets_were_present: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    name: String,
    base_url: String,
    /// `null`, `"[REDACTED]"`, or a literal key (sealed on import).
    #[serde(default)]
    api_key: Option<String>,
    /// Absent in exports from before provider kinds: `openai`.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    responses_api: bool,
    /// Absent in exports from before health-aware routing: 1.
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    health_check_path: Option<String>,
}

/// A refused setting as one line: `providers[a].weight: must be …`.
fn setting_error(ConfigError { setting, problem }: ConfigError) -> ImportError {
    invalid(format!("{setting}: {problem}"))
}

impl ProviderEntry {
    fn place(&self) -> String {
        format!("providers[{}]", self.name)
    }

    fn dialect(&self) -> Result<ProviderDialect, ImportError> {
        cortex_config::check_provider_dialect(
            &self.place(),
            self.kind.as_deref(),
            self.api_version.as_deref(),
            self.responses_api,
        )
        .map_err(setting_error)
    }

    fn weight(&self) -> Result<u32, ImportError> {
        cortex_config::check_weight(&self.place(), self.weight).map_err(setting_error)
    }

    fn health_check_path(&self) -> Result<Option<String>, ImportError> {
        cortex_config::check_health_check_path(&self.place(), self.health_check_path.as_deref())
            .map_err(setting_error)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    providers: Vec<String>,
    #[serde(default)]
    upstream_name: Option<String>,
    #[serde(default)]
    input_price_per_mtok: f64,
    #[serde(default)]
    output_price_per_mtok: f64,
    /// Absent in exports from before health-aware routing: `round_robin`.
    #[serde(default)]
    strategy: Option<String>,
    /// Absent in exports from before per-model output caps: the gateway's default.
    #[serde(default)]
    max_output_tokens: Option<u32>,
}

impl ModelEntry {
    fn strategy(&self) -> Result<RoutingStrategy, ImportError> {
        cortex_config::check_strategy(&format!("models[{}]", self.name), self.strategy.as_deref())
            .map_err(setting_error)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    permissions: Vec<String>,
}

// Some fields are part of the format but not applied: they are checked by type (and below),
// which is all an import does with them.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    role: String,
    #[serde(default)]
    disabled: bool,
    /// Exports since organizations (SPEC §18) name the user's organization.
    #[serde(default)]
    org_id: Option<String>,
}

// Some fields are part of the format but not applied: they are checked by type (and below),
// which is all an import does with them.
#[allow(dead_code)]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    name: String,
    #[serde(default)]
    owner: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    limits: KeyLimits,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    org_id: Option<String>,
    #[serde(default)]
    team_id: Option<String>,
}

/// What an import did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub providers_created: Vec<String>,
    pub providers_updated: Vec<String>,
    pub models_created: Vec<String>,
    pub models_updated: Vec<String>,
    /// Providers whose export had a secret (redacted) and that have none stored here.
    pub providers_needing_secret: Vec<String>,
    /// Providers moved to another origin (scheme, host, port) without a secret in the file:
    /// their stored key is dropped, never sent to the new host.
    pub providers_key_dropped: Vec<String>,
    pub users_not_imported: usize,
    pub keys_not_imported: usize,
}

/// Parses and checks the file, plans the changes against the database, and applies them in one
/// transaction unless `dry_run`.
pub async fn import(
    store: &Store,
    master_key: &MasterKey,
    text: &str,
    actor: &str,
    dry_run: bool,
    now: i64,
) -> Result<ImportReport, ImportError> {
    let file: ExportFile =
        serde_json::from_str(text).map_err(|e| invalid(describe_json_error(&e)))?;
    validate(&file)?;
    let (plan, report) = plan(store, master_key, &file).await?;
    if dry_run {
        return Ok(report);
    }
    let event = NewAuditEvent::new(actor, "config.import", "config").with_details(&json!({
        "providers_created": report.providers_created,
        "providers_updated": report.providers_updated,
        "models_created": report.models_created,
        "models_updated": report.models_updated,
        "providers_needing_secret": report.providers_needing_secret,
        "providers_key_dropped": report.providers_key_dropped,
    }));
    store.import_catalog(&plan, &event, now).await?;
    Ok(report)
}

/// serde_json's message names the field and position, never the value.
fn describe_json_error(err: &serde_json::Error) -> String {
    let message = err.to_string();
    format!("not a Cortex config export: {message}")
}

fn validate(file: &ExportFile) -> Result<(), ImportError> {
    if file.manifest.format != "cortex-config-export" {
        return Err(invalid("manifest.format must be \"cortex-config-export\""));
    }
    if file.manifest.version != 1 {
        return Err(invalid(format!(
            "manifest.version {} is not supported (this Cortex reads version 1)",
            file.manifest.version
        )));
    }
    let mut provider_names = HashSet::new();
    for provider in &file.providers {
        let place = format!("providers[{}]", provider.name);
        if provider.name.trim().is_empty() || provider.name.len() > 128 {
            return Err(invalid("every provider needs a name of 1-128 characters"));
        }
        if !provider_names.insert(provider.name.as_str()) {
            return Err(invalid(format!("{place}: the name is used twice")));
        }
        cortex_config::validate_base_url(&place, &provider.base_url)
            .map_err(|e| invalid(format!("{}: {}", e.setting, e.problem)))?;
        provider.dialect()?;
        provider.weight()?;
        provider.health_check_path()?;
        if let Some(key) = &provider.api_key {
            if key.is_empty() || key.len() > 4096 {
                return Err(invalid(format!(
                    "{place}: api_key must be null, \"{REDACTED}\" or 1-4096 characters"
                )));
            }
        }
    }
    let mut model_names = HashSet::new();
    for model in &file.models {
        let place = format!("models[{}]", model.name);
        if model.name.trim().is_empty() || model.name.len() > 256 {
            return Err(invalid("every model needs a name of 1-256 characters"));
        }
        if !model_names.insert(model.name.as_str()) {
            return Err(invalid(format!("{place}: the name is used twice")));
        }
        if model.providers.is_empty() {
            return Err(invalid(format!("{place}: needs at least one provider")));
        }
        let unique: HashSet<&String> = model.providers.iter().collect();
        if unique.len() != model.providers.len() {
            return Err(invalid(format!("{place}: a provider is listed twice")));
        }
        if model
            .upstream_name
            .as_ref()
            .is_some_and(|n| n.is_empty() || n.len() > 256)
        {
            return Err(invalid(format!(
                "{place}: upstream_name must be 1-256 characters"
            )));
        }
        for price in [model.input_price_per_mtok, model.output_price_per_mtok] {
            if !(price.is_finite() && price >= 0.0) {
                return Err(invalid(format!("{place}: prices must be zero or more")));
            }
        }
        model.strategy()?;
        if model
            .max_output_tokens
            .is_some_and(|cap| !(1..=1_000_000).contains(&cap))
        {
            return Err(invalid(format!(
                "{place}: max_output_tokens must be 1 to 1000000"
            )));
        }
    }
    for role in &file.roles {
        if Role::parse(&role.name).is_none() {
            return Err(invalid(format!("roles: unknown role {:?}", role.name)));
        }
        if let Some(unknown) = role.permissions.iter().find(|p| {
            !Permission::ALL
                .iter()
                .any(|known| known.as_str() == p.as_str())
        }) {
            return Err(invalid(format!(
                "roles[{}]: unknown permission {unknown:?}",
                role.name
            )));
        }
    }
    for user in &file.users {
        if Role::parse(&user.role).is_none() {
            return Err(invalid(format!(
                "users[{}]: unknown role {:?}",
                user.username, user.role
            )));
        }
    }
    for key in &file.keys {
        Scope::parse_list(&key.scopes.join(","))
            .map_err(|e| invalid(format!("keys[{}]: {e}", key.name)))?;
        if key
            .expires_at
            .as_ref()
            .is_some_and(|t| rfc3339_to_millis(t).is_none())
        {
            return Err(invalid(format!(
                "keys[{}]: expires_at must be an RFC 3339 time",
                key.name
            )));
        }
    }
    Ok(())
}

async fn plan(
    store: &Store,
    master_key: &MasterKey,
    file: &ExportFile,
) -> Result<(CatalogImport, ImportReport), ImportError> {
    let existing_providers: HashMap<String, cortex_store::catalog::ProviderRow> = store
        .list_providers()
        .await?
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let existing_models: HashMap<String, ModelRow> = store
        .list_models(&Tenant::All)
        .await?
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    let mut report = ImportReport {
        users_not_imported: file.users.len(),
        keys_not_imported: file.keys.len(),
        ..ImportReport::default()
    };
    let mut plan = CatalogImport::default();
    let mut provider_ids: HashMap<&str, String> = existing_providers
        .iter()
        .map(|(name, p)| (name.as_str(), p.id.clone()))
        .collect();
    // Kinds as they will be after the import: the file's, then the database's.
    let mut provider_kinds: HashMap<&str, ProviderKind> = existing_providers
        .iter()
        .map(|(name, p)| (name.as_str(), p.kind))
        .collect();
    for entry in &file.providers {
        let existing = existing_providers.get(&entry.name);
        let id = existing.map(|p| p.id.clone()).unwrap_or_else(new_id);
        let api_key = match entry.api_key.as_deref() {
            None | Some(REDACTED) => SecretUpdate::Keep,
            Some(literal) => SecretUpdate::Set(
                seal(master_key, literal.as_bytes(), id.as_bytes())
                    .map_err(|_| invalid("cannot encrypt a provider key"))?,
            ),
        };
        let key_dropped = matches!(api_key, SecretUpdate::Keep)
            && existing.is_some_and(|p| {
                p.api_key_sealed.is_some() && moves_origin(&p.base_url, &entry.base_url)
            });
        if key_dropped {
            report.providers_key_dropped.push(entry.name.clone());
        }
        let has_secret_after = matches!(api_key, SecretUpdate::Set(_))
            || (existing.is_some_and(|p| p.api_key_sealed.is_some()) && !key_dropped);
        if entry.api_key.as_deref() == Some(REDACTED) && !has_secret_after {
            report.providers_needing_secret.push(entry.name.clone());
        }
        match existing {
            Some(_) => report.providers_updated.push(entry.name.clone()),
            None => report.providers_created.push(entry.name.clone()),
        }
        provider_ids.insert(entry.name.as_str(), id.clone());
        let dialect = entry.dialect()?;
        provider_kinds.insert(entry.name.as_str(), dialect.kind);
        plan.providers.push(ProviderImport {
            id,
            name: entry.name.clone(),
            base_url: entry.base_url.clone(),
            api_key,
            kind: dialect.kind,
            api_version: dialect.api_version,
            responses_api: dialect.responses_api,
            weight: entry.weight()?,
            health_check_path: entry.health_check_path()?,
            create: existing.is_none(),
        });
    }
    for entry in &file.models {
        let targets = entry
            .providers
            .iter()
            .map(|name| {
                provider_ids.get(name.as_str()).cloned().ok_or_else(|| {
                    invalid(format!(
                        "models[{}]: unknown provider {name:?} (not in the file nor in the database)",
                        entry.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = entry.providers.iter().filter_map(|name| {
            let kind = provider_kinds.get(name.as_str())?;
            Some((name.as_str(), *kind))
        });
        if let Some(why) = cortex_config::mixed_dialects(kinds) {
            return Err(invalid(format!("models[{}]: {why}", entry.name)));
        }
        let existing = existing_models.get(&entry.name);
        match existing {
            Some(_) => report.models_updated.push(entry.name.clone()),
            None => report.models_created.push(entry.name.clone()),
        }
        plan.models.push(ModelImport {
            row: ModelRow {
                id: existing.map(|m| m.id.clone()).unwrap_or_else(new_id),
                name: entry.name.clone(),
                upstream_name: entry.upstream_name.clone(),
                input_price_per_mtok: entry.input_price_per_mtok,
                output_price_per_mtok: entry.output_price_per_mtok,
                source: "import".to_owned(),
                provider_ids: targets,
                strategy: entry.strategy()?,
                max_output_tokens: entry.max_output_tokens,
                created_at: 0,
                updated_at: 0,
            },
            create: existing.is_none(),
        });
    }
    Ok((plan, report))
}
