//! Organizations, teams and team members (SPEC §18).
//!
//! Like every other query of tenant data, these take the caller's [`Tenant`] and apply it in
//! their SQL: an organization or team another organization's caller names is simply not found.
//! Changes commit with their audit event, as everywhere in this crate. A change that alters
//! what a key may do — an organization's model allow-list, a team deleted or a member removed
//! (their keys stop being charged to it) — gives the affected keys a new version in the same
//! transaction, so every instance's key cache re-reads them (`keys.rs`).

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Budget, Tenant, DEFAULT_ORG};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::audit::append_in_tx;
use crate::keys::{name_list, next_key_version};
use crate::users::{budget_columns, budget_from_row};
use crate::{Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq)]
pub struct OrgRow {
    pub id: String,
    pub name: String,
    pub budget: Option<Budget>,
    pub tokens_per_minute: Option<i64>,
    /// Model names the organization's keys may use; `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewOrg {
    pub id: String,
    pub name: String,
    pub budget: Option<Budget>,
    pub tokens_per_minute: Option<i64>,
    pub allowed_models: Option<Vec<String>>,
}

/// A change to an organization; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct OrgChange {
    pub name: Option<String>,
    pub budget: Option<Option<Budget>>,
    pub tokens_per_minute: Option<Option<i64>>,
    pub allowed_models: Option<Option<Vec<String>>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TeamRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub budget: Option<Budget>,
    pub tokens_per_minute: Option<i64>,
    pub created_at: i64,
    /// Member user ids, sorted.
    pub members: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewTeam {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub budget: Option<Budget>,
    pub tokens_per_minute: Option<i64>,
}

/// A change to a team; `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TeamChange {
    pub name: Option<String>,
    pub budget: Option<Option<Budget>>,
    pub tokens_per_minute: Option<Option<i64>>,
}

const ORG_COLUMNS: &str =
    "id, name, budget_usd, budget_period, tokens_per_minute, allowed_models, created_at";
const TEAM_COLUMNS: &str =
    "id, org_id, name, budget_usd, budget_period, tokens_per_minute, created_at";

fn org_from_row(row: &AnyRow) -> StoreResult<OrgRow> {
    Ok(OrgRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        budget: budget_from_row(row)?,
        tokens_per_minute: row.try_get("tokens_per_minute")?,
        allowed_models: name_list(row.try_get("allowed_models")?)?,
        created_at: row.try_get("created_at")?,
    })
}

fn team_from_row(row: &AnyRow, members: Vec<String>) -> StoreResult<TeamRow> {
    Ok(TeamRow {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        budget: budget_from_row(row)?,
        tokens_per_minute: row.try_get("tokens_per_minute")?,
        created_at: row.try_get("created_at")?,
        members,
    })
}

fn models_text(models: Option<&Vec<String>>) -> StoreResult<Option<String>> {
    models
        .map(|m| serde_json::to_string(m).map_err(|_| StoreError::Corrupt))
        .transpose()
}

async fn org_in_tx(
    conn: &mut AnyConnection,
    tenant: &Tenant,
    id: &str,
) -> StoreResult<Option<OrgRow>> {
    let row = sqlx::query(&format!(
        "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1 AND ($2 IS NULL OR id = $2)"
    ))
    .bind(id)
    .bind(tenant.org_filter())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(org_from_row).transpose()
}

async fn team_in_tx(
    conn: &mut AnyConnection,
    tenant: &Tenant,
    id: &str,
) -> StoreResult<Option<TeamRow>> {
    let Some(row) = sqlx::query(&format!(
        "SELECT {TEAM_COLUMNS} FROM teams WHERE id = $1 AND ($2 IS NULL OR org_id = $2)"
    ))
    .bind(id)
    .bind(tenant.org_filter())
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let members =
        sqlx::query("SELECT user_id FROM team_members WHERE team_id = $1 ORDER BY user_id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get("user_id"))
            .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(team_from_row(&row, members)?))
}

impl Store {
    /// The organizations `tenant` sees (its own, or all), by name.
    pub async fn list_orgs(&self, tenant: &Tenant) -> StoreResult<Vec<OrgRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE ($1 IS NULL OR id = $1) ORDER BY name"
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(org_from_row).collect()
    }

    pub async fn get_org(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<OrgRow>> {
        let mut conn = self.pool.acquire().await?;
        org_in_tx(&mut conn, tenant, id).await
    }

    /// Creates an organization; `Conflict` when the name (or id) is taken.
    pub async fn create_org(
        &self,
        org: &NewOrg,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<OrgRow> {
        let mut tx = self.pool.begin().await?;
        let (budget_usd, budget_period) = budget_columns(org.budget.as_ref());
        sqlx::query(
            "INSERT INTO organizations (id, name, budget_usd, budget_period, tokens_per_minute, allowed_models, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(budget_usd)
        .bind(budget_period)
        .bind(org.tokens_per_minute)
        .bind(models_text(org.allowed_models.as_ref())?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = org_in_tx(&mut tx, &Tenant::All, &org.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Changes an organization `tenant` sees. A new model allow-list gives every key of the
    /// organization a new version in the same transaction, so caches apply it everywhere.
    pub async fn update_org(
        &self,
        tenant: &Tenant,
        id: &str,
        change: &OrgChange,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<OrgRow> {
        let mut tx = self.pool.begin().await?;
        // The key counter first, as in every key-writing transaction (keys.rs).
        // Keys read their organization's allow-list, budget and token rate with them.
        let touches_keys = change.allowed_models.is_some()
            || change.budget.is_some()
            || change.tokens_per_minute.is_some();
        let key_version = if touches_keys {
            Some(next_key_version(&mut tx).await?)
        } else {
            None
        };
        let current = org_in_tx(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let name = change.name.as_deref().unwrap_or(&current.name);
        let budget = change.budget.unwrap_or(current.budget);
        let (budget_usd, budget_period) = budget_columns(budget.as_ref());
        let tokens = change
            .tokens_per_minute
            .unwrap_or(current.tokens_per_minute);
        let models = match &change.allowed_models {
            Some(models) => models.as_ref(),
            None => current.allowed_models.as_ref(),
        };
        sqlx::query(
            "UPDATE organizations SET name = $1, budget_usd = $2, budget_period = $3, \
             tokens_per_minute = $4, allowed_models = $5 WHERE id = $6",
        )
        .bind(name)
        .bind(budget_usd)
        .bind(budget_period)
        .bind(tokens)
        .bind(models_text(models)?)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(version) = key_version {
            sqlx::query("UPDATE api_keys SET version = $1, updated_at = $2 WHERE org_id = $3")
                .bind(version)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = org_in_tx(&mut tx, &Tenant::All, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// How many users and live (unrevoked) keys an organization still has: it is deleted only
    /// when both are zero.
    pub async fn org_members(&self, id: &str) -> StoreResult<(i64, i64)> {
        let mut conn = self.pool.acquire().await?;
        org_members_in(&mut conn, id).await
    }

    /// Deletes an empty organization `tenant` sees, with its teams. `NotFound` for the default
    /// organization (it cannot go) or one not seen; `Conflict` while it has users or live keys
    /// (checked in the transaction).
    pub async fn delete_org(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        if id == DEFAULT_ORG {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.pool.begin().await?;
        // Writing the row first locks it (PostgreSQL) or the database (SQLite), so a user or
        // key created concurrently either is counted below or finds the organization gone.
        let touched = sqlx::query(
            "UPDATE organizations SET name = name WHERE id = $1 AND ($2 IS NULL OR id = $2)",
        )
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?;
        if touched.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let (users, keys) = org_members_in(&mut tx, id).await?;
        if users > 0 || keys > 0 {
            return Err(StoreError::Conflict);
        }
        sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // Its gateway policies went with it (ON DELETE CASCADE): the catalogue's version moves
        // so every instance drops them from memory (policies.rs).
        sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The teams `tenant` sees, by organization and name, with their members.
    pub async fn list_teams(&self, tenant: &Tenant) -> StoreResult<Vec<TeamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {TEAM_COLUMNS} FROM teams WHERE ($1 IS NULL OR org_id = $1) ORDER BY org_id, name"
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        let links = sqlx::query(
            "SELECT m.team_id, m.user_id FROM team_members m JOIN teams t ON t.id = m.team_id \
             WHERE ($1 IS NULL OR t.org_id = $1) ORDER BY m.team_id, m.user_id",
        )
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        let mut by_team: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for link in &links {
            let team_id: String = link.try_get("team_id")?;
            by_team
                .entry(team_id)
                .or_default()
                .push(link.try_get("user_id")?);
        }
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                team_from_row(row, by_team.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    pub async fn get_team(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<TeamRow>> {
        let mut conn = self.pool.acquire().await?;
        team_in_tx(&mut conn, tenant, id).await
    }

    /// The teams `user_id` is a member of (within `tenant`), by name.
    pub async fn teams_of_user(&self, tenant: &Tenant, user_id: &str) -> StoreResult<Vec<TeamRow>> {
        let teams = self.list_teams(tenant).await?;
        Ok(teams
            .into_iter()
            .filter(|t| t.members.iter().any(|m| m == user_id))
            .collect())
    }

    /// Creates a team in `team.org_id`, which `tenant` must see: `NotFound` otherwise (or when
    /// the organization does not exist), `Conflict` when the organization has a team of that
    /// name.
    pub async fn create_team(
        &self,
        tenant: &Tenant,
        team: &NewTeam,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<TeamRow> {
        if !tenant.sees(&team.org_id) {
            return Err(StoreError::NotFound);
        }
        let mut tx = self.pool.begin().await?;
        let (budget_usd, budget_period) = budget_columns(team.budget.as_ref());
        let done = sqlx::query(
            "INSERT INTO teams (id, org_id, name, budget_usd, budget_period, tokens_per_minute, created_at) \
             SELECT $1, o.id, $3, $4, $5, $6, $7 FROM organizations o WHERE o.id = $2",
        )
        .bind(&team.id)
        .bind(&team.org_id)
        .bind(&team.name)
        .bind(budget_usd)
        .bind(budget_period)
        .bind(team.tokens_per_minute)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = team_in_tx(&mut tx, &Tenant::All, &team.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Changes a team `tenant` sees; `Conflict` when the new name is taken in its organization.
    pub async fn update_team(
        &self,
        tenant: &Tenant,
        id: &str,
        change: &TeamChange,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<TeamRow> {
        let mut tx = self.pool.begin().await?;
        // Keys charged to the team read its budget and token rate with them: a change to
        // either gives them a new version (the key counter first, as in keys.rs).
        let key_version = if change.budget.is_some() || change.tokens_per_minute.is_some() {
            Some(next_key_version(&mut tx).await?)
        } else {
            None
        };
        let current = team_in_tx(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let budget = change.budget.unwrap_or(current.budget);
        let (budget_usd, budget_period) = budget_columns(budget.as_ref());
        sqlx::query(
            "UPDATE teams SET name = $1, budget_usd = $2, budget_period = $3, tokens_per_minute = $4 WHERE id = $5",
        )
        .bind(change.name.as_deref().unwrap_or(&current.name))
        .bind(budget_usd)
        .bind(budget_period)
        .bind(change.tokens_per_minute.unwrap_or(current.tokens_per_minute))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(version) = key_version {
            sqlx::query("UPDATE api_keys SET version = $1, updated_at = $2 WHERE team_id = $3")
                .bind(version)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = team_in_tx(&mut tx, &Tenant::All, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Deletes a team `tenant` sees; its keys stop being charged to it (a new key version).
    /// Usage rows keep the team's id: they are history.
    pub async fn delete_team(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        let done = sqlx::query("DELETE FROM teams WHERE id = $1 AND ($2 IS NULL OR org_id = $2)")
            .bind(id)
            .bind(tenant.org_filter())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE api_keys SET team_id = NULL, version = $1, updated_at = $2 WHERE team_id = $3",
        )
        .bind(version)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes `user_ids` the team's members. `NotFound` when `tenant` does not see the team;
    /// `Conflict` when a user is not (or no longer) of the team's organization — nothing is
    /// changed then. Keys of removed members stop being charged to the team (a new key version).
    pub async fn set_team_members(
        &self,
        tenant: &Tenant,
        team_id: &str,
        user_ids: &[String],
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<TeamRow> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        let team = team_in_tx(&mut tx, tenant, team_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        sqlx::query("DELETE FROM team_members WHERE team_id = $1")
            .bind(team_id)
            .execute(&mut *tx)
            .await?;
        for user_id in user_ids {
            let added = sqlx::query(
                "INSERT INTO team_members (team_id, user_id) \
                 SELECT $1, u.id FROM users u WHERE u.id = $2 AND u.org_id = $3",
            )
            .bind(team_id)
            .bind(user_id)
            .bind(&team.org_id)
            .execute(&mut *tx)
            .await?;
            if added.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
        }
        for removed in team.members.iter().filter(|m| !user_ids.contains(m)) {
            sqlx::query(
                "UPDATE api_keys SET team_id = NULL, version = $1, updated_at = $2 \
                 WHERE team_id = $3 AND owner_user_id = $4",
            )
            .bind(version)
            .bind(now)
            .bind(team_id)
            .bind(removed)
            .execute(&mut *tx)
            .await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = team_in_tx(&mut tx, &Tenant::All, team_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }
}

async fn org_members_in(conn: &mut AnyConnection, id: &str) -> StoreResult<(i64, i64)> {
    let row = sqlx::query(
        "SELECT CAST((SELECT COUNT(*) FROM users WHERE org_id = $1) AS BIGINT) AS users, \
         CAST((SELECT COUNT(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL) AS BIGINT) AS keys",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((row.try_get("users")?, row.try_get("keys")?))
}
