//! Inference engines (SPEC §17): model servers — vLLM (`vllm serve`) and llama.cpp
//! (`llama-server`) — that Cortex starts, watches and routes to, as a child process or a Docker
//! container.
//!
//! # Design
//!
//! **Definitions.** An [`EngineSpec`] is SPEC §17's create body, parsed strictly: unknown fields
//! and unknown settings are refused by serde, and `settings` are typed per engine
//! ([`VllmSettings`], [`LlamaCppSettings`]) and become the engines' documented flags
//! (`settings.rs`, table-tested). [`EngineSpec::validate`] adds the checks that need no file
//! system. `hf_token` is write-only: it deserializes into a `SecretString` and never serializes.
//!
//! **What Cortex owns.** The engine's host, port, API key, TLS, model and served name are set by
//! Cortex and cannot be set by an operator: `extra_args` and `env` pass the deny-list
//! (`deny.rs`), which reads arguments the way the engines' parsers do (`--x=y`, `_` for `-`,
//! case, vLLM's argparse abbreviations, llama.cpp's short forms). The model is a Hugging Face
//! repo id or a path contained in `CORTEX_MODELS_DIR` ([`ModelsDir`]: no `..`, no absolute path
//! outside, symlinks canonicalized and checked), resolved again at every start; a local model
//! runs with `HF_HUB_OFFLINE=1`.
//!
//! **Secrets.** Each start generates a fresh API key (32 random bytes, a `SecretString`) and a
//! fresh loopback port. The key and `hf_token` reach the engine through its environment
//! (`VLLM_API_KEY` / `LLAMA_API_KEY`, `HF_TOKEN`), never argv; log lines are redacted before
//! they are stored ([`LogBuffer`]); dry runs show `[REDACTED]`. The key exists only in memory:
//! it reaches the gateway in [`RunningEngine`] and dies with the engine. (SPEC §17 says the key
//! is stored encrypted; nothing needs it stored — a restarted engine gets a new one, and only
//! this node can reach a loopback engine — so the lead may choose not to.) A process engine's
//! environment starts empty plus a few inherited variables (`PATH`, `HOME`, …), so Cortex's own
//! secrets never reach it.
//!
//! **Runtimes.** One trait ([`Runtime`] → [`Instance`]): `process` (tokio child in its own
//! process group; SIGTERM then SIGKILL to the group; output into a bounded ring of lines;
//! `CUDA_VISIBLE_DEVICES` from `gpus`) and `docker` (bollard; a private bridge network per
//! engine; the engine's port published on 127.0.0.1 only; models mounted read-only; GPUs as
//! device requests — see `runtime/docker.rs` for why this, checked against a real
//! `--iptables=false --bridge=none` daemon). Either way the gateway reaches an engine at
//! `http://127.0.0.1:<port>` with its key.
//!
//! **Supervision.** The [`Supervisor`] owns engines by id; one task per engine runs the state
//! machine (`supervisor/engine_task.rs`): `stopped → starting → running` only once
//! `GET /v1/models` with the key answers 200 (polled, bounded by `ready_timeout`) and the same
//! request without the key is refused (an engine or image that ignores its key is never
//! routed to); an exit or
//! a readiness timeout is `failed` with the reason and the last log lines; `restart =
//! on-failure` starts it again after `base · 2ⁿ` (capped; reset after a long run). A stop,
//! restart, removal or shutdown first calls [`EngineEvents::withdrawn`] (out of routing), waits
//! the drain period, and only then signals the engine; an unexpected exit withdraws it at once.
//! [`Supervisor::shutdown`] stops every engine in parallel.
//!
//! **Local models.** [`list_local`] lists model folders and GGUF files under the models
//! directory, GGUF headers read by a small bounded reader ([`gguf`]: capped lengths, never
//! panics; property-tested and fuzzed), split files grouped.
//!
//! # What the gateway calls
//!
//! ```text
//! let supervisor = Supervisor::new(options, Arc::new(routing_events), Runtimes { process, docker });
//! let spec: EngineSpec = serde_json::from_value(body)?;  // create body (strict)
//! let spec = current.patched(&patch)?;   // PATCH body (merge patch; hf_token kept unless named)
//! supervisor.upsert(id, spec)?;          // create / PATCH (validated; next start uses it)
//! supervisor.start(&id)?;                // POST …/start (returns at once)
//! supervisor.stop(&id).await?;           // POST …/stop (returns when stopped)
//! supervisor.restart(&id)?;              // POST …/restart
//! supervisor.remove(&id).await?;         // DELETE (stops first)
//! supervisor.status(&id) / list()        // GET (EngineStatus serializes as the API's state)
//! supervisor.subscribe(&id)              // watch::Receiver<EngineStatus> for live state
//! supervisor.logs(&id, tail)             // GET …/logs?tail=N (redacted)
//! supervisor.dry_run(&spec)              // POST …/dry-run (DryRun, redacted)
//! supervisor.local_models().await        // GET /admin/models/local
//! supervisor.shutdown().await            // graceful shutdown
//! ```
//! `EngineEvents::running` gives `{id, served_model_name, base_url, api_key}`;
//! `EngineEvents::withdrawn(id, reason)` must remove the engine from routing before returning.
//! Errors: [`SpecError`] (400; `code()` gives a stable code; messages never carry a secret),
//! [`SupervisorError`] (`NotFound` → 404). `upsert` spawns the engine's task, so it runs inside
//! a Tokio runtime; `auto_start` is the caller's to honour at boot (upsert all, then start
//! those that have it). [`DockerRuntime::connect`] with `DOCKER_HOST` (default
//! `unix:///var/run/docker.sock`) builds the docker runtime; `remove_leftovers` at boot clears
//! containers a crashed Cortex left (it assumes this Cortex owns every `cortex.engine` label on
//! that daemon).
//!
//! # Tests and what they need
//!
//! Unit tests beside the code; `tests/it/` drives the supervisor with `cortex-fake-engine`
//! (`src/bin/`), the docker runtime against a real daemon and a real `llama-server`. The last
//! two read `CORTEX_TEST_DOCKER_HOST`, `CORTEX_TEST_LLAMA_SERVER` and
//! `CORTEX_TEST_GGUF_PYTHON`, which `scripts/engines-prereqs.sh` (functions in
//! `scripts/lib/engines.sh`) provides; without them the tests fail under `CI=true` and skip,
//! saying why, elsewhere.

pub mod deny;
pub mod error;
pub mod events;
pub mod gguf;
#[cfg(test)]
mod gguf_writer;
pub mod kinds;
pub mod launch;
pub mod local_models;
pub mod logs;
pub mod models_dir;
pub mod readiness;
pub mod runtime;
pub mod settings;
pub mod spec;
pub mod supervisor;

pub use error::{ModelPathError, RuntimeError, SpecError, SupervisorError};
pub use events::{EngineEvents, NoEvents, RunningEngine, WithdrawReason};
pub use launch::{DryRun, Programs};
pub use local_models::{list_local, LocalModel};
pub use logs::LogBuffer;
pub use models_dir::{ModelSource, ModelsDir};
pub use runtime::docker::DockerRuntime;
pub use runtime::process::ProcessRuntime;
pub use runtime::{Instance, Runtime};
pub use settings::{EngineSettings, LlamaCppSettings, VllmSettings};
pub use spec::{EngineId, EngineKind, EngineSpec, RestartPolicy, RuntimeKind};
pub use supervisor::{Backoff, EngineState, EngineStatus, Runtimes, Supervisor, SupervisorOptions};
