//! What an engine is: SPEC §17's create body as a typed [`EngineSpec`], parsed strictly (unknown
//! fields, unknown settings and wrong types are refused by serde) and then checked by
//! [`EngineSpec::validate`] (names, GPUs, image, the deny-lists, the model's syntax). What needs
//! the file system — where the model actually is — is checked again at every start
//! (`crate::models_dir`), because files change between create and start.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::deny;
use crate::error::SpecError;
pub use crate::kinds::{EngineId, EngineKind, RestartPolicy, RuntimeKind};
use crate::models_dir;
use crate::settings::{EngineSettings, LlamaCppSettings, VllmSettings};

/// SPEC §17's create body. Deserializing it checks shapes and settings (per engine); call
/// [`EngineSpec::validate`] for the rest before storing it. `hf_token` is write-only: it is read
/// from a body and never serialized (an export writes `had_hf_token` from
/// [`EngineSpec::has_hf_token`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RawEngineSpec", into = "RawEngineSpec")]
pub struct EngineSpec {
    pub name: String,
    pub engine: EngineKind,
    pub runtime: RuntimeKind,
    /// A Hugging Face repo id (`org/name`) or a path under `CORTEX_MODELS_DIR`.
    pub model: String,
    /// The model name clients ask for; `name` when absent.
    pub served_model_name: Option<String>,
    /// GPU indices: `CUDA_VISIBLE_DEVICES` for a process, device requests for a container.
    /// Empty: a process sees every GPU of the host, a container none.
    pub gpus: Vec<u32>,
    /// The container image; required for `docker`, refused for `process`.
    pub image: Option<String>,
    pub settings: EngineSettings,
    pub extra_args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub hf_token: Option<SecretString>,
    pub auto_start: bool,
    pub restart: RestartPolicy,
}

/// The wire shape; `settings` stays JSON until `engine` says which type it is.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEngineSpec {
    name: String,
    engine: EngineKind,
    runtime: RuntimeKind,
    model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served_model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpus: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra_args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    hf_token: Option<SecretString>,
    #[serde(default)]
    auto_start: bool,
    #[serde(default)]
    restart: RestartPolicy,
}

impl TryFrom<RawEngineSpec> for EngineSpec {
    type Error = String;

    fn try_from(raw: RawEngineSpec) -> Result<Self, Self::Error> {
        let settings_value = match raw.settings {
            Some(serde_json::Value::Null) | None => serde_json::Value::Object(Default::default()),
            Some(value) => value,
        };
        let settings = match raw.engine {
            EngineKind::Vllm => {
                serde_json::from_value::<VllmSettings>(settings_value).map(EngineSettings::Vllm)
            }
            EngineKind::LlamaCpp => serde_json::from_value::<LlamaCppSettings>(settings_value)
                .map(EngineSettings::LlamaCpp),
        }
        .map_err(|error| format!("settings ({}): {error}", raw.engine.as_str()))?;
        Ok(EngineSpec {
            name: raw.name,
            engine: raw.engine,
            runtime: raw.runtime,
            model: raw.model,
            served_model_name: raw.served_model_name,
            gpus: raw.gpus,
            image: raw.image,
            settings,
            extra_args: raw.extra_args,
            env: raw.env,
            hf_token: raw.hf_token,
            auto_start: raw.auto_start,
            restart: raw.restart,
        })
    }
}

impl From<EngineSpec> for RawEngineSpec {
    fn from(spec: EngineSpec) -> Self {
        let settings = match &spec.settings {
            EngineSettings::Vllm(settings) => serde_json::to_value(settings),
            EngineSettings::LlamaCpp(settings) => serde_json::to_value(settings),
        }
        .ok()
        .filter(|value| value.as_object().is_some_and(|map| !map.is_empty()));
        RawEngineSpec {
            name: spec.name,
            engine: spec.engine,
            runtime: spec.runtime,
            model: spec.model,
            served_model_name: spec.served_model_name,
            gpus: spec.gpus,
            image: spec.image,
            settings,
            extra_args: spec.extra_args,
            env: spec.env,
            hf_token: None,
            auto_start: spec.auto_start,
            restart: spec.restart,
        }
    }
}

/// Bounds on what a spec may carry, so one engine definition cannot become a huge command line.
pub const MAX_EXTRA_ARGS: usize = 128;
pub const MAX_ARG_BYTES: usize = 4096;
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_GPUS: usize = 64;

impl EngineSpec {
    /// The model name clients ask for and the engine reports in `/v1/models`.
    pub fn served_model_name(&self) -> &str {
        self.served_model_name.as_deref().unwrap_or(&self.name)
    }

    pub fn has_hf_token(&self) -> bool {
        self.hf_token.is_some()
    }

    /// `PATCH /admin/engines/{id}`: applies a JSON merge patch (RFC 7396: a field replaces,
    /// `null` removes, objects such as `settings` and `env` merge) and parses the result as
    /// strictly as a create body. `hf_token` is write-only, so the current one is kept unless
    /// the patch names it (`null` clears it). Call [`EngineSpec::validate`] on the result.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<EngineSpec, String> {
        if !patch.is_object() {
            return Err("a patch is a JSON object".to_owned());
        }
        let mut merged = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_patch(&mut merged, patch);
        if let Some(fields) = merged.as_object_mut() {
            fields.remove("hf_token");
        }
        let mut spec: EngineSpec = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        spec.hf_token = match patch.get("hf_token") {
            None => self.hf_token.clone(),
            Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                serde_json::from_value::<SecretString>(value.clone())
                    .map_err(|_| "hf_token: expected a string".to_owned())?,
            ),
        };
        Ok(spec)
    }

    /// Every check that needs no file system: names, GPUs, image, settings' ranges, the model's
    /// syntax and the host/port/key/TLS deny-lists over `extra_args` and `env`.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if let Some(served) = &self.served_model_name {
            validate_served_model_name(served)?;
        }
        self.validate_gpus()?;
        self.validate_image()?;
        self.settings.validate()?;
        if self.settings.kind() != self.engine {
            return Err(SpecError::invalid(
                "settings",
                "settings belong to another engine kind",
            ));
        }
        models_dir::check_model_syntax(&self.model)?;
        self.validate_extra_args()?;
        self.validate_env()?;
        if let Some(token) = &self.hf_token {
            validate_hf_token(token)?;
        }
        Ok(())
    }

    fn validate_gpus(&self) -> Result<(), SpecError> {
        if self.gpus.len() > MAX_GPUS {
            return Err(SpecError::invalid(
                "gpus",
                format!("at most {MAX_GPUS} GPUs"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for gpu in &self.gpus {
            if *gpu > 1023 {
                return Err(SpecError::invalid(
                    "gpus",
                    format!("GPU index {gpu} is too large"),
                ));
            }
            if !seen.insert(*gpu) {
                return Err(SpecError::invalid(
                    "gpus",
                    format!("GPU {gpu} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    fn validate_image(&self) -> Result<(), SpecError> {
        match (self.runtime, &self.image) {
            (RuntimeKind::Docker, None) => {
                Err(SpecError::invalid("image", "the docker runtime needs an image"))
            }
            (RuntimeKind::Process, Some(_)) => Err(SpecError::invalid(
                "image",
                "the process runtime runs the engine installed on this host; an image is for docker",
            )),
            (RuntimeKind::Docker, Some(image)) => validate_image_reference(image),
            (RuntimeKind::Process, None) => Ok(()),
        }
    }

    fn validate_extra_args(&self) -> Result<(), SpecError> {
        if self.extra_args.len() > MAX_EXTRA_ARGS {
            return Err(SpecError::invalid(
                "extra_args",
                format!("at most {MAX_EXTRA_ARGS} arguments"),
            ));
        }
        for arg in &self.extra_args {
            if arg.len() > MAX_ARG_BYTES || arg.contains('\0') || arg.is_empty() {
                return Err(SpecError::invalid(
                    "extra_args",
                    format!(
                        "an argument is empty, longer than {MAX_ARG_BYTES} bytes or holds a NUL"
                    ),
                ));
            }
            deny::check_arg(self.engine, arg)?;
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), SpecError> {
        if self.env.len() > MAX_ENV_VARS {
            return Err(SpecError::invalid(
                "env",
                format!("at most {MAX_ENV_VARS} variables"),
            ));
        }
        for (name, value) in &self.env {
            deny::check_env(name)?;
            if value.len() > MAX_ENV_VALUE_BYTES || value.contains('\0') {
                return Err(SpecError::invalid(
                    "env",
                    format!("`{name}`'s value is longer than {MAX_ENV_VALUE_BYTES} bytes or holds a NUL"),
                ));
            }
        }
        Ok(())
    }
}

fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(
                        target.entry(key.clone()).or_insert(serde_json::Value::Null),
                        value,
                    );
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Engine names: what an operator types and what a container name is made of.
fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "name",
            "1-63 characters: letters, digits, '-', '_', '.', starting with a letter or digit",
        ))
    }
}

/// A model name as clients send it (`"model": "…"`): printable ASCII without spaces or quotes.
fn validate_served_model_name(name: &str) -> Result<(), SpecError> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'@')
        })
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "served_model_name",
            "1-128 characters: letters, digits and - _ . / : @, not starting with '-'",
        ))
    }
}

/// `[registry[:port]/]path[:tag][@sha256:digest]`, conservatively: the characters Docker allows
/// in references and nothing that could be read as an option.
fn validate_image_reference(image: &str) -> Result<(), SpecError> {
    let ok = (1..=255).contains(&image.len())
        && image
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && image.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'@')
                || (b.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "image",
            "not a container image reference",
        ))
    }
}

fn validate_hf_token(token: &SecretString) -> Result<(), SpecError> {
    use secrecy::ExposeSecret;
    let token = token.expose_secret();
    // Never echo the token: the messages name the rule only.
    if token.is_empty() || token.len() > 512 {
        return Err(SpecError::invalid("hf_token", "must be 1-512 characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SpecError::invalid(
            "hf_token",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<EngineSpec, String> {
        serde_json::from_value::<EngineSpec>(value).map_err(|e| e.to_string())
    }

    fn minimal() -> serde_json::Value {
        json!({"name": "qwen", "engine": "vllm", "runtime": "process", "model": "Qwen/Qwen2.5-0.5B"})
    }

    #[test]
    fn minimal_body_parses_with_defaults() {
        let spec = parse(minimal()).unwrap();
        assert_eq!(spec.engine, EngineKind::Vllm);
        assert_eq!(spec.runtime, RuntimeKind::Process);
        assert_eq!(spec.served_model_name(), "qwen");
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert!(!spec.auto_start);
        spec.validate().unwrap();
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let mut body = minimal();
        body["port"] = json!(8000);
        let error = parse(body).unwrap_err();
        assert!(error.contains("unknown field `port`"), "{error}");
    }

    #[test]
    fn unknown_setting_is_refused_naming_the_engine() {
        let mut body = minimal();
        body["settings"] = json!({"tensor_parallel_size": 2, "n_gpu_layers": 10});
        let error = parse(body).unwrap_err();
        assert!(error.contains("settings (vllm)"), "{error}");
        assert!(error.contains("unknown field `n_gpu_layers`"), "{error}");
    }

    #[test]
    fn settings_of_the_right_engine_parse_typed() {
        let body = json!({"name": "tiny", "engine": "llamacpp", "runtime": "process",
            "model": "tiny.gguf", "settings": {"ctx_size": 2048, "flash_attn": "on"}});
        let spec = parse(body).unwrap();
        let EngineSettings::LlamaCpp(settings) = &spec.settings else {
            panic!("wrong kind")
        };
        assert_eq!(settings.ctx_size, Some(2048));
    }

    #[test]
    fn wrong_types_are_refused() {
        for (field, value) in [
            ("engine", json!("tgi")),
            ("runtime", json!("k8s")),
            ("gpus", json!(["0"])),
            ("restart", json!("always")),
            ("extra_args", json!("--foo")),
        ] {
            let mut body = minimal();
            body[field] = value;
            assert!(parse(body).is_err(), "{field} accepted");
        }
    }

    #[test]
    fn hf_token_is_read_but_never_serialized() {
        let mut body = minimal();
        body["hf_token"] = json!("hf_secretsecret");
        let spec = parse(body).unwrap();
        assert!(spec.has_hf_token());
        let out = serde_json::to_string(&spec).unwrap();
        assert!(!out.contains("hf_secretsecret"), "{out}");
        assert!(!out.contains("hf_token"), "{out}");
        assert!(!format!("{spec:?}").contains("hf_secretsecret"));
    }

    #[test]
    fn round_trip_keeps_settings() {
        let body = json!({"name": "q", "engine": "vllm", "runtime": "docker", "image": "vllm/vllm-openai:v0.8.0",
            "model": "Qwen/Qwen2.5-0.5B", "settings": {"max_model_len": 4096, "dtype": "bfloat16"},
            "gpus": [0, 1], "restart": "never"});
        let spec = parse(body).unwrap();
        spec.validate().unwrap();
        let again = parse(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
        assert_eq!(again.gpus, vec![0, 1]);
    }

    #[test]
    fn patches_merge_and_keep_the_token() {
        use secrecy::ExposeSecret;
        let mut body = minimal();
        body["hf_token"] = json!("hf_keep");
        body["settings"] = json!({"max_model_len": 4096, "dtype": "auto"});
        body["env"] = json!({"A": "1", "B": "2"});
        let spec = parse(body).unwrap();
        let patched = spec
            .patched(&json!({"settings": {"dtype": null, "max_num_seqs": 8}, "env": {"B": null}, "gpus": [1]}))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&patched.settings).unwrap(),
            json!({"max_model_len": 4096, "max_num_seqs": 8})
        );
        assert_eq!(patched.env.keys().collect::<Vec<_>>(), ["A"]);
        assert_eq!(patched.gpus, [1]);
        assert_eq!(
            patched.hf_token.as_ref().unwrap().expose_secret(),
            "hf_keep"
        );
        assert!(spec
            .patched(&json!({"hf_token": null}))
            .unwrap()
            .hf_token
            .is_none());
        let replaced = spec.patched(&json!({"hf_token": "hf_new"})).unwrap();
        assert_eq!(replaced.hf_token.unwrap().expose_secret(), "hf_new");
        assert!(spec
            .patched(&json!({"settings": {"n_gpu_layers": 1}}))
            .unwrap_err()
            .contains("unknown field"));
        assert!(spec.patched(&json!({"port": 1})).is_err());
        assert!(spec.patched(&json!([1])).is_err());
    }

    #[test]
    fn validation_rules() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"name": ""}), "name"),
            (json!({"name": "-x"}), "name"),
            (json!({"name": "a b"}), "name"),
            (json!({"served_model_name": "--port"}), "served_model_name"),
            (json!({"served_model_name": "a b"}), "served_model_name"),
            (json!({"gpus": [0, 0]}), "gpus"),
            (json!({"image": "vllm/vllm-openai"}), "image"),
            (json!({"runtime": "docker"}), "image"),
            (
                json!({"runtime": "docker", "image": "--privileged"}),
                "image",
            ),
            (json!({"model": "../etc/passwd"}), "model"),
            (json!({"hf_token": "has space"}), "hf_token"),
            (
                json!({"settings": {"gpu_memory_utilization": 1.5}}),
                "gpu_memory_utilization",
            ),
        ];
        for (patch, field) in cases {
            let mut body = minimal();
            for (key, value) in patch.as_object().unwrap() {
                body[key] = value.clone();
            }
            let spec = parse(body.clone()).unwrap();
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{body}: {error}");
        }
    }
}
