//! Admin sessions, without HTTP: what happens once a password was checked (the second factor,
//! the session and its refresh-token family, the access token), refreshing (single use; a reused
//! token revokes its family), resolving a presented token to its live session, logging out and
//! changing the password. Each writes its audit event as the admin API always has.
//!
//! What belongs to the transport stays with it: brute-force buckets and the bounded password
//! hashing are charged and run by the caller around these steps (a refund must follow the
//! outcome, which only the caller's bucket knows), and the caller decides how the session token
//! and the token pair travel.

use cortex_domain::{AccountKind, SessionMethod, Tenant};
use std::fmt::Display;

use cortex_config::Config;
use cortex_crypto::envelope::{self, MasterKey};
use cortex_crypto::jwt::JwtKeys;
use cortex_crypto::password::check_password_policy;
use cortex_crypto::token::{random_token, sha256_hex};
use cortex_crypto::totp::{hash_recovery_code, verify_totp};
use cortex_domain::audit::NewAuditEvent;
use cortex_store::sessions::{NewSession, RefreshOutcome};
use cortex_store::users::UserRow;
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;
use cortex_gateway::ApiError;

/// Why a sign-in step refused. Credential outcomes are kept apart from [`ControlError`] because
/// the admin API answers each with its own code.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Unknown user, wrong password or code, or a disabled account: one answer for all, so
    /// the refusal does not tell which.
    #[error("invalid username, password or code")]
    InvalidCredentials,
    /// The password was right and the account has TOTP on: a code is needed too.
    #[error("a TOTP or recovery code is required")]
    MfaRequired,
    /// No live session behind the presented token (unknown, expired, revoked, reused, or its
    /// user is disabled or gone).
    #[error("log in first")]
    Unauthenticated,
    /// A step the caller cannot fix failed (opening a sealed secret, signing a token); the
    /// cause was logged where it happened.
    #[error("{0}")]
    Internal(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How the admin API answers a refused step: the codes the handlers gave before the session
/// logic moved out of the HTTP crate.
impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::InvalidCredentials => ApiError::InvalidCredentials,
            SessionError::MfaRequired => ApiError::MfaRequired,
            SessionError::Unauthenticated => ApiError::Unauthenticated,
            SessionError::Internal(_) => ApiError::Internal,
            SessionError::Store(err) => ApiError::from(err),
        }
    }
}

/// A `map_err` for failures the caller cannot fix: logs `context` and the cause (crypto errors,
/// whose messages hold no secret) at error level, as `ApiError::internal` does.
fn internal<E: Display>(context: &'static str) -> impl FnOnce(E) -> SessionError {
    move |cause| {
        tracing::error!(error = %cause, "{context}");
        SessionError::Internal(context)
    }
}

fn audit(actor: &str, action: &str, target: &str, ip: &str) -> NewAuditEvent {
    NewAuditEvent::new(actor, action, target).with_ip(ip)
}

/// How long the tokens of a login live (`ACCESS_TOKEN_TTL_SEC`, `REFRESH_TOKEN_TTL_SEC`). The
/// session and its refresh tokens end together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetimes {
    pub access_secs: u64,
    pub refresh_secs: u64,
}

impl TokenLifetimes {
    pub fn from_config(config: &Config) -> Self {
        Self {
            access_secs: config.access_token_ttl_sec,
            refresh_secs: config.refresh_token_ttl_sec,
        }
    }
}

/// What login and refresh hand out: a fresh access token (a JWT naming the session) and the
/// next refresh token, which is shown once.
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: SecretString,
    /// The access token's lifetime in seconds.
    pub expires_in: u64,
    pub must_change_password: bool,
}

/// A new login: the session's own token (which the browser keeps) and the token pair.
pub struct Login {
    pub session_id: String,
    pub session_token: SecretString,
    pub tokens: Tokens,
}

/// The second factor a login presents. A TOTP code is checked when both are given.
pub enum SecondFactor<'a> {
    Totp(&'a str),
    RecoveryCode(&'a SecretString),
}

/// A live session and its user, as a presented token resolved.
#[derive(Debug, Clone)]
pub struct ActiveSession {
    pub user: UserRow,
    pub session_id: String,
    /// How the session began.
    pub method: SessionMethod,
}

/// Signs an access token for `user` in `session_id`, valid for `access_secs` from `now`.
pub fn access_token(
    jwt: &JwtKeys,
    user: &UserRow,
    session_id: &str,
    access_secs: u64,
    now: i64,
) -> Result<String, SessionError> {
    let (token, _claims) = jwt
        .issue(
            &user.id,
            session_id,
            user.role.as_str(),
            now / 1000,
            i64::try_from(access_secs).unwrap_or(900),
        )
        .map_err(internal("signing an access token failed"))?;
    Ok(token)
}

fn tokens(
    jwt: &JwtKeys,
    user: &UserRow,
    session_id: &str,
    refresh_token: SecretString,
    access_secs: u64,
    now: i64,
) -> Result<Tokens, SessionError> {
    Ok(Tokens {
        access_token: access_token(jwt, user, session_id, access_secs, now)?,
        refresh_token,
        expires_in: access_secs,
        must_change_password: user.must_change_password,
    })
}

/// Decides a password check the caller ran (`password_ok`, against `user` as looked up by
/// `username`): the user when the password matched an enabled account. Otherwise records
/// `auth.login_failed` (anonymous, with the username tried) and refuses with
/// [`SessionError::InvalidCredentials`], the same for an unknown user, a wrong password and a
/// disabled account.
pub async fn accept_password(
    store: &Store,
    username: &str,
    user: Option<UserRow>,
    password_ok: bool,
    ip: &str,
    now: i64,
) -> Result<UserRow, SessionError> {
    match user {
        // Only local accounts have a password; the caller checked single sign-on users and
        // service accounts against no hash (a dummy, for the same timing).
        Some(user) if password_ok && !user.disabled && user.kind == AccountKind::Local => Ok(user),
        _ => {
            let details = json!({ "username": username.chars().take(64).collect::<String>() });
            store
                .append_audit(
                    &audit("anonymous", "auth.login_failed", "", ip).with_details(&details),
                    now,
                )
                .await?;
            Err(SessionError::InvalidCredentials)
        }
    }
}

/// Checks the second factor of `user` (who has TOTP on). A TOTP code is accepted once: its
/// step is claimed atomically, so a code another request or instance just used is refused. A
/// recovery code is used up, with `auth.recovery_code_used`. A wrong code records
/// `auth.mfa_failed` and refuses with [`SessionError::InvalidCredentials`].
pub async fn verify_second_factor(
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    factor: SecondFactor<'_>,
    ip: &str,
    now: i64,
) -> Result<(), SessionError> {
    let result = match factor {
        SecondFactor::Totp(code) => check_totp(store, master_key, user, code, now).await,
        SecondFactor::RecoveryCode(code) => use_recovery_code(store, user, code, ip, now).await,
    };
    if matches!(result, Err(SessionError::InvalidCredentials)) {
        store
            .append_audit(
                &audit(&user.username, "auth.mfa_failed", &user.id, ip).with_org(&user.org_id),
                now,
            )
            .await?;
    }
    result
}

async fn check_totp(
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    code: &str,
    now: i64,
) -> Result<(), SessionError> {
    let sealed = user
        .totp_secret_sealed
        .as_ref()
        .ok_or(SessionError::Internal("a user with TOTP on has no secret"))?;
    let secret = envelope::open(master_key, sealed, user.id.as_bytes())
        .map_err(internal("opening a user's TOTP secret failed"))?;
    let last = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
    let step = verify_totp(&secret, code, u64::try_from(now / 1000).unwrap_or(0), last)
        .ok_or(SessionError::InvalidCredentials)?;
    // The atomic claim refuses a code another request (or instance) just used.
    if !store
        .claim_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
        .await?
    {
        return Err(SessionError::InvalidCredentials);
    }
    Ok(())
}

async fn use_recovery_code(
    store: &Store,
    user: &UserRow,
    code: &SecretString,
    ip: &str,
    now: i64,
) -> Result<(), SessionError> {
    let used = store
        .consume_recovery_code(
            &user.id,
            &hash_recovery_code(code.expose_secret()),
            &audit(&user.username, "auth.recovery_code_used", &user.id, ip).with_org(&user.org_id),
            now,
        )
        .await?;
    if used {
        Ok(())
    } else {
        Err(SessionError::InvalidCredentials)
    }
}

/// Where and how a sign-in happens: the client's address and user agent (kept with the
/// session) and the way the user proved who they are.
#[derive(Debug, Clone, Copy)]
pub struct SignIn<'a> {
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub method: SessionMethod,
}

/// Starts a session for `user`, who passed every check: the session and the first refresh
/// token of its family, with `auth.login` (naming the method unless it was a password), in one
/// transaction; then the token pair. Only hashes of the session and refresh tokens are stored.
pub async fn start(
    store: &Store,
    jwt: &JwtKeys,
    lifetimes: TokenLifetimes,
    user: &UserRow,
    sign_in: SignIn<'_>,
    now: i64,
) -> Result<Login, SessionError> {
    let session_token = random_token(32);
    let refresh_token = random_token(32);
    let session_id = new_id();
    let expires_at = now + i64::try_from(lifetimes.refresh_secs).unwrap_or(i64::MAX / 2_000) * 1000;
    let mut event =
        audit(&user.username, "auth.login", &user.id, sign_in.ip).with_org(&user.org_id);
    if sign_in.method != SessionMethod::Password {
        event = event.with_details(&json!({ "method": sign_in.method.as_str() }));
    }
    store
        .create_session(
            &NewSession {
                session_id: &session_id,
                user_id: &user.id,
                token_hash: &sha256_hex(session_token.expose_secret().as_bytes()),
                refresh_id: &new_id(),
                refresh_hash: &sha256_hex(refresh_token.expose_secret().as_bytes()),
                expires_at,
                client_ip: sign_in.ip,
                user_agent: sign_in.user_agent,
                method: sign_in.method,
            },
            &event,
            now,
        )
        .await?;
    let tokens = tokens(
        jwt,
        user,
        &session_id,
        refresh_token,
        lifetimes.access_secs,
        now,
    )?;
    Ok(Login {
        session_id,
        session_token,
        tokens,
    })
}

/// A refresh token that was used up, and the one that replaces it in its family.
pub struct Rotated {
    pub session_id: String,
    pub user_id: String,
    pub refresh_token: SecretString,
}

/// Uses a refresh token once and stores its replacement. A token presented a second time
/// revokes its whole family and session (`auth.refresh_token_reuse`, anonymous, naming the
/// family); that, an unknown, expired or revoked token all refuse with
/// [`SessionError::Unauthenticated`].
pub async fn rotate_refresh_token(
    store: &Store,
    presented: &SecretString,
    ip: &str,
    now: i64,
) -> Result<Rotated, SessionError> {
    let presented = sha256_hex(presented.expose_secret().as_bytes());
    let new_token = random_token(32);
    let outcome = store
        .rotate_refresh_token(
            &presented,
            &new_id(),
            &sha256_hex(new_token.expose_secret().as_bytes()),
            |family, user_id| {
                NewAuditEvent::new("anonymous", "auth.refresh_token_reuse", user_id)
                    .with_details(&json!({ "family": family }))
                    .with_ip(ip)
            },
            now,
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated {
            session_id,
            user_id,
        } => Ok(Rotated {
            session_id,
            user_id,
            refresh_token: new_token,
        }),
        RefreshOutcome::Reused { .. } => {
            tracing::warn!(ip = %ip, "a used refresh token was presented again; its family is revoked");
            Err(SessionError::Unauthenticated)
        }
        RefreshOutcome::Invalid => Err(SessionError::Unauthenticated),
    }
}

/// The token pair after a rotation: a fresh access token for the session and the replacement
/// refresh token. Refused when the session's user is gone or disabled.
pub async fn reissue(
    store: &Store,
    jwt: &JwtKeys,
    access_secs: u64,
    rotated: Rotated,
    now: i64,
) -> Result<Tokens, SessionError> {
    let user = store
        .get_user(&Tenant::All, &rotated.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or(SessionError::Unauthenticated)?;
    tokens(
        jwt,
        &user,
        &rotated.session_id,
        rotated.refresh_token,
        access_secs,
        now,
    )
}

/// The live session an access token (JWT) names. Logging out revokes the token with its
/// session, since every use looks the session up.
pub async fn resolve_access_token(
    store: &Store,
    jwt: &JwtKeys,
    token: &str,
    now: i64,
) -> Result<ActiveSession, SessionError> {
    let claims = jwt
        .verify(token, now.div_euclid(1000))
        .map_err(|_| SessionError::Unauthenticated)?;
    active(store, &claims.sid, now).await
}

/// The live session a session token (the browser's) belongs to.
pub async fn resolve_session_token(
    store: &Store,
    token: &str,
    now: i64,
) -> Result<ActiveSession, SessionError> {
    let session = store
        .get_session_by_token_hash(&sha256_hex(token.as_bytes()))
        .await?
        .ok_or(SessionError::Unauthenticated)?;
    active(store, &session.id, now).await
}

async fn active(store: &Store, session_id: &str, now: i64) -> Result<ActiveSession, SessionError> {
    let session = store
        .get_session(session_id)
        .await?
        .ok_or(SessionError::Unauthenticated)?;
    if !session.is_active(now) {
        return Err(SessionError::Unauthenticated);
    }
    let user = store
        .get_user(&Tenant::All, &session.user_id)
        .await?
        .ok_or(SessionError::Unauthenticated)?;
    if user.disabled {
        return Err(SessionError::Unauthenticated);
    }
    Ok(ActiveSession {
        user,
        session_id: session.id,
        method: session.method,
    })
}

/// Ends a session and its refresh tokens, with `auth.logout`.
pub async fn logout(
    store: &Store,
    session_id: &str,
    user: &UserRow,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let event = audit(actor, "auth.logout", &user.id, ip).with_org(&user.org_id);
    store.revoke_session(session_id, Some(&event), now).await?;
    Ok(())
}

/// Whether `new` may replace `current` for `username`: it must differ and meet the password
/// policy. Checked before the new password is hashed.
pub fn check_new_password(
    current: &SecretString,
    new: &SecretString,
    username: &str,
) -> Result<(), ControlError> {
    if new.expose_secret() == current.expose_secret() {
        return Err(ControlError::invalid(
            "the new password must differ from the current one",
        ));
    }
    check_password_policy(new.expose_secret(), &[username])
        .map_err(|e| ControlError::invalid(e.to_string()))
}

/// Stores a user's own new password (`user.password_change`; no change is required any
/// more) and ends the user's other sessions; `keep_session`, the one that changed it, stays.
pub async fn change_password(
    store: &Store,
    user: &UserRow,
    new_hash: &str,
    keep_session: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    store
        .set_password(
            &user.id,
            new_hash,
            false,
            &audit(actor, "user.password_change", &user.id, ip).with_org(&user.org_id),
            now,
        )
        .await?;
    store
        .revoke_user_sessions(&user.id, Some(keep_session), now)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use cortex_crypto::totp::totp_code_at;
    use cortex_domain::audit::AuditRecord;
    use cortex_domain::Role;
    use cortex_store::audit::AuditFilter;
    use cortex_store::testing::TestDb;
    use cortex_store::users::{NewUser, UserChange};

    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const IP: &str = "203.0.113.9";
    const LIFETIMES: TokenLifetimes = TokenLifetimes {
        access_secs: 900,
        refresh_secs: 3600,
    };
    const TOTP_SECRET: &[u8] = b"twenty-byte-secret!!";

    struct Fixture {
        _db: TestDb,
        store: Store,
        jwt: JwtKeys,
        master_key: MasterKey,
        user: UserRow,
    }

    async fn fixture() -> Fixture {
        let db = TestDb::sqlite();
        let store = Store::open(&db.url).await.unwrap();
        let user = store
            .create_user(
                &NewUser {
                    id: "u1",
                    username: "ann",
                    password_hash: "old-hash",
                    role: Role::Admin,
                    must_change_password: true,
                    org_id: "default",
                    budget: None,
                },
                &NewAuditEvent::new("system", "user.create", "u1"),
                NOW - 1000,
            )
            .await
            .unwrap();
        Fixture {
            _db: db,
            store,
            jwt: JwtKeys::new(&[7; 32], "cortex", "cortex-admin"),
            master_key: MasterKey::from_bytes([9; 32]),
            user,
        }
    }

    async fn events(store: &Store, action: &str) -> Vec<AuditRecord> {
        store
            .list_audit(
                &cortex_store::Tenant::All,
                &AuditFilter {
                    action: Some(action.to_owned()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    async fn login(f: &Fixture) -> Login {
        let sign_in = SignIn {
            ip: IP,
            user_agent: "test-agent",
            method: SessionMethod::Password,
        };
        start(&f.store, &f.jwt, LIFETIMES, &f.user, sign_in, NOW)
            .await
            .unwrap()
    }

    async fn turn_totp_on(f: &mut Fixture, recovery_code: &str) {
        let sealed = envelope::seal(&f.master_key, TOTP_SECRET, f.user.id.as_bytes()).unwrap();
        f.store.set_pending_totp("u1", &sealed, NOW).await.unwrap();
        f.store
            .enable_totp(
                "u1",
                0,
                &[hash_recovery_code(recovery_code)],
                &NewAuditEvent::new("ann", "auth.totp_enable", "u1"),
                NOW,
            )
            .await
            .unwrap();
        f.user = f
            .store
            .get_user(&cortex_store::Tenant::All, "u1")
            .await
            .unwrap()
            .unwrap();
    }

    fn unauthenticated<T>(result: Result<T, SessionError>) -> bool {
        matches!(result.err(), Some(SessionError::Unauthenticated))
    }

    #[tokio::test]
    async fn a_login_gives_a_session_token_and_an_access_token_for_the_same_session() {
        let f = fixture().await;
        let login = login(&f).await;
        assert_eq!(login.tokens.expires_in, 900);
        assert!(login.tokens.must_change_password);
        let claims = f
            .jwt
            .verify(&login.tokens.access_token, NOW / 1000)
            .unwrap();
        assert_eq!(
            (
                claims.sub.as_str(),
                claims.sid.as_str(),
                claims.role.as_str()
            ),
            ("u1", login.session_id.as_str(), "admin")
        );
        assert_eq!(claims.exp - claims.iat, 900);

        let by_session = resolve_session_token(&f.store, login.session_token.expose_secret(), NOW)
            .await
            .unwrap();
        let by_access = resolve_access_token(&f.store, &f.jwt, &login.tokens.access_token, NOW)
            .await
            .unwrap();
        assert_eq!(by_session.session_id, login.session_id);
        assert_eq!(by_access.session_id, login.session_id);
        assert_eq!(by_access.user.id, "u1");

        let logins = events(&f.store, "auth.login").await;
        assert_eq!(logins.len(), 1);
        assert_eq!(
            (
                logins[0].actor.as_str(),
                logins[0].target.as_str(),
                logins[0].client_ip.as_str()
            ),
            ("ann", "u1", IP)
        );

        // The session ends with its refresh tokens.
        let expiry = NOW + 3600 * 1000;
        assert!(unauthenticated(
            resolve_session_token(&f.store, login.session_token.expose_secret(), expiry).await
        ));
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &login.tokens.refresh_token, IP, expiry).await
        ));
        assert!(unauthenticated(
            resolve_session_token(&f.store, "not-a-session", NOW).await
        ));
        assert!(unauthenticated(
            resolve_access_token(&f.store, &f.jwt, "not-a-jwt", NOW).await
        ));
    }

    #[tokio::test]
    async fn logging_out_ends_both_tokens() {
        let f = fixture().await;
        let login = login(&f).await;
        logout(&f.store, &login.session_id, &f.user, "ann", IP, NOW + 1)
            .await
            .unwrap();
        assert!(unauthenticated(
            resolve_session_token(&f.store, login.session_token.expose_secret(), NOW + 2).await
        ));
        assert!(unauthenticated(
            resolve_access_token(&f.store, &f.jwt, &login.tokens.access_token, NOW + 2).await
        ));
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &login.tokens.refresh_token, IP, NOW + 2).await
        ));
        let logouts = events(&f.store, "auth.logout").await;
        assert_eq!(logouts.len(), 1);
        assert_eq!(
            (
                logouts[0].actor.as_str(),
                logouts[0].target.as_str(),
                logouts[0].client_ip.as_str()
            ),
            ("ann", "u1", IP)
        );
    }

    #[tokio::test]
    async fn a_refresh_token_works_once_and_its_reuse_ends_the_family() {
        let f = fixture().await;
        let login = login(&f).await;
        let rotated = rotate_refresh_token(&f.store, &login.tokens.refresh_token, IP, NOW + 1)
            .await
            .unwrap();
        assert_eq!(rotated.session_id, login.session_id);
        assert_eq!(rotated.user_id, "u1");
        let next = rotated.refresh_token.expose_secret().to_owned();
        let tokens = reissue(&f.store, &f.jwt, 900, rotated, NOW + 1)
            .await
            .unwrap();
        assert_eq!(tokens.refresh_token.expose_secret(), next);
        assert_ne!(next, login.tokens.refresh_token.expose_secret());
        let claims = f.jwt.verify(&tokens.access_token, NOW / 1000).unwrap();
        assert_eq!(claims.sid, login.session_id);

        // The first token again: refused, and the family (with the replacement) is revoked.
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &login.tokens.refresh_token, IP, NOW + 2).await
        ));
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &tokens.refresh_token, IP, NOW + 3).await
        ));
        assert!(unauthenticated(
            resolve_session_token(&f.store, login.session_token.expose_secret(), NOW + 3).await
        ));
        let reuse = events(&f.store, "auth.refresh_token_reuse").await;
        assert_eq!(reuse.len(), 1);
        assert_eq!(
            (
                reuse[0].actor.as_str(),
                reuse[0].target.as_str(),
                reuse[0].client_ip.as_str()
            ),
            ("anonymous", "u1", IP)
        );
        let details: serde_json::Value = serde_json::from_str(&reuse[0].details).unwrap();
        assert!(details["family"].is_string());

        let unknown = SecretString::from("never-issued".to_owned());
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &unknown, IP, NOW).await
        ));
    }

    #[tokio::test]
    async fn a_disabled_user_gets_no_new_tokens() {
        let f = fixture().await;
        let login = login(&f).await;
        let rotated = rotate_refresh_token(&f.store, &login.tokens.refresh_token, IP, NOW + 1)
            .await
            .unwrap();
        f.store
            .update_user(
                &cortex_store::Tenant::All,
                "u1",
                &UserChange {
                    disabled: Some(true),
                    ..Default::default()
                },
                &NewAuditEvent::new("system", "user.update", "u1"),
                NOW + 1,
            )
            .await
            .unwrap();
        assert!(unauthenticated(
            reissue(&f.store, &f.jwt, 900, rotated, NOW + 2).await
        ));
        assert!(unauthenticated(
            resolve_session_token(&f.store, login.session_token.expose_secret(), NOW + 2).await
        ));
    }

    #[tokio::test]
    async fn unknown_users_wrong_passwords_and_disabled_accounts_are_refused_alike() {
        let f = fixture().await;
        let accepted = accept_password(&f.store, "ann", Some(f.user.clone()), true, IP, NOW)
            .await
            .unwrap();
        assert_eq!(accepted.id, "u1");
        let mut disabled = f.user.clone();
        disabled.disabled = true;
        for (username, user, password_ok) in [
            ("nobody", None, false),
            ("ann", Some(f.user.clone()), false),
            ("ann", Some(disabled), true),
        ] {
            let refused = accept_password(&f.store, username, user, password_ok, IP, NOW).await;
            assert!(matches!(refused, Err(SessionError::InvalidCredentials)));
        }
        let failed = events(&f.store, "auth.login_failed").await;
        assert_eq!(failed.len(), 3);
        for event in &failed {
            assert_eq!(
                (
                    event.actor.as_str(),
                    event.target.as_str(),
                    event.client_ip.as_str()
                ),
                ("anonymous", "", IP)
            );
        }
        // Newest first.
        assert_eq!(failed[2].details, r#"{"username":"nobody"}"#);
        assert_eq!(failed[0].details, r#"{"username":"ann"}"#);
    }

    #[tokio::test]
    async fn a_totp_code_is_accepted_once_and_a_wrong_one_is_recorded() {
        let mut f = fixture().await;
        turn_totp_on(&mut f, "k7mq-x3vh-9tcp").await;
        let code = totp_code_at(TOTP_SECRET, u64::try_from(NOW / 1000).unwrap());
        verify_second_factor(
            &f.store,
            &f.master_key,
            &f.user,
            SecondFactor::Totp(&code),
            IP,
            NOW,
        )
        .await
        .unwrap();
        assert!(events(&f.store, "auth.mfa_failed").await.is_empty());

        // The same code again (the user row as read before the first use): the claim refuses.
        let replay = verify_second_factor(
            &f.store,
            &f.master_key,
            &f.user,
            SecondFactor::Totp(&code),
            IP,
            NOW,
        )
        .await;
        assert!(matches!(replay, Err(SessionError::InvalidCredentials)));
        let wrong = verify_second_factor(
            &f.store,
            &f.master_key,
            &f.user,
            SecondFactor::Totp("12345"),
            IP,
            NOW,
        )
        .await;
        assert!(matches!(wrong, Err(SessionError::InvalidCredentials)));
        let failed = events(&f.store, "auth.mfa_failed").await;
        assert_eq!(failed.len(), 2);
        assert_eq!(
            (
                failed[0].actor.as_str(),
                failed[0].target.as_str(),
                failed[0].client_ip.as_str()
            ),
            ("ann", "u1", IP)
        );

        // A secret sealed under another master key cannot be opened: an internal failure.
        let other_key = MasterKey::from_bytes([3; 32]);
        let later = totp_code_at(TOTP_SECRET, u64::try_from(NOW / 1000).unwrap() + 30);
        let unsealable = verify_second_factor(
            &f.store,
            &other_key,
            &f.user,
            SecondFactor::Totp(&later),
            IP,
            NOW + 30_000,
        )
        .await;
        assert!(matches!(unsealable, Err(SessionError::Internal(_))));
    }

    #[tokio::test]
    async fn a_recovery_code_is_used_up() {
        let mut f = fixture().await;
        turn_totp_on(&mut f, "k7mq-x3vh-9tcp").await;
        let code = SecretString::from("k7mq-x3vh-9tcp".to_owned());
        verify_second_factor(
            &f.store,
            &f.master_key,
            &f.user,
            SecondFactor::RecoveryCode(&code),
            IP,
            NOW,
        )
        .await
        .unwrap();
        let used = events(&f.store, "auth.recovery_code_used").await;
        assert_eq!(used.len(), 1);
        assert_eq!(
            (
                used[0].actor.as_str(),
                used[0].target.as_str(),
                used[0].client_ip.as_str()
            ),
            ("ann", "u1", IP)
        );
        let again = verify_second_factor(
            &f.store,
            &f.master_key,
            &f.user,
            SecondFactor::RecoveryCode(&code),
            IP,
            NOW,
        )
        .await;
        assert!(matches!(again, Err(SessionError::InvalidCredentials)));
        assert_eq!(events(&f.store, "auth.mfa_failed").await.len(), 1);
    }

    #[test]
    fn a_new_password_must_differ_and_meet_the_policy() {
        let current = SecretString::from("Correct-Horse-Battery-9".to_owned());
        let same = check_new_password(&current, &current.clone(), "ann").unwrap_err();
        assert_eq!(
            same.to_string(),
            "the new password must differ from the current one"
        );
        assert_eq!(ApiError::from(same).code(), "invalid_request");
        let weak = SecretString::from("password".to_owned());
        assert!(matches!(
            check_new_password(&current, &weak, "ann"),
            Err(ControlError::Invalid(_))
        ));
        let strong = SecretString::from("Quiet-Lantern-Orbit-42".to_owned());
        check_new_password(&current, &strong, "ann").unwrap();
    }

    #[tokio::test]
    async fn a_password_change_ends_the_other_sessions_only() {
        let f = fixture().await;
        let this = login(&f).await;
        let other = login(&f).await;
        change_password(
            &f.store,
            &f.user,
            "new-hash",
            &this.session_id,
            "ann",
            IP,
            NOW + 1,
        )
        .await
        .unwrap();
        resolve_session_token(&f.store, this.session_token.expose_secret(), NOW + 2)
            .await
            .unwrap();
        assert!(unauthenticated(
            resolve_session_token(&f.store, other.session_token.expose_secret(), NOW + 2).await
        ));
        assert!(unauthenticated(
            rotate_refresh_token(&f.store, &other.tokens.refresh_token, IP, NOW + 2).await
        ));
        let user = f
            .store
            .get_user(&cortex_store::Tenant::All, "u1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.password_hash, "new-hash");
        assert!(!user.must_change_password);
        let changes = events(&f.store, "user.password_change").await;
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (
                changes[0].actor.as_str(),
                changes[0].target.as_str(),
                changes[0].client_ip.as_str()
            ),
            ("ann", "u1", IP)
        );
    }

    #[test]
    fn the_admin_api_answers_each_refusal_with_its_code() {
        for (err, code) in [
            (SessionError::InvalidCredentials, "invalid_credentials"),
            (SessionError::MfaRequired, "mfa_required"),
            (SessionError::Unauthenticated, "unauthenticated"),
            (SessionError::Internal("signing failed"), "internal_error"),
            (SessionError::Store(StoreError::Unavailable), "unavailable"),
        ] {
            assert_eq!(ApiError::from(err).code(), code);
        }
        assert_eq!(
            SessionError::MfaRequired.to_string(),
            "a TOTP or recovery code is required"
        );
    }
}
