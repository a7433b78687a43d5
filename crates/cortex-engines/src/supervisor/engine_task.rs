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

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot, watch};

use super::state::{Command, EngineState, EngineStatus, Shared, SpecCell};
use crate::error::RuntimeError;
use crate::events::{RunningEngine, WithdrawReason};
use crate::launch;
use crate::logs::LogBuffer;
use crate::readiness::{probe, Probe};
use crate::runtime::{ExitReport, Instance};
use crate::spec::{EngineId, EngineSpec, RestartPolicy, RuntimeKind};

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

/// A started engine and what reaches it.
struct Launched {
    instance: Box<dyn Instance>,
    port: u16,
    api_key: SecretString,
    base_url: String,
}

impl Launched {
    /// Hands the instance over, leaving a placeholder that is already gone.
    fn take(&mut self) -> Box<dyn Instance> {
        std::mem::replace(&mut self.instance, Box::new(Gone))
    }

    async fn stop(&mut self, grace: Duration) {
        let _ = self.take().stop(grace).await;
    }

    /// Cleanup after the engine exited on its own.
    async fn stop_now(&mut self) {
        self.stop(Duration::ZERO).await;
    }
}

/// An instance that has already been handed over or stopped.
struct Gone;

impl Instance for Gone {
    fn exited(&mut self) -> BoxFuture<'_, ExitReport> {
        Box::pin(std::future::ready(ExitReport {
            code: None,
            signal: None,
        }))
    }

    fn stop(
        self: Box<Self>,
        _grace: Duration,
    ) -> BoxFuture<'static, Result<ExitReport, RuntimeError>> {
        Box::pin(std::future::ready(Ok(ExitReport {
            code: None,
            signal: None,
        })))
    }
}

/// How waiting for readiness ended.
enum Ready {
    Yes,
    Failed(String),
    /// A command ended the start.
    Ended(RunOutcome),
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
                    match task.after_failure(reason, ran_for, &mut attempt).await {
                        AfterFailure::StartAgain { counted } => {
                            if counted {
                                restarts = restarts.saturating_add(1);
                            }
                        }
                        AfterFailure::Idle => continue 'idle,
                        AfterFailure::Exit => return,
                    }
                }
            }
        }
    }
}

/// What follows a failure.
enum AfterFailure {
    /// Start again: after the backoff (`counted`, a restart) or on an operator's command.
    StartAgain { counted: bool },
    /// Wait for a command (restart = never, or an operator stopped it).
    Idle,
    /// The supervisor is done with this engine.
    Exit,
}

impl EngineTask {
    /// Shows the failure; with `restart = on-failure`, waits the backoff (or for a command).
    async fn after_failure(
        &mut self,
        reason: String,
        ran_for: Duration,
        attempt: &mut u32,
    ) -> AfterFailure {
        let options = &self.shared.options;
        if ran_for >= options.backoff.reset_after {
            *attempt = 0;
        }
        let last_log_lines = self.logs.tail(options.failed_log_lines);
        self.logs.push(&format!("cortex: failed: {reason}"));
        tracing::warn!(engine = %self.id, %reason, "engine failed");
        if self.spec.get().restart == RestartPolicy::Never {
            self.set(
                EngineState::Failed {
                    reason,
                    last_log_lines,
                    retry_in_ms: None,
                },
                |_| {},
            );
            return AfterFailure::Idle;
        }
        let delay = options.backoff.delay(*attempt);
        *attempt = attempt.saturating_add(1);
        let retry_in_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        self.set(
            EngineState::Failed {
                reason,
                last_log_lines,
                retry_in_ms,
            },
            |_| {},
        );
        let wake = tokio::select! {
            () = tokio::time::sleep(delay) => Wake::Tick,
            command = self.commands.recv() => Wake::Command(command),
        };
        match wake {
            Wake::Tick => AfterFailure::StartAgain { counted: true },
            Wake::Command(Some(Command::Start | Command::Restart)) => {
                *attempt = 0;
                AfterFailure::StartAgain { counted: false }
            }
            Wake::Command(Some(Command::Stop(ack))) => {
                self.set(EngineState::Stopped, |_| {});
                let _ = ack.send(());
                AfterFailure::Idle
            }
            Wake::Command(Some(Command::Shutdown(ack))) => {
                self.set(EngineState::Stopped, |_| {});
                let _ = ack.send(());
                AfterFailure::Exit
            }
            Wake::Command(None) | Wake::Exited(_) => AfterFailure::Exit,
        }
    }

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

    /// One start, stage by stage: launch, wait for readiness, serve until an exit or a command.
    async fn run_once(&mut self, restarts: u32) -> RunOutcome {
        let spec = self.spec.get();
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

        let mut launched = match self.launch(&spec).await {
            Ok(launched) => launched,
            Err(reason) => return failed(reason),
        };
        match self.wait_until_ready(&mut launched, started).await {
            Ready::Yes => {}
            Ready::Failed(reason) => return failed(reason),
            Ready::Ended(outcome) => return outcome,
        }
        self.set(EngineState::Running, |_| {});
        self.logs.push("cortex: engine is ready");
        let Launched {
            mut instance,
            api_key,
            base_url,
            ..
        } = launched;
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

    /// A fresh port and key, the plan (the model resolved again), and the runtime's launch.
    async fn launch(&mut self, spec: &EngineSpec) -> Result<Launched, String> {
        let options = &self.shared.options;
        let port =
            free_loopback_port().map_err(|error| format!("no free loopback port: {error}"))?;
        let api_key = cortex_crypto::token::random_token(API_KEY_BYTES);
        let mut secrets = vec![api_key.clone()];
        secrets.extend(spec.hf_token.clone());
        self.logs.set_secrets(secrets);
        let (plan, _) = launch::build(
            spec,
            options.models_dir.as_ref(),
            &options.programs,
            Some(port),
            api_key.clone(),
        )
        .map_err(|error| error.to_string())?;
        let base_url = plan.base_url();
        let runtime = match spec.runtime {
            RuntimeKind::Process => Arc::clone(&self.shared.runtimes.process),
            RuntimeKind::Docker => match &self.shared.runtimes.docker {
                Some(docker) => Arc::clone(docker),
                None => return Err(RuntimeError::DockerUnavailable.to_string()),
            },
        };
        let instance = runtime
            .launch(&self.id, plan, self.logs.clone())
            .await
            .map_err(|error| error.to_string())?;
        self.status.send_modify(|s| {
            s.pid = instance.pid();
            s.container_id = instance.container_id();
            s.base_url = Some(base_url.clone());
        });
        Ok(Launched {
            instance,
            port,
            api_key,
            base_url,
        })
    }

    /// Polls `GET /v1/models` until the engine answers with its key (and refuses without it),
    /// exits, runs out of time, or a command ends the start.
    async fn wait_until_ready(&mut self, launched: &mut Launched, started: Instant) -> Ready {
        let options = &self.shared.options;
        let deadline = started + options.ready_timeout;
        loop {
            let wake = tokio::select! {
                report = launched.instance.exited() => Wake::Exited(report),
                command = self.commands.recv() => Wake::Command(command),
                () = tokio::time::sleep(options.ready_poll) => Wake::Tick,
            };
            let probe_timeout = options.probe_timeout;
            match wake {
                Wake::Exited(report) => {
                    launched.stop_now().await;
                    return Ready::Failed(format!("exited before it was ready ({report})"));
                }
                Wake::Command(Some(Command::Start)) => {}
                Wake::Command(command) => {
                    // Never routed yet: nothing to withdraw.
                    let instance = launched.take();
                    return Ready::Ended(self.end(instance, command, None).await);
                }
                Wake::Tick => {
                    match probe(launched.port, Some(&launched.api_key), probe_timeout).await {
                        Probe::Ready => {
                            // An engine that answers without its key would be open to anyone who
                            // can reach its port: never route to it.
                            if probe(launched.port, None, probe_timeout).await == Probe::Ready {
                                launched.stop(options.stop_grace).await;
                                return Ready::Failed(
                                "the engine answers GET /v1/models without its API key; refusing to route to it"
                                    .to_owned(),
                            );
                            }
                            return Ready::Yes;
                        }
                        Probe::NotReady(_) | Probe::Unreachable if Instant::now() >= deadline => {
                            launched.stop(options.stop_grace).await;
                            return Ready::Failed(format!(
                                "not ready within {}s (GET /v1/models never answered 200)",
                                options.ready_timeout.as_secs()
                            ));
                        }
                        Probe::NotReady(_) | Probe::Unreachable => {}
                    }
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
