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
pub const GUARD_EVENTS_DROPPED: &str = "gateway_guardrail_events_dropped_total";
pub const UPSTREAM_RETRIES: &str = "gateway_upstream_retries_total";
pub const BREAKER_OPEN: &str = "gateway_breaker_open_total";
pub const UPSTREAM_HEALTH: &str = "gateway_upstream_health";
pub const TTFT: &str = "gateway_time_to_first_token_seconds";
pub const CACHE_REQUESTS: &str = "gateway_cache_requests_total";
pub const CACHE_BYTES: &str = "gateway_cache_bytes";
pub const CACHE_STORES: &str = "gateway_cache_stores_total";
pub const CACHE_EVICTIONS: &str = "gateway_cache_evictions_total";

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
    metrics::describe_counter!(
        REQUESTS,
        "Requests on /v1 by endpoint, status class and error code (none: passed on), refused ones included"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        "Time from request to the response head (or stream end)"
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        "Time from sending an attempt to the provider's response head (or its failure), by provider"
    );
    metrics::describe_histogram!(
        TTFT,
        "Streams: time from the request's arrival to the first byte of the answer sent to the client, by provider"
    );
    metrics::describe_counter!(UPSTREAM_ERRORS, "Upstream failures by kind");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by a limit, by limit");
    metrics::describe_gauge!(ACTIVE_STREAMS, "Streams currently open");
    metrics::describe_counter!(TOKENS, "Tokens reported by upstreams, by direction");
    metrics::describe_counter!(USAGE_DROPPED, "Usage records that could not be written");
    metrics::describe_counter!(
        GUARD_EVENTS_DROPPED,
        "Guardrail events that could not be queued or written to the audit log"
    );
    metrics::describe_counter!(
        UPSTREAM_RETRIES,
        "Upstream attempts followed by another, by provider that failed and reason"
    );
    metrics::describe_counter!(
        BREAKER_OPEN,
        "Times a provider's circuit breaker opened, by provider"
    );
    metrics::describe_counter!(
        CACHE_REQUESTS,
        "Response cache lookups by result (hit, miss)"
    );
    metrics::describe_gauge!(CACHE_BYTES, "Bytes held by the in-process response cache");
    metrics::describe_counter!(CACHE_STORES, "Answers stored in the response cache");
    metrics::describe_counter!(
        CACHE_EVICTIONS,
        "Entries the in-process response cache evicted to stay within its bound"
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

/// The `endpoint` label of `REQUESTS`: each proxied endpoint's name, then the model list. A
/// `/v1` path that no door serves is counted as `other` (not registered ahead: probes).
const MODELS_DOOR: usize = Endpoint::ALL.len();
const DOORS: usize = Endpoint::ALL.len() + 1;

fn door_name(door: usize) -> &'static str {
    Endpoint::ALL.get(door).map_or("models", |e| e.name())
}

/// The `endpoint` label index of a request: its proxied endpoint, or `None` for the model list.
pub fn door(endpoint: Option<Endpoint>) -> usize {
    endpoint.map_or(MODELS_DOOR, Endpoint::index)
}

/// A `/v1` path no door serves: counted with the label `other`.
pub const OTHER_DOOR: usize = DOORS;

/// The `code` label of `REQUESTS` and the status class each comes with: `none` for an answer
/// passed on from the provider, else the refusal's error code — `ApiError`'s fixed codes that
/// a `/v1` request can end with, and the two endings that are no `ApiError` (405, and a stream
/// the client left). The label set is this list: every pair is registered at start, so a
/// refusal's first occurrence is already a rate, and a code outside it (none today) is counted
/// with its own label by the slow path.
pub const CODES: [(&str, usize); 28] = [
    ("none", 0),
    ("invalid_request", 1),
    ("invalid_json", 1),
    ("unsupported_parameter", 1),
    ("missing_credentials", 1),
    ("invalid_api_key", 1),
    ("key_revoked", 1),
    ("key_expired", 1),
    ("key_owner_disabled", 1),
    ("scope_denied", 1),
    ("ip_not_allowed", 1),
    ("model_not_allowed", 1),
    ("model_not_found", 1),
    ("guardrail_blocked", 1),
    ("method_not_allowed", 1),
    ("request_timeout", 1),
    ("payload_too_large", 1),
    ("rate_limit_exceeded", 1),
    ("tokens_per_minute_exceeded", 1),
    ("budget_exceeded", 1),
    ("concurrency_limit_exceeded", 1),
    ("upstream_rejected", 1),
    (CLIENT_CLOSED, 2),
    ("internal_error", 3),
    ("upstream_error", 3),
    ("upstream_auth_failed", 3),
    ("unavailable", 3),
    ("upstream_timeout", 3),
];

/// The `code` of a stream the client closed before it ended (status 499).
pub const CLIENT_CLOSED: &str = "client_closed";

/// `reason` label values of `KEY_AUTH_BLOCKED` (`authenticate.rs`).
pub const KEY_AUTH_BLOCK_REASONS: [&str; 10] = [
    "duplicate_authorization",
    "missing",
    "malformed",
    "unknown",
    "wrong_secret",
    "revoked",
    "owner_disabled",
    "expired",
    "ip_not_allowed",
    "rate_limited",
];

/// `kind` label values of `UPSTREAM_ERRORS` (`pipeline/send.rs`, `pipeline/stream.rs`).
pub const UPSTREAM_ERROR_KINDS: [&str; 7] = [
    "no_provider",
    "unreachable",
    "timeout",
    "server_error",
    "bad_response",
    "egress_denied",
    "stream",
];

/// `limit` label values of `RATE_LIMITED` on `/v1` (`Limit::label`).
pub const LIMIT_LABELS: [&str; 4] = ["requests", "tokens", "budget", "streams"];

/// `result` label values of `CACHE_REQUESTS` (`cache/mod.rs`).
pub const CACHE_RESULTS: [&str; 2] = ["hit", "miss"];

/// `reason` label values of `UPSTREAM_RETRIES` (`RetryReason::as_str`).
pub const RETRY_REASONS: [&str; 3] = ["unreachable", "rate_limited", "server_error"];

/// Handles for the metrics every `/v1` request touches, registered once. Through the macros
/// each use builds a key (allocating its labels) and looks it up in the registry; the handles
/// are the same counters, reached directly.
pub struct Hot {
    pub key_auth_allowed: Counter,
    /// By door and code (the code's own status class).
    requests: [[Counter; CODES.len()]; DOORS],
    request_duration: [Histogram; Endpoint::ALL.len()],
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub active_streams: Gauge,
}

impl Hot {
    /// Counts one `/v1` request at `door` ([`door`]) that ended with `status`, refused with
    /// `code` or passed on (`None`).
    pub fn count_request(&self, door: usize, status: u16, code: Option<&str>) {
        let class = status_class(status);
        let code = code.unwrap_or("none");
        if code == "none" && class == 0 {
            if let Some(row) = self.requests.get(door) {
                row[0].increment(1);
                return;
            }
        }
        let known = CODES
            .iter()
            .position(|(c, k)| *c == code && *k == class)
            .and_then(|i| self.requests.get(door).map(|row| &row[i]));
        match known {
            Some(counter) => counter.increment(1),
            None => {
                let endpoint = if door < DOORS {
                    door_name(door)
                } else {
                    "other"
                };
                metrics::counter!(REQUESTS, "endpoint" => endpoint, "status" => STATUS_CLASSES[class], "code" => code.to_owned())
                    .increment(1);
            }
        }
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
            requests: std::array::from_fn(|door| {
                CODES.map(|(code, class)| {
                    metrics::counter!(REQUESTS, "endpoint" => door_name(door), "status" => STATUS_CLASSES[class], "code" => code)
                })
            }),
            request_duration: Endpoint::ALL
                .map(|e| metrics::histogram!(REQUEST_DURATION, "endpoint" => e.name())),
            prompt_tokens: metrics::counter!(TOKENS, "direction" => "prompt"),
            completion_tokens: metrics::counter!(TOKENS, "direction" => "completion"),
            active_streams: metrics::gauge!(ACTIVE_STREAMS),
        }
    })
}

/// Registers every series whose labels are known before the first request (the fixed label
/// sets above), each at zero: every family is on the first scrape, and a first refusal is
/// already an increase to `rate()`. Per-provider series come with the catalogue
/// ([`ProviderMeter::new`]).
pub fn register_families() {
    let _ = hot();
    for reason in KEY_AUTH_BLOCK_REASONS {
        let _ = metrics::counter!(KEY_AUTH_BLOCKED, "reason" => reason);
    }
    for kind in UPSTREAM_ERROR_KINDS {
        let _ = metrics::counter!(UPSTREAM_ERRORS, "kind" => kind);
    }
    for limit in LIMIT_LABELS {
        let _ = metrics::counter!(RATE_LIMITED, "limit" => limit);
    }
    let _ = metrics::counter!(USAGE_DROPPED);
    for result in CACHE_RESULTS {
        let _ = metrics::counter!(CACHE_REQUESTS, "result" => result);
    }
    let _ = metrics::counter!(CACHE_STORES);
    let _ = metrics::counter!(CACHE_EVICTIONS);
    let _ = metrics::gauge!(CACHE_BYTES);
    let _ = metrics::counter!(GUARD_EVENTS_DROPPED);
}

/// One provider's series (`provider` label: its name): latency to the answer's head per
/// attempt, time to the first token of its streams, retries and breaker openings. Made when the
/// catalogue is loaded, so every provider's series exist from the first scrape; cheap to clone
/// (reference counts).
#[derive(Clone)]
pub struct ProviderMeter {
    pub upstream_duration: Histogram,
    pub ttft: Histogram,
}

impl ProviderMeter {
    pub fn new(provider: &str) -> Self {
        let _ = prometheus();
        for reason in RETRY_REASONS {
            let _ = metrics::counter!(UPSTREAM_RETRIES, "provider" => provider.to_owned(), "reason" => reason);
        }
        let _ = metrics::counter!(BREAKER_OPEN, "provider" => provider.to_owned());
        Self {
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION, "provider" => provider.to_owned()),
            ttft: metrics::histogram!(TTFT, "provider" => provider.to_owned()),
        }
    }

    /// Handles that record nothing (a provider the catalogue no longer has).
    pub fn noop() -> Self {
        Self {
            upstream_duration: Histogram::noop(),
            ttft: Histogram::noop(),
        }
    }
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
