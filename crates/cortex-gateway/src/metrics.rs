//! Metric names and the Prometheus recorder.
//!
//! The `metrics` facade is process-global by design, so the recorder is installed once per
//! process; several servers in one test process share it (tests compare deltas).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use cortex_wire::Endpoint;

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
pub const UPSTREAM_RETRIES: &str = "gateway_upstream_retries_total";
pub const BREAKER_OPEN: &str = "gateway_breaker_open_total";
pub const UPSTREAM_HEALTH: &str = "gateway_upstream_health";

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
    metrics::describe_counter!(
        UPSTREAM_RETRIES,
        "Upstream attempts followed by another, by provider that failed and reason"
    );
    metrics::describe_counter!(
        BREAKER_OPEN,
        "Times a provider's circuit breaker opened, by provider"
    );
    metrics::describe_gauge!(
        UPSTREAM_HEALTH,
        "Provider health by provider: 1 healthy, 0.5 degraded, 0 open"
    );
}

/// `status` label values of `REQUESTS`.
const STATUS_CLASSES: [&str; 5] = ["2xx", "4xx", "499", "5xx", "other"];

fn status_class(status: u16) -> usize {
    match status {
        200..=299 => 0,
        400..=498 => 1,
        499 => 2,
        500..=599 => 3,
        _ => 4,
    }
}

/// Handles for the metrics every `/v1` request touches, registered once. Through the macros
/// each use builds a key (allocating its labels) and looks it up in the registry; the handles
/// are the same counters, reached directly.
pub struct Hot {
    pub key_auth_allowed: Counter,
    requests: [[Counter; STATUS_CLASSES.len()]; Endpoint::ALL.len()],
    request_duration: [Histogram; Endpoint::ALL.len()],
    pub upstream_duration: Histogram,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub active_streams: Gauge,
}

impl Hot {
    pub fn requests(&self, endpoint: Endpoint, status: u16) -> &Counter {
        &self.requests[endpoint.index()][status_class(status)]
    }

    pub fn request_duration(&self, endpoint: Endpoint) -> &Histogram {
        &self.request_duration[endpoint.index()]
    }
}

/// The hot-path handles, registered with the process's recorder (installed first if needed,
/// so the handles are never the no-op ones of a missing recorder).
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| {
        let _ = prometheus();
        Hot {
            key_auth_allowed: metrics::counter!(KEY_AUTH_ALLOWED),
            requests: Endpoint::ALL.map(|e| {
                STATUS_CLASSES
                    .map(|s| metrics::counter!(REQUESTS, "endpoint" => e.name(), "status" => s))
            }),
            request_duration: Endpoint::ALL
                .map(|e| metrics::histogram!(REQUEST_DURATION, "endpoint" => e.name())),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION),
            prompt_tokens: metrics::counter!(TOKENS, "direction" => "prompt"),
            completion_tokens: metrics::counter!(TOKENS, "direction" => "completion"),
            active_streams: metrics::gauge!(ACTIVE_STREAMS),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_index_their_own_place() {
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint.index(), i);
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
        }
    }

    #[test]
    fn status_classes_match_their_labels() {
        for (status, label) in [
            (200, "2xx"),
            (299, "2xx"),
            (400, "4xx"),
            (429, "4xx"),
            (499, "499"),
            (502, "5xx"),
            (101, "other"),
        ] {
            assert_eq!(STATUS_CLASSES[status_class(status)], label, "{status}");
        }
    }
}
