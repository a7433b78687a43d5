//! Usage records leave the hot path through a bounded channel and are written in batches by
//! one background task, which drains everything still queued on graceful shutdown.
//!
//! While the database is unreachable the writer holds its batch and retries with backoff, so a
//! database restart loses nothing; new records wait in the queue meanwhile (a full queue drops
//! and counts them). Only at shutdown is the retrying bounded, by the drain grace period.
//! Delivery is at least once: a batch whose commit acknowledgement was lost is written again.

use std::time::Duration;

use cortex_store::usage::UsageRecord;
use cortex_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Queue depth: at 10k requests/s this is ten seconds of database outage before records drop.
const QUEUE: usize = 100_000;
const BATCH: usize = 2000;
/// How long a first record waits for company before the batch is written.
const LINGER: Duration = Duration::from_millis(100);
/// The longest pause between two attempts while the database is away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageRecord>,
}

impl UsageSink {
    /// Queues a record; never waits. A full queue drops the record and counts it.
    pub fn record(&self, record: UsageRecord) {
        if self.tx.try_send(record).is_err() {
            metrics::counter!(m::USAGE_DROPPED).increment(1);
            tracing::warn!("usage queue full or closed; a usage record was dropped");
        }
    }
}

pub struct UsageWriter {
    rx: mpsc::Receiver<UsageRecord>,
    store: Store,
    /// Set when shutdown begins: past it, a batch that still cannot be written is given up.
    give_up_at: Option<Instant>,
}

pub fn channel(store: Store) -> (UsageSink, UsageWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        UsageSink { tx },
        UsageWriter {
            rx,
            store,
            give_up_at: None,
        },
    )
}

impl UsageWriter {
    /// Runs until `stop` fires, then refuses new records and writes everything queued, trying
    /// for at most `flush_grace` if the database is away.
    pub fn spawn(mut self, stop: CancellationToken, flush_grace: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    received = self.rx.recv_many(&mut batch, BATCH) => {
                        if received == 0 { break; }
                        self.linger(&mut batch).await;
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

    /// Under load, waits briefly for more records so writes are few and large; an idle
    /// gateway writes within `LINGER`. It sleeps rather than waiting on the queue: a task
    /// waiting on the queue is woken by every record sent, which cost a thread wake-up per
    /// request at moderate rates. A full batch is written at once, so a backlog drains without
    /// pauses.
    async fn linger(&mut self, batch: &mut Vec<UsageRecord>) {
        if batch.len() >= BATCH {
            return;
        }
        tokio::time::sleep(LINGER).await;
        while batch.len() < BATCH {
            let Ok(record) = self.rx.try_recv() else {
                break;
            };
            batch.push(record);
        }
    }

    async fn write(
        &mut self,
        batch: &mut Vec<UsageRecord>,
        stop: &CancellationToken,
        flush_grace: Duration,
    ) {
        let mut delay = Duration::from_millis(100);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let Err(err) = self.store.insert_usage(batch).await else {
                break;
            };
            if stop.is_cancelled() {
                let give_up_at = *self
                    .give_up_at
                    .get_or_insert_with(|| Instant::now() + flush_grace);
                if Instant::now() >= give_up_at {
                    tracing::error!(error = %err, records = batch.len(), "usage records lost: the database stayed unreachable through shutdown");
                    metrics::counter!(m::USAGE_DROPPED).increment(batch.len() as u64);
                    batch.clear();
                    return;
                }
            }
            // One line per outage and then one every ~minute, not one per attempt.
            if attempt == 1 || attempt.is_multiple_of(12) {
                tracing::warn!(error = %err, attempt, records = batch.len(), "writing usage failed; holding the batch and retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Shutdown starts the bounded regime at once rather than after a long sleep.
                () = stop.cancelled(), if self.give_up_at.is_none() => {}
            }
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        if attempt > 1 {
            tracing::info!(
                attempt,
                records = batch.len(),
                "usage written after the database came back"
            );
        }
        let mut last_used: Vec<(String, i64)> = Vec::new();
        for record in batch.iter() {
            match last_used.iter_mut().find(|(id, _)| *id == record.key_id) {
                Some(entry) => entry.1 = entry.1.max(record.created_at),
                None => last_used.push((record.key_id.clone(), record.created_at)),
            }
        }
        if let Err(err) = self.store.touch_api_keys(&last_used).await {
            tracing::warn!(error = %err, "updating key last-used times failed");
        }
        batch.clear();
    }
}
