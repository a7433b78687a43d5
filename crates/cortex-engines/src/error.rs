//! The crate's errors: [`SpecError`] for what an operator sent (the admin API answers 400 with
//! it), [`RuntimeError`] for what went wrong starting or stopping an engine, and
//! [`SupervisorError`] for requests to the supervisor. No message echoes a secret: the deny-list
//! names the flag or variable, never its value.

use std::path::PathBuf;

/// An engine definition that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// An `extra_args` element that would set what Cortex owns (host, port, key, TLS, model…).
    #[error("extra_args: `{flag}` is not allowed: {reason}")]
    DeniedArgument { flag: String, reason: &'static str },
    /// An `env` name that would set what Cortex owns.
    #[error("env: `{name}` is not allowed: {reason}")]
    DeniedEnv { name: String, reason: &'static str },
    #[error("model: {0}")]
    Model(#[from] ModelPathError),
}

impl SpecError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        SpecError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// A stable, greppable code for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            SpecError::Invalid { .. } => "invalid_engine_spec",
            SpecError::DeniedArgument { .. } => "engine_argument_denied",
            SpecError::DeniedEnv { .. } => "engine_env_denied",
            SpecError::Model(_) => "engine_model_path",
        }
    }
}

/// Why a model reference was refused. Paths in messages are the operator's own input or paths
/// under the models directory, never anything outside it that a symlink pointed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelPathError {
    #[error("empty, longer than 1024 bytes, starting with `-` or `~`, or holding a NUL")]
    Malformed,
    #[error("`..` is not allowed in a model path")]
    ParentComponent,
    #[error("`{0}` is outside CORTEX_MODELS_DIR")]
    OutsideModelsDir(String),
    #[error("`{0}` resolves (through a symlink) outside CORTEX_MODELS_DIR")]
    SymlinkEscape(String),
    #[error(
        "`{0}` is neither a path under CORTEX_MODELS_DIR nor a Hugging Face repo id (org/name)"
    )]
    NotFound(String),
    #[error("local model paths need CORTEX_MODELS_DIR to be set")]
    NoModelsDir,
    #[error("llama.cpp serves a local GGUF file; `{0}` is not one")]
    NotAGgufFile(String),
    #[error("the models directory cannot be read: {0}")]
    ModelsDirUnreadable(String),
}

/// Starting, watching or stopping an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    #[error("signal to process group {pgid}: {errno}")]
    Signal { pgid: i32, errno: nix::errno::Errno },
    #[error("docker: {0}")]
    Docker(String),
    #[error("the docker runtime is not configured (set DOCKER_HOST or the docker socket)")]
    DockerUnavailable,
    #[error("{0}")]
    Spec(#[from] SpecError),
}

impl From<bollard::errors::Error> for RuntimeError {
    fn from(error: bollard::errors::Error) -> Self {
        RuntimeError::Docker(error.to_string())
    }
}

/// A request to the supervisor that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no engine with id `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    #[error("models directory `{path}`: {source}")]
    ModelsDir {
        path: PathBuf,
        source: std::io::Error,
    },
}
