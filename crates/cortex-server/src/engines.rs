//! The inference engines this serving process runs (SPEC §17): the supervisor, the bridge from
//! its events to the routing table, and the reconciler that makes the supervisor match the
//! stored engines.
//!
//! **Routing.** A running engine is laid over the catalogue's routing table of this process
//! (`CatalogCache::set_engine`): its served model name routes to `http://127.0.0.1:<port>/v1`
//! with the key generated for its run. [`RoutingEvents::withdrawn`] removes it synchronously,
//! and the supervisor calls it before the engine is signalled, so no request is sent to an
//! engine that is stopping.
//!
//! **Desired state.** The admin API and the command line write what an operator asked
//! (`desired_state`, `generation`) to the store; [`Engines::reconcile`] compares the rows with
//! what it last acted on and upserts, starts, restarts, stops or removes engines. The admin API
//! calls it right after its change; a poller calls it every two seconds for changes made by the
//! command line or another instance. Every instance runs its own copy of a running engine (an
//! engine listens on its node's loopback only). At boot engines with `auto_start` start.
//!
//! **Logs for the command line.** Engine output lives in the supervisor's memory; each poll
//! also writes every engine's last lines (already redacted) to
//! `CORTEX_DATA_DIR/engine-logs/<id>.log` (a private directory), which `cortex engines logs`
//! reads on the same host.
//!
//! Engine tasks are spawned on the runtime that built the gateway (captured as a handle), never
//! on a serving thread's runtime, and [`Engines::shutdown`] stops them all before the process
//! ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cortex_config::Config;
use cortex_control::engines::load_spec;
use cortex_crypto::envelope::MasterKey;
use cortex_engines::{
    DockerRuntime, EngineEvents, EngineId, EngineState, ModelsDir, Programs, RunningEngine,
    Runtimes, Supervisor, SupervisorOptions, WithdrawReason,
};
use cortex_gateway::DataPlane;
use cortex_store::engines::{DesiredState, EngineRow};
use cortex_store::Store;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use cortex_control::bootstrap::StartError;

/// How often the reconciler looks at the stored engines.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Lines of each engine's output mirrored for the command line.
const MIRRORED_LINES: usize = 500;

/// Where the command line finds an engine's last output lines.
pub fn log_mirror_path(data_dir: &std::path::Path, engine_id: &str) -> std::path::PathBuf {
    data_dir
        .join("engine-logs")
        .join(format!("{engine_id}.log"))
}

/// Puts running engines in this process's routing table and takes them out.
struct RoutingEvents {
    data: DataPlane,
}

impl EngineEvents for RoutingEvents {
    fn running(&self, engine: &RunningEngine) {
        tracing::info!(engine = %engine.id, model = %engine.served_model_name, "engine running: routed");
        self.data.catalog.set_engine(
            engine.id.as_str(),
            &engine.served_model_name,
            &engine.base_url,
            secrecy::SecretString::from(engine.api_key.expose_secret().to_owned()),
        );
    }

    fn withdrawn(&self, id: &EngineId, reason: WithdrawReason) {
        tracing::info!(engine = %id, reason = ?reason, "engine withdrawn from routing");
        self.data.catalog.remove_engine(id.as_str());
    }
}

/// What the reconciler last acted on for one engine.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    spec: String,
    hf_token_sealed: Option<Vec<u8>>,
    desired: DesiredState,
    generation: i64,
}

impl Seen {
    fn of(row: &EngineRow) -> Self {
        Seen {
            spec: row.spec.clone(),
            hf_token_sealed: row.hf_token_sealed.clone(),
            desired: row.desired_state,
            generation: row.generation,
        }
    }
}

pub struct Engines {
    supervisor: Supervisor,
    data_dir: std::path::PathBuf,
    models_dir: Option<ModelsDir>,
    /// The runtime engine tasks run on.
    runtime: tokio::runtime::Handle,
    seen: tokio::sync::Mutex<Option<HashMap<String, Seen>>>,
}

impl Engines {
    /// The supervisor with the configured programs, models directory and runtimes.
    pub async fn build(config: &Config, data: DataPlane) -> Result<Engines, StartError> {
        let settings = &config.engines;
        let models_dir = settings
            .models_dir
            .as_ref()
            .map(|dir| {
                ModelsDir::new(dir).map_err(|e| {
                    StartError::Io(format!(
                        "invalid setting CORTEX_MODELS_DIR: cannot open {}: {}",
                        dir.display(),
                        e.kind()
                    ))
                })
            })
            .transpose()?;
        let mut runtimes = Runtimes::default();
        if let Some(host) = &settings.docker_host {
            match DockerRuntime::connect(host).await {
                Ok(docker) => {
                    if let Err(err) = docker.remove_leftovers().await {
                        tracing::warn!(error = %err, "removing leftover engine containers failed");
                    }
                    runtimes.docker = Some(Arc::new(docker));
                }
                Err(err) => {
                    return Err(StartError::Io(format!(
                        "invalid setting CORTEX_ENGINES_DOCKER_HOST: {err}"
                    )))
                }
            }
        }
        let options = SupervisorOptions {
            models_dir: models_dir.clone(),
            programs: Programs {
                vllm: settings.vllm_program.clone(),
                llama_server: settings.llama_server_program.clone(),
            },
            ..SupervisorOptions::default()
        };
        let supervisor = Supervisor::new(options, Arc::new(RoutingEvents { data }), runtimes);
        Ok(Engines {
            supervisor,
            data_dir: config.data_dir.clone(),
            models_dir,
            runtime: tokio::runtime::Handle::current(),
            seen: tokio::sync::Mutex::new(None),
        })
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    pub fn models_dir(&self) -> Option<&ModelsDir> {
        self.models_dir.as_ref()
    }

    /// Makes the supervisor match the stored engines (see the module comment); the first call
    /// is the boot, which starts the engines with `auto_start`. Runs on the gateway's runtime.
    pub async fn reconcile(self: &Arc<Self>, store: &Store, master_key: &Arc<MasterKey>) {
        let this = self.clone();
        let store = store.clone();
        let master_key = master_key.clone();
        let done = self
            .runtime
            .spawn(async move { this.reconcile_here(&store, &master_key).await })
            .await;
        if done.is_err() {
            tracing::error!("reconciling engines failed");
        }
    }

    async fn reconcile_here(&self, store: &Store, master_key: &MasterKey) {
        let rows = match store.list_engines().await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "reading the engines failed");
                return;
            }
        };
        let mut guard = self.seen.lock().await;
        let booting = guard.is_none();
        let seen = guard.get_or_insert_with(HashMap::new);
        for row in &rows {
            let now = Seen::of(row);
            let before = seen.get(&row.id).cloned();
            if before.as_ref() == Some(&now) {
                continue;
            }
            let id = EngineId::new(row.id.clone());
            let defined = before
                .as_ref()
                .is_some_and(|b| b.spec == now.spec && b.hf_token_sealed == now.hf_token_sealed);
            if !defined {
                let upserted = load_spec(master_key, row)
                    .map_err(|e| e.to_string())
                    .and_then(|spec| {
                        self.supervisor
                            .upsert(id.clone(), spec)
                            .map_err(|e| e.to_string())
                    });
                if let Err(err) = upserted {
                    tracing::error!(engine = %row.name, error = %err, "an engine cannot be loaded");
                    seen.insert(row.id.clone(), now);
                    continue;
                }
            }
            let start = match &before {
                None if booting => row.auto_start,
                None => now.desired == DesiredState::Running,
                Some(b) => {
                    now.desired == DesiredState::Running
                        && (b.generation != now.generation || b.desired != now.desired)
                }
            };
            let stop = before.as_ref().is_some_and(|b| {
                b.desired == DesiredState::Running && now.desired == DesiredState::Stopped
            });
            if start {
                let active = self.supervisor.status(&id).is_some_and(|s| {
                    matches!(s.state, EngineState::Running | EngineState::Starting)
                });
                let result = if active {
                    self.supervisor.restart(&id)
                } else {
                    self.supervisor.start(&id)
                };
                if let Err(err) = result {
                    tracing::warn!(engine = %row.name, error = %err, "starting an engine failed");
                }
            } else if stop {
                if let Err(err) = self.supervisor.stop(&id).await {
                    tracing::warn!(engine = %row.name, error = %err, "stopping an engine failed");
                }
            }
            seen.insert(row.id.clone(), now);
        }
        let gone: Vec<String> = seen
            .keys()
            .filter(|id| !rows.iter().any(|row| &row.id == *id))
            .cloned()
            .collect();
        for id in gone {
            seen.remove(&id);
            if let Err(err) = self.supervisor.remove(&EngineId::new(id.clone())).await {
                tracing::warn!(engine = %id, error = %err, "removing an engine failed");
            }
        }
    }

    /// Reconciles every two seconds until `stop` fires.
    pub fn spawn_reconciler(
        self: &Arc<Self>,
        store: Store,
        master_key: Arc<MasterKey>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        self.runtime.spawn(async move {
            loop {
                this.reconcile_here(&store, &master_key).await;
                this.mirror_logs().await;
                tokio::select! {
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                    () = stop.cancelled() => break,
                }
            }
        })
    }

    /// Writes each engine's last lines (redacted by the supervisor) for `cortex engines logs`.
    async fn mirror_logs(&self) {
        let dir = self.data_dir.join("engine-logs");
        let engines: Vec<(String, Vec<String>)> = self
            .supervisor
            .list()
            .into_iter()
            .filter_map(|(id, _)| {
                let lines = self.supervisor.logs(&id, MIRRORED_LINES)?;
                Some((id.as_str().to_owned(), lines))
            })
            .collect();
        let data_dir = self.data_dir.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if engines.is_empty() {
                return Ok(());
            }
            cortex_store::create_private_dir(&dir)?;
            for (id, lines) in engines {
                let mut text = lines.join("\n");
                text.push('\n');
                let path = log_mirror_path(&data_dir, &id);
                let temporary = path.with_extension("log.tmp");
                std::fs::write(&temporary, text)?;
                std::fs::rename(&temporary, &path)?;
            }
            Ok(())
        })
        .await;
        if let Ok(Err(err)) = written {
            tracing::debug!(error = %err, "mirroring engine logs failed");
        }
    }

    /// Stops every engine (out of routing first).
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }
}
