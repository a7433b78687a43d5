//! Inference engines (SPEC §17): their definitions and the state operators asked for.
//!
//! Engines are deployment-wide, like providers. The spec is stored as JSON without `hf_token`;
//! the token is sealed by the caller (`cortex-crypto`, engine id as associated data) before it
//! reaches this crate. `desired_state` is what the admin API and the CLI write and what every
//! serving process reconciles its supervisor to.

use cortex_domain::audit::NewAuditEvent;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

/// What an operator asked an engine to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(DesiredState::Running),
            "stopped" => Some(DesiredState::Stopped),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq)]
pub struct EngineRow {
    pub id: String,
    pub name: String,
    /// `vllm` or `llamacpp`.
    pub engine: String,
    /// `process` or `docker`.
    pub runtime: String,
    /// The create body as JSON, without `hf_token`.
    pub spec: String,
    /// The Hugging Face token, sealed with the engine id as associated data.
    pub hf_token_sealed: Option<Vec<u8>>,
    pub desired_state: DesiredState,
    /// Moves on every start and restart request, so reconcilers see a restart of a running
    /// engine.
    pub generation: i64,
    pub auto_start: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for EngineRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("engine", &self.engine)
            .field("runtime", &self.runtime)
            .field("desired_state", &self.desired_state)
            .field("has_hf_token", &self.hf_token_sealed.is_some())
            .finish_non_exhaustive()
    }
}

const ENGINE_COLUMNS: &str = "id, name, engine, runtime, spec, hf_token_sealed, desired_state, \
     generation, auto_start, created_at, updated_at";

fn engine_from_row(row: &AnyRow) -> StoreResult<EngineRow> {
    let desired: String = row.try_get("desired_state")?;
    let desired_state = DesiredState::parse(&desired).ok_or_else(|| {
        tracing::error!(state = %desired, "an engine row has an unknown desired state");
        StoreError::Corrupt
    })?;
    Ok(EngineRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        engine: row.try_get("engine")?,
        runtime: row.try_get("runtime")?,
        spec: row.try_get("spec")?,
        hf_token_sealed: row.try_get("hf_token_sealed")?,
        desired_state,
        generation: row.try_get("generation")?,
        auto_start: crate::get_bool(row, "auto_start")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    pub async fn list_engines(&self) -> StoreResult<Vec<EngineRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ENGINE_COLUMNS} FROM engines ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(engine_from_row).collect()
    }

    /// The engine with this id or name.
    pub async fn get_engine(&self, id_or_name: &str) -> StoreResult<Option<EngineRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ENGINE_COLUMNS} FROM engines WHERE id = $1 OR name = $1"
        ))
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(engine_from_row).transpose()
    }

    pub async fn create_engine(
        &self,
        engine: &EngineRow,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<EngineRow> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO engines ({ENGINE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $9)"
        ))
        .bind(&engine.id)
        .bind(&engine.name)
        .bind(&engine.engine)
        .bind(&engine.runtime)
        .bind(&engine.spec)
        .bind(engine.hf_token_sealed.clone())
        .bind(engine.desired_state.as_str())
        .bind(engine.auto_start)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_engine(&engine.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Replaces the engine's definition (name, kinds, spec, sealed token, auto-start); the
    /// desired state is left as it is.
    pub async fn update_engine(
        &self,
        engine: &EngineRow,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<EngineRow> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE engines SET name = $1, engine = $2, runtime = $3, spec = $4, \
             hf_token_sealed = $5, auto_start = $6, updated_at = $7 WHERE id = $8",
        )
        .bind(&engine.name)
        .bind(&engine.engine)
        .bind(&engine.runtime)
        .bind(&engine.spec)
        .bind(engine.hf_token_sealed.clone())
        .bind(engine.auto_start)
        .bind(now)
        .bind(&engine.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_engine(&engine.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records what an operator asked the engine to be; a start or restart (`new_generation`)
    /// also moves its generation, so a restart of a running engine is seen by the reconcilers.
    pub async fn set_engine_desired_state(
        &self,
        id: &str,
        state: DesiredState,
        new_generation: bool,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<EngineRow> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE engines SET desired_state = $1, updated_at = $2, \
             generation = generation + $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(i64::from(new_generation))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        self.get_engine(id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn delete_engine(
        &self,
        id: &str,
        audit: Option<&NewAuditEvent>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM engines WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some(audit) = audit {
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
