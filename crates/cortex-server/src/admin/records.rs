//! Usage and audit reads. "Own" usage means requests made with keys the caller owns: usage rows
//! carry the key owner's id, so the filter is forced to the caller. "All" usage and the audit
//! log are the caller's organization's: the store applies the caller's `Tenant` (SPEC §18).

use axum::extract::{Query, State};
use axum::{Extension, Json};
use cortex_domain::time_fmt::{millis_to_rfc3339, rfc3339_to_millis};
use cortex_domain::Permission;
use cortex_store::audit::AuditFilter;
use cortex_store::usage::{UsageFilter, UsageGrouping};
use serde::Deserialize;
use serde_json::{json, Value};

use super::guard::Caller;
use super::json::list_body;
use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// The usage routes' query: the filters every one of them takes, and each route's own
/// (`limit`, `group_by`, `bucket`), which the others refuse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    key: Option<String>,
    user: Option<String>,
    model: Option<String>,
    /// An organization's rows (admins of the default organization; for anyone else only their
    /// own organization matches).
    org: Option<String>,
    team: Option<String>,
    provider: Option<String>,
    pub(super) limit: Option<i64>,
    pub(super) group_by: Option<String>,
    /// A series' slot width (`/admin/usage/series`).
    pub(super) bucket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    before_seq: Option<i64>,
    action: Option<String>,
    actor: Option<String>,
    limit: Option<i64>,
}

fn time(field: &'static str, value: Option<&String>) -> Result<Option<i64>, ApiError> {
    value
        .map(|t| {
            rfc3339_to_millis(t).ok_or(ApiError::invalid(format!(
                "`{field}` must be an RFC 3339 time"
            )))
        })
        .transpose()
}

/// The filter of a usage query as `caller` may apply it: "own" usage is forced to the caller's
/// rows (asking for another user's is 403); the organization is the store's business (the
/// caller's `Tenant`).
pub(super) fn usage_filter(caller: &Caller, query: &UsageQuery) -> Result<UsageFilter, ApiError> {
    let own = caller.owner_scope(Permission::UsageReadAll, Permission::UsageReadOwn)?;
    if let (Some(own), Some(asked)) = (&own, &query.user) {
        if own != asked {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(UsageFilter {
        from: time("from", query.from.as_ref())?,
        to: time("to", query.to.as_ref())?,
        key_id: query.key.clone(),
        user_id: own.or_else(|| query.user.clone()),
        model: query.model.clone(),
        org_id: query.org.clone(),
        team_id: query.team.clone(),
        provider: query.provider.clone(),
    })
}

pub async fn usage(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    if query.group_by.is_some() || query.bucket.is_some() {
        return Err(ApiError::invalid(
            "`group_by` belongs to /admin/usage/summary and /admin/usage/series, `bucket` to the series",
        ));
    }
    let filter = usage_filter(&caller, &query)?;
    let rows = app
        .store
        .list_usage(&caller.tenant(), &filter, query.limit.unwrap_or(100))
        .await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "request_id": r.request_id, "key": r.key_id, "user": r.user_id, "model": r.model,
                "provider": r.provider, "endpoint": r.endpoint, "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens, "cost_usd": r.cost_usd, "latency_ms": r.latency_ms,
                "status": r.status, "client_ip": r.client_ip, "created_at": millis_to_rfc3339(r.created_at),
                "attempts": r.attempts, "org_id": r.org_id, "team_id": r.team_id, "ttft_ms": r.ttft_ms, "cached": r.cached,
            })
        })
        .collect();
    Ok(list_body(data))
}

pub async fn usage_summary(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    if query.bucket.is_some() {
        return Err(ApiError::invalid("`bucket` belongs to /admin/usage/series"));
    }
    let filter = usage_filter(&caller, &query)?;
    let grouping = match query.group_by.as_deref().unwrap_or("day") {
        "day" => UsageGrouping::Day,
        "key" => UsageGrouping::Key,
        "model" => UsageGrouping::Model,
        "user" => UsageGrouping::User,
        "org" => UsageGrouping::Org,
        "team" => UsageGrouping::Team,
        _ => {
            return Err(ApiError::invalid(
                "`group_by` must be day, key, model, user, org or team",
            ))
        }
    };
    let buckets = app
        .store
        .usage_summary(&caller.tenant(), &filter, grouping)
        .await?;
    let total_requests: i64 = buckets.iter().map(|b| b.requests).sum();
    let total_cost: f64 = buckets.iter().map(|b| b.cost_usd).sum();
    let data: Vec<Value> = buckets
        .iter()
        .map(|b| {
            json!({
                "group": b.group, "requests": b.requests, "prompt_tokens": b.prompt_tokens,
                "completion_tokens": b.completion_tokens, "cost_usd": b.cost_usd,
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "group_by": query.group_by.as_deref().unwrap_or("day"),
        "data": data,
        "total": { "requests": total_requests, "cost_usd": total_cost },
    })))
}

pub async fn audit(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = AuditFilter {
        before_seq: query.before_seq,
        action: query.action,
        actor: query.actor,
        limit: query.limit.unwrap_or(100),
    };
    let events = app.store.list_audit(&caller.tenant(), &filter).await?;
    let data: Vec<Value> = events
        .iter()
        .map(cortex_control::ops::audit::event_json)
        .collect();
    Ok(list_body(data))
}

pub async fn audit_verify(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let report =
        cortex_control::ops::audit::verify(&app.store, &app.master_key, app.now_millis(), |_| {})
            .await?;
    Ok(Json(json!(report)))
}

/// The redacted configuration; the export itself is an audited event.
pub async fn config_export(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let now = app.now_millis();
    let export = cortex_control::ops::export::export(&app.store, &caller.tenant(), now).await?;
    let event = cortex_domain::audit::NewAuditEvent::new(caller.actor(), "config.export", "config")
        .with_ip(caller.ip.clone())
        .with_org(&caller.principal.user.org_id);
    app.store.append_audit(&event, now).await?;
    Ok(Json(export))
}

pub async fn production_check(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Json<Value> {
    Json(json!(
        cortex_control::ops::check::run(&app.config, &app.store, &app.master_key).await
    ))
}

/// The feature flags in effect: every known flag, on or off (SPEC §10).
pub async fn features(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> Json<Value> {
    let flags = app.config.feature_flags.list();
    list_body(flags.iter().map(|(feature, enabled)| {
        json!({ "name": feature.name, "enabled": enabled, "description": feature.description })
    }))
}
