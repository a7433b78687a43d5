//! Admin users: identity, password hash, role, MFA state.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{AccountKind, Budget, Role, Tenant};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::keys::next_key_version;
use crate::{Store, StoreError, StoreResult};

#[derive(Clone)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    /// Argon2id PHC string; never leaves the server.
    pub password_hash: String,
    pub role: Role,
    pub must_change_password: bool,
    /// Sealed by `cortex-crypto::envelope` with the user id as associated data.
    pub totp_secret_sealed: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<i64>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The organization the user belongs to; their keys belong to it too.
    pub org_id: String,
    pub budget: Option<Budget>,
    /// Local (password), single sign-on, or a service account.
    pub kind: AccountKind,
    /// A local user who signs in with a passkey alone; their password is not accepted.
    pub passkey_only: bool,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("org_id", &self.org_id)
            .field("kind", &self.kind)
            .field("must_change_password", &self.must_change_password)
            .field("totp_enabled", &self.totp_enabled)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

pub struct NewUser<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    pub must_change_password: bool,
    pub org_id: &'a str,
    pub budget: Option<Budget>,
}

pub(crate) const USER_COLUMNS: &str =
    "id, username, password_hash, role, must_change_password, totp_secret_sealed, \
     totp_enabled, totp_last_step, disabled, created_at, updated_at, org_id, budget_usd, budget_period, \
     kind, passkey_only";

/// A budget from its two columns: both NULL is none; a half-set or unknown budget is corrupt
/// (refused rather than read as "no budget", which would lift a cap).
pub(crate) fn budget_from_row(row: &AnyRow) -> StoreResult<Option<Budget>> {
    budget_from_columns(row, "budget_usd", "budget_period")
}

/// [`budget_from_row`] from columns of other names (a joined row's `org_budget_usd`, …).
pub(crate) fn budget_from_columns(
    row: &AnyRow,
    usd: &str,
    period: &str,
) -> StoreResult<Option<Budget>> {
    let usd: Option<f64> = row.try_get(usd)?;
    let period: Option<String> = row.try_get(period)?;
    Budget::from_parts(usd, period.as_deref()).map_err(|_| StoreError::Corrupt)
}

/// The two columns of a budget, for binding.
pub(crate) fn budget_columns(budget: Option<&Budget>) -> (Option<f64>, Option<&'static str>) {
    match budget {
        Some(b) => (Some(b.usd), Some(b.period.as_str())),
        None => (None, None),
    }
}

pub(crate) fn user_from_row(row: &AnyRow) -> StoreResult<UserRow> {
    let role_text: String = row.try_get("role")?;
    Ok(UserRow {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        role: Role::parse(&role_text).ok_or(StoreError::Corrupt)?,
        must_change_password: crate::get_bool(row, "must_change_password")?,
        totp_secret_sealed: row.try_get("totp_secret_sealed")?,
        totp_enabled: crate::get_bool(row, "totp_enabled")?,
        totp_last_step: row.try_get("totp_last_step")?,
        disabled: crate::get_bool(row, "disabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        org_id: row.try_get("org_id")?,
        budget: budget_from_row(row)?,
        kind: AccountKind::parse(&row.try_get::<String, _>("kind")?).ok_or(StoreError::Corrupt)?,
        passkey_only: crate::get_bool(row, "passkey_only")?,
    })
}

impl Store {
    /// Users in every organization (the first start's "is the database empty?").
    pub async fn count_users(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Creates a user and records `audit` in the same transaction. `NotFound` when the
    /// organization does not exist (checked in the transaction: an organization deleted
    /// meanwhile gets no new member).
    pub async fn create_user(
        &self,
        user: &NewUser<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        let (budget_usd, budget_period) = budget_columns(user.budget.as_ref());
        let done = sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, must_change_password, totp_enabled, disabled, created_at, updated_at, org_id, budget_usd, budget_period) \
             SELECT $1, $2, $3, $4, $5, FALSE, FALSE, $6, $6, o.id, $8, $9 FROM organizations o WHERE o.id = $7",
        )
        .bind(user.id)
        .bind(user.username)
        .bind(user.password_hash)
        .bind(user.role.as_str())
        .bind(user.must_change_password)
        .bind(now)
        .bind(user.org_id)
        .bind(budget_usd)
        .bind(budget_period)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user.id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        user_from_row(&row)
    }

    /// The user `id` if `tenant` sees them (another organization's user is not found).
    pub async fn get_user(&self, tenant: &Tenant, id: &str) -> StoreResult<Option<UserRow>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND ($2 IS NULL OR org_id = $2)"
        ))
        .bind(id)
        .bind(tenant.org_filter())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Usernames are unique across organizations (login names one user); `tenant` still
    /// decides whether this caller may see them.
    pub async fn get_user_by_username(
        &self,
        tenant: &Tenant,
        username: &str,
    ) -> StoreResult<Option<UserRow>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = $1 AND ($2 IS NULL OR org_id = $2)"
        ))
        .bind(username)
        .bind(tenant.org_filter())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The users `tenant` sees, by username.
    pub async fn list_users(&self, tenant: &Tenant) -> StoreResult<Vec<UserRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE ($1 IS NULL OR org_id = $1) ORDER BY username"
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Replaces the password hash (and the must-change flag) with its audit event.
    pub async fn set_password(
        &self,
        user_id: &str,
        password_hash: &str,
        must_change_password: bool,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, must_change_password = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(password_hash)
        .bind(must_change_password)
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A change to a user; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct UserChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// A new hash (set by an admin: the user must change it at next login).
    pub password_hash: Option<String>,
    /// `Some(None)` removes the budget.
    pub budget: Option<Option<Budget>>,
}

impl Store {
    /// Active admins of `org_id` other than `except`, to refuse changes that would leave the
    /// organization without an admin. Service accounts do not count: no person can sign in
    /// as one.
    pub async fn count_other_active_admins(&self, org_id: &str, except: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM users WHERE role = 'admin' AND disabled = FALSE AND id <> $1 AND org_id = $2 AND kind <> 'service'",
        )
        .bind(except)
        .bind(org_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Changes the user `id` if `tenant` sees them.
    pub async fn update_user(
        &self,
        tenant: &Tenant,
        id: &str,
        change: &UserChange,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<UserRow> {
        let current = self
            .get_user(tenant, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut tx = self.pool.begin().await?;
        // Disabling suspends the user's keys and enabling lifts the suspension, in this
        // transaction: the key counter comes first, before the user row (see `keys.rs`).
        // Keys read their owner's budget with them: a new budget gives them a new version.
        let key_version = if change.disabled.is_some() || change.budget.is_some() {
            Some(next_key_version(&mut tx).await?)
        } else {
            None
        };
        let (hash, must_change) = match &change.password_hash {
            Some(hash) => (hash.clone(), true),
            None => (current.password_hash.clone(), current.must_change_password),
        };
        let budget = change.budget.unwrap_or(current.budget);
        let (budget_usd, budget_period) = budget_columns(budget.as_ref());
        let done = sqlx::query(
            "UPDATE users SET role = $1, disabled = $2, password_hash = $3, must_change_password = $4, updated_at = $5, \
             budget_usd = $7, budget_period = $8 WHERE id = $6 AND org_id = $9",
        )
        .bind(change.role.unwrap_or(current.role).as_str())
        .bind(change.disabled.unwrap_or(current.disabled))
        .bind(hash)
        .bind(must_change)
        .bind(now)
        .bind(id)
        .bind(budget_usd)
        .bind(budget_period)
        .bind(&current.org_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let (Some(_), Some(version)) = (change.budget, key_version) {
            sqlx::query(
                "UPDATE api_keys SET version = $1, updated_at = $2 WHERE owner_user_id = $3",
            )
            .bind(version)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if let (Some(disabled), Some(version)) = (change.disabled, key_version) {
            // Only the suspension flag moves: a key revoked before or during the suspension
            // stays revoked when the owner is enabled again.
            sqlx::query(
                "UPDATE api_keys SET owner_disabled = $1, version = $2, updated_at = $3 \
                 WHERE owner_user_id = $4 AND owner_disabled <> $1",
            )
            .bind(disabled)
            .bind(version)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        if change.disabled == Some(true) || change.password_hash.is_some() {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_user(tenant, id).await?.ok_or(StoreError::NotFound)
    }

    /// Deletes a user `tenant` sees, revoking their keys (kept for usage history) and sessions.
    pub async fn delete_user(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1 AND ($2 IS NULL OR org_id = $2)")
            .bind(id)
            .bind(tenant.org_filter())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE api_keys SET revoked_at = $1, updated_at = $1, version = $2 WHERE owner_user_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(version)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The marker that replaces a user's id where rows outlive an erased user.
pub const ERASED: &str = "erased";

/// What an erasure removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErasureReport {
    pub user_deleted: bool,
    pub keys_anonymised: u64,
    pub usage_rows_anonymised: u64,
}

impl Store {
    /// Erases a user's personal data in one transaction with its audit event: the user row goes
    /// (sessions, refresh tokens and recovery codes with it), the user's keys are revoked and lose
    /// their names and owner, and usage rows lose the user link and the client IP. Works for a
    /// user deleted earlier too (their usage and keys still carry the id). The audit log is not
    /// touched: rewriting it would break the chain (ARCHITECTURE.md, "Erasure"). Within
    /// `tenant` only: a user of another organization is not found, and of a deleted user only
    /// the keys and usage rows `tenant` sees are anonymised.
    pub async fn erase_user(
        &self,
        tenant: &Tenant,
        id: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ErasureReport> {
        let mut tx = self.pool.begin().await?;
        let version = next_key_version(&mut tx).await?;
        let owner_org = sqlx::query("SELECT org_id FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<String, _>("org_id"))
            .transpose()?;
        if owner_org.is_some_and(|org| !tenant.sees(&org)) {
            return Err(StoreError::NotFound);
        }
        let keys = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), name = $2, owner_user_id = $2, \
             updated_at = $1, version = $3 WHERE owner_user_id = $4 AND ($5 IS NULL OR org_id = $5)",
        )
        .bind(now)
        .bind(ERASED)
        .bind(version)
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let usage = sqlx::query(
            "UPDATE usage_records SET user_id = $1, client_ip = '' WHERE user_id = $2 AND ($3 IS NULL OR org_id = $3)",
        )
        .bind(ERASED)
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let user = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if user == 0 && keys == 0 && usage == 0 {
            return Err(StoreError::NotFound);
        }
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(ErasureReport {
            user_deleted: user == 1,
            keys_anonymised: keys,
            usage_rows_anonymised: usage,
        })
    }
}
