//! The one application state, built once at start and passed to every handler explicitly.

use std::ops::Deref;
use std::sync::Arc;

use cortex_config::Config;
use cortex_crypto::envelope::MasterKey;
use cortex_domain::Clock;
use cortex_gateway::invalidation::Topic;
use cortex_gateway::key_cache::KeyCache;
use cortex_gateway::DataPlane;
use cortex_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

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
    /// Single sign-on's provider (discovery and keys cached), when `[oidc]` is configured.
    pub(crate) oidc: Option<Arc<cortex_control::oidc::OidcProvider>>,
    /// Passkeys' relying party, when `CORTEX_WEBAUTHN_ORIGIN` is set.
    pub(crate) passkeys: Option<Arc<cortex_control::passkeys::Passkeys>>,
    /// What the `/v1` pipeline uses (caches, limiter, provider client, usage queue); the
    /// admin API reaches the caches and the limiter through it too.
    pub(crate) data: DataPlane,
    /// Redis pub/sub for immediate cache invalidation across instances (with `REDIS_URL`).
    pub(crate) invalidation: Option<cortex_gateway::invalidation::Invalidation>,
    pub(crate) prometheus: Option<PrometheusHandle>,
    /// Fires when the server starts shutting down (streams drain, pollers stop).
    pub(crate) shutdown: CancellationToken,
    /// What SIEM forwarding has done (when it runs).
    pub(crate) audit_forward: Arc<cortex_control::audit_forward::ForwardStatus>,
    /// The inference engines this process runs (SPEC §17).
    pub(crate) engines: Arc<crate::engines::Engines>,
    /// The audit checkpoint this instance signed last (deleting it is noticed).
    pub(crate) checkpoint_trail: Arc<cortex_control::ops::audit::CheckpointTrail>,
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

    /// The data plane: caches, upstream client and provider health.
    pub fn data_plane(&self) -> &DataPlane {
        &self.0.data
    }

    pub fn keys_cache(&self) -> &KeyCache {
        &self.0.data.keys
    }

    pub fn audit_forward_status(&self) -> &cortex_control::audit_forward::ForwardStatus {
        &self.0.audit_forward
    }

    pub fn now_millis(&self) -> i64 {
        self.0.clock.now_millis()
    }

    /// Tells the other instances (if any) that `topic` changed.
    pub async fn announce(&self, topic: Topic) {
        if let Some(invalidation) = &self.invalidation {
            invalidation.publish(topic).await;
        }
    }
}
