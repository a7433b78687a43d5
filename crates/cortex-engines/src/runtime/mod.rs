//! The two runtimes behind one interface: [`Runtime::launch`] starts an engine from a
//! [`LaunchPlan`] and returns an [`Instance`], which reports the engine's exit and stops it.
//! `process` (a child process in its own process group) and `docker` (a container on its own
//! network) implement it; the supervisor knows only these traits.

pub mod docker;
pub mod process;

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::error::RuntimeError;
use crate::launch::LaunchPlan;
use crate::logs::LogBuffer;
use crate::spec::EngineId;

/// Starts engines.
pub trait Runtime: Send + Sync + 'static {
    /// Starts the engine; its output goes to `logs`. Returns once it runs (not once it is
    /// ready: the supervisor polls for that).
    fn launch<'a>(
        &'a self,
        id: &'a EngineId,
        plan: LaunchPlan,
        logs: LogBuffer,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, RuntimeError>>;
}

/// One started engine.
pub trait Instance: Send {
    /// Resolves when the engine has exited. Cancel-safe: the supervisor drops this future when
    /// a command arrives and calls it again later.
    fn exited(&mut self) -> BoxFuture<'_, ExitReport>;

    /// Ends the engine: SIGTERM, then SIGKILL after `grace` (the whole process group, or the
    /// container), and frees what it held (container, network). Also called after the engine
    /// exited on its own, to clean up.
    fn stop(
        self: Box<Self>,
        grace: Duration,
    ) -> BoxFuture<'static, Result<ExitReport, RuntimeError>>;

    /// The process id (process runtime).
    fn pid(&self) -> Option<u32> {
        None
    }

    /// The container id (docker runtime).
    fn container_id(&self) -> Option<String> {
        None
    }
}

/// How an engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    pub code: Option<i64>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}
