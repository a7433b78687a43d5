//! Metric names and the Prometheus recorder.
//!
//! The `metrics` facade is process-global by design, so the recorder is installed once per
//! process; several servers in one test process share it (tests compare deltas).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const KEY_AUTH_ALLOWED: &str = "gateway_key_auth_allowed_total";
pub const KEY_AUTH_BLOCKED: &str = "gateway_key_auth_blocked_total";
pub const REQUESTS: &str = "gateway_requests_total";
pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "gateway_upstream_errors_total";
pub const RATE_LIMITED: &str = "gateway_rate_limited_total";
pub const ACTIVE_STREAMS: &str = "gateway_active_streams";
pub const TOKENS: &str = "gateway_tokens_total";
pub const USAGE_DROPPED: &str = "gateway_usage_dropped_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(KEY_AUTH_ALLOWED, "API key authentications that succeeded");
    metrics::describe_counter!(
        KEY_AUTH_BLOCKED,
        "API key authentications that were refused, by reason"
    );
    metrics::describe_counter!(REQUESTS, "Requests on /v1 by endpoint and status");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        "Time from request to the response head (or stream end)"
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        "Time until the upstream answered with its response head"
    );
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream failures by kind");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by a limit, by limit");
    metrics::describe_gauge!(ACTIVE_STREAMS, "Streams currently open");
    metrics::describe_counter!(TOKENS, "Tokens reported by upstreams, by direction");
    metrics::describe_counter!(USAGE_DROPPED, "Usage records that could not be written");
}
