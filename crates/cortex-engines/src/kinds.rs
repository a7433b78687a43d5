//! The small vocabulary every module shares: engine and runtime kinds, restart policy, ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which model server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EngineKind {
    /// `vllm serve <model> …`
    #[serde(rename = "vllm")]
    Vllm,
    /// llama.cpp's `llama-server -m <gguf> …`
    #[serde(rename = "llamacpp")]
    LlamaCpp,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::LlamaCpp => "llamacpp",
        }
    }
}

/// Where the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A child process of Cortex on this host.
    Process,
    /// A container through the Docker Engine API.
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
        }
    }
}

/// What the supervisor does when the engine exits on its own or never becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Start it again after an exponential backoff (reset once it has run for a while).
    #[default]
    OnFailure,
    /// Leave it `failed`.
    Never,
}

/// An engine's id, as the store gives it; opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EngineId(String);

impl EngineId {
    pub fn new(id: impl Into<String>) -> Self {
        EngineId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for EngineId {
    fn from(id: &str) -> Self {
        EngineId(id.to_owned())
    }
}

impl From<String> for EngineId {
    fn from(id: String) -> Self {
        EngineId(id)
    }
}
