//! Cross-instance cache invalidation over Redis pub/sub. Every instance polls the database once
//! a second anyway (the fallback that bounds staleness without Redis); with `REDIS_URL` set, a
//! change made through one instance is announced at once and the others reload immediately.
//!
//! The same channel carries circuit breakers (SPEC §16): a breaker that opens or closes on one
//! instance is opened or closed on the others as the message arrives. A lost message leaves
//! that instance to find the provider's failures for itself, as it would without Redis.

use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};

use std::sync::Arc;

use cortex_crypto::envelope::MasterKey;
use cortex_store::Store;
use tokio_util::sync::CancellationToken;

use crate::DataPlane;

const CHANNEL: &str = "cortex:invalidate";

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Keys,
    Catalog,
}

impl Topic {
    fn as_str(self) -> &'static str {
        match self {
            Topic::Keys => "keys",
            Topic::Catalog => "catalog",
        }
    }
}

/// What a listener reloads, and from where.
pub struct Reload {
    pub store: Store,
    pub master_key: Arc<MasterKey>,
    /// Whose caches (keys, catalogue) are reloaded.
    pub plane: DataPlane,
}

/// A circuit breaker that changed on this instance, for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerChange {
    Opened {
        provider_id: String,
        cooldown_millis: i64,
    },
    Closed {
        provider_id: String,
    },
}

impl BreakerChange {
    /// `breaker open <instance> <provider id> <cooldown ms>` or
    /// `breaker close <instance> <provider id>`.
    fn message(&self, instance: u64) -> String {
        match self {
            BreakerChange::Opened {
                provider_id,
                cooldown_millis,
            } => format!("breaker open {instance:016x} {provider_id} {cooldown_millis}"),
            BreakerChange::Closed { provider_id } => {
                format!("breaker close {instance:016x} {provider_id}")
            }
        }
    }

    /// A peer's message (`None` for this instance's own, and for anything malformed). The
    /// cooldown is bounded to an hour whatever the message says.
    fn parse(message: &str, instance: u64) -> Option<BreakerChange> {
        let mut words = message.strip_prefix("breaker ")?.split(' ');
        let (verb, from, provider_id) = (words.next()?, words.next()?, words.next()?);
        if u64::from_str_radix(from, 16).ok()? == instance || provider_id.is_empty() {
            return None;
        }
        let provider_id = provider_id.to_owned();
        let change = match verb {
            "open" => BreakerChange::Opened {
                provider_id,
                cooldown_millis: words.next()?.parse::<i64>().ok()?.clamp(1, 3_600_000),
            },
            "close" => BreakerChange::Closed { provider_id },
            _ => return None,
        };
        words.next().is_none().then_some(change)
    }
}

#[derive(Clone)]
pub struct Invalidation {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    /// Tells this instance's breaker messages from its peers'.
    instance: u64,
}

impl Invalidation {
    pub async fn connect(
        url: &SecretString,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, cortex_limits::LimitError> {
        let client = cortex_limits::redis_client(url.expose_secret(), ca_pem)?;
        let publisher = redis::aio::ConnectionManager::new(client.clone())
            .await
            .map_err(|e| cortex_limits::LimitError::Connect(format!("{:?}", e.kind())))?;
        Ok(Self {
            client,
            publisher,
            instance: fastrand::u64(..),
        })
    }

    /// Tells the other instances that a breaker opened or closed here.
    pub async fn publish_breaker(&self, change: &BreakerChange) {
        self.publish_text(change.message(self.instance)).await;
    }

    /// Announces a change; a lost announcement only delays others until their next poll.
    pub async fn publish(&self, topic: Topic) {
        self.publish_text(topic.as_str().to_owned()).await;
    }

    async fn publish_text(&self, message: String) {
        let mut connection = self.publisher.clone();
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(message)
            .query_async(&mut connection)
            .await;
        if let Err(err) = sent {
            tracing::debug!(error = ?err.kind(), "publishing an invalidation failed; peers will catch up by polling");
        }
    }

    /// Listens until `shutdown`, reloading what peers announce; reconnects after failures.
    pub fn spawn_listener(&self, state: Reload, shutdown: CancellationToken) {
        let client = self.client.clone();
        let instance = self.instance;
        tokio::spawn(async move {
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(CHANNEL).await.is_ok() {
                            let mut messages = pubsub.on_message();
                            loop {
                                let message = tokio::select! {
                                    message = messages.next() => message,
                                    () = shutdown.cancelled() => return,
                                };
                                let Some(message) = message else { break };
                                let topic: String = message.get_payload().unwrap_or_default();
                                let result = match topic.as_str() {
                                    "keys" => {
                                        state.plane.keys.refresh(&state.store).await.map(|_| ())
                                    }
                                    "catalog" => state
                                        .plane
                                        .catalog
                                        .refresh(&state.store, &state.master_key)
                                        .await
                                        .map(|_| ()),
                                    other => {
                                        if let Some(change) = BreakerChange::parse(other, instance)
                                        {
                                            apply_breaker(&state.plane, change);
                                        }
                                        Ok(())
                                    }
                                };
                                if let Err(err) = result {
                                    tracing::warn!(error = %err, "reloading after an invalidation failed");
                                }
                            }
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = ?err.kind(), "invalidation listener cannot reach Redis; retrying")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// A peer's breaker change, applied to this instance's breaker for the same provider.
fn apply_breaker(plane: &DataPlane, change: BreakerChange) {
    match change {
        BreakerChange::Opened {
            provider_id,
            cooldown_millis,
        } => {
            if let Some(health) = plane.catalog.health().get(&provider_id) {
                tracing::info!(provider_id = %provider_id, cooldown_millis, "a peer opened the provider's circuit breaker");
                health
                    .breaker
                    .open_until(plane.now_millis().saturating_add(cooldown_millis));
            }
        }
        BreakerChange::Closed { provider_id } => {
            if let Some(health) = plane.catalog.health().get(&provider_id) {
                health.breaker.record_success();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_messages_round_trip_and_own_or_malformed_ones_are_ignored() {
        let opened = BreakerChange::Opened {
            provider_id: "p-1".into(),
            cooldown_millis: 30_000,
        };
        let closed = BreakerChange::Closed {
            provider_id: "p-1".into(),
        };
        for change in [&opened, &closed] {
            assert_eq!(
                BreakerChange::parse(&change.message(7), 8).as_ref(),
                Some(change)
            );
            assert_eq!(BreakerChange::parse(&change.message(7), 7), None, "own");
        }
        let long = BreakerChange::parse("breaker open 0000000000000001 p 999999999999", 2);
        assert_eq!(
            long,
            Some(BreakerChange::Opened {
                provider_id: "p".into(),
                cooldown_millis: 3_600_000
            })
        );
        for bad in [
            "keys",
            "breaker",
            "breaker open",
            "breaker open zz p 1",
            "breaker open 01 p",
            "breaker open 01 p x",
            "breaker open 01 p 1 extra",
            "breaker shut 01 p",
            "breaker close 01 ",
        ] {
            assert_eq!(BreakerChange::parse(bad, 2), None, "{bad:?}");
        }
    }
}
