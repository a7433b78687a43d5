//! Guardrail hits leave the hot path through a bounded channel, as usage records do
//! (`usage_sink.rs`), and one background task appends them to the audit log in small batches:
//! a request never waits on the database to report what a detector found.
//!
//! An event carries ids, names and a count — never the matched text: the type has no field for
//! it. Each becomes an audit event whose actor is the key, action `guardrail.<action>`, target
//! the policy, and details `{detector, label, count, direction, model, request_id, user_id}`,
//! in the key's organization. A full queue drops and counts; the database being away holds the
//! batch and retries; shutdown drains what is queued, for at most the drain grace period.

use std::sync::Arc;
use std::time::Duration;

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::policy::GuardAction;
use cortex_domain::Clock;
use cortex_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Queue depth: hits are rarer than requests.
const QUEUE: usize = 10_000;
/// Events per audit transaction: small, so the chain's head row is held briefly.
const BATCH: usize = 100;
const LINGER: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One detector's findings in one request or answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardEvent {
    pub org_id: String,
    pub key_id: String,
    pub user_id: String,
    pub model: String,
    pub request_id: String,
    pub policy_id: String,
    /// `"request"` or `"response"`.
    pub direction: &'static str,
    /// The detector's name (`DetectorSpec::name`).
    pub detector: &'static str,
    pub action: GuardAction,
    /// What was found: a PII kind, a secret kind or a custom rule's name — never the text.
    pub label: String,
    pub count: u32,
}

impl GuardEvent {
    /// The audit event this hit is recorded as.
    pub fn audit_event(&self) -> NewAuditEvent {
        NewAuditEvent::new(
            &self.key_id,
            format!("guardrail.{}", self.action.as_str()),
            &self.policy_id,
        )
        .with_details(&serde_json::json!({
            "detector": self.detector,
            "label": self.label,
            "count": self.count,
            "direction": self.direction,
            "model": self.model,
            "request_id": self.request_id,
            "user_id": self.user_id,
        }))
        .with_org(&self.org_id)
    }
}

/// The hot path's end of the queue. Cheap to clone.
#[derive(Clone)]
pub struct GuardEvents {
    tx: mpsc::Sender<GuardEvent>,
}

impl GuardEvents {
    /// Queues an event; never waits. A full (or closed) queue drops it and counts it.
    pub fn record(&self, event: GuardEvent) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!(m::GUARD_EVENTS_DROPPED).increment(1);
            tracing::warn!("guardrail event queue full or closed; an event was dropped");
        }
    }
}

pub struct GuardEventWriter {
    rx: mpsc::Receiver<GuardEvent>,
    store: Store,
    clock: Arc<dyn Clock>,
    give_up_at: Option<Instant>,
}

pub fn channel(store: Store, clock: Arc<dyn Clock>) -> (GuardEvents, GuardEventWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        GuardEvents { tx },
        GuardEventWriter {
            rx,
            store,
            clock,
            give_up_at: None,
        },
    )
}

impl GuardEventWriter {
    /// Runs until `stop` fires, then refuses new events and writes everything queued, trying
    /// for at most `flush_grace` if the database is away.
    pub fn spawn(mut self, stop: CancellationToken, flush_grace: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    received = self.rx.recv_many(&mut batch, BATCH) => {
                        if received == 0 { break; }
                        if batch.len() < BATCH {
                            tokio::time::sleep(LINGER).await;
                            while batch.len() < BATCH {
                                let Ok(event) = self.rx.try_recv() else { break };
                                batch.push(event);
                            }
                        }
                        self.write(&mut batch, &stop, flush_grace).await;
                    }
                    () = stop.cancelled() => {
                        self.rx.close();
                        while self.rx.recv_many(&mut batch, BATCH).await > 0 {
                            self.write(&mut batch, &stop, flush_grace).await;
                        }
                        break;
                    }
                }
            }
        })
    }

    async fn write(
        &mut self,
        batch: &mut Vec<GuardEvent>,
        stop: &CancellationToken,
        flush_grace: Duration,
    ) {
        let events: Vec<NewAuditEvent> = batch.iter().map(GuardEvent::audit_event).collect();
        let mut delay = Duration::from_millis(100);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let now = self.clock.now_millis();
            let Err(err) = self.store.append_audit_batch(&events, now).await else {
                break;
            };
            if stop.is_cancelled() {
                let give_up_at = *self
                    .give_up_at
                    .get_or_insert_with(|| Instant::now() + flush_grace);
                if Instant::now() >= give_up_at {
                    tracing::error!(error = %err, events = batch.len(), "guardrail events lost: the database stayed unreachable through shutdown");
                    metrics::counter!(m::GUARD_EVENTS_DROPPED).increment(batch.len() as u64);
                    batch.clear();
                    return;
                }
            }
            if attempt == 1 || attempt.is_multiple_of(12) {
                tracing::warn!(error = %err, attempt, events = batch.len(), "writing guardrail events failed; holding the batch and retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled(), if self.give_up_at.is_none() => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_event_names_the_key_the_policy_and_counts_never_text() {
        let event = GuardEvent {
            org_id: "acme".into(),
            key_id: "key1".into(),
            user_id: "u1".into(),
            model: "llama".into(),
            request_id: "req1".into(),
            policy_id: "pol1".into(),
            direction: "response",
            detector: "pii",
            action: GuardAction::Redact,
            label: "email".into(),
            count: 2,
        }
        .audit_event();
        assert_eq!(
            (
                event.actor.as_str(),
                event.action.as_str(),
                event.target.as_str()
            ),
            ("key1", "guardrail.redact", "pol1")
        );
        assert_eq!(event.org_id, "acme");
        let details: serde_json::Value = serde_json::from_str(&event.details).unwrap();
        assert_eq!(
            details,
            serde_json::json!({"detector": "pii", "label": "email", "count": 2, "direction": "response",
                "model": "llama", "request_id": "req1", "user_id": "u1"})
        );
    }
}
