//! Each engine's typed settings and the flags they become. The flag spellings are the engines'
//! own: vLLM's `vllm serve` arguments (`vllm/engine/arg_utils.py`, `EngineArgs`) and llama.cpp's
//! `llama-server` arguments (`common/arg.cpp`, `tools/server/README.md`); the table tests below
//! pin every one. Settings are optional: an absent one leaves the engine's default. Anything
//! else an engine accepts goes through `extra_args`, past the deny-list (`crate::deny`).

use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::kinds::EngineKind;

/// Settings for one engine kind; which one is fixed by the spec's `engine`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EngineSettings {
    Vllm(VllmSettings),
    LlamaCpp(LlamaCppSettings),
}

impl EngineSettings {
    pub fn kind(&self) -> EngineKind {
        match self {
            EngineSettings::Vllm(_) => EngineKind::Vllm,
            EngineSettings::LlamaCpp(_) => EngineKind::LlamaCpp,
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            EngineSettings::Vllm(settings) => settings.validate(),
            EngineSettings::LlamaCpp(settings) => settings.validate(),
        }
    }

    /// The flags, in a fixed order, long spellings only.
    pub fn to_args(&self) -> Vec<String> {
        match self {
            EngineSettings::Vllm(settings) => settings.to_args(),
            EngineSettings::LlamaCpp(settings) => settings.to_args(),
        }
    }
}

/// `vllm serve <model>` settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VllmSettings {
    /// `--tensor-parallel-size`: GPUs one model is split across.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallel_size: Option<u32>,
    /// `--pipeline-parallel-size`: pipeline stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_parallel_size: Option<u32>,
    /// `--max-model-len`: context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// `--dtype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<VllmDtype>,
    /// `--quantization` (awq, gptq, fp8, …; the list changes between vLLM releases, so only the
    /// spelling is checked here and vLLM refuses names it does not know).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// `--gpu-memory-utilization`: the fraction of GPU memory vLLM may take, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_utilization: Option<f64>,
    /// `--kv-cache-dtype` (auto, fp8, fp8_e4m3, fp8_e5m2, …; spelling checked as above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<String>,
    /// `--enable-prefix-caching` / `--no-enable-prefix-caching`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prefix_caching: Option<bool>,
    /// `--max-num-seqs`: sequences in one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_num_seqs: Option<u32>,
}

/// vLLM's `--dtype` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VllmDtype {
    Auto,
    Half,
    Float16,
    Bfloat16,
    Float,
    Float32,
}

impl VllmDtype {
    fn as_str(self) -> &'static str {
        match self {
            VllmDtype::Auto => "auto",
            VllmDtype::Half => "half",
            VllmDtype::Float16 => "float16",
            VllmDtype::Bfloat16 => "bfloat16",
            VllmDtype::Float => "float",
            VllmDtype::Float32 => "float32",
        }
    }
}

impl VllmSettings {
    pub fn validate(&self) -> Result<(), SpecError> {
        in_range("tensor_parallel_size", self.tensor_parallel_size, 1, 64)?;
        in_range("pipeline_parallel_size", self.pipeline_parallel_size, 1, 64)?;
        in_range("max_model_len", self.max_model_len, 1, 16 * 1024 * 1024)?;
        in_range("max_num_seqs", self.max_num_seqs, 1, 65_536)?;
        if let Some(fraction) = self.gpu_memory_utilization {
            if fraction.is_nan() || fraction <= 0.0 || fraction > 1.0 {
                return Err(SpecError::invalid(
                    "settings.gpu_memory_utilization",
                    "must be greater than 0 and at most 1",
                ));
            }
        }
        token("settings.quantization", self.quantization.as_deref())?;
        token("settings.kv_cache_dtype", self.kv_cache_dtype.as_deref())?;
        Ok(())
    }

    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        push_value(
            &mut args,
            "--tensor-parallel-size",
            self.tensor_parallel_size,
        );
        push_value(
            &mut args,
            "--pipeline-parallel-size",
            self.pipeline_parallel_size,
        );
        push_value(&mut args, "--max-model-len", self.max_model_len);
        push_value(&mut args, "--dtype", self.dtype.map(VllmDtype::as_str));
        push_value(&mut args, "--quantization", self.quantization.as_deref());
        push_value(
            &mut args,
            "--gpu-memory-utilization",
            self.gpu_memory_utilization,
        );
        push_value(
            &mut args,
            "--kv-cache-dtype",
            self.kv_cache_dtype.as_deref(),
        );
        match self.enable_prefix_caching {
            Some(true) => args.push("--enable-prefix-caching".to_owned()),
            Some(false) => args.push("--no-enable-prefix-caching".to_owned()),
            None => {}
        }
        push_value(&mut args, "--max-num-seqs", self.max_num_seqs);
        args
    }
}

/// `llama-server` settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaCppSettings {
    /// `--ctx-size`: context size in tokens (0 = the model's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_size: Option<u32>,
    /// `--n-gpu-layers`: layers offloaded to the GPU (999 = all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_gpu_layers: Option<u32>,
    /// `--parallel`: server slots (concurrent sequences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<u32>,
    /// `--threads`: CPU threads for generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    /// `--batch-size`: logical maximum batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// `--ubatch-size`: physical maximum batch size (at most `batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ubatch_size: Option<u32>,
    /// `--flash-attn on|off|auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_attn: Option<FlashAttention>,
    /// `--chat-template`: a built-in template's name (`chatml`, `llama3`, …) or a Jinja template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

/// llama.cpp's `--flash-attn` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    On,
    Off,
    Auto,
}

impl FlashAttention {
    fn as_str(self) -> &'static str {
        match self {
            FlashAttention::On => "on",
            FlashAttention::Off => "off",
            FlashAttention::Auto => "auto",
        }
    }
}

/// Longest inline chat template accepted (they travel in argv).
pub const MAX_CHAT_TEMPLATE_BYTES: usize = 64 * 1024;

impl LlamaCppSettings {
    pub fn validate(&self) -> Result<(), SpecError> {
        in_range("ctx_size", self.ctx_size, 0, 16 * 1024 * 1024)?;
        in_range("n_gpu_layers", self.n_gpu_layers, 0, 999)?;
        in_range("parallel", self.parallel, 1, 256)?;
        in_range("threads", self.threads, 1, 1024)?;
        in_range("batch_size", self.batch_size, 1, 1 << 20)?;
        in_range("ubatch_size", self.ubatch_size, 1, 1 << 20)?;
        if let (Some(batch), Some(ubatch)) = (self.batch_size, self.ubatch_size) {
            if ubatch > batch {
                return Err(SpecError::invalid(
                    "settings.ubatch_size",
                    "must not exceed settings.batch_size",
                ));
            }
        }
        if let Some(template) = &self.chat_template {
            if template.is_empty()
                || template.len() > MAX_CHAT_TEMPLATE_BYTES
                || template.contains('\0')
            {
                return Err(SpecError::invalid(
                    "settings.chat_template",
                    format!("must be 1-{MAX_CHAT_TEMPLATE_BYTES} bytes without NUL"),
                ));
            }
        }
        Ok(())
    }

    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        push_value(&mut args, "--ctx-size", self.ctx_size);
        push_value(&mut args, "--n-gpu-layers", self.n_gpu_layers);
        push_value(&mut args, "--parallel", self.parallel);
        push_value(&mut args, "--threads", self.threads);
        push_value(&mut args, "--batch-size", self.batch_size);
        push_value(&mut args, "--ubatch-size", self.ubatch_size);
        push_value(
            &mut args,
            "--flash-attn",
            self.flash_attn.map(FlashAttention::as_str),
        );
        push_value(&mut args, "--chat-template", self.chat_template.as_deref());
        args
    }
}

fn push_value<T: ToString>(args: &mut Vec<String>, flag: &str, value: Option<T>) {
    if let Some(value) = value {
        args.push(flag.to_owned());
        args.push(value.to_string());
    }
}

fn in_range(name: &str, value: Option<u32>, min: u32, max: u32) -> Result<(), SpecError> {
    match value {
        Some(value) if value < min || value > max => Err(SpecError::invalid(
            "settings",
            format!("{name} must be between {min} and {max}"),
        )),
        _ => Ok(()),
    }
}

/// Names like `awq`, `fp8_e4m3`, `bitsandbytes`: never anything an argument parser could read
/// as a flag.
fn token(name: &'static str, value: Option<&str>) -> Result<(), SpecError> {
    match value {
        Some(value)
            if value.is_empty()
                || value.len() > 64
                || !value
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) =>
        {
            Err(SpecError::invalid(
                name,
                "letters, digits, '_', '-' and '.' only",
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vllm(value: serde_json::Value) -> Vec<String> {
        let settings: VllmSettings = serde_json::from_value(value).unwrap();
        settings.validate().unwrap();
        settings.to_args()
    }

    fn llama(value: serde_json::Value) -> Vec<String> {
        let settings: LlamaCppSettings = serde_json::from_value(value).unwrap();
        settings.validate().unwrap();
        settings.to_args()
    }

    /// Each vLLM setting against the flag `vllm serve --help` documents for it.
    #[test]
    fn vllm_flags_match_vllm_serve() {
        let table: Vec<(serde_json::Value, Vec<&str>)> = vec![
            (
                json!({"tensor_parallel_size": 2}),
                vec!["--tensor-parallel-size", "2"],
            ),
            (
                json!({"pipeline_parallel_size": 3}),
                vec!["--pipeline-parallel-size", "3"],
            ),
            (
                json!({"max_model_len": 8192}),
                vec!["--max-model-len", "8192"],
            ),
            (json!({"dtype": "bfloat16"}), vec!["--dtype", "bfloat16"]),
            (json!({"dtype": "auto"}), vec!["--dtype", "auto"]),
            (
                json!({"quantization": "awq"}),
                vec!["--quantization", "awq"],
            ),
            (
                json!({"gpu_memory_utilization": 0.9}),
                vec!["--gpu-memory-utilization", "0.9"],
            ),
            (
                json!({"kv_cache_dtype": "fp8_e4m3"}),
                vec!["--kv-cache-dtype", "fp8_e4m3"],
            ),
            (
                json!({"enable_prefix_caching": true}),
                vec!["--enable-prefix-caching"],
            ),
            (
                json!({"enable_prefix_caching": false}),
                vec!["--no-enable-prefix-caching"],
            ),
            (json!({"max_num_seqs": 128}), vec!["--max-num-seqs", "128"]),
            (json!({}), vec![]),
        ];
        for (settings, expected) in table {
            assert_eq!(vllm(settings.clone()), expected, "{settings}");
        }
    }

    /// Each llama.cpp setting against `llama-server`'s flag (`common/arg.cpp`).
    #[test]
    fn llama_cpp_flags_match_llama_server() {
        let table: Vec<(serde_json::Value, Vec<&str>)> = vec![
            (json!({"ctx_size": 4096}), vec!["--ctx-size", "4096"]),
            (json!({"ctx_size": 0}), vec!["--ctx-size", "0"]),
            (json!({"n_gpu_layers": 99}), vec!["--n-gpu-layers", "99"]),
            (json!({"parallel": 4}), vec!["--parallel", "4"]),
            (json!({"threads": 8}), vec!["--threads", "8"]),
            (json!({"batch_size": 2048}), vec!["--batch-size", "2048"]),
            (json!({"ubatch_size": 512}), vec!["--ubatch-size", "512"]),
            (json!({"flash_attn": "on"}), vec!["--flash-attn", "on"]),
            (json!({"flash_attn": "off"}), vec!["--flash-attn", "off"]),
            (json!({"flash_attn": "auto"}), vec!["--flash-attn", "auto"]),
            (
                json!({"chat_template": "chatml"}),
                vec!["--chat-template", "chatml"],
            ),
            (json!({}), vec![]),
        ];
        for (settings, expected) in table {
            assert_eq!(llama(settings.clone()), expected, "{settings}");
        }
    }

    #[test]
    fn all_settings_keep_a_fixed_order() {
        let args = llama(
            json!({"chat_template": "chatml", "threads": 2, "ctx_size": 512,
            "batch_size": 64, "ubatch_size": 32, "parallel": 2, "n_gpu_layers": 0, "flash_attn": "off"}),
        );
        assert_eq!(
            args,
            [
                "--ctx-size",
                "512",
                "--n-gpu-layers",
                "0",
                "--parallel",
                "2",
                "--threads",
                "2",
                "--batch-size",
                "64",
                "--ubatch-size",
                "32",
                "--flash-attn",
                "off",
                "--chat-template",
                "chatml"
            ]
        );
    }

    #[test]
    fn out_of_range_and_bad_values_are_refused() {
        let vllm_bad = [
            json!({"tensor_parallel_size": 0}),
            json!({"gpu_memory_utilization": 0.0}),
            json!({"gpu_memory_utilization": 1.01}),
            json!({"quantization": "--port"}),
            json!({"kv_cache_dtype": "fp8 e4m3"}),
            json!({"max_num_seqs": 0}),
        ];
        for value in vllm_bad {
            let settings: VllmSettings = serde_json::from_value(value.clone()).unwrap();
            assert!(settings.validate().is_err(), "{value}");
        }
        let llama_bad = [
            json!({"parallel": 0}),
            json!({"threads": 0}),
            json!({"batch_size": 64, "ubatch_size": 128}),
            json!({"chat_template": ""}),
            json!({"n_gpu_layers": 1000}),
        ];
        for value in llama_bad {
            let settings: LlamaCppSettings = serde_json::from_value(value.clone()).unwrap();
            assert!(settings.validate().is_err(), "{value}");
        }
        assert!(serde_json::from_value::<VllmSettings>(json!({"dtype": "int4"})).is_err());
        assert!(serde_json::from_value::<LlamaCppSettings>(json!({"flash_attn": true})).is_err());
        assert!(serde_json::from_value::<LlamaCppSettings>(json!({"n_gpu_layers": -1})).is_err());
    }
}
