//! Service accounts (SPEC §19): machine identities that call the admin API with OAuth 2.0 client
//! credentials (RFC 6749 §4.4). An account belongs to one organization and has one role, as a
//! user does — it *is* a users row, of kind `service` — so every permission check, tenant scope
//! and audit actor works for it unchanged; it has no password, no second factor and no console.
//!
//! Its secret is shown once, at creation or rotation; only the SHA-256 is stored and the token
//! endpoint compares in constant time. A token is a short-lived access token (the admin API's
//! JWT) naming a session row of its own, so disabling, rotating or deleting the account ends
//! every token already issued. Every token issued and every refused request writes an audit
//! event.

use cortex_crypto::api_key::{hash_key_secret, KeyHash};
use cortex_crypto::client_credentials::{generate_client_credentials, generate_client_secret};
use cortex_crypto::jwt::JwtKeys;
use cortex_crypto::token::{random_token, sha256_hex};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{AccountKind, Role, Tenant};
use cortex_store::service_accounts::{NewServiceAccount, NewServiceToken, ServiceAccountRow};
use cortex_store::users::UserChange;
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;
use crate::users::{check_username, parse_role};

/// A secret just made, with the client id it belongs to: shown to the caller once.
pub struct Credentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

/// What a new account should be.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    pub name: &'a str,
    pub role: Role,
    pub org_id: &'a str,
    pub description: &'a str,
}

/// Who changes what, for the audit events.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub name: &'a str,
    pub ip: &'a str,
}

fn check_description(text: &str) -> Result<&str, ControlError> {
    let text = text.trim();
    if text.len() > 256 || text.chars().any(char::is_control) {
        return Err(ControlError::invalid(
            "`description` must be at most 256 printable characters",
        ));
    }
    Ok(text)
}

/// Creates an account and its first secret, with `service_account.create`. The name is a
/// username (unique among all users and accounts); the organization must exist. Whether the
/// caller may create in it is the caller's check.
pub async fn create(
    store: &Store,
    account: &NewAccount<'_>,
    actor: Actor<'_>,
    now: i64,
) -> Result<(ServiceAccountRow, Credentials), ControlError> {
    let name = check_username(account.name)?;
    let description = check_description(account.description)?;
    let id = new_id();
    let generated = generate_client_credentials();
    let event = NewAuditEvent::new(actor.name, "service_account.create", &id)
        .with_details(&json!({
            "name": name,
            "role": account.role.as_str(),
            "org_id": account.org_id,
            "client_id": generated.client_id,
        }))
        .with_ip(actor.ip)
        .with_org(account.org_id);
    let row = store
        .create_service_account(
            &NewServiceAccount {
                id: &id,
                name,
                role: account.role,
                org_id: account.org_id,
                client_id: &generated.client_id,
                secret_hash: &hash_key_secret(generated.client_secret.expose_secret()).to_hex(),
                description,
            },
            &event,
            now,
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict => {
                ControlError::Conflict("a user or service account with that name exists".into())
            }
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })?;
    Ok((
        row,
        Credentials {
            client_id: generated.client_id,
            client_secret: generated.client_secret,
        },
    ))
}

/// A new secret for the account `id` (if `tenant` sees it), with `service_account.rotate`. The
/// old secret stops working at once, and so does every token issued under it.
pub async fn rotate(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    actor: Actor<'_>,
    now: i64,
) -> Result<(ServiceAccountRow, Credentials), ControlError> {
    let current = store
        .get_service_account(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let secret = generate_client_secret();
    let event = NewAuditEvent::new(actor.name, "service_account.rotate", id)
        .with_details(&json!({ "client_id": current.client_id }))
        .with_ip(actor.ip)
        .with_org(&current.user.org_id);
    let row = store
        .rotate_service_account_secret(
            tenant,
            id,
            &hash_key_secret(secret.expose_secret()).to_hex(),
            &event,
            now,
        )
        .await?;
    let client_id = row.client_id.clone();
    Ok((
        row,
        Credentials {
            client_id,
            client_secret: secret,
        },
    ))
}

/// Changes an account's role or disabled flag, with `service_account.update`. Disabling ends
/// its tokens and suspends the API keys it owns, as for a user.
pub async fn update(
    store: &Store,
    target: &ServiceAccountRow,
    role: Option<&str>,
    disabled: Option<bool>,
    actor: Actor<'_>,
    now: i64,
) -> Result<ServiceAccountRow, ControlError> {
    let change = UserChange {
        role: role.map(parse_role).transpose()?,
        disabled,
        password_hash: None,
        budget: None,
    };
    let event = NewAuditEvent::new(actor.name, "service_account.update", &target.user.id)
        .with_details(&json!({
            "role": change.role.map(Role::as_str),
            "disabled": change.disabled,
        }))
        .with_ip(actor.ip)
        .with_org(&target.user.org_id);
    let tenant = Tenant::Org(target.user.org_id.clone());
    store
        .update_user(&tenant, &target.user.id, &change, &event, now)
        .await?;
    store
        .get_service_account(&tenant, &target.user.id)
        .await?
        .ok_or(ControlError::NotFound)
}

/// Deletes an account, with `service_account.delete`: its tokens end and the API keys it owns
/// are revoked (kept for usage history), as for a user.
pub async fn delete(
    store: &Store,
    target: &ServiceAccountRow,
    actor: Actor<'_>,
    now: i64,
) -> Result<(), ControlError> {
    let event = NewAuditEvent::new(actor.name, "service_account.delete", &target.user.id)
        .with_details(&json!({ "name": target.user.username, "client_id": target.client_id }))
        .with_ip(actor.ip)
        .with_org(&target.user.org_id);
    let tenant = Tenant::Org(target.user.org_id.clone());
    Ok(store
        .delete_user(&tenant, &target.user.id, &event, now)
        .await?)
}

/// Why the token endpoint refused. Each is one of RFC 6749 §5.2's error codes.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unknown client, wrong secret, or a disabled account: one answer for all.
    #[error("client authentication failed")]
    InvalidClient,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing the token failed; the cause was logged.
    #[error("issuing the token failed")]
    Internal,
}

/// A token just issued.
pub struct IssuedToken {
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    pub account: ServiceAccountRow,
}

/// Where a token request came from.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    pub ip: &'a str,
    pub user_agent: &'a str,
}

/// The client credentials grant: checks the client id and secret (the secret's SHA-256, compared
/// in constant time), then records a session for the token with `service_account.token` — in
/// the transaction that re-checks the account is enabled and still has this secret — and signs
/// the access token naming it. A refusal records `service_account.token_refused` (anonymous,
/// with the client id tried).
pub async fn issue_token(
    store: &Store,
    jwt: &JwtKeys,
    ttl_secs: u64,
    request: TokenRequest<'_>,
    now: i64,
) -> Result<IssuedToken, TokenError> {
    let presented = hash_key_secret(request.client_secret.expose_secret());
    let account = store
        .get_service_account_by_client_id(request.client_id)
        .await?;
    // Compared even for an unknown client (against a hash nothing matches), so the time taken
    // does not tell which client ids exist.
    let stored = account
        .as_ref()
        .and_then(|a| KeyHash::from_hex(&a.secret_hash).ok())
        .unwrap_or_else(|| hash_key_secret(""));
    let secret_ok = stored.ct_eq(&presented) && account.is_some();
    let account = match account {
        Some(account)
            if secret_ok && !account.user.disabled && account.user.kind == AccountKind::Service =>
        {
            account
        }
        _ => return Err(refused(store, request, now).await),
    };
    let session_id = new_id();
    let ttl = i64::try_from(ttl_secs).unwrap_or(900);
    let expires_at = now + ttl * 1000;
    let event = NewAuditEvent::new(
        &account.user.username,
        "service_account.token",
        &account.user.id,
    )
    .with_details(
        &json!({ "client_id": account.client_id, "session": session_id, "expires_in": ttl }),
    )
    .with_ip(request.ip)
    .with_org(&account.user.org_id);
    let issued = store
        .issue_service_token(
            &account.user.id,
            &account.secret_hash,
            &NewServiceToken {
                session_id: &session_id,
                unusable_token_hash: &sha256_hex(random_token(32).expose_secret().as_bytes()),
                expires_at,
                client_ip: request.ip,
                user_agent: request.user_agent,
            },
            &event,
            now,
        )
        .await?;
    if !issued {
        // Rotated or disabled between the check and the insert.
        return Err(refused(store, request, now).await);
    }
    let (access_token, _claims) = jwt
        .issue(
            &account.user.id,
            &session_id,
            account.user.role.as_str(),
            now.div_euclid(1000),
            ttl,
        )
        .map_err(|cause| {
            tracing::error!(error = %cause, "signing a service account's token failed");
            TokenError::Internal
        })?;
    Ok(IssuedToken {
        access_token,
        expires_in: ttl_secs,
        account,
    })
}

/// Records a refused token request and answers `InvalidClient` (or the store's error, when
/// even the record could not be written).
async fn refused(store: &Store, request: TokenRequest<'_>, now: i64) -> TokenError {
    let details = json!({ "client_id": request.client_id.chars().take(64).collect::<String>() });
    let event = NewAuditEvent::new("anonymous", "service_account.token_refused", "")
        .with_details(&details)
        .with_ip(request.ip);
    match store.append_audit(&event, now).await {
        Ok(_) => TokenError::InvalidClient,
        Err(err) => TokenError::Store(err),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use cortex_domain::audit::AuditRecord;
    use cortex_store::audit::AuditFilter;
    use cortex_store::testing::TestDb;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const IP: &str = "192.0.2.7";
    const ROOT: Actor<'static> = Actor {
        name: "root",
        ip: IP,
    };

    async fn store(db: &TestDb) -> Store {
        Store::open(&db.url).await.unwrap()
    }

    fn jwt() -> JwtKeys {
        JwtKeys::new(&[7; 32], "cortex", "cortex-admin")
    }

    fn request<'a>(client_id: &'a str, secret: &'a SecretString) -> TokenRequest<'a> {
        TokenRequest {
            client_id,
            client_secret: secret,
            ip: IP,
            user_agent: "test",
        }
    }

    async fn events(store: &Store, action: &str) -> Vec<AuditRecord> {
        store
            .list_audit(
                &Tenant::All,
                &AuditFilter {
                    action: Some(action.to_owned()),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    async fn ci(store: &Store) -> (ServiceAccountRow, Credentials) {
        create(
            store,
            &NewAccount {
                name: "ci-bot",
                role: Role::Operator,
                org_id: cortex_domain::DEFAULT_ORG,
                description: "deploys",
            },
            ROOT,
            NOW,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_secret_is_stored_hashed_and_a_token_names_a_session_of_the_account() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let (account, credentials) = ci(&store).await;
        assert_eq!(account.user.kind, AccountKind::Service);
        assert_eq!(account.user.role, Role::Operator);
        assert_eq!(account.description, "deploys");
        assert_ne!(
            account.secret_hash,
            credentials.client_secret.expose_secret()
        );
        assert_eq!(
            account.secret_hash,
            hash_key_secret(credentials.client_secret.expose_secret()).to_hex()
        );
        assert!(!format!("{account:?}").contains(&account.secret_hash));
        assert!(!format!("{credentials:?}").contains(credentials.client_secret.expose_secret()));

        let issued = issue_token(
            &store,
            &jwt(),
            900,
            request(&credentials.client_id, &credentials.client_secret),
            NOW + 1,
        )
        .await
        .unwrap();
        let claims = jwt().verify(&issued.access_token, NOW / 1000).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.role.as_str()),
            (account.user.id.as_str(), "operator")
        );
        assert_eq!(claims.exp - claims.iat, 900);
        let session = store.get_session(&claims.sid).await.unwrap().unwrap();
        assert_eq!(
            session.method,
            cortex_domain::SessionMethod::ClientCredentials
        );
        assert_eq!(session.expires_at, NOW + 1 + 900_000);
        let tokens = events(&store, "service_account.token").await;
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            (
                tokens[0].actor.as_str(),
                tokens[0].target.as_str(),
                tokens[0].client_ip.as_str()
            ),
            ("ci-bot", account.user.id.as_str(), IP)
        );
        let again = store
            .get_service_account(&Tenant::All, &account.user.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.last_token_at, Some(NOW + 1));
    }

    #[tokio::test]
    async fn wrong_secrets_unknown_clients_rotated_and_disabled_accounts_are_refused_and_audited() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let (account, credentials) = ci(&store).await;
        let wrong = SecretString::from("ctxsa_not-the-secret".to_owned());
        for (client_id, secret) in [
            (credentials.client_id.as_str(), &wrong),
            ("sa_unknown", &credentials.client_secret),
        ] {
            let refused = issue_token(&store, &jwt(), 900, request(client_id, secret), NOW).await;
            assert!(matches!(refused, Err(TokenError::InvalidClient)));
        }

        let first = issue_token(
            &store,
            &jwt(),
            900,
            request(&credentials.client_id, &credentials.client_secret),
            NOW,
        )
        .await
        .unwrap();
        let (_, rotated) = rotate(&store, &Tenant::All, &account.user.id, ROOT, NOW + 1)
            .await
            .unwrap();
        assert_eq!(rotated.client_id, credentials.client_id);
        // The old secret is refused, and the token issued under it is gone with its session.
        let old = issue_token(
            &store,
            &jwt(),
            900,
            request(&credentials.client_id, &credentials.client_secret),
            NOW + 2,
        )
        .await;
        assert!(matches!(old, Err(TokenError::InvalidClient)));
        let sid = jwt().verify(&first.access_token, NOW / 1000).unwrap().sid;
        let session = store.get_session(&sid).await.unwrap().unwrap();
        assert!(!session.is_active(NOW + 2));
        issue_token(
            &store,
            &jwt(),
            900,
            request(&rotated.client_id, &rotated.client_secret),
            NOW + 3,
        )
        .await
        .unwrap();

        let account = store
            .get_service_account(&Tenant::All, &account.user.id)
            .await
            .unwrap()
            .unwrap();
        update(&store, &account, None, Some(true), ROOT, NOW + 4)
            .await
            .unwrap();
        let disabled = issue_token(
            &store,
            &jwt(),
            900,
            request(&rotated.client_id, &rotated.client_secret),
            NOW + 5,
        )
        .await;
        assert!(matches!(disabled, Err(TokenError::InvalidClient)));

        let refusals = events(&store, "service_account.token_refused").await;
        assert_eq!(refusals.len(), 4);
        assert!(refusals
            .iter()
            .all(|e| e.actor == "anonymous" && e.client_ip == IP));
        assert_eq!(events(&store, "service_account.rotate").await.len(), 1);
        assert_eq!(events(&store, "service_account.update").await.len(), 1);
    }

    #[tokio::test]
    async fn a_rotation_between_the_check_and_the_insert_issues_no_token() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let (account, _) = ci(&store).await;
        let issued = store
            .issue_service_token(
                &account.user.id,
                "0000",
                &NewServiceToken {
                    session_id: "s-stale",
                    unusable_token_hash: "x",
                    expires_at: NOW + 1000,
                    client_ip: IP,
                    user_agent: "",
                },
                &NewAuditEvent::new("ci-bot", "service_account.token", &account.user.id),
                NOW,
            )
            .await
            .unwrap();
        assert!(!issued);
        assert!(store.get_session("s-stale").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn names_are_usernames_and_another_organization_does_not_see_the_account() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let (account, _) = ci(&store).await;
        let taken = create(
            &store,
            &NewAccount {
                name: "ci-bot",
                role: Role::Viewer,
                org_id: cortex_domain::DEFAULT_ORG,
                description: "",
            },
            ROOT,
            NOW,
        )
        .await;
        assert!(matches!(taken, Err(ControlError::Conflict(_))));
        let missing = create(
            &store,
            &NewAccount {
                name: "elsewhere",
                role: Role::Viewer,
                org_id: "no-such-org",
                description: "",
            },
            ROOT,
            NOW,
        )
        .await;
        assert!(matches!(missing, Err(ControlError::NotFound)));
        let bad = create(
            &store,
            &NewAccount {
                name: "bad name",
                role: Role::Viewer,
                org_id: cortex_domain::DEFAULT_ORG,
                description: "",
            },
            ROOT,
            NOW,
        )
        .await;
        assert!(matches!(bad, Err(ControlError::Invalid(_))));

        let other = Tenant::Org("acme".to_owned());
        assert!(store
            .get_service_account(&other, &account.user.id)
            .await
            .unwrap()
            .is_none());
        assert!(store
            .list_service_accounts(&other)
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(
            rotate(&store, &other, &account.user.id, ROOT, NOW).await,
            Err(ControlError::NotFound)
        ));
        assert_eq!(
            store
                .list_service_accounts(&Tenant::All)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
