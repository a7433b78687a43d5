//! Sign-ins in progress (`auth_challenges`): an OpenID Connect authorization request waiting for
//! its callback, or a WebAuthn challenge waiting for its answer. Each is used once — taking it
//! deletes it, in one statement, so two instances (or a replayed request) cannot both use it —
//! and expires after minutes. The row's id is the SHA-256 of a token only the browser (or
//! client) holds; its state is sealed by the caller before it gets here.

use sqlx::Row;

use crate::{Store, StoreResult};

/// What a challenge is for; a challenge taken for another purpose is not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// An OpenID Connect login: state, nonce and PKCE verifier.
    Oidc,
    /// A passkey assertion at sign-in.
    PasskeyLogin,
    /// A passkey being registered by a signed-in user.
    PasskeyRegister,
}

impl ChallengePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengePurpose::Oidc => "oidc",
            ChallengePurpose::PasskeyLogin => "passkey_login",
            ChallengePurpose::PasskeyRegister => "passkey_register",
        }
    }
}

pub struct NewChallenge<'a> {
    /// SHA-256 (hex) of the token the browser holds.
    pub id: &'a str,
    pub purpose: ChallengePurpose,
    pub user_id: Option<&'a str>,
    /// The flow's state, sealed with the master key (the id as associated data).
    pub sealed: &'a [u8],
    pub expires_at: i64,
}

/// A challenge that was taken (and so is gone).
#[derive(Clone)]
pub struct TakenChallenge {
    pub user_id: Option<String>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for TakenChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakenChallenge")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a challenge, and deletes the expired ones of any purpose on the way.
    pub async fn create_challenge(
        &self,
        challenge: &NewChallenge<'_>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM auth_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO auth_challenges (id, purpose, user_id, sealed, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(challenge.id)
        .bind(challenge.purpose.as_str())
        .bind(challenge.user_id)
        .bind(challenge.sealed)
        .bind(now)
        .bind(challenge.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the challenge `id` for `purpose`: deleted whatever it holds, and answered only when
    /// it had not expired. A second take of the same id finds nothing.
    pub async fn take_challenge(
        &self,
        id: &str,
        purpose: ChallengePurpose,
        now: i64,
    ) -> StoreResult<Option<TakenChallenge>> {
        let row = sqlx::query(
            "DELETE FROM auth_challenges WHERE id = $1 AND purpose = $2 RETURNING user_id, sealed, expires_at",
        )
        .bind(id)
        .bind(purpose.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at <= now {
            return Ok(None);
        }
        Ok(Some(TakenChallenge {
            user_id: row.try_get("user_id")?,
            sealed: row.try_get("sealed")?,
        }))
    }
}
