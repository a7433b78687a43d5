//! Usage analytics (SPEC §20): time series of requests, tokens, cost and latency and
//! time-to-first-token percentiles, and the usage records as a streamed CSV file. Both read
//! through the caller's `Tenant` and the same filter as the other usage routes (`records.rs`),
//! so an organization's analytics hold only its rows, and "own" usage only the caller's.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_domain::Tenant;
use cortex_store::usage::{
    Percentiles, SeriesBucket, SeriesGroup, UsageCursor, UsageFilter, UsageRecord,
};
use cortex_store::Store;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::guard::Caller;
use super::records::{usage_filter, UsageQuery};
use crate::state::AppState;
use cortex_gateway::error::ApiError;

/// The most slots one series may span: 41 days of hours, about three years of days.
const MAX_SLOTS: i64 = 1_000;

/// Rows per page of an export: each page is one query, held in memory while it is written.
const EXPORT_PAGE_ROWS: i64 = 2_000;

fn bucket(query: &UsageQuery) -> Result<SeriesBucket, ApiError> {
    match query.bucket.as_deref().unwrap_or("hour") {
        "hour" => Ok(SeriesBucket::Hour),
        "day" => Ok(SeriesBucket::Day),
        _ => Err(ApiError::invalid("`bucket` must be hour or day")),
    }
}

fn group(query: &UsageQuery) -> Result<SeriesGroup, ApiError> {
    Ok(match query.group_by.as_deref().unwrap_or("none") {
        "none" => SeriesGroup::Total,
        "model" => SeriesGroup::Model,
        "key" => SeriesGroup::Key,
        "user" => SeriesGroup::User,
        "team" => SeriesGroup::Team,
        "org" => SeriesGroup::Org,
        "provider" => SeriesGroup::Provider,
        _ => {
            return Err(ApiError::invalid(
                "`group_by` must be none, model, key, user, team, org or provider",
            ))
        }
    })
}

fn percentiles_json(p: Percentiles) -> Value {
    json!({ "p50": p.p50, "p95": p.p95, "p99": p.p99 })
}

/// `GET /admin/usage/series`: per hour or day (UTC) and group, the requests, errors, tokens,
/// cost, and latency and time-to-first-token percentiles (nearest rank, milliseconds). The
/// range defaults to the last 24 hours (hourly) or 30 days (daily), ending now; slots without
/// requests are absent.
pub async fn series(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    if query.limit.is_some() {
        return Err(ApiError::invalid("`limit` belongs to /admin/usage"));
    }
    let bucket = bucket(&query)?;
    let group = group(&query)?;
    let mut filter = usage_filter(&caller, &query)?;
    let width = bucket.millis();
    let to = filter.to.unwrap_or_else(|| app.now_millis());
    let default_slots = match bucket {
        SeriesBucket::Hour => 24,
        SeriesBucket::Day => 30,
    };
    let from = filter
        .from
        .unwrap_or(to.saturating_sub(default_slots * width));
    if from >= to {
        return Err(ApiError::invalid("`from` must be before `to`"));
    }
    if (to - from) / width > MAX_SLOTS {
        return Err(ApiError::invalid(
            "a series spans at most 1000 slots: narrow `from`..`to` or use a wider bucket",
        ));
    }
    filter.from = Some(from);
    filter.to = Some(to);
    let points = app
        .store
        .usage_series(&caller.tenant(), &filter, bucket, group)
        .await?;
    let data: Vec<Value> = points
        .iter()
        .map(|p| {
            json!({
                "time": millis_to_rfc3339(p.slot_start), "group": p.group,
                "requests": p.requests, "errors": p.errors, "streams": p.streams,
                "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
                "cost_usd": p.cost_usd,
                "latency_ms": percentiles_json(p.latency_ms),
                "ttft_ms": percentiles_json(p.ttft_ms),
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "bucket": query.bucket.as_deref().unwrap_or("hour"),
        "group_by": query.group_by.as_deref().unwrap_or("none"),
        "from": millis_to_rfc3339(from),
        "to": millis_to_rfc3339(to),
        "data": data,
    })))
}

/// The export's columns, in order.
const CSV_HEADER: [&str; 18] = [
    "created_at",
    "request_id",
    "org_id",
    "team_id",
    "key_id",
    "user_id",
    "model",
    "provider",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "attempts",
    "client_ip",
    // Last, so that readers of the earlier columns by position are unchanged.
    "cached",
];

/// A text cell as a spreadsheet may read it: one that starts like a formula gets a leading
/// apostrophe, so opening the file runs nothing (model and provider names are chosen by
/// people).
fn text_cell(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}").into()
    } else {
        value.into()
    }
}

fn write_rows(records: &[UsageRecord], with_header: bool) -> Result<Bytes, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(records.len() * 200 + 256));
    let failed = ApiError::internal("a usage page could not be written as CSV");
    let result = (|| {
        if with_header {
            writer.write_record(CSV_HEADER)?;
        }
        for r in records {
            let mut number = itoa::Buffer::new();
            writer.write_record([
                millis_to_rfc3339(r.created_at).as_str(),
                &text_cell(&r.request_id),
                &text_cell(&r.org_id),
                &text_cell(r.team_id.as_deref().unwrap_or("")),
                &text_cell(&r.key_id),
                &text_cell(&r.user_id),
                &text_cell(&r.model),
                &text_cell(&r.provider),
                &text_cell(&r.endpoint),
                number.format(r.status),
                itoa::Buffer::new().format(r.prompt_tokens),
                itoa::Buffer::new().format(r.completion_tokens),
                &r.cost_usd.to_string(),
                itoa::Buffer::new().format(r.latency_ms),
                &r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
                itoa::Buffer::new().format(r.attempts),
                &text_cell(&r.client_ip),
                if r.cached { "true" } else { "false" },
            ])?;
        }
        writer.flush()?;
        Ok::<_, csv::Error>(())
    })();
    result.map_err(failed)?;
    writer
        .into_inner()
        .map(Bytes::from)
        .map_err(ApiError::internal(
            "a usage page could not be written as CSV",
        ))
}

/// What the export's stream still has to do.
struct Export {
    store: Store,
    tenant: Tenant,
    filter: UsageFilter,
    /// Where the next page starts; `None` when the last page was sent.
    next: Option<UsageCursor>,
}

impl Export {
    async fn page(
        &self,
        after: UsageCursor,
    ) -> Result<(Vec<UsageRecord>, Option<UsageCursor>), ApiError> {
        Ok(self
            .store
            .usage_page(&self.tenant, &self.filter, after, EXPORT_PAGE_ROWS)
            .await?)
    }
}

/// `GET /admin/usage/export`: the usage records the caller may see that match the filter, as
/// CSV, oldest first, streamed: pages of rows are read one at a time as the client takes them
/// (hyper asks for the next chunk only when the last one was written), so memory stays at a
/// page whatever the file's size. The first page is read before the answer starts, so a
/// database that is down is a 503, not a cut-off file.
pub async fn export(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    if query.limit.is_some() || query.group_by.is_some() || query.bucket.is_some() {
        return Err(ApiError::invalid(
            "the export takes the filters only (from, to, key, user, model, org, team, provider)",
        ));
    }
    let filter = usage_filter(&caller, &query)?;
    let mut export = Export {
        store: app.store.clone(),
        tenant: caller.tenant(),
        filter,
        next: None,
    };
    let (first, next) = export.page(UsageCursor::START).await?;
    let head = write_rows(&first, true)?;
    drop(first);
    export.next = next;
    let rest = futures_util::stream::try_unfold(export, |mut export| async move {
        let Some(after) = export.next.take() else {
            return Ok(None);
        };
        let (rows, next) = export.page(after).await.map_err(|error| {
            tracing::warn!(?error, "a usage export stopped part-way");
            std::io::Error::other("the usage export could not read its next page")
        })?;
        export.next = next;
        let chunk = write_rows(&rows, false)
            .map_err(|_| std::io::Error::other("a usage page could not be written"))?;
        Ok(Some((chunk, export)))
    });
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"cortex-usage.csv\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_like_cells_are_defused_and_others_kept() {
        assert_eq!(text_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(text_cell("+1"), "'+1");
        assert_eq!(text_cell("@sum"), "'@sum");
        assert_eq!(text_cell("llama-3"), "llama-3");
        assert_eq!(text_cell(""), "");
    }
}
