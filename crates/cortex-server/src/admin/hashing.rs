//! Bounded password hashing. Every Argon2 run takes 19 MiB and a core for tens of
//! milliseconds, so an unbounded number of them at once is a memory and CPU attack (32 parallel
//! logins once took a server from 40 MB to 760 MB). Every hash and verification in the admin
//! API goes through one [`PasswordGate`]: at most [`PasswordGate::permits`] run at once, a caller
//! waits up to [`WAIT`] for a turn and is then told to come back (503 with `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use cortex_crypto::password::{hash_password, verify_dummy, verify_password};
use secrecy::SecretString;
use tokio::sync::Semaphore;

use cortex_gateway::error::ApiError;

/// How long a login waits for a free hashing slot before it is answered 503.
pub const WAIT: Duration = Duration::from_secs(2);
/// Hashing slots at most, whatever the core count: 4 × 19 MiB.
const MAX_PERMITS: usize = 4;

pub struct PasswordGate {
    slots: Arc<Semaphore>,
    permits: usize,
}

impl PasswordGate {
    /// One slot per core, at most [`MAX_PERMITS`].
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.clamp(1, MAX_PERMITS))
    }

    pub fn new(permits: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(permits)),
            permits,
        }
    }

    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Runs `work` on a blocking thread once a slot is free.
    async fn run<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = match tokio::time::timeout(WAIT, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(ApiError::Unavailable),
            Err(_elapsed) => {
                tracing::warn!(
                    slots = self.permits,
                    "every password hashing slot stayed busy; a login was told to retry"
                );
                return Err(ApiError::Busy(WAIT));
            }
        };
        // The permit moves into the blocking task: if the client goes away, the hash still
        // runs to the end, and its slot stays taken until it has (else a caller that drops
        // connections could start any number of hashes).
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(ApiError::internal("the password hashing task failed"))
    }

    /// Whether `password` matches the user's stored hash. With no user, a dummy hash is
    /// verified instead, so the answer takes as long whether or not the username exists.
    pub async fn verify(
        &self,
        stored_hash: Option<String>,
        password: &SecretString,
    ) -> Result<bool, ApiError> {
        let password = password.clone();
        self.run(move || match stored_hash {
            Some(hash) => verify_password(&hash, &password),
            None => {
                verify_dummy(&password);
                false
            }
        })
        .await
    }

    /// The Argon2id hash of a new password.
    pub async fn hash(&self, password: &SecretString) -> Result<String, ApiError> {
        let password = password.clone();
        self.run(move || hash_password(&password))
            .await?
            .map_err(ApiError::internal("hashing a password failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts a hash that takes `gate`'s only slot and runs until the returned sender sends
    /// (or is dropped); returns once the hash is running.
    async fn hold_the_only_slot(
        gate: &Arc<PasswordGate>,
    ) -> (
        tokio::task::JoinHandle<Result<(), ApiError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let gate = gate.clone();
        let holder = tokio::spawn(async move {
            gate.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await
        });
        started_rx.await.unwrap();
        (holder, release_tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waits_for_a_slot_then_is_told_to_retry() {
        let gate = Arc::new(PasswordGate::new(1));
        let (holder, release_tx) = hold_the_only_slot(&gate).await;
        let refused = gate.run(|| ()).await.unwrap_err();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.code(), "unavailable");
        release_tx.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert!(gate.run(|| 7).await.is_ok_and(|v| v == 7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_caller_keeps_its_slot_until_the_hash_is_done() {
        let gate = Arc::new(PasswordGate::new(1));
        let (cancelled, release_tx) = hold_the_only_slot(&gate).await;
        cancelled.abort();
        let _ = cancelled.await;
        assert_eq!(
            gate.slots.available_permits(),
            0,
            "the slot left with the caller"
        );
        release_tx.send(()).unwrap();
        assert!(gate.run(|| ()).await.is_ok());
    }
}
