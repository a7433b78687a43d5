//! A user's own TOTP: enrolment (a secret stored sealed and pending until a first code confirms
//! it, which answers the recovery codes), checking a code, and turning TOTP off.
//!
//! Throttling the codes a person types is the caller's: the admin API charges each one to the
//! user's MFA bucket before it calls [`check_code`], and refunds it when the code was right.
//! Which roles may not turn TOTP off is the caller's policy too.

use cortex_crypto::envelope::{open, seal, MasterKey};
use cortex_crypto::totp::{
    generate_recovery_codes, generate_totp_secret, hash_recovery_code, otpauth_url, secret_base32,
    verify_totp,
};
use cortex_domain::audit::NewAuditEvent;
use cortex_store::users::UserRow;
use cortex_store::Store;
use secrecy::{ExposeSecret, SecretString};

use crate::error::ControlError;

/// How many recovery codes a confirmed enrolment hands out.
pub const RECOVERY_CODES: usize = 10;

/// A started enrolment: what the user's authenticator app needs, shown once.
pub struct Enrolment {
    /// The secret in base32, for typing it in.
    pub secret: SecretString,
    /// The `otpauth://` URL, for a QR code.
    pub otpauth_url: SecretString,
}

/// Maps a failure that should not happen to [`ControlError::Internal`].
fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> ControlError {
    move |cause| ControlError::Internal {
        context,
        cause: cause.to_string(),
    }
}

fn now_unix(now: i64) -> u64 {
    u64::try_from(now / 1000).unwrap_or(0)
}

fn step_column(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

/// Starts enrolment: a new secret, stored sealed (the user id as associated data) and not
/// active until [`confirm`]. Starting again replaces a pending secret; refused while TOTP is on.
pub async fn start(
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    now: i64,
) -> Result<Enrolment, ControlError> {
    if user.totp_enabled {
        return Err(ControlError::Conflict(
            "TOTP is already enabled; disable it first to enrol again".into(),
        ));
    }
    let secret = generate_totp_secret();
    let sealed = seal(master_key, secret.expose_secret(), user.id.as_bytes())
        .map_err(internal("sealing a TOTP secret failed"))?;
    store.set_pending_totp(&user.id, &sealed, now).await?;
    let otpauth_url = otpauth_url(secret.expose_secret(), "Cortex", &user.username)
        .map_err(internal("building the otpauth URL failed"))?;
    Ok(Enrolment {
        secret: secret_base32(secret.expose_secret()),
        otpauth_url,
    })
}

/// Confirms enrolment with a first code from the app, turns TOTP on and answers the recovery
/// codes, which are stored hashed and never shown again.
pub async fn confirm(
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    code: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<Vec<SecretString>, ControlError> {
    if user.totp_enabled {
        return Err(ControlError::Conflict("TOTP is already enabled".into()));
    }
    // The admin API's words: TOTP enrolment is self-service there and nowhere else.
    let sealed = user
        .totp_secret_sealed
        .as_ref()
        .ok_or(ControlError::invalid(
            "start enrolment first (POST /admin/me/totp)",
        ))?;
    let secret = open(master_key, sealed, user.id.as_bytes())
        .map_err(internal("opening a pending TOTP secret failed"))?;
    let step = verify_totp(&secret, code, now_unix(now), None).ok_or(ControlError::WrongCode)?;
    let codes = generate_recovery_codes(RECOVERY_CODES);
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| hash_recovery_code(c.expose_secret()))
        .collect();
    let event = NewAuditEvent::new(actor, "user.mfa_enabled", &user.id)
        .with_ip(ip)
        .with_org(&user.org_id);
    store
        .enable_totp(&user.id, step_column(step), &hashes, &event, now)
        .await?;
    Ok(codes)
}

/// Whether `code` is a current TOTP code or an unused recovery code of `user`, spending it
/// either way: a TOTP step is claimed atomically (a code another request or instance just used
/// is refused) and a recovery code is used up, with its audit event. The caller charges the
/// attempt before and refunds it on `true`.
pub async fn check_code(
    store: &Store,
    master_key: &MasterKey,
    user: &UserRow,
    code: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<bool, ControlError> {
    let sealed = user
        .totp_secret_sealed
        .as_ref()
        .ok_or(ControlError::Internal {
            context: "a user with TOTP enabled has no TOTP secret",
            cause: user.id.clone(),
        })?;
    let secret = open(master_key, sealed, user.id.as_bytes())
        .map_err(internal("opening a user's TOTP secret failed"))?;
    let last = user.totp_last_step.and_then(|s| u64::try_from(s).ok());
    let by_totp = match verify_totp(&secret, code, now_unix(now), last) {
        Some(step) => store.claim_totp_step(&user.id, step_column(step)).await?,
        None => false,
    };
    if by_totp {
        return Ok(true);
    }
    let event = NewAuditEvent::new(actor, "auth.recovery_code_used", &user.id)
        .with_ip(ip)
        .with_org(&user.org_id);
    Ok(store
        .consume_recovery_code(&user.id, &hash_recovery_code(code), &event, now)
        .await?)
}

/// Refuses to turn off TOTP that is not on. Callers that throttle codes call it before they
/// charge one; [`disable`] checks it again.
pub fn check_enabled(user: &UserRow) -> Result<(), ControlError> {
    if user.totp_enabled {
        Ok(())
    } else {
        Err(ControlError::Conflict("TOTP is not enabled".into()))
    }
}

/// Turns TOTP off (its secret, last step and recovery codes go). The caller has checked a code
/// with [`check_code`] first.
pub async fn disable(
    store: &Store,
    user: &UserRow,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    check_enabled(user)?;
    let event = NewAuditEvent::new(actor, "user.mfa_disabled", &user.id)
        .with_ip(ip)
        .with_org(&user.org_id);
    Ok(store.disable_totp(&user.id, &event, now).await?)
}

#[cfg(test)]
mod tests {
    use cortex_crypto::totp::totp_code_at;
    use cortex_domain::Role;
    use cortex_gateway::ApiError;
    use cortex_store::testing::TestDb;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    async fn user(store: &Store) -> UserRow {
        crate::users::create(
            store,
            "alice",
            Role::Developer,
            "h",
            &crate::users::Membership::default(),
            "root",
            "",
            NOW,
        )
        .await
        .unwrap()
    }

    async fn reload(store: &Store, user: &UserRow) -> UserRow {
        store
            .get_user(&cortex_domain::Tenant::All, &user.id)
            .await
            .unwrap()
            .unwrap()
    }

    /// The code the user's app shows at `now`, from the pending secret as stored.
    fn code_at(key: &MasterKey, user: &UserRow, now: i64) -> String {
        let sealed = user.totp_secret_sealed.as_ref().unwrap();
        let secret = open(key, sealed, user.id.as_bytes()).unwrap();
        totp_code_at(&secret, now_unix(now))
    }

    fn conflict_message(err: ControlError) -> String {
        match ApiError::from(err) {
            ApiError::Conflict(message) => message.into_owned(),
            other => panic!("expected a conflict, got {}", other.code()),
        }
    }

    #[tokio::test]
    async fn enrolment_confirms_with_a_code_and_yields_single_use_recovery_codes() {
        let db = TestDb::sqlite();
        let store = Store::open(&db.url).await.unwrap();
        let key = MasterKey::generate();
        let alice = user(&store).await;

        // Confirming before starting names the step that is missing.
        let err = confirm(&store, &key, &alice, "000000", "alice", "", NOW)
            .await
            .unwrap_err();
        let api = ApiError::from(err);
        assert_eq!(api.code(), "invalid_request");

        let enrolment = start(&store, &key, &alice, NOW).await.unwrap();
        assert!(enrolment
            .otpauth_url
            .expose_secret()
            .starts_with("otpauth://totp/"));
        assert!(enrolment
            .otpauth_url
            .expose_secret()
            .contains(enrolment.secret.expose_secret()));
        let pending = reload(&store, &alice).await;
        assert!(!pending.totp_enabled);

        // A wrong code answers 401 invalid_credentials, as a wrong login code does.
        let err = confirm(&store, &key, &pending, "12345", "alice", "", NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::WrongCode));
        assert_eq!(ApiError::from(err).code(), "invalid_credentials");

        let code = code_at(&key, &pending, NOW);
        let codes = confirm(&store, &key, &pending, &code, "alice", "192.0.2.7", NOW)
            .await
            .unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let enabled = reload(&store, &alice).await;
        assert!(enabled.totp_enabled);
        assert_eq!(store.unused_recovery_codes(&alice.id).await.unwrap(), 10);
        let event = store.audit_page(0, 100).await.unwrap().pop().unwrap();
        assert_eq!(
            (
                event.actor.as_str(),
                event.action.as_str(),
                event.client_ip.as_str()
            ),
            ("alice", "user.mfa_enabled", "192.0.2.7")
        );

        // Enrolling or confirming again is refused while TOTP is on.
        let err = start(&store, &key, &enabled, NOW).await.err().unwrap();
        assert_eq!(
            conflict_message(err),
            "TOTP is already enabled; disable it first to enrol again"
        );
        let err = confirm(&store, &key, &enabled, &code, "alice", "", NOW)
            .await
            .unwrap_err();
        assert_eq!(conflict_message(err), "TOTP is already enabled");

        // The confirming code's step is used: it cannot be replayed, a later step can.
        assert!(!check_code(&store, &key, &enabled, &code, "alice", "", NOW)
            .await
            .unwrap());
        let later = NOW + 30_000;
        let next = code_at(&key, &enabled, later);
        assert!(
            check_code(&store, &key, &enabled, &next, "alice", "", later)
                .await
                .unwrap()
        );

        // A recovery code works once, in any case and without dashes.
        let recovery = codes[0].expose_secret().replace('-', "").to_uppercase();
        assert!(
            check_code(&store, &key, &enabled, &recovery, "alice", "", NOW)
                .await
                .unwrap()
        );
        assert!(
            !check_code(&store, &key, &enabled, &recovery, "alice", "", NOW)
                .await
                .unwrap()
        );
        let event = store.audit_page(0, 100).await.unwrap().pop().unwrap();
        assert_eq!(event.action, "auth.recovery_code_used");

        disable(&store, &enabled, "alice", "", NOW).await.unwrap();
        let off = reload(&store, &alice).await;
        assert!(!off.totp_enabled && off.totp_secret_sealed.is_none());
        assert_eq!(
            conflict_message(disable(&store, &off, "alice", "", NOW).await.unwrap_err()),
            "TOTP is not enabled"
        );
        assert_eq!(
            conflict_message(check_enabled(&off).unwrap_err()),
            "TOTP is not enabled"
        );
    }
}
