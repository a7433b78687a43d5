//! The pipeline's limit stages over `cortex-limits`: which quota applies to whom, and how a
//! refusal is answered (429 with `Retry-After` and `RateLimit-*` headers; the codes are
//! [`Limit`]'s).

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use cortex_limits::{
    BudgetDecision, BudgetLevel, LimitError, Quota, RateDecision, Reservation, SlotGuard,
};

use crate::error::{ApiError, Limit};
use crate::key_cache::CachedKey;
use crate::metrics as m;
use crate::DataPlane;

/// The request quota for a key: its own override, else the gateway default.
pub fn key_quota(app: &DataPlane, key: &CachedKey) -> Quota {
    let defaults = &app.config.rate_limit;
    Quota {
        rate_per_second: key
            .limits
            .requests_per_second
            .unwrap_or(defaults.requests_per_second),
        burst: key.limits.burst.unwrap_or(defaults.burst),
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit-*` headers (the IETF draft's fields) for one decision. An array, not a
/// `HeaderMap`: they go onto every `/v1` answer, and a map of their own cost an allocation and
/// a second hashing of each name per request.
pub type RateHeaders = [(HeaderName, HeaderValue); 4];

pub fn rate_headers(app: &DataPlane, decision: &RateDecision) -> RateHeaders {
    let window = app.config.rate_limit.window_sec;
    [
        (RATELIMIT_LIMIT, number(u64::from(decision.limit))),
        (RATELIMIT_REMAINING, number(u64::from(decision.remaining))),
        (
            RATELIMIT_RESET,
            number(decision.reset_after.as_secs_f64().ceil() as u64),
        ),
        (RATELIMIT_POLICY, policy(decision.limit, window)),
    ]
}

/// Header values for numbers below this are made once and shared (a clone is a reference
/// count): limits, remaining requests and reset seconds are nearly always small.
const SHARED_NUMBERS: usize = 1024;

fn number(n: u64) -> HeaderValue {
    static SMALL: LazyLock<Vec<HeaderValue>> =
        LazyLock::new(|| (0..SHARED_NUMBERS as u64).map(HeaderValue::from).collect());
    match usize::try_from(n) {
        Ok(i) if i < SHARED_NUMBERS => SMALL[i].clone(),
        _ => HeaderValue::from(n),
    }
}

/// `RateLimit-Policy: <limit>;w=<window>`, shared for small limits under the first window seen
/// (every server in a process normally has the same one).
fn policy(limit: u32, window: u64) -> HeaderValue {
    static SHARED: OnceLock<(u64, Vec<HeaderValue>)> = OnceLock::new();
    let (shared_window, values) = SHARED.get_or_init(|| {
        let values = (0..SHARED_NUMBERS)
            .map(|l| format_policy(l as u64, window))
            .collect();
        (window, values)
    });
    match usize::try_from(limit) {
        Ok(i) if i < SHARED_NUMBERS && *shared_window == window => values[i].clone(),
        _ => format_policy(u64::from(limit), window),
    }
}

fn format_policy(limit: u64, window: u64) -> HeaderValue {
    // Digits, ';', 'w' and '=' are always a valid header value.
    HeaderValue::try_from(format!("{limit};w={window}"))
        .unwrap_or_else(|_| HeaderValue::from(limit))
}

fn unavailable(err: &LimitError) -> ApiError {
    tracing::warn!(error = %err, "limiter unavailable; refusing (fail-closed)");
    ApiError::Unavailable
}

/// Checks the request-rate limit for `identity` (a key id or `ip:<addr>`).
pub async fn check_rate(
    app: &DataPlane,
    identity: &str,
    quota: Quota,
) -> Result<RateHeaders, ApiError> {
    let decision = app
        .limiter
        .check_rate(identity, quota)
        .await
        .map_err(|e| unavailable(&e))?;
    let headers = rate_headers(app, &decision);
    if decision.allowed {
        return Ok(headers);
    }
    metrics::counter!(m::RATE_LIMITED, "limit" => Limit::Requests.label()).increment(1);
    let retry = decision.retry_after.unwrap_or(Duration::from_secs(1));
    let mut error = ApiError::rate_limited(Limit::Requests, retry);
    if let ApiError::RateLimited { headers: extra, .. } = &mut error {
        extra.extend(headers);
    }
    Err(error)
}

/// The key's request-rate decision: the `RateLimit-*` headers for the answer (none when rate
/// limiting is off), or the 429 to send instead.
pub async fn check_request_rate(
    plane: &DataPlane,
    key: &CachedKey,
) -> Result<Option<RateHeaders>, ApiError> {
    if !plane.config.rate_limit.enabled {
        return Ok(None);
    }
    check_rate(plane, &key.id, key_quota(plane, key))
        .await
        .map(Some)
}

/// Tokens per minute, checked before the request goes upstream: the key's own window, then
/// its team's and its organization's (SPEC §18). A window already at its limit refuses.
pub async fn check_tokens(app: &DataPlane, key: &CachedKey) -> Result<(), ApiError> {
    if let Some(limit) = key.limits.tokens_per_minute {
        check_token_window(app, &key.id, limit).await?;
    }
    for (window, limit) in &key.token_levels {
        check_token_window(app, window, *limit).await?;
    }
    Ok(())
}

async fn check_token_window(app: &DataPlane, window: &str, limit: u64) -> Result<(), ApiError> {
    let used = app
        .limiter
        .tokens_in_window(window)
        .await
        .map_err(|e| unavailable(&e))?;
    if used >= limit {
        metrics::counter!(m::RATE_LIMITED, "limit" => Limit::TokensPerMinute.label()).increment(1);
        return Err(ApiError::rate_limited(
            Limit::TokensPerMinute,
            Duration::from_secs(60),
        ));
    }
    Ok(())
}

/// Reserves `worst_case_micro_usd` at every one of `levels` (the key's `budget_levels`),
/// or 429 `budget_exceeded` when a level is spent (no `Retry-After`: waiting does not help).
pub async fn reserve_budget(
    app: &DataPlane,
    levels: &[BudgetLevel],
    worst_case_micro_usd: i64,
) -> Result<Option<Reservation>, ApiError> {
    if levels.is_empty() {
        return Ok(None);
    }
    let decision = app
        .limiter
        .reserve_budget(
            levels,
            worst_case_micro_usd,
            app.now_millis(),
            app.ledger.as_ref(),
        )
        .await
        .map_err(|e| unavailable(&e))?;
    match decision {
        BudgetDecision::Reserved(reservation) => Ok(Some(reservation)),
        BudgetDecision::Exceeded { scope } => {
            tracing::debug!(scope = %scope, "budget spent");
            metrics::counter!(m::RATE_LIMITED, "limit" => Limit::Budget.label()).increment(1);
            let mut error = ApiError::rate_limited(Limit::Budget, Duration::from_secs(3600));
            if let ApiError::RateLimited { headers, .. } = &mut error {
                headers.remove(axum::http::header::RETRY_AFTER);
            }
            Err(error)
        }
    }
}

/// Settles `reservation` to the request's actual cost (zero when it failed), off the request's
/// path.
pub fn settle_budget(app: &DataPlane, reservation: Reservation, actual_micro_usd: i64) {
    let actual_micro_usd = actual_micro_usd.max(0);
    // In process, with its counters at hand, settling is a lock and a few additions.
    let Err(reservation) = app.limiter.settle_budget_now(reservation, actual_micro_usd) else {
        return;
    };
    let plane = app.clone();
    tokio::spawn(async move {
        let settled = plane
            .limiter
            .settle_budget(reservation, actual_micro_usd, plane.ledger.as_ref())
            .await;
        if let Err(err) = settled {
            tracing::warn!(error = %err, "settling a budget reservation failed; it expires on its own");
        }
    });
}

/// A slot for one more concurrent stream, or 429. `None` when concurrency limits are off.
pub async fn acquire_stream_slot(
    app: &DataPlane,
    key: &CachedKey,
) -> Result<Option<SlotGuard>, ApiError> {
    if !app.config.concurrency.enabled {
        return Ok(None);
    }
    let max = key
        .limits
        .max_concurrent_streams
        .unwrap_or(app.config.concurrency.max_streams_per_id);
    match app
        .limiter
        .acquire_slot(
            &format!("streams:{}", key.id),
            max,
            // A slot is a lease: if this instance dies, the slot frees itself after this long.
            Duration::from_secs(app.config.concurrency.stream_lease_sec),
        )
        .await
    {
        Ok(Some(slot)) => Ok(Some(slot)),
        Ok(None) => {
            metrics::counter!(m::RATE_LIMITED, "limit" => Limit::Streams.label()).increment(1);
            Err(ApiError::rate_limited(
                Limit::Streams,
                Duration::from_secs(1),
            ))
        }
        Err(err) => Err(unavailable(&err)),
    }
}

/// Charges the key's tokens-per-minute windows (its own, its team's, its organization's) after
/// a request, off the response path.
pub fn charge(app: &DataPlane, key: &CachedKey, tokens: u64) {
    let own = key.limits.tokens_per_minute.map(|_| key.id.clone());
    if tokens == 0 || (own.is_none() && key.token_levels.is_empty()) {
        return;
    }
    let windows: Vec<String> = own
        .into_iter()
        .chain(key.token_levels.iter().map(|(window, _)| window.clone()))
        .collect();
    let limiter = app.limiter.clone();
    tokio::spawn(async move {
        for window in windows {
            if let Err(err) = limiter.charge_tokens(&window, tokens).await {
                tracing::warn!(error = %err, "charging tokens failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_formatted_header_values_agree() {
        for n in [0u64, 7, 1023, 1024, 99_999, u64::from(u32::MAX) + 1] {
            assert_eq!(number(n), n.to_string().as_str(), "{n}");
        }
        // Whatever window the shared table was built for, every window gets its own text.
        for window in [1u64, 30, 60] {
            for limit in [0u32, 5, 1023, 1024, 50_000] {
                assert_eq!(
                    policy(limit, window),
                    format!("{limit};w={window}").as_str(),
                    "{limit} {window}"
                );
            }
        }
    }
}
