//! The `process` runtime: the engine is a child of Cortex, in a process group of its own (so a
//! stop reaches the workers vLLM forks, not just the one we started), with its stdout and
//! stderr read line by line into the engine's [`LogBuffer`].
//!
//! - Environment: cleared, then only the variables named at construction (`PATH`, `HOME`, …)
//!   are copied from Cortex's own — Cortex's environment holds its master key and database URL,
//!   which an engine must never see — then the plan's (spec `env`, key, token, GPUs).
//! - Stop: SIGTERM to the group, SIGKILL to the group after the grace period, then SIGKILL to
//!   the group again once the leader is reaped, for children that outlived it (a process
//!   group's id is not reused while any member lives, so this cannot reach another group).
//! - Dropped without a stop (a supervisor task aborted): the group is killed in `Drop`, and
//!   tokio's `kill_on_drop` covers the leader.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::error::RuntimeError;
use crate::launch::{EnvValue, LaunchPlan};
use crate::logs::{pump, LogBuffer};
use crate::runtime::{ExitReport, Instance, Runtime};
use crate::spec::EngineId;

/// Variables copied from Cortex's environment into every engine's by default.
pub const DEFAULT_INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "USER",
    "HF_HOME",
    "XDG_CACHE_HOME",
];

/// How long to wait for the output readers to drain after the engine is gone.
const DRAIN_OUTPUT: Duration = Duration::from_secs(2);

/// Starts engines as child processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessRuntime {
    base_env: Vec<(String, String)>,
}

impl ProcessRuntime {
    /// Engines receive exactly `base_env` plus their plan's variables.
    pub fn new(base_env: Vec<(String, String)>) -> Self {
        ProcessRuntime { base_env }
    }

    /// Copies the named variables (those that are set) from this process's environment.
    pub fn inheriting(names: &[&str]) -> Self {
        let base_env = names
            .iter()
            .filter_map(|name| {
                std::env::var(name)
                    .ok()
                    .map(|value| ((*name).to_owned(), value))
            })
            .collect();
        ProcessRuntime { base_env }
    }
}

impl Runtime for ProcessRuntime {
    fn launch<'a>(
        &'a self,
        _id: &'a EngineId,
        plan: LaunchPlan,
        logs: LogBuffer,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, RuntimeError>> {
        Box::pin(async move {
            let mut command = Command::new(&plan.program);
            command
                .args(&plan.args)
                .env_clear()
                .envs(self.base_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            for (name, value) in &plan.env {
                match value {
                    EnvValue::Plain(value) => command.env(name, value),
                    EnvValue::Secret(secret) => command.env(name, secret.expose_secret()),
                };
            }
            let mut child = command.spawn().map_err(|source| RuntimeError::Spawn {
                program: plan.program.display().to_string(),
                source,
            })?;
            let pid = child.id().unwrap_or(0);
            let mut pumps = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(stdout, logs.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(stderr, logs.clone())));
            }
            tracing::info!(pid, program = %plan.program.display(), "engine process started");
            Ok(Box::new(ProcessInstance {
                child: Some(child),
                pid,
                pumps,
            }) as Box<dyn Instance>)
        })
    }
}

struct ProcessInstance {
    /// `None` only once `stop` has taken it.
    child: Option<Child>,
    pid: u32,
    pumps: Vec<JoinHandle<()>>,
}

impl ProcessInstance {
    fn group(&self) -> Option<Pid> {
        i32::try_from(self.pid)
            .ok()
            .filter(|pid| *pid > 0)
            .map(Pid::from_raw)
    }
}

fn report(status: std::process::ExitStatus) -> ExitReport {
    ExitReport {
        code: status.code().map(i64::from),
        signal: status.signal(),
    }
}

const UNKNOWN: ExitReport = ExitReport {
    code: None,
    signal: None,
};

/// Signals the whole group; a group that is already gone is not an error.
fn signal_group(group: Pid, signal: Signal) -> Result<(), RuntimeError> {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => Err(RuntimeError::Signal {
            pgid: group.as_raw(),
            errno,
        }),
    }
}

impl Instance for ProcessInstance {
    fn exited(&mut self) -> BoxFuture<'_, ExitReport> {
        Box::pin(async move {
            match self.child.as_mut() {
                Some(child) => child.wait().await.map(report).unwrap_or(UNKNOWN),
                None => UNKNOWN,
            }
        })
    }

    fn stop(
        mut self: Box<Self>,
        grace: Duration,
    ) -> BoxFuture<'static, Result<ExitReport, RuntimeError>> {
        let group = self.group();
        let child = self.child.take();
        let pumps = std::mem::take(&mut self.pumps);
        Box::pin(async move {
            let Some(mut child) = child else {
                return Ok(UNKNOWN);
            };
            let status = match child.try_wait() {
                Ok(Some(status)) => report(status),
                _ => {
                    if let Some(group) = group {
                        signal_group(group, Signal::SIGTERM)?;
                    }
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status.map(report).unwrap_or(UNKNOWN),
                        Err(_) => {
                            tracing::warn!(pid = ?group, "engine ignored SIGTERM; killing its process group");
                            if let Some(group) = group {
                                signal_group(group, Signal::SIGKILL)?;
                            }
                            child.wait().await.map(report).unwrap_or(UNKNOWN)
                        }
                    }
                }
            };
            // Children that outlived the leader (workers, helpers) go with it.
            if let Some(group) = group {
                signal_group(group, Signal::SIGKILL)?;
            }
            for pump in pumps {
                let _ = tokio::time::timeout(DRAIN_OUTPUT, pump).await;
            }
            Ok(status)
        })
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        let group = self.group();
        if let (Some(child), Some(group)) = (self.child.as_mut(), group) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
    }
}
