//! `GET /admin/providers/health` (SPEC §16): every provider in the catalogue with its health as
//! this instance sees it (state, breaker, p50 latency, error rate, last active check, requests in
//! flight). It reads the routing table's in-memory health, never the database, so the console
//! can poll it every few seconds; answers are `no-store` because they are stale at once.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use cortex_domain::time_fmt::millis_to_rfc3339;
use cortex_upstream::breaker::BreakerState;
use cortex_upstream::{HealthState, HealthView};
use serde::Serialize;

use super::guard::Caller;
use crate::state::AppState;

// Typed rather than built with `list_body`, so the schema in `/openapi.json` is the one served.
/// Every provider in the catalogue, sorted by name, in the shape of every admin list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderHealthList {
    /// Always `list`.
    #[schema(example = "list")]
    object: &'static str,
    #[schema(inline)]
    data: Vec<ProviderHealthEntry>,
}

/// One provider's health.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ProviderHealthEntry {
    id: String,
    name: String,
    /// `openai`, `anthropic` or `azure`.
    kind: &'static str,
    #[schema(inline)]
    state: StateName,
    #[schema(inline)]
    breaker: BreakerName,
    /// Median time to the answer's head over the last successful requests and checks (ms);
    /// `null` before the first one.
    #[schema(required = true)]
    latency_ms_p50: Option<u32>,
    /// Failures among the last outcomes, 0 to 1, rounded to 3 decimals.
    #[schema(minimum = 0.0, maximum = 1.0)]
    error_rate: f64,
    /// When the last active health check ran; `null` before the first.
    #[schema(format = "date-time", required = true)]
    last_check_at: Option<String>,
    /// Whether that check passed; `null` before the first.
    #[schema(required = true)]
    last_check_ok: Option<bool>,
    /// Requests to the provider not yet finished.
    in_flight: u32,
}

/// `healthy`; `degraded`: failed a request or its last check recently, tried after healthy
/// providers; `open`: circuit breaker open (or half-open, waiting for its probe), passed over
/// while others serve.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum StateName {
    /// Breaker closed, no recent failure, last check (if any) passed.
    Healthy,
    /// Failed a request or its last check recently: tried after the healthy providers.
    Degraded,
    /// Breaker open (or half-open, waiting for its probe): passed over while others serve.
    Open,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum BreakerName {
    Closed,
    Open,
    HalfOpen,
}

impl From<HealthState> for StateName {
    fn from(state: HealthState) -> Self {
        match state {
            HealthState::Healthy => StateName::Healthy,
            HealthState::Degraded => StateName::Degraded,
            HealthState::Open => StateName::Open,
        }
    }
}

impl From<BreakerState> for BreakerName {
    fn from(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => BreakerName::Closed,
            BreakerState::Open => BreakerName::Open,
            BreakerState::HalfOpen => BreakerName::HalfOpen,
        }
    }
}

/// The entry for one provider's [`HealthView`].
fn entry(id: &str, name: &str, kind: &'static str, view: &HealthView) -> ProviderHealthEntry {
    ProviderHealthEntry {
        id: id.to_owned(),
        name: name.to_owned(),
        kind,
        state: view.state.into(),
        breaker: view.breaker.into(),
        latency_ms_p50: view.latency_ms_p50,
        // Three decimals are a tenth of a percent: more would only be noise from 64 samples.
        error_rate: (view.error_rate.clamp(0.0, 1.0) * 1_000.0).round() / 1_000.0,
        last_check_at: view.last_check.map(|(at, _)| millis_to_rfc3339(at)),
        last_check_ok: view.last_check.map(|(_, passed)| passed),
        in_flight: view.in_flight,
    }
}

/// Every provider of the current routing table, at the data plane's clock (the clock its
/// breakers and demotions were set with).
pub async fn list(
    State(app): State<AppState>,
    Extension(_c): Extension<Caller>,
) -> impl IntoResponse {
    let now = app.data.now_millis();
    let table = app.data.catalog.current();
    let data = table
        .providers()
        .iter()
        .map(|provider| {
            entry(
                &provider.id,
                &provider.name,
                provider.kind.as_str(),
                &provider.health.view(now),
            )
        })
        .collect();
    let list = ProviderHealthList {
        object: "list",
        data,
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn view(error_rate: f64, last_check: Option<(i64, bool)>) -> HealthView {
        HealthView {
            state: HealthState::Degraded,
            breaker: BreakerState::HalfOpen,
            latency_ms_p50: Some(42),
            error_rate,
            last_check,
            in_flight: 3,
        }
    }

    #[test]
    fn an_entry_names_states_rounds_the_error_rate_and_writes_times_as_rfc3339() {
        let checked = entry(
            "p1",
            "east",
            "azure",
            &view(2.0 / 3.0, Some((1_700_000_000_123, false))),
        );
        assert_eq!(
            serde_json::to_value(&checked).unwrap(),
            json!({
                "id": "p1", "name": "east", "kind": "azure", "state": "degraded",
                "breaker": "half_open", "latency_ms_p50": 42, "error_rate": 0.667,
                "last_check_at": "2023-11-14T22:13:20.123Z", "last_check_ok": false,
                "in_flight": 3,
            })
        );
        let unchecked =
            serde_json::to_value(entry("p2", "west", "openai", &view(0.0, None))).unwrap();
        assert_eq!(unchecked["last_check_at"], json!(null));
        assert_eq!(unchecked["last_check_ok"], json!(null));
        assert_eq!(unchecked["error_rate"], json!(0.0));
    }

    #[test]
    fn every_state_has_its_wire_name() {
        for (state, name) in [
            (HealthState::Healthy, "healthy"),
            (HealthState::Degraded, "degraded"),
            (HealthState::Open, "open"),
        ] {
            assert_eq!(serde_json::to_value(StateName::from(state)).unwrap(), name);
            assert_eq!(state.as_str(), name, "the same names as cortex-upstream's");
        }
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(
                serde_json::to_value(BreakerName::from(state)).unwrap(),
                state.as_str()
            );
        }
    }
}
