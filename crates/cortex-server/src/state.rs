//! The one application state, built once at start and passed to every handler explicitly.

use std::ops::Deref;
use std::sync::Arc;

use cortex_config::Config;
use cortex_crypto::envelope::MasterKey;
use cortex_domain::Clock;
use cortex_limits::Limiter;
use cortex_store::Store;
use cortex_upstream::UpstreamClient;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::CatalogCache;
use crate::keycache::KeyCache;
use crate::usage_sink::UsageSink;

/// Cheap to clone; everything lives behind one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) master_key: Arc<MasterKey>,
    /// Signs and checks admin access tokens; the key is derived from the master key.
    pub(crate) jwt: cortex_crypto::jwt::JwtKeys,
    /// Signs and checks device cookies (login lockout exemption); derived from the master key.
    pub(crate) device_cookies: cortex_crypto::device::DeviceCookieKey,
    /// Bounds how many password hashes run at once.
    pub(crate) password_gate: crate::admin::hashing::PasswordGate,
    pub(crate) keys: KeyCache,
    pub(crate) catalog: CatalogCache,
    pub(crate) upstream: UpstreamClient,
    pub(crate) limiter: Limiter,
    pub(crate) usage: UsageSink,
    /// Redis pub/sub for immediate cache invalidation across instances (with `REDIS_URL`).
    pub(crate) invalidation: Option<crate::invalidation::Invalidation>,
    pub(crate) prometheus: Option<PrometheusHandle>,
    /// Fires when the server starts shutting down (streams drain, pollers stop).
    pub(crate) shutdown: CancellationToken,
    /// What SIEM forwarding has done (when it runs).
    pub(crate) audit_forward: Arc<crate::audit_forward::ForwardStatus>,
    /// The audit checkpoint this instance signed last (deleting it is noticed).
    pub(crate) checkpoint_trail: Arc<crate::ops_service::audit::CheckpointTrail>,
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub(crate) fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    pub fn keys_cache(&self) -> &crate::keycache::KeyCache {
        &self.0.keys
    }

    pub fn audit_forward_status(&self) -> &crate::audit_forward::ForwardStatus {
        &self.0.audit_forward
    }

    pub fn now_millis(&self) -> i64 {
        self.0.clock.now_millis()
    }
}
