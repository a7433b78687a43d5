//! Gateway policies (SPEC §21): the response cache and the guardrails of an organization, one of
//! its models or one of its keys, as rows of `gateway_policies` (migration `0012_policies`).
//!
//! Like every other query of tenant data, these take the caller's [`Tenant`] and apply it in
//! their SQL: another organization's policy is simply not found. Every change bumps
//! `catalog_version` in its own transaction, so each instance reloads its policies with the
//! routing table through the poll and the Redis message it already has for the catalogue; and
//! every change commits with its audit event.
//!
//! The spec is kept as the JSON text the control plane checked: the store does not interpret
//! it, so a shape that changes later is still read (and skipped by whoever cannot parse it)
//! rather than failing every list.

use cortex_domain::audit::{AuditRecord, NewAuditEvent};
use cortex_domain::policy::PolicyScope;
use cortex_domain::Tenant;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::audit::append_in_tx;
use crate::{Store, StoreError, StoreResult};

/// The audit actions the data plane writes for guardrail hits (`guard_events.rs` in the
/// gateway), which [`Store::guardrail_events`] reads back.
pub const GUARDRAIL_ACTIONS: [&str; 3] = ["guardrail.block", "guardrail.redact", "guardrail.log"];

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRow {
    pub id: String,
    pub org_id: String,
    pub scope: PolicyScope,
    /// The organization's id, the model's name or the key's id, by `scope`.
    pub target: String,
    /// The `PolicySpec` as JSON text.
    pub spec: String,
    /// 1 when created, one more at every change.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub id: String,
    pub org_id: String,
    pub scope: PolicyScope,
    pub target: String,
    pub spec: String,
}

const POLICY_COLUMNS: &str = "id, org_id, scope, target, spec, version, created_at, updated_at";

fn policy_from_row(row: &AnyRow) -> StoreResult<PolicyRow> {
    let scope: String = row.try_get("scope")?;
    Ok(PolicyRow {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        scope: PolicyScope::parse(&scope).ok_or(StoreError::Corrupt)?,
        target: row.try_get("target")?,
        spec: row.try_get("spec")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn policy_in_tx(
    conn: &mut AnyConnection,
    tenant: &Tenant,
    id: &str,
) -> StoreResult<Option<PolicyRow>> {
    let row = sqlx::query(&format!(
        "SELECT {POLICY_COLUMNS} FROM gateway_policies WHERE id = $1 AND ($2 IS NULL OR org_id = $2)"
    ))
    .bind(id)
    .bind(tenant.org_filter())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(policy_from_row).transpose()
}

/// The catalogue's version moves with every policy change: each instance reloads policies with
/// its routing table (`CatalogCache::refresh` in the gateway).
async fn bump_catalog(conn: &mut AnyConnection) -> StoreResult<()> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// The policies `tenant` sees, by organization, scope and target.
    pub async fn list_policies(&self, tenant: &Tenant) -> StoreResult<Vec<PolicyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {POLICY_COLUMNS} FROM gateway_policies WHERE ($1 IS NULL OR org_id = $1) \
             ORDER BY org_id, scope, target"
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(policy_from_row).collect()
    }

    pub async fn get_policy(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<PolicyRow>> {
        let mut conn = self.pool.acquire().await?;
        policy_in_tx(&mut conn, tenant, id).await
    }

    /// Every policy of every organization, for the data plane's in-memory set. A row whose
    /// scope this version does not know is left out with an error log rather than failing the
    /// whole load (the gateway would otherwise keep serving an older set forever).
    pub async fn list_all_for_gateway(&self) -> StoreResult<Vec<PolicyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {POLICY_COLUMNS} FROM gateway_policies ORDER BY org_id, scope, target"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut policies = Vec::with_capacity(rows.len());
        for row in &rows {
            match policy_from_row(row) {
                Ok(policy) => policies.push(policy),
                Err(_) => {
                    let id: String = row.try_get("id").unwrap_or_default();
                    tracing::error!(policy = %id, "a stored policy has an unknown scope; skipped");
                }
            }
        }
        Ok(policies)
    }

    /// Creates a policy in `policy.org_id`, which `tenant` must see: `NotFound` otherwise (or
    /// when the organization does not exist), `Conflict` when the organization has a policy for
    /// that scope and target.
    pub async fn create_policy(
        &self,
        tenant: &Tenant,
        policy: &NewPolicy,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<PolicyRow> {
        if !tenant.sees(&policy.org_id) {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO gateway_policies (id, org_id, scope, target, spec, version, created_at, updated_at) \
             SELECT $1, o.id, $3, $4, $5, 1, $6, $6 FROM organizations o WHERE o.id = $2",
        )
        .bind(&policy.id)
        .bind(&policy.org_id)
        .bind(policy.scope.as_str())
        .bind(&policy.target)
        .bind(&policy.spec)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        bump_catalog(&mut tx).await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = policy_in_tx(&mut tx, &Tenant::All, &policy.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Replaces the spec of a policy `tenant` sees; its version moves by one.
    pub async fn update_policy(
        &self,
        tenant: &Tenant,
        id: &str,
        spec: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<PolicyRow> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE gateway_policies SET spec = $1, version = version + 1, updated_at = $2 \
             WHERE id = $3 AND ($4 IS NULL OR org_id = $4)",
        )
        .bind(spec)
        .bind(now)
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        bump_catalog(&mut tx).await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = policy_in_tx(&mut tx, &Tenant::All, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes a policy `tenant` sees.
    pub async fn delete_policy(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "DELETE FROM gateway_policies WHERE id = $1 AND ($2 IS NULL OR org_id = $2)",
        )
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        bump_catalog(&mut tx).await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The guardrail events (`guardrail.block`, `.redact`, `.log`) `tenant` sees, newest first,
    /// at most `limit` (1 to 500).
    pub async fn guardrail_events(
        &self,
        tenant: &Tenant,
        limit: i64,
    ) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, target, details, client_ip, prev_hash, hash, org_id \
             FROM audit_events WHERE action IN ($1, $2, $3) AND ($4 IS NULL OR org_id = $4) \
             ORDER BY seq DESC LIMIT $5",
        )
        .bind(GUARDRAIL_ACTIONS[0])
        .bind(GUARDRAIL_ACTIONS[1])
        .bind(GUARDRAIL_ACTIONS[2])
        .bind(tenant.org_filter())
        .bind(limit.clamp(1, 500))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::audit::record_from_row).collect()
    }
}
