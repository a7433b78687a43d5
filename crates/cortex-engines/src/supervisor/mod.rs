//! The [`Supervisor`]: owns every engine by id, one task per engine (`engine_task.rs`) that
//! alone drives its state machine, so commands for one engine are handled in order and two
//! starts can never race. Callers talk to it through this handle: add/update/remove
//! definitions, start/stop/restart, status snapshots and a `watch` per engine, logs, dry runs,
//! the local model listing, and a graceful shutdown that stops every engine.

mod engine_task;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::state::{Command, Shared, SpecCell};
use crate::error::{SpecError, SupervisorError};
use crate::events::EngineEvents;
use crate::launch::{dry_run, DryRun};
use crate::local_models::{list_local, LocalModel};
use crate::logs::LogBuffer;
use crate::spec::{EngineId, EngineSpec};

pub use self::state::{Backoff, EngineState, EngineStatus, Runtimes, SupervisorOptions};

struct Slot {
    spec: SpecCell,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<EngineStatus>,
    logs: LogBuffer,
    task: JoinHandle<()>,
}

/// Owns and supervises every engine. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    engines: Arc<Mutex<HashMap<EngineId, Slot>>>,
    closed: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn new(
        options: SupervisorOptions,
        events: Arc<dyn EngineEvents>,
        runtimes: Runtimes,
    ) -> Self {
        Supervisor {
            shared: Arc::new(Shared {
                options,
                events,
                runtimes,
            }),
            engines: Arc::new(Mutex::new(HashMap::new())),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn engines(&self) -> MutexGuard<'_, HashMap<EngineId, Slot>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an engine (stopped) or replaces an existing one's definition; a running engine keeps
    /// running with the old one until it is restarted. `auto_start` is the caller's to act on
    /// (start the engines that have it once they are all added at boot).
    pub fn upsert(&self, id: EngineId, spec: EngineSpec) -> Result<(), SupervisorError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        spec.validate()?;
        let mut engines = self.engines();
        if let Some(slot) = engines.get(&id) {
            slot.spec.set(spec);
            return Ok(());
        }
        let spec = SpecCell(Arc::new(Mutex::new(Arc::new(spec))));
        let (commands, receiver) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(EngineStatus::stopped());
        let logs = LogBuffer::new(self.shared.options.log_lines);
        let task = tokio::spawn(engine_task::run(engine_task::EngineTask {
            shared: Arc::clone(&self.shared),
            id: id.clone(),
            spec: spec.clone(),
            logs: logs.clone(),
            status: status_tx,
            commands: receiver,
        }));
        engines.insert(
            id,
            Slot {
                spec,
                commands,
                status,
                logs,
                task,
            },
        );
        Ok(())
    }

    /// Stops the engine (out of routing first) and forgets it.
    pub async fn remove(&self, id: &EngineId) -> Result<(), SupervisorError> {
        let slot = self
            .engines()
            .remove(id)
            .ok_or_else(|| SupervisorError::NotFound(id.to_string()))?;
        let (ack, done) = oneshot::channel();
        if slot.commands.send(Command::Shutdown(ack)).is_ok() {
            let _ = done.await;
        }
        let _ = slot.task.await;
        Ok(())
    }

    /// Starts the engine; returns at once (watch [`Supervisor::subscribe`] for `running`).
    /// Starting a starting or running engine does nothing; a failed one starts now.
    pub fn start(&self, id: &EngineId) -> Result<(), SupervisorError> {
        self.send(id, Command::Start)
    }

    /// Stops and starts again (out of routing first).
    pub fn restart(&self, id: &EngineId) -> Result<(), SupervisorError> {
        self.send(id, Command::Restart)
    }

    /// Stops the engine: out of routing, the drain period, SIGTERM, SIGKILL after the grace
    /// period. Returns once it is `stopped`.
    pub async fn stop(&self, id: &EngineId) -> Result<(), SupervisorError> {
        let (ack, done) = oneshot::channel();
        self.send(id, Command::Stop(ack))?;
        done.await.map_err(|_| SupervisorError::ShuttingDown)
    }

    fn send(&self, id: &EngineId, command: Command) -> Result<(), SupervisorError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let engines = self.engines();
        let slot = engines
            .get(id)
            .ok_or_else(|| SupervisorError::NotFound(id.to_string()))?;
        slot.commands
            .send(command)
            .map_err(|_| SupervisorError::ShuttingDown)
    }

    pub fn status(&self, id: &EngineId) -> Option<EngineStatus> {
        self.engines()
            .get(id)
            .map(|slot| slot.status.borrow().clone())
    }

    /// Every engine's status, by id.
    pub fn list(&self) -> Vec<(EngineId, EngineStatus)> {
        let mut all: Vec<_> = self
            .engines()
            .iter()
            .map(|(id, slot)| (id.clone(), slot.status.borrow().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Follows one engine's status (the console's live state).
    pub fn subscribe(&self, id: &EngineId) -> Option<watch::Receiver<EngineStatus>> {
        self.engines().get(id).map(|slot| slot.status.clone())
    }

    /// The engine's definition as the next start will use it.
    pub fn spec(&self, id: &EngineId) -> Option<Arc<EngineSpec>> {
        self.engines().get(id).map(|slot| slot.spec.get())
    }

    /// The last `tail` log lines (secrets redacted), oldest first.
    pub fn logs(&self, id: &EngineId, tail: usize) -> Option<Vec<String>> {
        self.engines().get(id).map(|slot| slot.logs.tail(tail))
    }

    /// What starting `spec` would run, secrets redacted.
    pub fn dry_run(&self, spec: &EngineSpec) -> Result<DryRun, SpecError> {
        dry_run(
            spec,
            self.shared.options.models_dir.as_ref(),
            &self.shared.options.programs,
        )
    }

    /// Folders and GGUF files under the models directory (empty without one).
    pub async fn local_models(&self) -> Result<Vec<LocalModel>, SupervisorError> {
        let Some(dir) = self.shared.options.models_dir.clone() else {
            return Ok(Vec::new());
        };
        let root: PathBuf = dir.root().to_path_buf();
        tokio::task::spawn_blocking(move || list_local(&dir))
            .await
            .map_err(|e| SupervisorError::ModelsDir {
                path: root.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| SupervisorError::ModelsDir { path: root, source })
    }

    /// Refuses new commands and stops every engine (out of routing first), in parallel.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let slots: Vec<Slot> = self.engines().drain().map(|(_, slot)| slot).collect();
        let mut waits = Vec::new();
        for slot in slots {
            let (ack, done) = oneshot::channel();
            if slot.commands.send(Command::Shutdown(ack)).is_ok() {
                waits.push(async move {
                    let _ = done.await;
                    let _ = slot.task.await;
                });
            }
        }
        futures_util::future::join_all(waits).await;
    }
}
