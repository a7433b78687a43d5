//! User management shared by the admin API and the command line: usernames and roles, creating,
//! changing, deleting and erasing users, each with its audit event in the same transaction, and
//! the rule that a change never leaves the deployment without an active admin. A user's own
//! second factor is in [`totp`].
//!
//! Passwords arrive here already hashed: Argon2 is expensive, and bounding how many hashes run
//! at once is the caller's business (the admin API's password gate). Only the policy check is
//! here, so every caller refuses the same passwords with the same words.
//!
//! Deleting, erasing and enabling or disabling a user changes their keys in the same
//! transaction; the caller brings its key cache up to date afterwards (the server refreshes its
//! own and tells the other instances; the command line has none).

pub mod totp;

use std::borrow::Cow;

use cortex_crypto::password::check_password_policy;
use cortex_domain::audit::NewAuditEvent;
use cortex_domain::{Budget, Role, Tenant, DEFAULT_ORG};
use cortex_store::users::{ErasureReport, NewUser, UserChange, UserRow};
use cortex_store::{new_id, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::error::ControlError;

/// The trimmed username when it is 1 to 64 letters, digits, '.', '_', '-' or '@'.
pub fn check_username(name: &str) -> Result<&str, ControlError> {
    let name = name.trim();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if valid {
        Ok(name)
    } else {
        Err(ControlError::invalid(
            "`username` must be 1-64 letters, digits, '.', '_', '-' or '@'",
        ))
    }
}

pub fn parse_role(text: &str) -> Result<Role, ControlError> {
    Role::parse(text).ok_or(ControlError::invalid(
        "`role` must be one of admin, operator, developer, viewer, billing",
    ))
}

/// The password policy (length, and no common, weak or username-like passwords), checked
/// before the caller pays for a hash.
pub fn check_password(password: &SecretString, username: &str) -> Result<(), ControlError> {
    check_password_policy(password.expose_secret(), &[username])
        .map_err(|e| ControlError::invalid(e.to_string()))
}

/// Where a new user goes: their organization and optional budget.
#[derive(Debug, Clone)]
pub struct Membership {
    pub org_id: String,
    pub budget: Option<Budget>,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            org_id: DEFAULT_ORG.to_owned(),
            budget: None,
        }
    }
}

/// Checks a budget given as the wire's two optional fields (400 naming the field).
pub fn parse_budget(
    usd: Option<f64>,
    period: Option<&str>,
) -> Result<Option<Budget>, ControlError> {
    Budget::from_parts(usd, period).map_err(ControlError::invalid)
}

/// Creates a user whose password (hashed by the caller, after [`check_password`]) must be
/// changed at first login: an admin-set password is known to the admin. The organization must
/// exist (`NotFound` otherwise); whether the caller may add users to it is the caller's check.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    store: &Store,
    username: &str,
    role: Role,
    password_hash: &str,
    membership: &Membership,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<UserRow, ControlError> {
    let username = check_username(username)?;
    let id = new_id();
    let event = NewAuditEvent::new(actor, "user.create", &id)
        .with_details(
            &json!({ "username": username, "role": role.as_str(), "org_id": membership.org_id }),
        )
        .with_ip(ip)
        .with_org(&membership.org_id);
    let new = NewUser {
        id: &id,
        username,
        password_hash,
        role,
        must_change_password: true,
        org_id: &membership.org_id,
        budget: membership.budget,
    };
    store
        .create_user(&new, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => conflict("a user with that username exists"),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Refuses a change that would leave the deployment without an active admin: demoting or
/// disabling (`removes_admin`) the last enabled admin of the default organization, the one
/// that manages all the others. (Another organization may lose its last admin: an admin of the
/// default organization can still manage it, and emptying it is how it is deleted.)
async fn keep_an_admin(
    store: &Store,
    target: &UserRow,
    removes_admin: bool,
) -> Result<(), ControlError> {
    if target.role == Role::Admin
        && target.org_id == DEFAULT_ORG
        && !target.disabled
        && removes_admin
        && store
            .count_other_active_admins(DEFAULT_ORG, &target.id)
            .await?
            == 0
    {
        return Err(conflict("this would leave no active admin"));
    }
    Ok(())
}

/// Whether `change` may be made to `target`, judged on its role and disabled fields. [`update`]
/// checks this itself; a caller that hashes a new password calls it first, so that a refused
/// change costs no hash and is refused before any password error.
pub async fn check_update(
    store: &Store,
    target: &UserRow,
    change: &UserChange,
) -> Result<(), ControlError> {
    let demotes = change.role.is_some_and(|r| r != Role::Admin);
    keep_an_admin(store, target, demotes || change.disabled == Some(true)).await
}

/// Changes a user's role, disabled flag and (with a hash from the caller) password. Disabling
/// suspends the user's keys and ends their sessions; a new password also ends their sessions
/// and must be changed at next login.
pub async fn update(
    store: &Store,
    target: &UserRow,
    change: &UserChange,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<UserRow, ControlError> {
    check_update(store, target, change).await?;
    let mut details = json!({
        "role": change.role.map(Role::as_str),
        "disabled": change.disabled,
        "password_reset": change.password_hash.is_some(),
    });
    if let Some(budget) = &change.budget {
        details["budget_usd"] = json!(budget.map(|b| b.usd));
        details["budget_period"] = json!(budget.map(|b| b.period.as_str()));
    }
    let event = NewAuditEvent::new(actor, "user.update", &target.id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(&target.org_id);
    let tenant = Tenant::Org(target.org_id.clone());
    Ok(store
        .update_user(&tenant, &target.id, change, &event, now)
        .await?)
}

/// Deletes a user, revoking their keys (kept for usage history) and sessions. Refused for the
/// last active admin.
pub async fn delete(
    store: &Store,
    target: &UserRow,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    keep_an_admin(store, target, true).await?;
    let event = NewAuditEvent::new(actor, "user.delete", &target.id)
        .with_details(&json!({ "username": target.username }))
        .with_ip(ip)
        .with_org(&target.org_id);
    let tenant = Tenant::Org(target.org_id.clone());
    Ok(store.delete_user(&tenant, &target.id, &event, now).await?)
}

/// Erases the personal data of user `id` (see [`Store::erase_user`]), also for a user deleted
/// earlier whose keys and usage still carry the id, within `tenant`. Refused (the only
/// [`ControlError::Conflict`] it answers) when the user is the last active admin;
/// `Store(NotFound)` when nothing `tenant` sees carries the id.
pub async fn erase(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<ErasureReport, ControlError> {
    let target = store.get_user(tenant, id).await?;
    if let Some(target) = &target {
        keep_an_admin(store, target, true).await?;
    }
    // The event names the id only: the point is that the name goes. It belongs to the user's
    // organization (the caller's, for a user deleted earlier).
    let org = match (&target, tenant) {
        (Some(target), _) => target.org_id.clone(),
        (None, Tenant::Org(own)) => own.clone(),
        (None, Tenant::All) => DEFAULT_ORG.to_owned(),
    };
    let event = NewAuditEvent::new(actor, "user.erase", id)
        .with_details(&json!({ "erased": true }))
        .with_ip(ip)
        .with_org(org);
    Ok(store.erase_user(tenant, id, &event, now).await?)
}

fn conflict(message: impl Into<Cow<'static, str>>) -> ControlError {
    ControlError::Conflict(message.into())
}

#[cfg(test)]
mod tests {
    use cortex_gateway::ApiError;
    use cortex_store::testing::TestDb;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    async fn store(db: &TestDb) -> Store {
        Store::open(&db.url).await.unwrap()
    }

    async fn add(store: &Store, name: &str, role: Role) -> UserRow {
        create(
            store,
            name,
            role,
            "not-a-real-hash",
            &Membership::default(),
            "root",
            "192.0.2.1",
            NOW,
        )
        .await
        .unwrap()
    }

    /// The admin API's answer to `err`: its code and message.
    fn answer(err: ControlError) -> (&'static str, String) {
        let api = ApiError::from(err);
        let message = match &api {
            ApiError::InvalidRequest(m) | ApiError::Conflict(m) => m.to_string(),
            _ => String::new(),
        };
        (api.code(), message)
    }

    #[test]
    fn usernames_are_trimmed_and_limited_to_a_safe_alphabet() {
        assert_eq!(
            check_username("  alice.b-c_d@example  ").unwrap(),
            "alice.b-c_d@example"
        );
        assert_eq!(check_username(&"a".repeat(64)).unwrap().len(), 64);
        let long = "a".repeat(65);
        for bad in [
            "",
            "   ",
            "a b",
            "alice/..",
            "ålice",
            "tab\tname",
            long.as_str(),
        ] {
            let err = check_username(bad).unwrap_err();
            assert_eq!(
                answer(err),
                (
                    "invalid_request",
                    "`username` must be 1-64 letters, digits, '.', '_', '-' or '@'".to_owned()
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn roles_are_the_lowercase_names() {
        assert_eq!(parse_role("operator").unwrap(), Role::Operator);
        for bad in ["Admin", "root", ""] {
            assert_eq!(
                answer(parse_role(bad).unwrap_err()),
                (
                    "invalid_request",
                    "`role` must be one of admin, operator, developer, viewer, billing".to_owned()
                )
            );
        }
    }

    #[test]
    fn a_password_against_the_policy_is_refused_in_the_policy_s_words() {
        let weak = SecretString::from("password");
        let policy = check_password_policy("password", &["alice"]).unwrap_err();
        assert_eq!(
            answer(check_password(&weak, "alice").unwrap_err()),
            ("invalid_request", policy.to_string())
        );
        let good = SecretString::from("violet-harbour-tundra-91");
        assert!(check_password(&good, "alice").is_ok());
    }

    #[tokio::test]
    async fn a_taken_username_is_a_conflict_and_creation_is_audited() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let alice = add(&store, " alice ", Role::Developer).await;
        assert_eq!(alice.username, "alice");
        assert!(alice.must_change_password);
        let err = create(
            &store,
            "alice",
            Role::Viewer,
            "h",
            &Membership::default(),
            "root",
            "",
            NOW,
        )
        .await
        .unwrap_err();
        assert_eq!(
            answer(err),
            ("conflict", "a user with that username exists".to_owned())
        );
        let events = store.audit_page(0, 100).await.unwrap();
        assert_eq!(events.len(), 1, "the refused creation wrote nothing");
        let event = &events[0];
        assert_eq!(
            (
                event.actor.as_str(),
                event.action.as_str(),
                event.target.as_str()
            ),
            ("root", "user.create", alice.id.as_str())
        );
        assert_eq!(event.client_ip, "192.0.2.1");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.details).unwrap(),
            json!({ "username": "alice", "role": "developer", "org_id": "default" })
        );
    }

    #[tokio::test]
    async fn the_last_active_admin_cannot_be_demoted_disabled_deleted_or_erased() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let admin = add(&store, "admin", Role::Admin).await;
        let last = ("conflict", "this would leave no active admin".to_owned());
        let demote = UserChange {
            role: Some(Role::Operator),
            ..UserChange::default()
        };
        let disable = UserChange {
            disabled: Some(true),
            ..UserChange::default()
        };
        for change in [&demote, &disable] {
            let err = update(&store, &admin, change, "root", "", NOW)
                .await
                .unwrap_err();
            assert_eq!(answer(err), last);
            assert_eq!(
                answer(check_update(&store, &admin, change).await.unwrap_err()),
                last
            );
        }
        let err = delete(&store, &admin, "root", "", NOW).await.unwrap_err();
        assert_eq!(answer(err), last);
        let err = erase(&store, &Tenant::All, &admin.id, "root", "", NOW)
            .await
            .unwrap_err();
        assert_eq!(answer(err), last);
        // Changes that keep the admin an admin pass.
        let keep = UserChange {
            role: Some(Role::Admin),
            disabled: Some(false),
            ..UserChange::default()
        };
        update(&store, &admin, &keep, "root", "", NOW)
            .await
            .unwrap();

        // With a second active admin, the first may go.
        add(&store, "second", Role::Admin).await;
        let demoted = update(&store, &admin, &demote, "root", "", NOW)
            .await
            .unwrap();
        assert_eq!(demoted.role, Role::Operator);
        let event = store.audit_page(0, 100).await.unwrap().pop().unwrap();
        assert_eq!(event.action, "user.update");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.details).unwrap(),
            json!({ "role": "operator", "disabled": null, "password_reset": false })
        );
    }

    #[tokio::test]
    async fn a_disabled_admin_does_not_count_and_may_be_removed() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        let admin = add(&store, "admin", Role::Admin).await;
        let other = add(&store, "other", Role::Admin).await;
        let disable = UserChange {
            disabled: Some(true),
            ..UserChange::default()
        };
        let other = update(&store, &other, &disable, "root", "", NOW)
            .await
            .unwrap();
        // `other` is disabled: `admin` is the last active one.
        assert_eq!(
            answer(delete(&store, &admin, "root", "", NOW).await.unwrap_err()).0,
            "conflict"
        );
        delete(&store, &other, "root", "10.0.0.1", NOW)
            .await
            .unwrap();
        let event = store.audit_page(0, 100).await.unwrap().pop().unwrap();
        assert_eq!(
            (
                event.action.as_str(),
                event.target.as_str(),
                event.client_ip.as_str()
            ),
            ("user.delete", other.id.as_str(), "10.0.0.1")
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&event.details).unwrap(),
            json!({ "username": "other" })
        );
    }

    #[tokio::test]
    async fn erasing_names_only_the_id_and_works_after_deletion() {
        let db = TestDb::sqlite();
        let store = store(&db).await;
        add(&store, "admin", Role::Admin).await;
        let dev = add(&store, "dev", Role::Developer).await;
        let report = erase(&store, &Tenant::All, &dev.id, "root", "", NOW)
            .await
            .unwrap();
        assert!(report.user_deleted);
        let event = store.audit_page(0, 100).await.unwrap().pop().unwrap();
        assert_eq!(
            (event.action.as_str(), event.target.as_str()),
            ("user.erase", dev.id.as_str())
        );
        assert_eq!(event.details, json!({ "erased": true }).to_string());
        // Nothing carries the id any more.
        let err = erase(&store, &Tenant::All, &dev.id, "root", "", NOW)
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Store(StoreError::NotFound)));
        assert_eq!(answer(err).0, "not_found");
    }
}
