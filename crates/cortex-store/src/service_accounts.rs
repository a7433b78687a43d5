//! Service accounts (SPEC §19): a users row of kind `service` — its role, organization and
//! disabled flag — and its client credentials in `service_accounts`. Every query of them takes a
//! [`Tenant`], as users' do, except the token endpoint's lookup by client id (the caller is not
//! signed in yet; the secret decides).
//!
//! A token is a session row of method `client_credentials` with no cookie and no refresh token,
//! ending with the token, so revoking sessions (disabling the account, rotating its secret,
//! deleting it) ends its tokens too.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Role, SessionMethod, Tenant};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::audit::append_in_tx;
use crate::users::{user_from_row, UserRow, USER_COLUMNS};
use crate::{Store, StoreError, StoreResult};

/// A service account: its users row and its credentials.
#[derive(Clone)]
pub struct ServiceAccountRow {
    pub user: UserRow,
    pub client_id: String,
    /// SHA-256 (hex) of the client secret; never leaves the server.
    pub secret_hash: String,
    pub description: String,
    pub secret_rotated_at: i64,
    pub last_token_at: Option<i64>,
}

impl std::fmt::Debug for ServiceAccountRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountRow")
            .field("user", &self.user)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

pub struct NewServiceAccount<'a> {
    pub id: &'a str,
    /// The account's name: a username, unique among all users.
    pub name: &'a str,
    pub role: Role,
    pub org_id: &'a str,
    pub client_id: &'a str,
    pub secret_hash: &'a str,
    pub description: &'a str,
}

/// A token about to be issued: the session row that carries it.
pub struct NewServiceToken<'a> {
    pub session_id: &'a str,
    /// SHA-256 (hex) of a random value nobody holds: the column is unique and required, and
    /// no cookie may open this session.
    pub unusable_token_hash: &'a str,
    pub expires_at: i64,
    pub client_ip: &'a str,
    pub user_agent: &'a str,
}

fn columns() -> String {
    let user_columns = USER_COLUMNS
        .split(',')
        .map(|c| format!("u.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{user_columns}, sa.client_id, sa.secret_hash, sa.description, sa.secret_rotated_at, sa.last_token_at"
    )
}

fn account_from_row(row: &AnyRow) -> StoreResult<ServiceAccountRow> {
    Ok(ServiceAccountRow {
        user: user_from_row(row)?,
        client_id: row.try_get("client_id")?,
        secret_hash: row.try_get("secret_hash")?,
        description: row.try_get("description")?,
        secret_rotated_at: row.try_get("secret_rotated_at")?,
        last_token_at: row.try_get("last_token_at")?,
    })
}

impl Store {
    /// Creates a service account with its audit event, in one transaction. `NotFound` when the
    /// organization does not exist, `Conflict` when the name is a user's already.
    pub async fn create_service_account(
        &self,
        account: &NewServiceAccount<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ServiceAccountRow> {
        let mut tx = self.pool.begin().await?;
        // No password: '!' is no PHC string, so no password can ever match it.
        let done = sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, must_change_password, totp_enabled, disabled, created_at, updated_at, org_id, kind) \
             SELECT $1, $2, '!', $3, FALSE, FALSE, FALSE, $4, $4, o.id, 'service' FROM organizations o WHERE o.id = $5",
        )
        .bind(account.id)
        .bind(account.name)
        .bind(account.role.as_str())
        .bind(now)
        .bind(account.org_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "INSERT INTO service_accounts (user_id, client_id, secret_hash, description, secret_rotated_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.id)
        .bind(account.client_id)
        .bind(account.secret_hash)
        .bind(account.description)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_service_account(&Tenant::All, account.id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The service accounts `tenant` sees, by name.
    pub async fn list_service_accounts(
        &self,
        tenant: &Tenant,
    ) -> StoreResult<Vec<ServiceAccountRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM service_accounts sa JOIN users u ON u.id = sa.user_id \
             WHERE ($1 IS NULL OR u.org_id = $1) ORDER BY u.username",
            columns()
        ))
        .bind(tenant.org_filter())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(account_from_row).collect()
    }

    /// The service account `id` if `tenant` sees it.
    pub async fn get_service_account(
        &self,
        tenant: &Tenant,
        id: &str,
    ) -> StoreResult<Option<ServiceAccountRow>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM service_accounts sa JOIN users u ON u.id = sa.user_id \
             WHERE sa.user_id = $1 AND ($2 IS NULL OR u.org_id = $2)",
            columns()
        ))
        .bind(id)
        .bind(tenant.org_filter())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// The token endpoint's lookup: the account a client id names, in any organization.
    pub async fn get_service_account_by_client_id(
        &self,
        client_id: &str,
    ) -> StoreResult<Option<ServiceAccountRow>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM service_accounts sa JOIN users u ON u.id = sa.user_id WHERE sa.client_id = $1",
            columns()
        ))
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Replaces the secret of the account `id` (if `tenant` sees it) and ends every token
    /// issued under the old one, with the audit event, in one transaction.
    pub async fn rotate_service_account_secret(
        &self,
        tenant: &Tenant,
        id: &str,
        secret_hash: &str,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<ServiceAccountRow> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE service_accounts SET secret_hash = $1, secret_rotated_at = $2 \
             WHERE user_id = $3 AND user_id IN (SELECT id FROM users WHERE ($4 IS NULL OR org_id = $4))",
        )
        .bind(secret_hash)
        .bind(now)
        .bind(id)
        .bind(tenant.org_filter())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        self.get_service_account(tenant, id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records a token for the account `user_id`: its session row and the audit event, in one
    /// transaction — but only while the account is enabled and its secret is still
    /// `secret_hash` (the one the caller checked), so a token cannot be issued under a secret
    /// rotated, or for an account disabled, after the check. `false` when it was not.
    pub async fn issue_service_token(
        &self,
        user_id: &str,
        secret_hash: &str,
        token: &NewServiceToken<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, client_ip, user_agent, method) \
             SELECT $1, u.id, $2, $3, $4, $5, $6, $7 FROM users u JOIN service_accounts sa ON sa.user_id = u.id \
             WHERE u.id = $8 AND u.disabled = FALSE AND u.kind = 'service' AND sa.secret_hash = $9",
        )
        .bind(token.session_id)
        .bind(token.unusable_token_hash)
        .bind(now)
        .bind(token.expires_at)
        .bind(token.client_ip)
        .bind(token.user_agent)
        .bind(SessionMethod::ClientCredentials.as_str())
        .bind(user_id)
        .bind(secret_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE service_accounts SET last_token_at = $1 WHERE user_id = $2")
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}
