//! The response cache (SPEC §21) through the admin API: what this instance's cache holds and
//! has counted, and a purge of an organization's entries.
//!
//! Reading is `policies:read` (the cache is what policies turn on); purging is `policies:write`.
//! A purge reaches the caller's own organization; admins of the default organization, who see
//! every organization, may name another (`?org_id=`) or purge every entry (`?all=true`). The
//! counters are this instance's since it started: with Redis the entries are shared, the
//! counters are not.

use axum::extract::{Query, State};
use axum::{Extension, Json};
use cortex_domain::audit::NewAuditEvent;
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::Caller;
use crate::state::AppState;
use cortex_gateway::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    /// Another organization's entries (admins of the default organization only).
    org_id: Option<String>,
    /// Every organization's entries (admins of the default organization only).
    #[serde(default)]
    all: bool,
}

pub async fn stats(
    State(app): State<AppState>,
    Extension(_caller): Extension<Caller>,
) -> Json<Value> {
    let cache = &app.data.cache;
    let stats = cache.stats();
    Json(json!({
        "object": "cache",
        "backend": stats.backend,
        "entries": stats.entries,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "max_entry_bytes": cache.max_entry_bytes(),
        "hits": stats.hits,
        "misses": stats.misses,
        "stores": stats.stores,
        "evictions": stats.evictions,
    }))
}

pub async fn purge(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<PurgeQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant();
    let own = caller.principal.user.org_id.clone();
    // `None`: every organization's entries.
    let target: Option<String> = match (query.all, query.org_id) {
        (true, Some(_)) => {
            return Err(ApiError::invalid("give `org_id` or `all`, not both"));
        }
        (true, None) if tenant.is_all() => None,
        (true, None) => return Err(ApiError::Forbidden),
        (false, Some(org_id)) if tenant.sees(&org_id) => Some(org_id),
        (false, Some(_)) => return Err(ApiError::Forbidden),
        (false, None) => Some(own.clone()),
    };
    let purged = app
        .data
        .cache
        .purge(target.as_deref())
        .await
        .map_err(|err| {
            tracing::warn!(%err, "the response cache could not be purged");
            ApiError::Internal
        })?;
    let event = NewAuditEvent::new(
        caller.actor(),
        "cache.purge",
        target.as_deref().unwrap_or("*"),
    )
    .with_ip(caller.ip.clone())
    .with_org(target.unwrap_or(own))
    .with_details(&json!({ "purged": purged }));
    app.store.append_audit(&event, app.now_millis()).await?;
    Ok(Json(json!({ "object": "cache.purge", "purged": purged })))
}
