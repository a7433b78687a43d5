//! The deny-list for `extra_args` and `env`: nothing an operator passes may set what Cortex owns
//! — where the engine listens (host, port, socket, path prefix), its API key, TLS, which model
//! it loads and under what name, the Hugging Face token, the GPUs, or code loaded into it.
//!
//! Each argument is read the way the engines' parsers read it, so spellings cannot slip past:
//! - `--flag value` and `--flag=value` (vLLM's argparse and our check split at the first `=`);
//! - case (`--PORT`) is folded, although both parsers are case-sensitive, to fail closed;
//! - `_` is the same as `-` in long names (vLLM's `FlexibleArgumentParser` and llama.cpp's
//!   parser both convert it: `--api_key` is `--api-key`);
//! - vLLM's dotted JSON arguments (`--name.key value`) are judged by the part before the dot;
//! - vLLM (Python argparse) accepts any unambiguous prefix of a long option (`--por 1` is
//!   `--port 1`), so for vLLM a name that is a prefix of a denied name is denied too;
//! - llama.cpp's short spellings (`-m`, `-a`, `-hf`, …), looked up exactly as llama.cpp does;
//! - a bare `--` (end of options) is refused, since what follows it is no longer checked the
//!   way the engine reads it.
//!
//! Every element of `extra_args` is checked, values included: a value that looks like a denied
//! flag is refused too, which is the safe side. Negative numbers (`-1`) are values.
//!
//! Not covered on purpose: flags that read other files (vLLM's `--tokenizer`, `--chat-template`
//! path, `--download-dir`, `--trust-remote-code`) — choosing them is an Admin/Operator's call,
//! and they do not expose the engine or its key.

use crate::error::SpecError;
use crate::kinds::EngineKind;

const HOST: &str = "Cortex binds the engine to loopback (or its private network) itself";
const PORT: &str = "Cortex picks the engine's port";
const KEY: &str = "Cortex generates the engine's API key";
const TLS: &str = "the engine speaks plain HTTP on loopback; TLS is Cortex's job";
const MODEL: &str = "the model comes from `model`, contained under CORTEX_MODELS_DIR";
const NAME: &str = "the served name comes from `served_model_name`";
const TOKEN: &str = "a Hugging Face token goes in `hf_token` (stored encrypted, never in argv)";
const API_PATH: &str = "it changes where the engine's API is served";
const CONFIG: &str = "a config file could set host, port or key past this check";
const CODE: &str = "it loads code into the engine";
const FILES: &str = "it makes the engine write files outside its own directories";
const GPUS: &str = "GPUs come from `gpus`";
const OFFLINE: &str = "Cortex sets offline mode from where the model is";
const ENVIRONMENT: &str = "Cortex sets the engine's search path and home";
const ARG_PARSING: &str = "a bare `--` ends option parsing, so what follows is not checked";

/// Denied long names (normalized: lower case, `-`), for both engines: a name one engine does
/// not know is refused by that engine anyway.
const LONG: &[(&str, &str)] = &[
    ("host", HOST),
    ("port", PORT),
    ("uds", HOST),
    ("reuse-port", PORT),
    ("data-parallel-address", HOST),
    ("data-parallel-rpc-port", PORT),
    ("api-key", KEY),
    ("api-key-file", KEY),
    ("enable-ssl-refresh", TLS),
    ("root-path", API_PATH),
    ("api-prefix", API_PATH),
    ("path", API_PATH),
    ("config", CONFIG),
    ("middleware", CODE),
    ("tool-parser-plugin", CODE),
    ("model", MODEL),
    ("model-url", MODEL),
    ("hf-repo", MODEL),
    ("hf-file", MODEL),
    ("docker-repo", MODEL),
    ("models-dir", MODEL),
    ("models-preset", MODEL),
    ("served-model-name", NAME),
    ("alias", NAME),
    ("hf-token", TOKEN),
    ("log-file", FILES),
    ("slot-save-path", FILES),
];

/// Denied families: every long name starting with one of these.
const FAMILIES: &[(&str, &str)] = &[("ssl", TLS), ("tls", TLS)];

/// llama.cpp's short spellings of denied options (`common/arg.cpp`).
const SHORT: &[(&str, &str)] = &[
    ("m", MODEL),
    ("mu", MODEL),
    ("hf", MODEL),
    ("hfr", MODEL),
    ("hff", MODEL),
    ("dr", MODEL),
    ("hft", TOKEN),
    ("a", NAME),
];

/// Refuses one `extra_args` element that would set what Cortex owns; the error names the flag
/// as written, without its value.
pub(crate) fn check_arg(engine: EngineKind, arg: &str) -> Result<(), SpecError> {
    if let Some(rest) = arg.strip_prefix("--") {
        let written = rest.split('=').next().unwrap_or(rest);
        let shown = format!("--{written}");
        let normalized = normalize_long(written);
        if normalized.is_empty() {
            return Err(denied(shown, ARG_PARSING));
        }
        if let Some(reason) = long_reason(engine, &normalized) {
            return Err(denied(shown, reason));
        }
        return Ok(());
    }
    if let Some(rest) = arg.strip_prefix('-') {
        if rest.is_empty() || rest.parse::<f64>().is_ok() {
            // `-` (stdin) and negative numbers are values.
            return Ok(());
        }
        let written = rest.split('=').next().unwrap_or(rest);
        let shown = format!("-{written}");
        let lowered = written.to_ascii_lowercase();
        // llama.cpp looks short options up exactly (no joined values); vLLM has no short
        // spelling of a denied option.
        if let Some((_, reason)) = SHORT.iter().find(|(short, _)| *short == lowered) {
            return Err(denied(shown, reason));
        }
        // `-port`, `-api-key`: not options of either engine today; refused anyway.
        if let Some(reason) = long_reason(EngineKind::LlamaCpp, &normalize_long(written)) {
            return Err(denied(shown, reason));
        }
    }
    Ok(())
}

fn normalize_long(written: &str) -> String {
    let before_dot = written.split('.').next().unwrap_or(written);
    before_dot.to_ascii_lowercase().replace('_', "-")
}

fn long_reason(engine: EngineKind, name: &str) -> Option<&'static str> {
    for (prefix, reason) in FAMILIES {
        if name.starts_with(prefix) || (engine == EngineKind::Vllm && prefix.starts_with(name)) {
            return Some(reason);
        }
    }
    for (denied_name, reason) in LONG {
        if name == *denied_name {
            return Some(reason);
        }
        // argparse's abbreviations: `--por` is `--port` when no other option starts so.
        if engine == EngineKind::Vllm && denied_name.starts_with(name) {
            return Some(reason);
        }
    }
    None
}

fn denied(flag: String, reason: &'static str) -> SpecError {
    SpecError::DeniedArgument { flag, reason }
}

/// Environment names Cortex sets itself or that would expose the engine.
const ENV_EXACT: &[(&str, &str)] = &[
    ("HF_TOKEN", TOKEN),
    ("HUGGING_FACE_HUB_TOKEN", TOKEN),
    ("HF_API_TOKEN", TOKEN),
    ("HF_HUB_OFFLINE", OFFLINE),
    ("TRANSFORMERS_OFFLINE", OFFLINE),
    ("CUDA_VISIBLE_DEVICES", GPUS),
    ("NVIDIA_VISIBLE_DEVICES", GPUS),
    ("HIP_VISIBLE_DEVICES", GPUS),
    ("ROCR_VISIBLE_DEVICES", GPUS),
    ("VLLM_API_KEY", KEY),
    ("LLAMA_API_KEY", KEY),
    ("LLAMA_ARG_API_KEY_FILE", KEY),
    ("LLAMA_ARG_MODEL", MODEL),
    ("LLAMA_ARG_MODEL_URL", MODEL),
    ("LLAMA_ARG_HF_REPO", MODEL),
    ("LLAMA_ARG_HF_FILE", MODEL),
    ("LLAMA_ARG_DOCKER_REPO", MODEL),
    ("LLAMA_ARG_MODELS_DIR", MODEL),
    ("LLAMA_ARG_ALIAS", NAME),
    ("LLAMA_ARG_API_PREFIX", API_PATH),
    ("LLAMA_ARG_STATIC_PATH", API_PATH),
    ("LLAMA_ARG_LOG_FILE", FILES),
    // llama-server's Vertex AI mode serves on AIP_HTTP_PORT with its own routes.
    ("AIP_MODE", PORT),
    ("VLLM_LOGGING_CONFIG_PATH", CONFIG),
    ("VLLM_PLUGINS", CODE),
    ("PATH", ENVIRONMENT),
    ("HOME", ENVIRONMENT),
    ("XDG_CONFIG_HOME", CONFIG),
];

/// Python variables that are harmless and commonly set for engines' logs.
const PYTHON_ALLOWED: &[&str] = &["PYTHONUNBUFFERED", "PYTHONIOENCODING"];

/// Refuses an `env` name that is malformed or would set what Cortex owns.
pub(crate) fn check_env(name: &str) -> Result<(), SpecError> {
    let well_formed = (1..=128).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return Err(SpecError::invalid(
            "env",
            "names are letters, digits and '_', not starting with a digit, at most 128",
        ));
    }
    let upper = name.to_ascii_uppercase();
    let refuse = |reason| {
        Err(SpecError::DeniedEnv {
            name: name.to_owned(),
            reason,
        })
    };
    if let Some((_, reason)) = ENV_EXACT.iter().find(|(denied, _)| *denied == upper) {
        return refuse(reason);
    }
    if upper.starts_with("LD_") || upper.starts_with("DYLD_") {
        return refuse(CODE);
    }
    if upper.starts_with("PYTHON") && !PYTHON_ALLOWED.contains(&upper.as_str()) {
        return refuse(CODE);
    }
    if upper.contains("API_KEY") || upper.contains("APIKEY") {
        return refuse(KEY);
    }
    for word in upper.split('_') {
        match word {
            "HOST" => return refuse(HOST),
            "PORT" => return refuse(PORT),
            "SSL" | "TLS" => return refuse(TLS),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(engine: EngineKind, arg: &str) -> String {
        match check_arg(engine, arg) {
            Err(SpecError::DeniedArgument { flag, .. }) => flag,
            other => panic!("{arg} for {engine:?}: {other:?}"),
        }
    }

    const BOTH: [EngineKind; 2] = [EngineKind::Vllm, EngineKind::LlamaCpp];

    /// Every spelling of every denied option, for both engines.
    #[test]
    fn attack_spellings_are_refused() {
        let attacks = [
            "--host",
            "--host=0.0.0.0",
            "--HOST",
            "--Host=::",
            "--port",
            "--port=1",
            "--PORT",
            "--PORT=8080",
            "--api-key",
            "--api-key=sk-x",
            "--api_key",
            "--API_KEY=x",
            "--api-key-file",
            "--api_key_file=/tmp/k",
            "--ssl-keyfile",
            "--ssl-certfile=/c",
            "--ssl-key-file",
            "--ssl-cert-file",
            "--ssl_ca_certs",
            "--ssl-cert-reqs=2",
            "--enable-ssl-refresh",
            "--tls-anything",
            "--uds=/tmp/s",
            "--reuse-port",
            "--root-path=/x",
            "--api-prefix",
            "--path",
            "--config",
            "--config=x.yaml",
            "--middleware",
            "--tool-parser-plugin",
            "--model",
            "--model=other",
            "--served-model-name",
            "--served_model_name=x",
            "--alias",
            "--hf-token",
            "--hf_token=hf_x",
            "--hf-repo",
            "--model-url",
            "--docker-repo",
            "--log-file",
            "--port.x",
            "--api-key.0=x",
            "--",
            "--=x",
        ];
        for engine in BOTH {
            for arg in attacks {
                let flag = refused(engine, arg);
                assert!(
                    !flag.contains('='),
                    "{arg}: the error must not carry the value: {flag}"
                );
            }
        }
    }

    #[test]
    fn the_error_names_the_flag_not_the_value() {
        let error = check_arg(EngineKind::Vllm, "--api-key=sk-very-secret").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("`--api-key`"), "{text}");
        assert!(!text.contains("sk-very-secret"), "{text}");
        assert_eq!(error.code(), "engine_argument_denied");
    }

    /// argparse resolves unambiguous prefixes, so vLLM's abbreviations are refused.
    #[test]
    fn vllm_abbreviations_are_refused() {
        for arg in [
            "--por",
            "--po=1",
            "--hos",
            "--api-k",
            "--api-ke=x",
            "--ss",
            "--uds",
            "--serv",
        ] {
            refused(EngineKind::Vllm, arg);
        }
    }

    #[test]
    fn llama_cpp_short_forms_are_refused() {
        for arg in [
            "-m", "-mu", "-hf", "-hfr", "-hff", "-hft", "-dr", "-a", "-M", "-m=x",
        ] {
            refused(EngineKind::LlamaCpp, arg);
        }
        for arg in ["-port", "-host", "-api-key"] {
            refused(EngineKind::LlamaCpp, arg);
        }
    }

    #[test]
    fn ordinary_arguments_pass() {
        let vllm = [
            "--enforce-eager",
            "--max-num-batched-tokens",
            "8192",
            "--trust-remote-code",
            "--seed=1",
            "-1",
            "-0.5",
            "--limit-mm-per-prompt.image",
            "2",
            "-O3",
            "--disable-log-requests",
            "-asc",
            "4",
            "-tp",
            "2",
        ];
        for arg in vllm {
            check_arg(EngineKind::Vllm, arg).unwrap();
        }
        let llama = [
            "--temp",
            "0.2",
            "--mlock",
            "--no-mmap",
            "-ngl",
            "99",
            "--seed",
            "-1",
            "--cont-batching",
            "-tb",
            "4",
            "--metrics",
            "--jinja",
        ];
        for arg in llama {
            check_arg(EngineKind::LlamaCpp, arg).unwrap();
        }
    }

    #[test]
    fn llama_cpp_has_no_abbreviations_so_prefixes_pass() {
        // `--po` is an unknown option to llama-server (it refuses it); not a port.
        check_arg(EngineKind::LlamaCpp, "--mod").unwrap();
    }

    #[test]
    fn denied_environment_names() {
        let denied = [
            "HF_TOKEN",
            "hf_token",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "CUDA_VISIBLE_DEVICES",
            "VLLM_API_KEY",
            "vllm_api_key",
            "LLAMA_API_KEY",
            "LLAMA_ARG_HOST",
            "LLAMA_ARG_PORT",
            "LLAMA_ARG_API_KEY_FILE",
            "LLAMA_ARG_SSL_KEY_FILE",
            "LLAMA_ARG_SSL_CERT_FILE",
            "LLAMA_ARG_MODEL",
            "LLAMA_ARG_ALIAS",
            "LLAMA_ARG_API_PREFIX",
            "VLLM_HOST_IP",
            "VLLM_PORT",
            "MASTER_PORT",
            "AIP_MODE",
            "AIP_HTTP_PORT",
            "OPENAI_API_KEY",
            "LD_PRELOAD",
            "ld_library_path",
            "PYTHONPATH",
            "PYTHONSTARTUP",
            "PATH",
            "HOME",
            "XDG_CONFIG_HOME",
            "SOME_TLS_CERT",
            "UVICORN_HOST",
        ];
        for name in denied {
            match check_env(name) {
                Err(SpecError::DeniedEnv { name: named, .. }) => assert_eq!(named, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_environment_names() {
        for name in ["", "1ABC", "A-B", "A B", "A=B", "Ä", &"A".repeat(129)] {
            assert!(
                matches!(check_env(name), Err(SpecError::Invalid { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn ordinary_environment_names_pass() {
        for name in [
            "OMP_NUM_THREADS",
            "NCCL_DEBUG",
            "VLLM_ATTENTION_BACKEND",
            "HOSTNAME_HINT",
            "PYTHONUNBUFFERED",
            "HF_HOME",
            "FAKE_ENGINE_CRASH_AFTER_MS",
            "TRANSPORT_MODE",
        ] {
            check_env(name).unwrap();
        }
    }
}
