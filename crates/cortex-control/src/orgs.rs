//! Organizations and teams (SPEC §18), shared by the admin API and anything else that manages
//! them: the checks on names, budgets, token limits and model lists, the rules (the default
//! organization stays; an organization goes only when it is empty; a team's members come from
//! its organization), and each change with its audit event in the same transaction. The event
//! belongs to the organization the change is about.
//!
//! Who may call these is the caller's business (the admin API: admins of the default
//! organization for organizations, an organization's admins for its teams); what they may see
//! is the [`Tenant`] they pass, which the store applies.

use std::borrow::Cow;

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::tenancy::check_tenant_name;
use cortex_domain::{Budget, Tenant, DEFAULT_ORG};
use cortex_store::organizations::{NewOrg, NewTeam, OrgChange, OrgRow, TeamChange, TeamRow};
use cortex_store::{new_id, Store, StoreError};
use serde_json::{json, Value};

use crate::error::ControlError;

/// The largest tokens-per-minute limit accepted (as for a key's, `KeyLimits::validate`).
pub const MAX_TOKENS_PER_MINUTE: i64 = 1_000_000_000_000;
/// At most this many models in an organization's allow-list, and users in one members call.
pub const MAX_LIST: usize = 1000;

/// The trimmed name when it is a valid organization or team name.
pub fn check_name(name: &str) -> Result<String, ControlError> {
    check_tenant_name(name.trim())
        .map(str::to_owned)
        .map_err(ControlError::invalid)
}

/// A tokens-per-minute limit: 1 to [`MAX_TOKENS_PER_MINUTE`].
pub fn check_tokens_per_minute(tokens: Option<i64>) -> Result<Option<i64>, ControlError> {
    match tokens {
        Some(t) if !(1..=MAX_TOKENS_PER_MINUTE).contains(&t) => Err(ControlError::invalid(
            format!("`tokens_per_minute` must be from 1 to {MAX_TOKENS_PER_MINUTE}"),
        )),
        other => Ok(other),
    }
}

/// A model allow-list: at most [`MAX_LIST`] names of 1 to 256 characters; repeats dropped.
pub fn check_models(models: Option<Vec<String>>) -> Result<Option<Vec<String>>, ControlError> {
    let Some(models) = models else {
        return Ok(None);
    };
    if models.len() > MAX_LIST
        || models
            .iter()
            .any(|m| m.is_empty() || m.len() > 256 || m.chars().any(char::is_control))
    {
        return Err(ControlError::invalid(
            "`allowed_models` must hold at most 1000 model names of 1 to 256 characters",
        ));
    }
    let mut unique: Vec<String> = Vec::with_capacity(models.len());
    for model in models {
        if !unique.contains(&model) {
            unique.push(model);
        }
    }
    Ok(Some(unique))
}

/// The fields of an organization or team a create or change names, checked. `None` leaves a
/// field alone (a change) or unset (a create); `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub budget: Option<Option<Budget>>,
    pub tokens_per_minute: Option<Option<i64>>,
}

fn conflict(message: impl Into<Cow<'static, str>>) -> ControlError {
    ControlError::Conflict(message.into())
}

fn budget_details(details: &mut Value, budget: Option<&Option<Budget>>) {
    if let Some(budget) = budget {
        details["budget_usd"] = json!(budget.map(|b| b.usd));
        details["budget_period"] = json!(budget.map(|b| b.period.as_str()));
    }
}

/// Creates an organization (`org.create`).
pub async fn create_org(
    store: &Store,
    name: &str,
    limits: &Limits,
    allowed_models: Option<Vec<String>>,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<OrgRow, ControlError> {
    let org = NewOrg {
        id: new_id(),
        name: check_name(name)?,
        budget: limits.budget.flatten(),
        tokens_per_minute: check_tokens_per_minute(limits.tokens_per_minute.flatten())?,
        allowed_models: check_models(allowed_models)?,
    };
    let mut details = json!({ "name": org.name, "allowed_models": org.allowed_models });
    budget_details(&mut details, limits.budget.as_ref());
    let event = NewAuditEvent::new(actor, "org.create", &org.id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(&org.id);
    store
        .create_org(&org, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => conflict("an organization with that name exists"),
            other => other.into(),
        })
}

/// Changes an organization `tenant` sees (`org.update`); a new model allow-list reaches its
/// keys on every instance (the store gives them a new version).
#[allow(clippy::too_many_arguments)]
pub async fn update_org(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    name: Option<&str>,
    limits: &Limits,
    allowed_models: Option<Option<Vec<String>>>,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<OrgRow, ControlError> {
    let change = OrgChange {
        name: name.map(check_name).transpose()?,
        budget: limits.budget,
        tokens_per_minute: limits
            .tokens_per_minute
            .map(check_tokens_per_minute)
            .transpose()?,
        allowed_models: allowed_models.map(check_models).transpose()?,
    };
    let mut details = json!({ "name": change.name });
    if let Some(models) = &change.allowed_models {
        details["allowed_models"] = json!(models);
    }
    budget_details(&mut details, change.budget.as_ref());
    let event = NewAuditEvent::new(actor, "org.update", id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(id);
    store
        .update_org(tenant, id, &change, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => conflict("an organization with that name exists"),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Deletes an empty organization `tenant` sees, with its teams (`org.delete`). The default
/// organization cannot be deleted, nor one that still has users or live keys (409 saying so).
pub async fn delete_org(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let org = store
        .get_org(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    if org.id == DEFAULT_ORG {
        return Err(conflict("the default organization cannot be deleted"));
    }
    let event = NewAuditEvent::new(actor, "org.delete", id)
        .with_details(&json!({ "name": org.name }))
        .with_ip(ip)
        .with_org(id);
    match store.delete_org(tenant, id, &event, now).await {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict) => {
            let (users, keys) = store.org_members(id).await?;
            Err(conflict(format!(
                "the organization still has {users} users and {keys} live keys; delete them first"
            )))
        }
        Err(StoreError::NotFound) => Err(ControlError::NotFound),
        Err(other) => Err(other.into()),
    }
}

/// Creates a team in `org_id`, which `tenant` must see (`NotFound` otherwise, as for an
/// organization that does not exist: the answer does not tell them apart).
#[allow(clippy::too_many_arguments)]
pub async fn create_team(
    store: &Store,
    tenant: &Tenant,
    org_id: &str,
    name: &str,
    limits: &Limits,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<TeamRow, ControlError> {
    let team = NewTeam {
        id: new_id(),
        org_id: org_id.to_owned(),
        name: check_name(name)?,
        budget: limits.budget.flatten(),
        tokens_per_minute: check_tokens_per_minute(limits.tokens_per_minute.flatten())?,
    };
    let mut details = json!({ "name": team.name, "org_id": team.org_id });
    budget_details(&mut details, limits.budget.as_ref());
    let event = NewAuditEvent::new(actor, "team.create", &team.id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(org_id);
    store
        .create_team(tenant, &team, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => conflict("the organization has a team with that name"),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Changes a team `tenant` sees (`team.update`).
#[allow(clippy::too_many_arguments)]
pub async fn update_team(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    name: Option<&str>,
    limits: &Limits,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<TeamRow, ControlError> {
    let team = store
        .get_team(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let change = TeamChange {
        name: name.map(check_name).transpose()?,
        budget: limits.budget,
        tokens_per_minute: limits
            .tokens_per_minute
            .map(check_tokens_per_minute)
            .transpose()?,
    };
    let mut details = json!({ "name": change.name });
    budget_details(&mut details, change.budget.as_ref());
    let event = NewAuditEvent::new(actor, "team.update", id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(&team.org_id);
    store
        .update_team(tenant, id, &change, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => conflict("the organization has a team with that name"),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Deletes a team `tenant` sees (`team.delete`); its keys stop being charged to it.
pub async fn delete_team(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let team = store
        .get_team(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let event = NewAuditEvent::new(actor, "team.delete", id)
        .with_details(&json!({ "name": team.name }))
        .with_ip(ip)
        .with_org(&team.org_id);
    store
        .delete_team(tenant, id, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

const MEMBERS_REFUSED: &str = "`user_ids` must name users of the team's organization";

/// Makes `user_ids` (repeats dropped) the members of a team `tenant` sees (`team.members`):
/// users of the team's organization only (400 otherwise, and nothing changes).
pub async fn set_members(
    store: &Store,
    tenant: &Tenant,
    team_id: &str,
    user_ids: &[String],
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<TeamRow, ControlError> {
    if user_ids.len() > MAX_LIST {
        return Err(ControlError::invalid(
            "`user_ids` may hold at most 1000 users",
        ));
    }
    let team = store
        .get_team(tenant, team_id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let mut unique: Vec<String> = Vec::with_capacity(user_ids.len());
    for id in user_ids {
        if !unique.contains(id) {
            unique.push(id.clone());
        }
    }
    // Checked against the team's organization, not the caller's scope: an admin of the default
    // organization sees every user, but a team still takes only its own organization's.
    let team_org = Tenant::Org(team.org_id.clone());
    for id in &unique {
        if store.get_user(&team_org, id).await?.is_none() {
            return Err(ControlError::invalid(MEMBERS_REFUSED));
        }
    }
    let event = NewAuditEvent::new(actor, "team.members", team_id)
        .with_details(&json!({ "user_ids": unique }))
        .with_ip(ip)
        .with_org(&team.org_id);
    store
        .set_team_members(tenant, team_id, &unique, &event, now)
        .await
        .map_err(|e| match e {
            // A user moved or went between the check and the write.
            StoreError::Conflict => ControlError::invalid(MEMBERS_REFUSED),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_limits_and_model_lists_are_checked() {
        assert_eq!(check_name("  Research  ").unwrap(), "Research");
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert_eq!(check_tokens_per_minute(None).unwrap(), None);
        assert_eq!(check_tokens_per_minute(Some(5)).unwrap(), Some(5));
        assert!(check_tokens_per_minute(Some(0)).is_err());
        assert!(check_tokens_per_minute(Some(MAX_TOKENS_PER_MINUTE + 1)).is_err());
        assert_eq!(
            check_models(Some(vec!["a".into(), "b".into(), "a".into()])).unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(check_models(Some(vec![String::new()])).is_err());
        assert!(check_models(Some(vec!["x".repeat(257)])).is_err());
        assert!(check_models(Some(vec!["m".into(); 1001])).is_err());
        assert_eq!(check_models(Some(vec![])).unwrap(), Some(vec![]));
    }
}
