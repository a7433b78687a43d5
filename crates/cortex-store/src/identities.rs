//! Single sign-on users (SPEC §19): a users row of kind `sso` and the identity it signs in as —
//! the identity provider's issuer and subject, never the username, which the provider may let
//! someone else take later.

use crate::audit::append_in_tx;
use crate::users::{user_from_row, UserRow, USER_COLUMNS};
use crate::{Store, StoreError, StoreResult};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::Role;

pub struct NewSsoUser<'a> {
    pub id: &'a str,
    pub username: &'a str,
    pub role: Role,
    pub org_id: &'a str,
    pub issuer: &'a str,
    pub subject: &'a str,
}

impl Store {
    /// The user who signs in as `subject` at `issuer`, if any.
    pub async fn find_user_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> StoreResult<Option<UserRow>> {
        let columns = USER_COLUMNS
            .split(',')
            .map(|c| format!("u.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT {columns} FROM user_identities i JOIN users u ON u.id = i.user_id \
             WHERE i.issuer = $1 AND i.subject = $2"
        ))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Creates a single sign-on user and their identity with the audit event, in one
    /// transaction. `Conflict` when the username (or the identity) is taken, `NotFound` when
    /// the organization does not exist.
    pub async fn create_sso_user(
        &self,
        user: &NewSsoUser<'_>,
        audit: &NewAuditEvent,
        now: i64,
    ) -> StoreResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        // No password: '!' is no PHC string, so no password can ever match it.
        let done = sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, must_change_password, totp_enabled, disabled, created_at, updated_at, org_id, kind) \
             SELECT $1, $2, '!', $3, FALSE, FALSE, FALSE, $4, $4, o.id, 'sso' FROM organizations o WHERE o.id = $5",
        )
        .bind(user.id)
        .bind(user.username)
        .bind(user.role.as_str())
        .bind(now)
        .bind(user.org_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "INSERT INTO user_identities (issuer, subject, user_id, created_at, last_login_at) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(user.issuer)
        .bind(user.subject)
        .bind(user.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user.id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        user_from_row(&row)
    }

    /// Records a sign-in of `user_id` as `subject` at `issuer`, and gives the user `role` when
    /// it differs (the identity provider's claims decide it at every sign-in), with `audit` for
    /// that change, in one transaction. Answers the user as they are now.
    pub async fn record_sso_login(
        &self,
        user_id: &str,
        issuer: &str,
        subject: &str,
        role: Option<(Role, &NewAuditEvent)>,
        now: i64,
    ) -> StoreResult<UserRow> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE user_identities SET last_login_at = $1 WHERE issuer = $2 AND subject = $3 AND user_id = $4",
        )
        .bind(now)
        .bind(issuer)
        .bind(subject)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        if let Some((role, audit)) = role {
            sqlx::query(
                "UPDATE users SET role = $1, updated_at = $2 WHERE id = $3 AND kind = 'sso'",
            )
            .bind(role.as_str())
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            append_in_tx(&mut tx, &self.audit_hasher, audit, now).await?;
        }
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        user_from_row(&row)
    }
}
