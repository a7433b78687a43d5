//! Active health checks (SPEC §16): every `interval`, each provider in the catalogue gets a
//! `GET {base_url}/models` (or its own path) through the upstream client, all providers at
//! once; the outcome goes to the provider's health and breaker (a failing check counts like a
//! failed request, a passing one after the cooldown closes the breaker). The
//! `gateway_upstream_health` gauge is set for every provider on the same tick, so it also
//! moves when checks are off (interval 0) and only requests change health.

use std::sync::Arc;
use std::time::Duration;

use cortex_upstream::ProviderTarget;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::DataPlane;

/// How often and how patiently providers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSettings {
    /// Time between two rounds; `None`: no active checks (the gauge is still kept).
    pub interval: Option<Duration>,
    /// How long one check may take.
    pub timeout: Duration,
}

/// How often the gauge is refreshed when checks are off.
const GAUGE_ONLY_TICK: Duration = Duration::from_secs(5);

/// Runs rounds until `shutdown`, one per interval.
pub fn spawn(plane: DataPlane, settings: CheckSettings, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let tick = settings.interval.unwrap_or(GAUGE_ONLY_TICK);
        // The first round one interval after start: the catalogue is loaded, and a process
        // that only lives for a moment (a CLI command, a test) sends no checks.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let providers = plane.catalog.current().providers().to_vec();
            if settings.interval.is_some() {
                tokio::select! {
                    () = check_all(&plane, &providers, settings.timeout) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            set_gauges(&plane, &providers);
        }
    });
}

/// Checks every provider at once, each within `timeout`.
pub async fn check_all(plane: &DataPlane, providers: &[Arc<ProviderTarget>], timeout: Duration) {
    let checks = providers.iter().map(|provider| async move {
        plane
            .upstream
            .check(provider, timeout, plane.now_millis())
            .await
    });
    futures_util::future::join_all(checks).await;
}

/// Sets `gateway_upstream_health` for each of `providers` from its health now.
pub fn set_gauges(plane: &DataPlane, providers: &[Arc<ProviderTarget>]) {
    let now = plane.now_millis();
    for provider in providers {
        let state = provider.health.view(now).state;
        metrics::gauge!(m::UPSTREAM_HEALTH, "provider" => provider.name.clone()).set(state.gauge());
    }
}
