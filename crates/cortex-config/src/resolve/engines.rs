//! Inference engines (SPEC §17): where local models are and which engine programs to run.
//! Environment only; the engines themselves are defined through the admin API.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::parse::{var, Env};
use crate::settings::EngineSettings;

pub(super) fn engines(env: Env<'_>) -> Result<EngineSettings, ConfigError> {
    let models_dir = var(env, "CORTEX_MODELS_DIR").map(PathBuf::from);
    if let Some(dir) = &models_dir {
        if !dir.is_absolute() {
            return Err(ConfigError::new(
                "CORTEX_MODELS_DIR",
                "must be an absolute path",
            ));
        }
    }
    Ok(EngineSettings {
        models_dir,
        vllm_program: var(env, "CORTEX_VLLM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("vllm")),
        llama_server_program: var(env, "CORTEX_LLAMA_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("llama-server")),
        docker_host: var(env, "CORTEX_ENGINES_DOCKER_HOST"),
    })
}
