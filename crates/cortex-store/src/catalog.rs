//! Providers (upstream servers) and models (names clients ask for, mapped to providers).
//!
//! Every change bumps `catalog_version`, which each instance polls to reload its routing table.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::provider::is_valid_health_check_path;
use cortex_domain::routing::{DEFAULT_WEIGHT, MAX_WEIGHT};
use cortex_domain::{ProviderKind, RoutingStrategy, Tenant};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

#[derive(Clone, PartialEq)]
pub struct ProviderRow {
    pub id: String,
    pub name: String,
    pub base_url: String,
    /// Sealed with the provider id as associated data; opened only to call upstream.
    pub api_key_sealed: Option<Vec<u8>>,
    pub source: String,
    /// How the provider takes its credential and where its endpoints are (SPEC §15).
    pub kind: ProviderKind,
    /// Azure's `api-version` or Anthropic's `anthropic-version`; `None` uses the kind's default.
    pub api_version: Option<String>,
    /// An OpenAI provider that serves `/responses` itself.
    pub responses_api: bool,
    /// Its share under a model's `weighted` strategy (1 to 1000).
    pub weight: u32,
    /// The path below `base_url` the active health check asks; `None` is
    /// [`cortex_domain::provider::DEFAULT_HEALTH_CHECK_PATH`].
    pub health_check_path: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for ProviderRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("kind", &self.kind)
            .field("weight", &self.weight)
            .field("has_api_key", &self.api_key_sealed.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub id: String,
    pub name: String,
    pub upstream_name: Option<String>,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub source: String,
    /// Provider ids in failover order.
    pub provider_ids: Vec<String>,
    /// How requests spread over the providers (SPEC §16).
    pub strategy: RoutingStrategy,
    /// The output cap set on a budgeted request that carries none (`None`: the gateway's
    /// default), so the cost reserved before it leaves bounds what it can spend (SPEC §18).
    pub max_output_tokens: Option<u32>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A change to a provider: `None` leaves a field alone; `api_key: Some(None)` removes the key.
///
/// A stored key belongs to the origin (scheme, host, port) it was given for: a `base_url` at
/// another origin without a new key in the same change drops the stored key (checked in the
/// update's transaction, against the row as it is then), so re-pointing a provider never sends
/// its secret to the new host. A change of path alone keeps the key.
#[derive(Default)]
pub struct ProviderChange {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub api_key_sealed: Option<Option<Vec<u8>>>,
    /// Only the config-file sync sets this (to `config`): the file now owns the row.
    pub source: Option<String>,
    pub kind: Option<ProviderKind>,
    /// `Some(None)` goes back to the kind's default.
    pub api_version: Option<Option<String>>,
    pub responses_api: Option<bool>,
    pub weight: Option<u32>,
    /// `Some(None)` goes back to the default path.
    pub health_check_path: Option<Option<String>>,
}

/// Whether moving a provider from `current` to `new` moves it to another origin, which drops
/// its stored key.
pub fn moves_origin(current: &str, new: &str) -> bool {
    !cortex_domain::egress::Origin::same(current, new)
}

#[derive(Debug, Default, Clone)]
pub struct ModelChange {
    pub name: Option<String>,
    pub upstream_name: Option<Option<String>>,
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
    pub provider_ids: Option<Vec<String>>,
    pub strategy: Option<RoutingStrategy>,
    /// `Some(None)` goes back to the gateway's default.
    pub max_output_tokens: Option<Option<u32>>,
}

const PROVIDER_COLUMNS: &str = "id, name, base_url, api_key_sealed, source, kind, api_version, \
     responses_api, weight, health_check_path, created_at, updated_at";
const MODEL_COLUMNS: &str =
    "id, name, upstream_name, input_price_per_mtok, output_price_per_mtok, \
     source, strategy, max_output_tokens, created_at, updated_at";

fn provider_from_row(row: &AnyRow) -> StoreResult<ProviderRow> {
    Ok(ProviderRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        base_url: row.try_get("base_url")?,
        api_key_sealed: row.try_get("api_key_sealed")?,
        source: row.try_get("source")?,
        kind: kind_from_row(row)?,
        api_version: row.try_get("api_version")?,
        responses_api: crate::get_bool(row, "responses_api")?,
        weight: weight_from_row(row)?,
        health_check_path: health_check_path_from_row(row)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A kind this build does not know (written by a newer one, or by hand) is refused rather
/// than guessed: sending a provider the wrong credential header would fail every request.
fn kind_from_row(row: &AnyRow) -> StoreResult<ProviderKind> {
    let text: String = row.try_get("kind")?;
    text.parse().map_err(|_| {
        tracing::error!(kind = %text, "a provider row has an unknown kind");
        StoreError::Corrupt
    })
}

/// A weight outside 1 to 1000 can only have been written by hand: it is read as the nearest
/// valid one, with a warning, rather than failing the whole catalogue (every model would stop
/// routing over one provider's share).
fn weight_from_row(row: &AnyRow) -> StoreResult<u32> {
    let stored: i64 = row.try_get("weight")?;
    let weight = stored.clamp(i64::from(DEFAULT_WEIGHT), i64::from(MAX_WEIGHT));
    if weight != stored {
        tracing::warn!(
            stored,
            used = weight,
            "a provider row has a weight outside 1 to 1000"
        );
    }
    Ok(u32::try_from(weight).unwrap_or(DEFAULT_WEIGHT))
}

/// A path the checks would refuse (written by hand) is not asked: the provider is checked at
/// the default path instead, with a warning, so a bad row can neither point the health check
/// outside the provider's base URL nor stop the catalogue from loading.
fn health_check_path_from_row(row: &AnyRow) -> StoreResult<Option<String>> {
    let stored: Option<String> = row.try_get("health_check_path")?;
    match stored {
        Some(path) if !is_valid_health_check_path(&path) => {
            tracing::warn!("a provider row has an invalid health_check_path; the default is used");
            Ok(None)
        }
        other => Ok(other),
    }
}

/// A strategy this build does not know (written by a newer one, or by hand) is read as
/// round-robin, with a warning: unlike an unknown kind, which would send the wrong credential
/// header, any strategy still reaches the right providers, so the model keeps serving. The
/// stored text is left alone until the model's strategy is changed (see `update_model`).
fn strategy_from_row(row: &AnyRow) -> StoreResult<RoutingStrategy> {
    let text: String = row.try_get("strategy")?;
    Ok(text.parse().unwrap_or_else(|_| {
        tracing::warn!(strategy = %text, "a model row has an unknown strategy; round_robin is used");
        RoutingStrategy::default()
    }))
}

/// A cap outside 1 to `u32::MAX` can only have been written by hand: it is read as none (the
/// gateway's default), with a warning, rather than failing the whole catalogue.
fn max_output_tokens_from_row(row: &AnyRow) -> StoreResult<Option<u32>> {
    let stored: Option<i64> = row.try_get("max_output_tokens")?;
    Ok(stored.and_then(|cap| match u32::try_from(cap) {
        Ok(cap) if cap > 0 => Some(cap),
        _ => {
            tracing::warn!(
                stored = cap,
                "a model row has an invalid max_output_tokens; the default is used"
            );
            None
        }
    }))
}

fn model_from_row(row: &AnyRow, provider_ids: Vec<String>) -> StoreResult<ModelRow> {
    Ok(ModelRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        upstream_name: row.try_get("upstream_name")?,
        input_price_per_mtok: row.try_get("input_price_per_mtok")?,
        output_price_per_mtok: row.try_get("output_price_per_mtok")?,
        source: row.try_get("source")?,
        provider_ids,
        strategy: strategy_from_row(row)?,
        max_output_tokens: max_output_tokens_from_row(row)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn bump_catalog(conn: &mut AnyConnection) -> StoreResult<()> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn set_model_providers(
    conn: &mut AnyConnection,
    model_id: &str,
    provider_ids: &[String],
) -> StoreResult<()> {
    sqlx::query("DELETE FROM model_providers WHERE model_id = $1")
        .bind(model_id)
        .execute(&mut *conn)
        .await?;
    for (position, provider_id) in provider_ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO model_providers (model_id, provider_id, position) VALUES ($1, $2, $3)",
        )
        .bind(model_id)
        .bind(provider_id)
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl Store {
    pub async fn catalog_version(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("version")?)
    }

    pub async fn list_providers(&self) -> StoreResult<Vec<ProviderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PROVIDER_COLUMNS} FROM providers ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(provider_from_row).collect()
    }

    pub async fn get_provider(&self, id_or_name: &str) -> StoreResult<Option<ProviderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {PROVIDER_COLUMNS} FROM providers WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(provider_from_row).transpose()
    }

    pub async fn create_provider(
        &self,
        provider: &ProviderRow,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<ProviderRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO providers ({PROVIDER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)"
        ))
        .bind(&provider.id)
        .bind(&provider.name)
        .bind(&provider.base_url)
        .bind(provider.api_key_sealed.clone())
        .bind(&provider.source)
        .bind(provider.kind.as_str())
        .bind(provider.api_version.clone())
        .bind(provider.responses_api)
        .bind(i64::from(provider.weight))
        .bind(provider.health_check_path.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        bump_catalog(&mut tx).await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_provider(&provider.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn update_provider(
        &self,
        id: &str,
        change: ProviderChange,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<ProviderRow> {
        let mut tx = self.pool.begin().await?;
        // Written first, so the transaction holds the write lock before it reads the row it
        // changes (on SQLite a read transaction cannot become a writer once another has
        // committed: it fails at once instead of waiting).
        bump_catalog(&mut tx).await?;
        let current = sqlx::query(&format!(
            "SELECT {PROVIDER_COLUMNS} FROM providers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let current = provider_from_row(&current)?;
        let moved = change
            .base_url
            .as_deref()
            .is_some_and(|new| moves_origin(&current.base_url, new));
        let sealed = match change.api_key_sealed {
            Some(new) => new,
            None if moved => None,
            None => current.api_key_sealed,
        };
        sqlx::query(
            "UPDATE providers SET name = $1, base_url = $2, api_key_sealed = $3, source = $4, \
             kind = $5, api_version = $6, responses_api = $7, weight = $8, health_check_path = $9, \
             updated_at = $10 WHERE id = $11",
        )
        .bind(change.name.unwrap_or(current.name))
        .bind(change.base_url.unwrap_or(current.base_url))
        .bind(sealed)
        .bind(change.source.unwrap_or(current.source))
        .bind(change.kind.unwrap_or(current.kind).as_str())
        .bind(change.api_version.unwrap_or(current.api_version))
        .bind(change.responses_api.unwrap_or(current.responses_api))
        .bind(i64::from(change.weight.unwrap_or(current.weight)))
        .bind(
            change
                .health_check_path
                .unwrap_or(current.health_check_path),
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_provider(id).await?.ok_or(StoreError::NotFound)
    }

    /// Deletes a provider; refused (Conflict) while a model still routes to it.
    pub async fn delete_provider(
        &self,
        id: &str,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query("SELECT COUNT(*) AS n FROM model_providers WHERE provider_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if used.try_get::<i64, _>("n")? > 0 {
            return Err(StoreError::Conflict);
        }
        let done = sqlx::query("DELETE FROM providers WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        bump_catalog(&mut tx).await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The models `tenant` may see: every model, or those in its organization's allow-list
    /// (`allowed_models`; NULL allows every model, an unknown organization none).
    pub async fn list_models(&self, tenant: &Tenant) -> StoreResult<Vec<ModelRow>> {
        let in_allow_list = match self.backend {
            crate::Backend::Sqlite => {
                "models.name IN (SELECT value FROM json_each(o.allowed_models))"
            }
            crate::Backend::Postgres => {
                "models.name IN (SELECT json_array_elements_text(o.allowed_models::json))"
            }
        };
        let rows = sqlx::query(&format!(
            "SELECT {MODEL_COLUMNS} FROM models WHERE $1 IS NULL OR EXISTS \
             (SELECT 1 FROM organizations o WHERE o.id = $1 AND (o.allowed_models IS NULL OR {in_allow_list})) \
             ORDER BY name"
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        let links = sqlx::query(
            "SELECT model_id, provider_id FROM model_providers ORDER BY model_id, position",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_model: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for link in &links {
            let model_id: String = link.try_get("model_id")?;
            by_model
                .entry(model_id)
                .or_default()
                .push(link.try_get("provider_id")?);
        }
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                model_from_row(row, by_model.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    pub async fn get_model(&self, id_or_name: &str) -> StoreResult<Option<ModelRow>> {
        Ok(self
            .list_models(&Tenant::All)
            .await?
            .into_iter()
            .find(|m| m.id == id_or_name || m.name == id_or_name))
    }

    pub async fn create_model(
        &self,
        model: &ModelRow,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<ModelRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO models ({MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)"
        ))
        .bind(&model.id)
        .bind(&model.name)
        .bind(model.upstream_name.clone())
        .bind(model.input_price_per_mtok)
        .bind(model.output_price_per_mtok)
        .bind(&model.source)
        .bind(model.strategy.as_str())
        .bind(model.max_output_tokens.map(i64::from))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        set_model_providers(&mut tx, &model.id, &model.provider_ids).await?;
        bump_catalog(&mut tx).await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_model(&model.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn update_model(
        &self,
        id: &str,
        change: ModelChange,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<ModelRow> {
        let current = self
            .get_model(id)
            .await?
            .filter(|m| m.id == id)
            .ok_or(StoreError::NotFound)?;
        let mut tx = self.pool.begin().await?;
        // The strategy is written only when the change names one, so a stored strategy this
        // build does not know (read as round_robin) survives a change of another field.
        sqlx::query(
            "UPDATE models SET name = $1, upstream_name = $2, input_price_per_mtok = $3, output_price_per_mtok = $4, \
             strategy = COALESCE($5, strategy), updated_at = $6, max_output_tokens = $8 WHERE id = $7",
        )
        .bind(change.name.unwrap_or(current.name))
        .bind(change.upstream_name.unwrap_or(current.upstream_name))
        .bind(change.input_price_per_mtok.unwrap_or(current.input_price_per_mtok))
        .bind(change.output_price_per_mtok.unwrap_or(current.output_price_per_mtok))
        .bind(change.strategy.map(RoutingStrategy::as_str))
        .bind(now)
        .bind(id)
        .bind(
            change
                .max_output_tokens
                .unwrap_or(current.max_output_tokens)
                .map(i64::from),
        )
        .execute(&mut *tx)
        .await?;
        if let Some(provider_ids) = &change.provider_ids {
            set_model_providers(&mut tx, id, provider_ids).await?;
        }
        bump_catalog(&mut tx).await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_model(id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn delete_model(
        &self,
        id: &str,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM model_providers WHERE model_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM models WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        bump_catalog(&mut tx).await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// What to do with a provider's stored secret during an import.
#[derive(Clone)]
pub enum SecretUpdate {
    /// Leave the stored value as it is (a redacted or absent secret in the file) — unless the
    /// import moves the provider to another origin, which drops it (see [`ProviderChange`]).
    Keep,
    /// Store this sealed value.
    Set(Vec<u8>),
}

/// One provider to create or update, matched by name.
#[derive(Clone)]
pub struct ProviderImport {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub api_key: SecretUpdate,
    pub kind: ProviderKind,
    pub api_version: Option<String>,
    pub responses_api: bool,
    pub weight: u32,
    pub health_check_path: Option<String>,
    /// True when no provider of that name existed when the plan was made.
    pub create: bool,
}

/// One model to create or update, matched by name; `row.provider_ids` are resolved ids.
#[derive(Debug, Clone)]
pub struct ModelImport {
    pub row: ModelRow,
    pub create: bool,
}

#[derive(Clone, Default)]
pub struct CatalogImport {
    pub providers: Vec<ProviderImport>,
    pub models: Vec<ModelImport>,
}

impl Store {
    /// Applies an imported catalogue in one transaction with its audit event: every provider
    /// and model is created or updated, or — on any failure, such as a name taken meanwhile —
    /// nothing is. Nothing is deleted.
    pub async fn import_catalog(
        &self,
        plan: &CatalogImport,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Written first, so the transaction holds the write lock before it reads anything.
        bump_catalog(&mut tx).await?;
        for provider in &plan.providers {
            if provider.create {
                let sealed = match &provider.api_key {
                    SecretUpdate::Keep => None,
                    SecretUpdate::Set(sealed) => Some(sealed.clone()),
                };
                sqlx::query(&format!(
                    "INSERT INTO providers ({PROVIDER_COLUMNS}) VALUES ($1, $2, $3, $4, 'import', $5, $6, $7, $8, $9, $10, $10)"
                ))
                .bind(&provider.id)
                .bind(&provider.name)
                .bind(&provider.base_url)
                .bind(sealed)
                .bind(provider.kind.as_str())
                .bind(provider.api_version.clone())
                .bind(provider.responses_api)
                .bind(i64::from(provider.weight))
                .bind(provider.health_check_path.clone())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            } else {
                let current: Option<String> =
                    sqlx::query("SELECT base_url FROM providers WHERE id = $1 AND name = $2")
                        .bind(&provider.id)
                        .bind(&provider.name)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| row.try_get("base_url"))
                        .transpose()?;
                let Some(current) = current else {
                    // Renamed or deleted since the plan was made.
                    return Err(StoreError::Conflict);
                };
                let done = match &provider.api_key {
                    SecretUpdate::Keep => {
                        let sql = if moves_origin(&current, &provider.base_url) {
                            "UPDATE providers SET base_url = $1, kind = $2, api_version = $3, responses_api = $4, \
                             weight = $5, health_check_path = $6, api_key_sealed = NULL, updated_at = $7 \
                             WHERE id = $8 AND name = $9"
                        } else {
                            "UPDATE providers SET base_url = $1, kind = $2, api_version = $3, responses_api = $4, \
                             weight = $5, health_check_path = $6, updated_at = $7 WHERE id = $8 AND name = $9"
                        };
                        sqlx::query(sql)
                            .bind(&provider.base_url)
                            .bind(provider.kind.as_str())
                            .bind(provider.api_version.clone())
                            .bind(provider.responses_api)
                            .bind(i64::from(provider.weight))
                            .bind(provider.health_check_path.clone())
                            .bind(now)
                            .bind(&provider.id)
                            .bind(&provider.name)
                            .execute(&mut *tx)
                            .await?
                    }
                    SecretUpdate::Set(sealed) => {
                        sqlx::query(
                            "UPDATE providers SET base_url = $1, kind = $2, api_version = $3, responses_api = $4, \
                             weight = $5, health_check_path = $6, api_key_sealed = $7, updated_at = $8 \
                             WHERE id = $9 AND name = $10",
                        )
                        .bind(&provider.base_url)
                        .bind(provider.kind.as_str())
                        .bind(provider.api_version.clone())
                        .bind(provider.responses_api)
                        .bind(i64::from(provider.weight))
                        .bind(provider.health_check_path.clone())
                        .bind(sealed.clone())
                        .bind(now)
                        .bind(&provider.id)
                        .bind(&provider.name)
                        .execute(&mut *tx)
                        .await?
                    }
                };
                if done.rows_affected() == 0 {
                    // Renamed or deleted since the plan was made.
                    return Err(StoreError::Conflict);
                }
            }
        }
        for model in &plan.models {
            let row = &model.row;
            if model.create {
                sqlx::query(&format!(
                    "INSERT INTO models ({MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'import', $6, $7, $8, $8)"
                ))
                .bind(&row.id)
                .bind(&row.name)
                .bind(row.upstream_name.clone())
                .bind(row.input_price_per_mtok)
                .bind(row.output_price_per_mtok)
                .bind(row.strategy.as_str())
                .bind(row.max_output_tokens.map(i64::from))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            } else {
                let done = sqlx::query(
                    "UPDATE models SET upstream_name = $1, input_price_per_mtok = $2, output_price_per_mtok = $3, \
                     strategy = $4, updated_at = $5, max_output_tokens = $8 WHERE id = $6 AND name = $7",
                )
                .bind(row.upstream_name.clone())
                .bind(row.input_price_per_mtok)
                .bind(row.output_price_per_mtok)
                .bind(row.strategy.as_str())
                .bind(now)
                .bind(&row.id)
                .bind(&row.name)
                .bind(row.max_output_tokens.map(i64::from))
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict);
                }
            }
            set_model_providers(&mut tx, &row.id, &row.provider_ids).await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }
}
