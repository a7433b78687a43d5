//! What the supervisor tells the gateway: an engine is running (route its model to it) or must
//! leave routing. The gateway implements [`EngineEvents`]; calls are synchronous and come from
//! the engine's supervising task, so an implementation must only update in-memory state (swap
//! a routing table) and return.

use secrecy::SecretString;

use crate::spec::{EngineId, EngineKind};

/// A running engine, as the gateway routes to it.
#[derive(Debug, Clone)]
pub struct RunningEngine {
    pub id: EngineId,
    pub engine: EngineKind,
    /// The model name clients ask for.
    pub served_model_name: String,
    /// `http://127.0.0.1:<port>`; requests go to `{base_url}/v1/…`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; generated for this start, never stored in clear.
    pub api_key: SecretString,
}

/// Why an engine leaves routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithdrawReason {
    /// An operator stopped (or removed) it.
    Stop,
    /// An operator restarted it; a `running` follows once it is ready again.
    Restart,
    /// It exited on its own.
    Exited,
    /// Cortex is shutting down.
    Shutdown,
}

/// Receives engines' routing changes.
pub trait EngineEvents: Send + Sync + 'static {
    /// The engine answered `GET /v1/models` with its key: route `served_model_name` to it.
    fn running(&self, engine: &RunningEngine);

    /// Take the engine out of routing now. On a stop, restart or shutdown this is called
    /// *before* the engine is signalled, so no new request is sent to an engine that is ending;
    /// after an unexpected exit it is called as soon as the exit is seen.
    fn withdrawn(&self, id: &EngineId, reason: WithdrawReason);
}

/// Events nobody listens to.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EngineEvents for NoEvents {
    fn running(&self, _engine: &RunningEngine) {}
    fn withdrawn(&self, _id: &EngineId, _reason: WithdrawReason) {}
}
