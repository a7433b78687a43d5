//! Usage records leave the hot path through a bounded channel and are written in batches by
//! one background task, which drains everything still queued on graceful shutdown.

use std::time::Duration;

use cortex_store::usage::UsageRecord;
use cortex_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics as m;

/// Queue depth: at 10k requests/s this is ten seconds of database outage before records drop.
const QUEUE: usize = 100_000;
const BATCH: usize = 2000;
/// How long a first record waits for company before the batch is written.
const LINGER: Duration = Duration::from_millis(100);

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
}

pub fn channel(store: Store) -> (UsageSink, UsageWriter) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (UsageSink { tx }, UsageWriter { rx, store })
}

impl UsageWriter {
    /// Runs until `stop` fires, then refuses new records and writes everything queued.
    pub fn spawn(mut self, stop: tokio_util::sync::CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    received = self.rx.recv_many(&mut batch, BATCH) => {
                        if received == 0 { break; }
                        self.linger(&mut batch).await;
                        self.write(&mut batch).await;
                    }
                    () = stop.cancelled() => {
                        self.rx.close();
                        while self.rx.recv_many(&mut batch, BATCH).await > 0 {
                            self.write(&mut batch).await;
                        }
                        break;
                    }
                }
            }
        })
    }

    /// Under load, waits briefly for more records so writes are few and large; an idle
    /// gateway writes within `LINGER`.
    async fn linger(&mut self, batch: &mut Vec<UsageRecord>) {
        let deadline = tokio::time::sleep(LINGER);
        tokio::pin!(deadline);
        while batch.len() < BATCH {
            tokio::select! {
                received = self.rx.recv_many(batch, BATCH - batch.len()) => if received == 0 { break },
                () = &mut deadline => break,
            }
        }
    }

    async fn write(&self, batch: &mut Vec<UsageRecord>) {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match self.store.insert_usage(batch).await {
                Ok(()) => break,
                Err(err) if attempt < 5 => {
                    tracing::warn!(error = %err, attempt, "writing usage failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(err) => {
                    tracing::error!(error = %err, records = batch.len(), "usage records lost after retries");
                    metrics::counter!(m::USAGE_DROPPED).increment(batch.len() as u64);
                }
            }
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
