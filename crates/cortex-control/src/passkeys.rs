//! Passkeys (WebAuthn, SPEC §19) on `webauthn-rs`: a local user registers several, named, and
//! removes them; a passkey is a second factor after the password, or — for a user who turns
//! `passkey_only` on — the only factor. Every ceremony has two steps; the first's state is
//! sealed with the master key into a one-use challenge row (`cortex-store/src/challenges.rs`)
//! whose id is the hash of the token the client gets back, so the second step works once, on
//! any instance. User verification is required. A passkey's signature counter only moves forward
//! (`webauthn-rs` refuses a counter not above the stored one, and the store's update refuses a
//! race): a cloned authenticator replaying an old counter is refused.
//!
//! Passwordless sign-in starts with a username alone; a name that cannot sign in that way gets
//! a decoy challenge (a credential id derived from the name with a key derived from the master
//! key), so the answer does not tell which accounts exist or use passkeys.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cortex_config::WebauthnSettings;
use cortex_crypto::envelope::{self, MasterKey};
use cortex_crypto::token::{random_token, sha256_hex};
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{AccountKind, Tenant};
use cortex_store::challenges::{ChallengePurpose, NewChallenge};
use cortex_store::passkeys::{NewPasskey, PasskeyRow};
use cortex_store::users::UserRow;
use cortex_store::{new_id, Store, StoreError};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    WebauthnError,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::error::ControlError;

/// The browser's answers, as the admin API takes them.
pub use webauthn_rs::prelude::{
    PublicKeyCredential as Assertion, RegisterPublicKeyCredential as Attestation,
};

/// How long a ceremony may take between its two steps (WebAuthn's recommended timeout).
pub const CEREMONY_TTL_MS: i64 = 5 * 60 * 1000;

/// Why a passkey sign-in was refused. Kept apart from [`ControlError`]: the admin API answers
/// most with the login's own codes.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// Unknown or used challenge, an unknown credential, a bad signature, the wrong origin,
    /// no user verification: one answer for all.
    #[error("the passkey was not accepted")]
    Refused,
    /// The assertion's counter is not above the stored one: a cloned authenticator, or a replay.
    #[error("the passkey's signature counter went backwards: it may have been cloned")]
    CounterReplayed,
    /// The account may not sign in (disabled, not local, or passkey-only without a password
    /// check where one is required).
    #[error("the account may not sign in this way")]
    NotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("passkeys failed on the server")]
    Internal,
}

fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> PasskeyError {
    move |cause| {
        tracing::error!(error = %cause, "{context}");
        PasskeyError::Internal
    }
}

/// The relying party: `webauthn-rs` configured for the console's origin, and the key decoy
/// challenges are derived with.
pub struct Passkeys {
    webauthn: Webauthn,
    settings: WebauthnSettings,
    decoy_key: SecretBox<[u8; 32]>,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys")
            .field("origin", &self.settings.origin)
            .field("rp_id", &self.settings.rp_id)
            .finish_non_exhaustive()
    }
}

impl Passkeys {
    pub fn new(settings: WebauthnSettings, master_key: &MasterKey) -> Result<Self, String> {
        let origin = Url::parse(&settings.origin)
            .map_err(|e| format!("invalid setting CORTEX_WEBAUTHN_ORIGIN: {e}"))?;
        let webauthn = WebauthnBuilder::new(&settings.rp_id, &origin)
            .and_then(|builder| builder.rp_name(&settings.rp_name).build())
            .map_err(|e| format!("invalid setting CORTEX_WEBAUTHN_RP_ID: {e}"))?;
        Ok(Passkeys {
            webauthn,
            decoy_key: master_key.derive_subkey("cortex-passkey-decoy-v1"),
            settings,
        })
    }

    pub fn settings(&self) -> &WebauthnSettings {
        &self.settings
    }
}

/// A ceremony's first step: the options for the browser, and the token it sends back.
pub struct Ceremony<T> {
    pub challenge_token: SecretString,
    pub options: T,
}

#[derive(Serialize, Deserialize)]
struct PendingRegistration {
    name: String,
    state: PasskeyRegistration,
}

#[derive(Serialize, Deserialize)]
struct PendingLogin {
    state: PasskeyAuthentication,
    /// The password was checked in the first step (a second factor), or not (passkey alone).
    password_verified: bool,
}

async fn seal_challenge<T: Serialize>(
    store: &Store,
    master_key: &MasterKey,
    purpose: ChallengePurpose,
    user_id: Option<&str>,
    pending: &T,
    now: i64,
) -> Result<SecretString, PasskeyError> {
    let token = random_token(32);
    let id = sha256_hex(token.expose_secret().as_bytes());
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(pending).map_err(internal("encoding a WebAuthn ceremony failed"))?,
    );
    let sealed = envelope::seal(master_key, &plain, id.as_bytes())
        .map_err(internal("sealing a WebAuthn ceremony failed"))?;
    store
        .create_challenge(
            &NewChallenge {
                id: &id,
                purpose,
                user_id,
                sealed: &sealed,
                expires_at: now + CEREMONY_TTL_MS,
            },
            now,
        )
        .await?;
    Ok(token)
}

/// Takes the challenge `token` names for `purpose`: its user (if any) and its state.
async fn take_challenge<T: for<'de> Deserialize<'de>>(
    store: &Store,
    master_key: &MasterKey,
    purpose: ChallengePurpose,
    token: &str,
    now: i64,
) -> Result<(Option<String>, T), PasskeyError> {
    if token.is_empty() || token.len() > 128 {
        return Err(PasskeyError::Refused);
    }
    let id = sha256_hex(token.as_bytes());
    let taken = store
        .take_challenge(&id, purpose, now)
        .await?
        .ok_or(PasskeyError::Refused)?;
    let plain = envelope::open(master_key, &taken.sealed, id.as_bytes())
        .map_err(internal("opening a WebAuthn ceremony failed"))?;
    let state =
        serde_json::from_slice(&plain).map_err(internal("decoding a WebAuthn ceremony failed"))?;
    Ok((taken.user_id, state))
}

fn user_handle(user: &UserRow) -> Result<Uuid, PasskeyError> {
    // User ids are v4 UUIDs written without dashes: the handle the authenticator keeps.
    Uuid::parse_str(&user.id).map_err(internal("a user id is not a UUID"))
}

fn stored(row: &PasskeyRow) -> Result<Passkey, PasskeyError> {
    serde_json::from_str(&row.credential).map_err(internal("a stored passkey does not decode"))
}

/// Checks a passkey's name: 1 to 64 printable characters.
pub fn check_name(name: &str) -> Result<&str, ControlError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ControlError::invalid(
            "`name` must be 1 to 64 printable characters",
        ));
    }
    Ok(name)
}

/// Starts registering a passkey named `name` for `user` (a local account), excluding the ones
/// the user has.
pub async fn register_start(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    name: &str,
    now: i64,
) -> Result<Ceremony<CreationChallengeResponse>, ControlError> {
    let name = check_name(name)?;
    let existing = store.list_passkeys(&user.id).await?;
    if existing.iter().any(|p| p.name == name) {
        return Err(ControlError::Conflict(
            "you have a passkey of that name".into(),
        ));
    }
    let exclude = existing
        .iter()
        .map(stored)
        .map(|p| p.map(|p| p.cred_id().clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(as_control)?;
    let handle = user_handle(user).map_err(as_control)?;
    let (options, state) = passkeys
        .webauthn
        .start_passkey_registration(handle, &user.username, &user.username, Some(exclude))
        .map_err(|e| as_control(internal("starting a passkey registration failed")(e)))?;
    let pending = PendingRegistration {
        name: name.to_owned(),
        state,
    };
    let challenge_token = seal_challenge(
        store,
        master_key,
        ChallengePurpose::PasskeyRegister,
        Some(&user.id),
        &pending,
        now,
    )
    .await
    .map_err(as_control)?;
    Ok(Ceremony {
        challenge_token,
        options,
    })
}

fn as_control(error: PasskeyError) -> ControlError {
    match error {
        PasskeyError::Store(e) => ControlError::Store(e),
        PasskeyError::Refused | PasskeyError::CounterReplayed | PasskeyError::NotAllowed => {
            ControlError::invalid("the passkey was not accepted; start again")
        }
        PasskeyError::Internal => ControlError::Internal {
            context: "passkeys",
            cause: "see the log".into(),
        },
    }
}

/// Completes a registration started by `user`: verifies the browser's answer and stores the
/// passkey, with `auth.passkey_add`.
#[allow(clippy::too_many_arguments)]
pub async fn register_finish(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    challenge_token: &str,
    credential: &RegisterPublicKeyCredential,
    ip: &str,
    now: i64,
) -> Result<PasskeyRow, ControlError> {
    let (owner, pending): (_, PendingRegistration) = take_challenge(
        store,
        master_key,
        ChallengePurpose::PasskeyRegister,
        challenge_token,
        now,
    )
    .await
    .map_err(as_control)?;
    if owner.as_deref() != Some(user.id.as_str()) {
        return Err(as_control(PasskeyError::Refused));
    }
    let passkey = passkeys
        .webauthn
        .finish_passkey_registration(credential, &pending.state)
        .map_err(|e| {
            tracing::info!(error = %e, "a passkey registration was refused");
            as_control(PasskeyError::Refused)
        })?;
    let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id());
    let json = serde_json::to_string(&passkey)
        .map_err(|e| as_control(internal("encoding a passkey failed")(e)))?;
    let id = new_id();
    let event = NewAuditEvent::new(&user.username, "auth.passkey_add", &user.id)
        .with_details(&json!({ "passkey": id, "name": pending.name }))
        .with_ip(ip)
        .with_org(&user.org_id);
    store
        .add_passkey(
            &NewPasskey {
                id: &id,
                user_id: &user.id,
                credential_id: &credential_id,
                name: &pending.name,
                credential: &json,
                sign_count: 0,
            },
            &event,
            now,
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ControlError::Conflict(
                "that passkey, or a passkey of that name, is registered already".into(),
            ),
            other => other.into(),
        })
}

/// Removes passkey `id` of `user`, with `auth.passkey_remove`. The last passkey of a
/// passkey-only user stays (409).
pub async fn remove(
    store: &Store,
    user: &UserRow,
    id: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let event = NewAuditEvent::new(&user.username, "auth.passkey_remove", &user.id)
        .with_details(&json!({ "passkey": id }))
        .with_ip(ip)
        .with_org(&user.org_id);
    store
        .remove_passkey(&user.id, id, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ControlError::Conflict(
                "this is your last passkey and you sign in with a passkey alone: turn that off first"
                    .into(),
            ),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Turns signing in with a passkey alone on or off for `user`, with `auth.passkey_only`. On
/// needs a registered passkey.
pub async fn set_passkey_only(
    store: &Store,
    user: &UserRow,
    enabled: bool,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    if user.kind != AccountKind::Local {
        return Err(ControlError::invalid(
            "only accounts with a password choose how they sign in here",
        ));
    }
    let event = NewAuditEvent::new(&user.username, "auth.passkey_only", &user.id)
        .with_details(&json!({ "enabled": enabled }))
        .with_ip(ip)
        .with_org(&user.org_id);
    store
        .set_passkey_only(&user.id, enabled, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => {
                ControlError::Conflict("register a passkey before signing in with one alone".into())
            }
            other => other.into(),
        })
}

/// Who a passkey sign-in is for.
pub enum LoginFor<'a> {
    /// A user whose password the caller has just checked: the passkey is the second factor.
    SecondFactor(&'a UserRow),
    /// A username alone: only a local, enabled, passkey-only user with passkeys gets a real
    /// challenge; anyone else a decoy.
    Passwordless(&'a str),
}

/// Starts a passkey sign-in.
pub async fn login_start(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    login: LoginFor<'_>,
    now: i64,
) -> Result<Ceremony<Value>, PasskeyError> {
    let (user, password_verified) = match login {
        LoginFor::SecondFactor(user) => (Some(user.clone()), true),
        LoginFor::Passwordless(username) => {
            let user = store
                .get_user_by_username(&Tenant::All, username.trim())
                .await?
                .filter(|u| u.kind == AccountKind::Local && u.passkey_only && !u.disabled);
            match user {
                Some(user) => (Some(user), false),
                None => return decoy(passkeys, store, master_key, username, now).await,
            }
        }
    };
    let Some(user) = user else {
        return Err(PasskeyError::NotAllowed);
    };
    let rows = store.list_passkeys(&user.id).await?;
    if rows.is_empty() {
        if password_verified {
            return Err(PasskeyError::NotAllowed);
        }
        return decoy(passkeys, store, master_key, &user.username, now).await;
    }
    let credentials = rows.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
    let (options, state): (RequestChallengeResponse, _) = passkeys
        .webauthn
        .start_passkey_authentication(&credentials)
        .map_err(internal("starting a passkey sign-in failed"))?;
    let challenge_token = seal_challenge(
        store,
        master_key,
        ChallengePurpose::PasskeyLogin,
        Some(&user.id),
        &PendingLogin {
            state,
            password_verified,
        },
        now,
    )
    .await?;
    Ok(Ceremony {
        challenge_token,
        options: serde_json::to_value(options)
            .map_err(internal("encoding passkey options failed"))?,
    })
}

/// A challenge shaped like a real one for a name that cannot sign in with a passkey alone: its
/// credential id is an HMAC of the name, so asking twice gives the same id, as a real account's
/// would. Its row has no user, so its answer is always refused.
async fn decoy(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    username: &str,
    now: i64,
) -> Result<Ceremony<Value>, PasskeyError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(passkeys.decoy_key.expose_secret())
        .map_err(internal("the decoy key is unusable"))?;
    mac.update(username.trim().to_lowercase().as_bytes());
    let credential_id = URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16]);
    let challenge = URL_SAFE_NO_PAD.encode(random_token(32).expose_secret().as_bytes());
    let challenge_token = seal_challenge(
        store,
        master_key,
        ChallengePurpose::PasskeyLogin,
        None,
        &json!({ "decoy": true }),
        now,
    )
    .await?;
    Ok(Ceremony {
        challenge_token,
        options: json!({
            "publicKey": {
                "challenge": challenge,
                "timeout": CEREMONY_TTL_MS,
                "rpId": passkeys.settings.rp_id,
                "allowCredentials": [{ "type": "public-key", "id": credential_id }],
                "userVerification": "required",
            },
        }),
    })
}

/// A passkey sign-in that passed: the user, whether the password was checked too, and which
/// passkey.
#[derive(Debug)]
pub struct PasskeyLogin {
    pub user: UserRow,
    pub password_verified: bool,
    pub passkey_name: String,
}

/// Completes a passkey sign-in: takes the challenge (once), verifies the assertion against the
/// user's passkeys (origin, challenge, signature, user verification, counter) and moves the
/// passkey's counter forward. A refusal records `auth.passkey_failed`.
pub async fn login_finish(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    challenge_token: &str,
    credential: &PublicKeyCredential,
    ip: &str,
    now: i64,
) -> Result<PasskeyLogin, PasskeyError> {
    let result = verify_login(
        passkeys,
        store,
        master_key,
        challenge_token,
        credential,
        now,
    )
    .await;
    if let Err(error) = &result {
        let reason = match error {
            PasskeyError::CounterReplayed => "counter_replayed",
            PasskeyError::NotAllowed => "not_allowed",
            _ => "refused",
        };
        let event = NewAuditEvent::new("anonymous", "auth.passkey_failed", "")
            .with_details(&json!({ "reason": reason }))
            .with_ip(ip);
        if let Err(e) = store.append_audit(&event, now).await {
            tracing::error!(error = %e, "recording a refused passkey sign-in failed");
        }
    }
    result
}

async fn verify_login(
    passkeys: &Passkeys,
    store: &Store,
    master_key: &MasterKey,
    challenge_token: &str,
    credential: &PublicKeyCredential,
    now: i64,
) -> Result<PasskeyLogin, PasskeyError> {
    let (user_id, pending): (Option<String>, Value) = take_challenge(
        store,
        master_key,
        ChallengePurpose::PasskeyLogin,
        challenge_token,
        now,
    )
    .await?;
    // A decoy's challenge has no user: nothing can answer it.
    let user_id = user_id.ok_or(PasskeyError::Refused)?;
    let pending: PendingLogin =
        serde_json::from_value(pending).map_err(internal("decoding a passkey sign-in failed"))?;
    let user = store
        .get_user(&Tenant::All, &user_id)
        .await?
        .filter(|u| !u.disabled && u.kind == AccountKind::Local)
        .ok_or(PasskeyError::NotAllowed)?;
    let presented = URL_SAFE_NO_PAD.encode(credential.get_credential_id());
    let row = store
        .list_passkeys(&user.id)
        .await?
        .into_iter()
        .find(|p| p.credential_id == presented)
        .ok_or(PasskeyError::Refused)?;
    let result = passkeys
        .webauthn
        .finish_passkey_authentication(credential, &pending.state)
        .map_err(|e| match e {
            WebauthnError::CredentialPossibleCompromise => PasskeyError::CounterReplayed,
            other => {
                tracing::info!(error = %other, "a passkey assertion was refused");
                PasskeyError::Refused
            }
        })?;
    if !result.user_verified() {
        return Err(PasskeyError::Refused);
    }
    let mut passkey = stored(&row)?;
    passkey.update_credential(&result);
    let json = serde_json::to_string(&passkey).map_err(internal("encoding a passkey failed"))?;
    let counter = i64::from(result.counter());
    // The counter moves forward in one statement: a concurrent use (or a clone) with the same
    // or an older counter loses here even if both passed the check above.
    if !store
        .record_passkey_use(&row.id, &json, counter, now)
        .await?
    {
        return Err(PasskeyError::CounterReplayed);
    }
    Ok(PasskeyLogin {
        user,
        password_verified: pending.password_verified,
        passkey_name: row.name,
    })
}
