//! The configuration export (SPEC §9): providers, models, roles, users and key metadata, with
//! every secret replaced by `[REDACTED]` and a manifest saying whether secrets were present.
//! Nothing in it can be used to authenticate: no password hashes, no key hashes, no TOTP.

use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Role;
use cortex_domain::Tenant;
use cortex_store::{Store, StoreResult};
use serde_json::{json, Value};

pub const REDACTED: &str = "[REDACTED]";

/// The export as `tenant` sees it: the catalogue is the deployment's, but users and keys (and
/// the models an organization may use) are only those of the caller's organization unless
/// the caller sees every organization (the command line, admins of the default one).
pub async fn export(store: &Store, tenant: &Tenant, now: i64) -> StoreResult<Value> {
    let providers = store.list_providers().await?;
    let models = store.list_models(tenant).await?;
    let users = store.list_users(tenant).await?;
    let keys = store.list_api_keys(tenant, None).await?;
    let secrets_were_present = providers.iter().any(|p| p.api_key_sealed.is_some());
    let provider_name = |id: &str| {
        providers
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
    };
    let username = |id: &str| {
        users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.username.clone())
    };
    Ok(json!({
        "manifest": {
            "format": "cortex-config-export",
            "version": 1,
            "exported_at": millis_to_rfc3339(now),
            "secrets_redacted": true,
            "secrets_were_present": secrets_were_present,
        },
        "providers": providers.iter().map(|p| json!({
            "name": p.name,
            "base_url": p.base_url,
            "api_key": p.api_key_sealed.as_ref().map(|_| REDACTED),
            "kind": p.kind.as_str(),
            "api_version": p.api_version,
            "responses_api": p.responses_api,
            "weight": p.weight,
            "health_check_path": p.health_check_path,
        })).collect::<Vec<_>>(),
        "models": models.iter().map(|m| json!({
            "name": m.name,
            "providers": m.provider_ids.iter().filter_map(|id| provider_name(id)).collect::<Vec<_>>(),
            "upstream_name": m.upstream_name,
            "input_price_per_mtok": m.input_price_per_mtok,
            "output_price_per_mtok": m.output_price_per_mtok,
            "strategy": m.strategy.as_str(),
            "max_output_tokens": m.max_output_tokens,
        })).collect::<Vec<_>>(),
        "roles": Role::ALL.iter().map(|r| json!({
            "name": r.as_str(),
            "permissions": r.permissions().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "users": users.iter().map(|u| json!({ "username": u.username, "role": u.role.as_str(), "disabled": u.disabled, "org_id": u.org_id })).collect::<Vec<_>>(),
        "keys": keys.iter().map(|k| json!({
            "id": k.id,
            "name": k.name,
            "owner": username(&k.owner_user_id),
            "scopes": k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "models": k.models,
            "limits": k.limits,
            "expires_at": k.expires_at.map(millis_to_rfc3339),
            "revoked": k.revoked_at.is_some(),
            "org_id": k.org_id,
            "team_id": k.team_id,
        })).collect::<Vec<_>>(),
    }))
}
