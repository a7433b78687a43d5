//! Cross-instance cache invalidation over Redis pub/sub. Every instance polls the database once
//! a second anyway (the fallback that bounds staleness without Redis); with `REDIS_URL` set, a
//! change made through one instance is announced at once and the others reload immediately.

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

#[derive(Clone)]
pub struct Invalidation {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
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
        Ok(Self { client, publisher })
    }

    /// Announces a change; a lost announcement only delays others until their next poll.
    pub async fn publish(&self, topic: Topic) {
        let mut connection = self.publisher.clone();
        let sent: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(topic.as_str())
            .query_async(&mut connection)
            .await;
        if let Err(err) = sent {
            tracing::debug!(error = ?err.kind(), "publishing an invalidation failed; peers will catch up by polling");
        }
    }

    /// Listens until `shutdown`, reloading what peers announce; reconnects after failures.
    pub fn spawn_listener(&self, state: Reload, shutdown: CancellationToken) {
        let client = self.client.clone();
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
                                    _ => Ok(()),
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
