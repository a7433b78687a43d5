//! From a spec to what a runtime runs: the engine's arguments and environment ([`LaunchPlan`]),
//! and the same rendered for people with secrets redacted ([`DryRun`], what
//! `POST /admin/engines/dry-run` answers).
//!
//! The arguments are, in order: what Cortex owns (model, host, port, served name), the typed
//! settings, then the operator's `extra_args` (already past the deny-list, so none of them can
//! override the first group). The API key and the Hugging Face token travel in the environment
//! (`VLLM_API_KEY` / `LLAMA_API_KEY`, `HF_TOKEN`), never in argv, where every local user could
//! read them in `/proc/<pid>/cmdline`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Serialize;

use crate::error::{ModelPathError, SpecError};
use crate::logs::REDACTED;
use crate::models_dir::{resolve_without_models_dir, ModelSource, ModelsDir};
use crate::spec::{EngineKind, EngineSpec, RuntimeKind};

/// The port an engine listens on inside its container.
pub const CONTAINER_PORT: u16 = 8000;
/// Where the models directory is mounted (read-only) in a container.
pub const CONTAINER_MODELS_DIR: &str = "/models";

/// The engine programs a process runtime starts.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `vllm` (run as `vllm serve …`).
    pub vllm: PathBuf,
    /// `llama-server`.
    pub llama_server: PathBuf,
}

impl Default for Programs {
    fn default() -> Self {
        Programs {
            vllm: PathBuf::from("vllm"),
            llama_server: PathBuf::from("llama-server"),
        }
    }
}

/// A variable's value; secrets are redacted when shown.
#[derive(Debug, Clone)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretString),
}

/// Everything a runtime needs to start one engine.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub runtime: RuntimeKind,
    /// The program (process runtime); for docker the image's entrypoint runs instead.
    pub program: PathBuf,
    /// Arguments after the program (docker: the container's command).
    pub args: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    pub gpus: Vec<u32>,
    pub image: Option<String>,
    /// The models directory to mount read-only at [`CONTAINER_MODELS_DIR`] (docker, local model).
    pub models_mount: Option<PathBuf>,
    /// The loopback port the gateway connects to.
    pub host_port: u16,
}

impl LaunchPlan {
    /// The URL the gateway sends `/v1/…` requests to (no trailing slash, no `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.host_port)
    }
}

/// What a launch would run, secrets redacted (`POST /admin/engines/dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRun {
    pub runtime: RuntimeKind,
    /// `program args…` for a process; `<image entrypoint> args…` for docker.
    pub command: Vec<String>,
    /// Every variable the engine receives besides the inherited base (secrets `[REDACTED]`).
    pub env: BTreeMap<String, String>,
    /// Where the gateway reaches it (`<port>` is picked at start).
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerPreview>,
}

/// The container part of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerPreview {
    pub image: String,
    /// The engine's own user-defined bridge network.
    pub network: String,
    /// `127.0.0.1:<port>` → the container's port.
    pub publish: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<String>,
}

/// Resolves the model (again: files change between create and start) and builds the plan.
/// `host_port` is `None` for a dry run.
pub(crate) fn build(
    spec: &EngineSpec,
    models_dir: Option<&ModelsDir>,
    programs: &Programs,
    host_port: Option<u16>,
    api_key: SecretString,
) -> Result<(LaunchPlan, ModelSource), SpecError> {
    spec.validate()?;
    let source = match models_dir {
        Some(dir) => dir.resolve(&spec.model)?,
        None => resolve_without_models_dir(&spec.model)?,
    };
    if spec.engine == EngineKind::LlamaCpp {
        require_gguf_file(&spec.model, &source)?;
    }
    let docker = spec.runtime == RuntimeKind::Docker;
    let model_arg = match &source {
        ModelSource::HuggingFace { repo } => repo.clone(),
        ModelSource::Local { relative, .. } if docker => container_path(relative),
        ModelSource::Local { path, .. } => path.to_string_lossy().into_owned(),
    };
    // In a container the engine listens on every interface of its own network namespace; only
    // the loopback publication reaches it from the host (`runtime::docker`).
    let (host, port) = if docker {
        ("0.0.0.0".to_owned(), CONTAINER_PORT.to_string())
    } else {
        (
            "127.0.0.1".to_owned(),
            host_port.map_or_else(|| "<port>".to_owned(), |p| p.to_string()),
        )
    };
    let served = spec.served_model_name().to_owned();
    let mut args = match spec.engine {
        EngineKind::Vllm => {
            let mut args = Vec::new();
            if !docker {
                // The official images' entrypoint is already `vllm serve`.
                args.push("serve".to_owned());
            }
            args.extend([model_arg, "--host".into(), host, "--port".into(), port]);
            args.extend(["--served-model-name".into(), served]);
            args
        }
        EngineKind::LlamaCpp => vec![
            "--model".into(),
            model_arg,
            "--host".into(),
            host,
            "--port".into(),
            port,
            "--alias".into(),
            served,
        ],
    };
    args.extend(spec.settings.to_args());
    args.extend(spec.extra_args.iter().cloned());

    let mut env: Vec<(String, EnvValue)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), EnvValue::Plain(v.clone())))
        .collect();
    let key_variable = match spec.engine {
        EngineKind::Vllm => "VLLM_API_KEY",
        EngineKind::LlamaCpp => "LLAMA_API_KEY",
    };
    env.push((key_variable.to_owned(), EnvValue::Secret(api_key)));
    if let Some(token) = &spec.hf_token {
        env.push(("HF_TOKEN".to_owned(), EnvValue::Secret(token.clone())));
    }
    if source.is_local() {
        env.push(("HF_HUB_OFFLINE".to_owned(), EnvValue::Plain("1".to_owned())));
    }
    if !docker && !spec.gpus.is_empty() {
        env.push((
            "CUDA_VISIBLE_DEVICES".to_owned(),
            EnvValue::Plain(gpu_list(&spec.gpus)),
        ));
    }

    let program = match spec.engine {
        EngineKind::Vllm => programs.vllm.clone(),
        EngineKind::LlamaCpp => programs.llama_server.clone(),
    };
    let models_mount = match (&source, docker, models_dir) {
        (ModelSource::Local { .. }, true, Some(dir)) => Some(dir.root().to_path_buf()),
        _ => None,
    };
    let plan = LaunchPlan {
        runtime: spec.runtime,
        program,
        args,
        env,
        gpus: spec.gpus.clone(),
        image: spec.image.clone(),
        models_mount,
        host_port: host_port.unwrap_or(0),
    };
    Ok((plan, source))
}

/// Renders what a start would run, for people: secrets `[REDACTED]`, the port `<port>`.
pub fn dry_run(
    spec: &EngineSpec,
    models_dir: Option<&ModelsDir>,
    programs: &Programs,
) -> Result<DryRun, SpecError> {
    let (plan, _) = build(
        spec,
        models_dir,
        programs,
        None,
        SecretString::from("unused"),
    )?;
    let env = plan
        .env
        .iter()
        .map(|(name, value)| {
            let shown = match value {
                EnvValue::Plain(value) => value.clone(),
                EnvValue::Secret(_) => REDACTED.to_owned(),
            };
            (name.clone(), shown)
        })
        .collect();
    let (command, container) = match plan.runtime {
        RuntimeKind::Process => {
            let mut command = vec![plan.program.to_string_lossy().into_owned()];
            command.extend(plan.args.iter().cloned());
            (command, None)
        }
        RuntimeKind::Docker => {
            let mut command = vec!["<image entrypoint>".to_owned()];
            command.extend(plan.args.iter().cloned());
            let preview = ContainerPreview {
                image: plan.image.clone().unwrap_or_default(),
                network: "cortex-engine-<id>".to_owned(),
                publish: format!("127.0.0.1:<port>:{CONTAINER_PORT}/tcp"),
                gpus: plan.gpus.iter().map(u32::to_string).collect(),
                mounts: plan
                    .models_mount
                    .iter()
                    .map(|dir| format!("{}:{CONTAINER_MODELS_DIR}:ro", dir.display()))
                    .collect(),
            };
            (command, Some(preview))
        }
    };
    Ok(DryRun {
        runtime: plan.runtime,
        command,
        env,
        listen: "127.0.0.1:<port>".to_owned(),
        container,
    })
}

fn require_gguf_file(model: &str, source: &ModelSource) -> Result<(), SpecError> {
    match source {
        ModelSource::Local { path, .. }
            if path.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
        {
            Ok(())
        }
        _ => Err(ModelPathError::NotAGgufFile(model.to_owned()).into()),
    }
}

fn container_path(relative: &Path) -> String {
    let mut path = String::from(CONTAINER_MODELS_DIR);
    for component in relative.components() {
        path.push('/');
        path.push_str(&component.as_os_str().to_string_lossy());
    }
    path
}

pub(crate) fn gpu_list(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: ModelsDir,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("Qwen/Qwen2.5-0.5B")).unwrap();
        std::fs::write(tmp.path().join("tiny.gguf"), b"GGUF").unwrap();
        let dir = ModelsDir::new(tmp.path()).unwrap();
        Fixture { _tmp: tmp, dir }
    }

    fn spec(value: serde_json::Value) -> EngineSpec {
        serde_json::from_value(value).unwrap()
    }

    fn plain_env(plan: &LaunchPlan) -> BTreeMap<String, String> {
        plan.env
            .iter()
            .map(|(k, v)| match v {
                EnvValue::Plain(v) => (k.clone(), v.clone()),
                EnvValue::Secret(s) => (k.clone(), format!("secret:{}", s.expose_secret())),
            })
            .collect()
    }

    #[test]
    fn vllm_process_command_line() {
        let f = fixture();
        let spec = spec(
            json!({"name": "qwen", "engine": "vllm", "runtime": "process",
            "model": "Qwen/Qwen2.5-0.5B", "gpus": [1, 3], "hf_token": "hf_abc",
            "settings": {"max_model_len": 4096, "enable_prefix_caching": true},
            "extra_args": ["--enforce-eager"], "env": {"OMP_NUM_THREADS": "2"}}),
        );
        let (plan, source) = build(
            &spec,
            Some(&f.dir),
            &Programs::default(),
            Some(4321),
            SecretString::from("key"),
        )
        .unwrap();
        let model = f.dir.root().join("Qwen/Qwen2.5-0.5B");
        assert!(source.is_local());
        assert_eq!(plan.program, PathBuf::from("vllm"));
        assert_eq!(
            plan.args,
            [
                "serve",
                model.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
                "4321",
                "--served-model-name",
                "qwen",
                "--max-model-len",
                "4096",
                "--enable-prefix-caching",
                "--enforce-eager"
            ]
        );
        let env = plain_env(&plan);
        assert_eq!(env["VLLM_API_KEY"], "secret:key");
        assert_eq!(env["HF_TOKEN"], "secret:hf_abc");
        assert_eq!(env["HF_HUB_OFFLINE"], "1");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "1,3");
        assert_eq!(env["OMP_NUM_THREADS"], "2");
        assert!(!plan
            .args
            .iter()
            .any(|a| a.contains("key") && a != "--served-model-name"));
        assert_eq!(plan.base_url(), "http://127.0.0.1:4321");
    }

    #[test]
    fn hub_models_are_not_offline() {
        let f = fixture();
        let spec = spec(
            json!({"name": "q", "engine": "vllm", "runtime": "process", "model": "org/remote"}),
        );
        let (plan, _) = build(
            &spec,
            Some(&f.dir),
            &Programs::default(),
            Some(1),
            SecretString::from("k"),
        )
        .unwrap();
        assert_eq!(plan.args.get(1).unwrap(), "org/remote");
        assert!(!plain_env(&plan).contains_key("HF_HUB_OFFLINE"));
        assert!(!plain_env(&plan).contains_key("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn llama_cpp_process_command_line() {
        let f = fixture();
        let spec = spec(
            json!({"name": "tiny", "engine": "llamacpp", "runtime": "process",
            "model": "tiny.gguf", "served_model_name": "tiny-chat",
            "settings": {"ctx_size": 512, "threads": 2}, "extra_args": ["--seed", "-1"]}),
        );
        let programs = Programs {
            vllm: "v".into(),
            llama_server: "/opt/llama-server".into(),
        };
        let (plan, _) = build(
            &spec,
            Some(&f.dir),
            &programs,
            Some(9),
            SecretString::from("k"),
        )
        .unwrap();
        let model = f.dir.root().join("tiny.gguf");
        assert_eq!(plan.program, PathBuf::from("/opt/llama-server"));
        assert_eq!(
            plan.args,
            [
                "--model",
                model.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
                "9",
                "--alias",
                "tiny-chat",
                "--ctx-size",
                "512",
                "--threads",
                "2",
                "--seed",
                "-1"
            ]
        );
        assert_eq!(plain_env(&plan)["LLAMA_API_KEY"], "secret:k");
    }

    #[test]
    fn llama_cpp_needs_a_local_gguf_file() {
        let f = fixture();
        for model in ["org/remote", "Qwen/Qwen2.5-0.5B"] {
            let spec = spec(
                json!({"name": "t", "engine": "llamacpp", "runtime": "process", "model": model}),
            );
            let error = build(
                &spec,
                Some(&f.dir),
                &Programs::default(),
                Some(1),
                SecretString::from("k"),
            )
            .unwrap_err();
            assert_eq!(
                error,
                SpecError::Model(ModelPathError::NotAGgufFile(model.into()))
            );
        }
    }

    #[test]
    fn docker_uses_container_paths_and_port() {
        let f = fixture();
        let spec = spec(
            json!({"name": "tiny", "engine": "llamacpp", "runtime": "docker",
            "image": "ghcr.io/ggml-org/llama.cpp:server", "model": "tiny.gguf", "gpus": [0]}),
        );
        let (plan, _) = build(
            &spec,
            Some(&f.dir),
            &Programs::default(),
            Some(7777),
            SecretString::from("k"),
        )
        .unwrap();
        assert_eq!(
            plan.args,
            [
                "--model",
                "/models/tiny.gguf",
                "--host",
                "0.0.0.0",
                "--port",
                "8000",
                "--alias",
                "tiny"
            ]
        );
        assert_eq!(plan.models_mount.as_deref(), Some(f.dir.root()));
        assert!(
            !plain_env(&plan).contains_key("CUDA_VISIBLE_DEVICES"),
            "docker uses device requests"
        );
        assert_eq!(plan.base_url(), "http://127.0.0.1:7777");

        let vllm = spec_vllm_docker();
        let (plan, _) = build(
            &vllm,
            Some(&f.dir),
            &Programs::default(),
            Some(1),
            SecretString::from("k"),
        )
        .unwrap();
        assert_eq!(
            plan.args.first().unwrap(),
            "org/remote",
            "no `serve`: the image's entrypoint has it"
        );
        assert!(plan.models_mount.is_none());
    }

    fn spec_vllm_docker() -> EngineSpec {
        spec(
            json!({"name": "q", "engine": "vllm", "runtime": "docker", "image": "vllm/vllm-openai:latest",
            "model": "org/remote"}),
        )
    }

    #[test]
    fn dry_run_redacts_secrets() {
        let f = fixture();
        let spec = spec(
            json!({"name": "qwen", "engine": "vllm", "runtime": "process",
            "model": "Qwen/Qwen2.5-0.5B", "hf_token": "hf_supersecret"}),
        );
        let dry = dry_run(&spec, Some(&f.dir), &Programs::default()).unwrap();
        let text = serde_json::to_string(&dry).unwrap();
        assert!(!text.contains("hf_supersecret"), "{text}");
        assert_eq!(dry.env["HF_TOKEN"], REDACTED);
        assert_eq!(dry.env["VLLM_API_KEY"], REDACTED);
        assert!(dry.command.contains(&"<port>".to_owned()));
        assert_eq!(dry.command.first().unwrap(), "vllm");
        assert!(dry.container.is_none());

        let dry = dry_run(&spec_vllm_docker(), Some(&f.dir), &Programs::default()).unwrap();
        let container = dry.container.unwrap();
        assert_eq!(container.publish, "127.0.0.1:<port>:8000/tcp");
        assert_eq!(container.image, "vllm/vllm-openai:latest");
    }

    #[test]
    fn denied_arguments_fail_the_build_too() {
        let f = fixture();
        let mut spec = spec_vllm_docker();
        spec.extra_args = vec!["--port=1".into()];
        assert!(matches!(
            build(
                &spec,
                Some(&f.dir),
                &Programs::default(),
                Some(1),
                SecretString::from("k")
            ),
            Err(SpecError::DeniedArgument { .. })
        ));
    }
}
