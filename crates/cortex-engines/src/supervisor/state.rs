//! The supervisor's vocabulary, shared by the handle (`mod.rs`) and the engine tasks
//! (`engine_task.rs`): options, backoff, runtimes, states and the commands a task receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::events::EngineEvents;
use crate::launch::Programs;
use crate::models_dir::ModelsDir;
use crate::runtime::process::{ProcessRuntime, DEFAULT_INHERITED_ENV};
use crate::runtime::Runtime;
use crate::spec::EngineSpec;

/// Tunables; [`SupervisorOptions::default`] suits production, tests shorten the times.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// `CORTEX_MODELS_DIR`; without it only Hugging Face repo ids are accepted.
    pub models_dir: Option<ModelsDir>,
    pub programs: Programs,
    /// How long an engine may take to answer `GET /v1/models` (vLLM loads for minutes).
    pub ready_timeout: Duration,
    /// Time between readiness probes.
    pub ready_poll: Duration,
    /// Time one probe may take.
    pub probe_timeout: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    /// Time between taking an engine out of routing and signalling it, for requests already
    /// sent to finish.
    pub drain: Duration,
    pub backoff: Backoff,
    /// Lines kept per engine.
    pub log_lines: usize,
    /// Lines shown with `failed`.
    pub failed_log_lines: usize,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            models_dir: None,
            programs: Programs::default(),
            ready_timeout: Duration::from_secs(20 * 60),
            ready_poll: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(30),
            drain: Duration::from_secs(2),
            backoff: Backoff::default(),
            log_lines: 2000,
            failed_log_lines: 20,
        }
    }
}

/// `restart = on-failure`: wait `base * 2^n` (at most `max`) before the n-th consecutive
/// restart; an engine that ran for `reset_after` starts again from `base`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(5 * 60),
            reset_after: Duration::from_secs(10 * 60),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// The runtimes engines can use; docker only when configured.
#[derive(Clone)]
pub struct Runtimes {
    pub process: Arc<dyn Runtime>,
    pub docker: Option<Arc<dyn Runtime>>,
}

impl Default for Runtimes {
    /// The process runtime, inheriting only [`DEFAULT_INHERITED_ENV`]; no docker.
    fn default() -> Self {
        Runtimes {
            process: Arc::new(ProcessRuntime::inheriting(DEFAULT_INHERITED_ENV)),
            docker: None,
        }
    }
}

/// An engine's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EngineState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed {
        reason: String,
        /// The engine's last output lines (secrets redacted).
        last_log_lines: Vec<String>,
        /// When `restart = on-failure`: the next start is this far away.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
}

/// A snapshot of one engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineStatus {
    #[serde(flatten)]
    pub state: EngineState,
    /// Restarts after failures since the last operator start.
    pub restarts: u32,
    /// While starting or running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl EngineStatus {
    pub(crate) fn stopped() -> Self {
        EngineStatus {
            state: EngineState::Stopped,
            restarts: 0,
            base_url: None,
            pid: None,
            container_id: None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Command {
    Start,
    Restart,
    Stop(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The spec an engine's next start uses; replaced by [`Supervisor::update`].
#[derive(Clone)]
pub(crate) struct SpecCell(pub(crate) Arc<Mutex<Arc<EngineSpec>>>);

impl SpecCell {
    pub(crate) fn get(&self) -> Arc<EngineSpec> {
        Arc::clone(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn set(&self, spec: EngineSpec) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(spec);
    }
}

pub(crate) struct Shared {
    pub(crate) options: SupervisorOptions,
    pub(crate) events: Arc<dyn EngineEvents>,
    pub(crate) runtimes: Runtimes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (0..6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn failed_state_serializes_flat() {
        let status = EngineStatus {
            state: EngineState::Failed {
                reason: "exit code 3".into(),
                last_log_lines: vec!["boom".into()],
                retry_in_ms: Some(200),
            },
            restarts: 1,
            base_url: None,
            pid: None,
            container_id: None,
        };
        let json = serde_json::to_value(&status).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"state": "failed", "reason": "exit code 3", "last_log_lines": ["boom"],
                "retry_in_ms": 200, "restarts": 1})
        );
    }
}
