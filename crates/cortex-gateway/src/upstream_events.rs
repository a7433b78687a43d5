//! What the upstream client reports as it works (retries, breakers opening and closing) goes
//! to metrics here, and, with `REDIS_URL`, to the other instances: a breaker opened on one
//! instance is opened on all of them within a second (SPEC §16), through the invalidation
//! channel's pub/sub.

use std::sync::Arc;

use cortex_upstream::{ProviderTarget, RetryReason, UpstreamEvents};

use crate::invalidation::{BreakerChange, Invalidation};
use crate::metrics as m;

/// The data plane's [`UpstreamEvents`].
pub struct GatewayEvents {
    /// Where breaker changes are announced; `None` without Redis.
    broadcast: Option<Invalidation>,
}

impl GatewayEvents {
    pub fn new(broadcast: Option<Invalidation>) -> Arc<Self> {
        Arc::new(Self { broadcast })
    }

    fn announce(&self, change: BreakerChange) {
        if let Some(broadcast) = &self.broadcast {
            let broadcast = broadcast.clone();
            // Called from the request's task: the announcement must not make it wait.
            tokio::spawn(async move { broadcast.publish_breaker(&change).await });
        }
    }
}

impl UpstreamEvents for GatewayEvents {
    fn retried(&self, failed: &ProviderTarget, reason: RetryReason) {
        metrics::counter!(m::UPSTREAM_RETRIES, "provider" => failed.name.clone(), "reason" => reason.as_str())
            .increment(1);
    }

    fn breaker_opened(&self, provider: &ProviderTarget, cooldown_millis: i64) {
        metrics::counter!(m::BREAKER_OPEN, "provider" => provider.name.clone()).increment(1);
        self.announce(BreakerChange::Opened {
            provider_id: provider.id.clone(),
            cooldown_millis,
        });
    }

    fn breaker_closed(&self, provider: &ProviderTarget) {
        self.announce(BreakerChange::Closed {
            provider_id: provider.id.clone(),
        });
    }
}
