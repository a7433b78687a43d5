//! One engine's supervising task: the state machine
//!
//! ```text
//!   stopped ──start──▶ starting ──/v1/models 200──▶ running
//!      ▲                  │ exit / not ready in time     │ exit
//!      │                  ▼                              ▼
//!      └──stop── failed (reason, last lines) ◀───────────┘
//!                  │ restart = on-failure: after backoff ──▶ starting
//!   running ──stop/restart/shutdown──▶ (withdrawn from routing) ▶ stopping ▶ stopped
//! ```
//!
//! The task is the only writer of the engine's status and the only owner of its running
//! instance, and it handles commands one at a time, so a stop can never race a start. Each
//! start picks a fresh loopback port and generates a fresh API key; a restart never reuses
//! either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::state::{Command, EngineState, EngineStatus, Shared, SpecCell};
use crate::events::{RunningEngine, WithdrawReason};
use crate::launch;
use crate::logs::LogBuffer;
use crate::readiness::{probe, Probe};
use crate::runtime::{ExitReport, Instance};
use crate::spec::{EngineId, RestartPolicy, RuntimeKind};

/// Random bytes in a generated engine key (URL-safe base64 of 32 bytes).
const API_KEY_BYTES: usize = 32;

pub(crate) struct EngineTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: EngineId,
    pub(crate) spec: SpecCell,
    pub(crate) logs: LogBuffer,
    pub(crate) status: watch::Sender<EngineStatus>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
}

/// How one start ended.
enum RunOutcome {
    Stopped(oneshot::Sender<()>),
    Restart,
    Shutdown(Option<oneshot::Sender<()>>),
    Failed { reason: String, ran_for: Duration },
}

/// What woke a waiting task.
enum Wake {
    Exited(ExitReport),
    Command(Option<Command>),
    Tick,
}

pub(crate) async fn run(mut task: EngineTask) {
    let mut restarts: u32 = 0;
    'idle: loop {
        match task.commands.recv().await {
            None => return,
            Some(Command::Shutdown(ack)) => {
                let _ = ack.send(());
                return;
            }
            Some(Command::Stop(ack)) => {
                // Stopping a failed engine clears the failure.
                task.set(EngineState::Stopped, |s| s.restarts = restarts);
                let _ = ack.send(());
                continue 'idle;
            }
            Some(Command::Start | Command::Restart) => {}
        }
        restarts = 0;
        let mut attempt: u32 = 0;
        loop {
            match task.run_once(restarts).await {
                RunOutcome::Stopped(ack) => {
                    task.set(EngineState::Stopped, |_| {});
                    let _ = ack.send(());
                    continue 'idle;
                }
                RunOutcome::Restart => {
                    attempt = 0;
                }
                RunOutcome::Shutdown(ack) => {
                    task.set(EngineState::Stopped, |_| {});
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                RunOutcome::Failed { reason, ran_for } => {
                    let options = &task.shared.options;
                    if ran_for >= options.backoff.reset_after {
                        attempt = 0;
                    }
                    let last_log_lines = task.logs.tail(options.failed_log_lines);
                    task.logs.push(&format!("cortex: failed: {reason}"));
                    tracing::warn!(engine = %task.id, %reason, "engine failed");
                    if task.spec.get().restart == RestartPolicy::Never {
                        task.set(
                            EngineState::Failed {
                                reason,
                                last_log_lines,
                                retry_in_ms: None,
                            },
                            |_| {},
                        );
                        continue 'idle;
                    }
                    let delay = options.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    let retry_in_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    task.set(
                        EngineState::Failed {
                            reason,
                            last_log_lines,
                            retry_in_ms,
                        },
                        |_| {},
                    );
                    let wake = tokio::select! {
                        () = tokio::time::sleep(delay) => Wake::Tick,
                        command = task.commands.recv() => Wake::Command(command),
                    };
                    match wake {
                        Wake::Tick => restarts = restarts.saturating_add(1),
                        Wake::Command(Some(Command::Start | Command::Restart)) => attempt = 0,
                        Wake::Command(Some(Command::Stop(ack))) => {
                            task.set(EngineState::Stopped, |_| {});
                            let _ = ack.send(());
                            continue 'idle;
                        }
                        Wake::Command(Some(Command::Shutdown(ack))) => {
                            task.set(EngineState::Stopped, |_| {});
                            let _ = ack.send(());
                            return;
                        }
                        Wake::Command(None) | Wake::Exited(_) => return,
                    }
                }
            }
        }
    }
}

impl EngineTask {
    fn set(&self, state: EngineState, also: impl FnOnce(&mut EngineStatus)) {
        self.status.send_modify(|status| {
            if !matches!(
                state,
                EngineState::Starting | EngineState::Running | EngineState::Stopping
            ) {
                status.base_url = None;
                status.pid = None;
                status.container_id = None;
            }
            status.state = state;
            also(status);
        });
    }

    /// One start: launch, wait for readiness, serve until an exit or a command.
    async fn run_once(&mut self, restarts: u32) -> RunOutcome {
        let spec = self.spec.get();
        let options = &self.shared.options;
        self.set(EngineState::Starting, |s| s.restarts = restarts);
        self.logs.push(&format!(
            "cortex: starting {} engine `{}` ({} runtime)",
            spec.engine.as_str(),
            spec.name,
            spec.runtime.as_str()
        ));
        let started = Instant::now();
        let failed = |reason: String| RunOutcome::Failed {
            reason,
            ran_for: started.elapsed(),
        };

        let port = match free_loopback_port() {
            Ok(port) => port,
            Err(error) => return failed(format!("no free loopback port: {error}")),
        };
        let api_key = cortex_crypto::token::random_token(API_KEY_BYTES);
        let mut secrets = vec![api_key.clone()];
        secrets.extend(spec.hf_token.clone());
        self.logs.set_secrets(secrets);
        let built = launch::build(
            &spec,
            options.models_dir.as_ref(),
            &options.programs,
            Some(port),
            api_key.clone(),
        );
        let plan = match built {
            Ok((plan, _)) => plan,
            Err(error) => return failed(error.to_string()),
        };
        let base_url = plan.base_url();
        let runtime = match spec.runtime {
            RuntimeKind::Process => Arc::clone(&self.shared.runtimes.process),
            RuntimeKind::Docker => match &self.shared.runtimes.docker {
                Some(docker) => Arc::clone(docker),
                None => return failed(crate::error::RuntimeError::DockerUnavailable.to_string()),
            },
        };
        let mut instance = match runtime.launch(&self.id, plan, self.logs.clone()).await {
            Ok(instance) => instance,
            Err(error) => return failed(error.to_string()),
        };
        self.status.send_modify(|s| {
            s.pid = instance.pid();
            s.container_id = instance.container_id();
            s.base_url = Some(base_url.clone());
        });

        // Starting: poll until the engine answers with its key, exits, or runs out of time.
        let deadline = started + options.ready_timeout;
        loop {
            let wake = tokio::select! {
                report = instance.exited() => Wake::Exited(report),
                command = self.commands.recv() => Wake::Command(command),
                () = tokio::time::sleep(options.ready_poll) => Wake::Tick,
            };
            match wake {
                Wake::Exited(report) => {
                    let _ = instance.stop(Duration::ZERO).await;
                    return failed(format!("exited before it was ready ({report})"));
                }
                Wake::Command(Some(Command::Start)) => {}
                Wake::Command(command) => {
                    // Never routed yet: nothing to withdraw.
                    return self.end(instance, command, None).await;
                }
                Wake::Tick => match probe(port, Some(&api_key), options.probe_timeout).await {
                    Probe::Ready => {
                        // An engine that answers without its key would be open to anyone who
                        // can reach its port: never route to it.
                        if probe(port, None, options.probe_timeout).await == Probe::Ready {
                            let _ = instance.stop(options.stop_grace).await;
                            return failed(
                                "the engine answers GET /v1/models without its API key; refusing to route to it"
                                    .to_owned(),
                            );
                        }
                        break;
                    }
                    Probe::NotReady(_) | Probe::Unreachable if Instant::now() >= deadline => {
                        let _ = instance.stop(options.stop_grace).await;
                        return failed(format!(
                            "not ready within {}s (GET /v1/models never answered 200)",
                            options.ready_timeout.as_secs()
                        ));
                    }
                    Probe::NotReady(_) | Probe::Unreachable => {}
                },
            }
        }

        self.set(EngineState::Running, |_| {});
        self.logs.push("cortex: engine is ready");
        self.shared.events.running(&RunningEngine {
            id: self.id.clone(),
            engine: spec.engine,
            served_model_name: spec.served_model_name().to_owned(),
            base_url,
            api_key,
        });

        // Running: until it exits or a command ends it.
        loop {
            let wake = tokio::select! {
                report = instance.exited() => Wake::Exited(report),
                command = self.commands.recv() => Wake::Command(command),
            };
            match wake {
                Wake::Exited(report) => {
                    self.shared
                        .events
                        .withdrawn(&self.id, WithdrawReason::Exited);
                    let _ = instance.stop(Duration::ZERO).await;
                    return failed(format!("exited unexpectedly ({report})"));
                }
                Wake::Command(Some(Command::Start)) | Wake::Tick => {}
                Wake::Command(command) => {
                    let reason = match &command {
                        Some(Command::Restart) => WithdrawReason::Restart,
                        Some(Command::Stop(_)) => WithdrawReason::Stop,
                        _ => WithdrawReason::Shutdown,
                    };
                    return self.end(instance, command, Some(reason)).await;
                }
            }
        }
    }

    /// Ends the instance for a command: out of routing first (when it was routed), the drain
    /// period, then the signal.
    async fn end(
        &mut self,
        instance: Box<dyn Instance>,
        command: Option<Command>,
        withdraw: Option<WithdrawReason>,
    ) -> RunOutcome {
        self.set(EngineState::Stopping, |_| {});
        if let Some(reason) = withdraw {
            self.shared.events.withdrawn(&self.id, reason);
            if !self.shared.options.drain.is_zero() {
                tokio::time::sleep(self.shared.options.drain).await;
            }
        }
        match instance.stop(self.shared.options.stop_grace).await {
            Ok(report) => self
                .logs
                .push(&format!("cortex: engine stopped ({report})")),
            Err(error) => self
                .logs
                .push(&format!("cortex: stopping the engine failed: {error}")),
        }
        match command {
            Some(Command::Stop(ack)) => RunOutcome::Stopped(ack),
            Some(Command::Restart) => RunOutcome::Restart,
            Some(Command::Shutdown(ack)) => RunOutcome::Shutdown(Some(ack)),
            Some(Command::Start) | None => RunOutcome::Shutdown(None),
        }
    }
}

/// A port the kernel says is free on 127.0.0.1. The listener is closed before the engine binds
/// it, so another process could take it in between; the engine then fails to bind, and the
/// next start picks another port.
fn free_loopback_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
