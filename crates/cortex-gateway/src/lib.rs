//! The data plane: everything between an authenticated-or-not `/v1` request and its answer,
//! without the HTTP server around it.
//!
//! [`pipeline`] is the one way a `/v1` request is served; its stages are listed, in order, in
//! `pipeline/mod.rs`. The stages read what they need from [`DataPlane`]: keys and routes from
//! memory ([`key_cache`], [`catalog_cache`]), limits through [`quota`], usage out through
//! [`usage_sink`]; the response [`cache`] is held there for the pipeline's cache stage. The
//! hot path queries no database.
//!
//! This crate knows nothing of the admin API, the console or the serve loop (the HTTP crate
//! above it); it is below the control crate, which updates the caches after writes.

pub mod authenticate;
pub mod budget;
pub mod cache;
pub mod catalog_cache;
pub mod error;
pub mod guard_events;
pub mod health_check;
pub mod invalidation;
pub mod key_cache;
pub mod metrics;
pub mod pipeline;
pub mod policies;
pub mod quota;
pub mod request_meta;
pub mod telemetry;
pub mod upstream_events;
pub mod usage_sink;
pub mod webhook;

use std::ops::Deref;
use std::sync::Arc;

use cortex_config::Config;
use cortex_domain::Clock;
use cortex_limits::Limiter;
use cortex_upstream::UpstreamClient;

pub use error::{ApiError, Limit};

use crate::cache::ResponseCache;
use crate::catalog_cache::CatalogCache;
use crate::key_cache::KeyCache;
use crate::usage_sink::UsageSink;

/// What the data plane's stages use, and nothing else: settings, the clock, the key and
/// catalogue caches, the provider client, the limiter, the usage queue and the response
/// cache. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct DataPlane(Arc<Parts>);

pub struct Parts {
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub keys: KeyCache,
    pub catalog: CatalogCache,
    pub upstream: UpstreamClient,
    pub limiter: Limiter,
    pub usage: UsageSink,
    /// Guardrail hits on their way to the audit log (SPEC §21).
    pub guard_events: guard_events::GuardEvents,
    /// The client guardrail webhooks are asked through (egress policy applied).
    pub webhooks: webhook::Webhooks,
    /// Where budget counters are rebuilt from (the usage records).
    pub ledger: Arc<dyn cortex_limits::SpendLedger>,
    /// OpenTelemetry traces; `None` when no OTLP endpoint is set.
    pub traces: Option<telemetry::Traces>,
    /// The response cache (SPEC §21), in process or in Redis.
    pub cache: ResponseCache,
}

impl DataPlane {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    pub fn now_millis(&self) -> i64 {
        self.0.clock.now_millis()
    }
}

impl Deref for DataPlane {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}
