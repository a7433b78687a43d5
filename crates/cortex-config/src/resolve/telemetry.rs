//! OpenTelemetry traces (SPEC §20), by the standard `OTEL_*` variables: off unless an OTLP
//! endpoint is set (or with `OTEL_SDK_DISABLED=true`); OTLP over HTTP with protobuf bodies.

use secrecy::SecretString;

use crate::error::ConfigError;
use crate::parse::{env_bool, env_num, var, Env};
use crate::settings::{TraceExport, TraceSampler};

pub(super) fn traces(env: Env<'_>) -> Result<Option<TraceExport>, ConfigError> {
    if env_bool(env, "OTEL_SDK_DISABLED", None, false)? {
        return Ok(None);
    }
    let endpoint = match (
        var(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var(env, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        // The per-signal variable is the whole URL; the general one is a base to which the
        // signal's path is added (the OTLP exporter specification).
        (Some(url), _) => check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?,
        (None, Some(base)) => {
            let base = check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?;
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
        (None, None) => return Ok(None),
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(env, name) {
            if protocol.trim() != "http/protobuf" {
                return Err(ConfigError::new(
                    name,
                    format!("only http/protobuf is supported, got {protocol:?}"),
                ));
            }
            break;
        }
    }
    let headers = match var(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .map(|text| ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", text))
        .or_else(|| {
            var(env, "OTEL_EXPORTER_OTLP_HEADERS").map(|text| ("OTEL_EXPORTER_OTLP_HEADERS", text))
        }) {
        Some((name, text)) => headers(name, &text)?,
        None => Vec::new(),
    };
    let timeout_ms = match var(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
        Some(_) => env_num(
            env,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            None,
            10_000,
            "milliseconds",
        )?,
        None => env_num(
            env,
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            None,
            10_000,
            "milliseconds",
        )?,
    };
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(ConfigError::new(
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "must be 1 to 600000 milliseconds",
        ));
    }
    let service_name = var(env, "OTEL_SERVICE_NAME").unwrap_or_else(|| "cortex".to_owned());
    let sampler = sampler(env)?;
    let max_queue_size: usize =
        env_num(env, "OTEL_BSP_MAX_QUEUE_SIZE", None, 2048, "a whole number")?;
    if !(1..=1_000_000).contains(&max_queue_size) {
        return Err(ConfigError::new(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "must be 1 to 1000000 spans",
        ));
    }
    let schedule_delay_ms: u64 =
        env_num(env, "OTEL_BSP_SCHEDULE_DELAY", None, 5_000, "milliseconds")?;
    if !(1..=600_000).contains(&schedule_delay_ms) {
        return Err(ConfigError::new(
            "OTEL_BSP_SCHEDULE_DELAY",
            "must be 1 to 600000 milliseconds",
        ));
    }
    Ok(Some(TraceExport {
        endpoint,
        headers,
        timeout_ms,
        service_name,
        sampler,
        max_queue_size,
        schedule_delay_ms,
    }))
}

/// An `http(s)://host[:port][/path]` URL without credentials (they belong in the headers,
/// which are kept secret; a URL is logged).
fn check_url(name: &str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(name, "expected an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || url.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            name,
            "expected http(s)://host[:port][/path] without credentials (send them in OTEL_EXPORTER_OTLP_HEADERS)",
        ));
    }
    Ok(url.to_owned())
}

/// `key=value,key2=value2` (values percent-decoded); the values are secrets (an
/// `Authorization` header for the collector, typically) and never echoed.
fn headers(name: &str, text: &str) -> Result<Vec<(String, SecretString)>, ConfigError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                ConfigError::new(name, "expected key=value pairs separated by commas")
            })?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(
                    name,
                    "a header name is empty or not a token",
                ));
            }
            Ok((
                key.to_owned(),
                SecretString::from(percent_decode(value.trim())),
            ))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sampler(env: Env<'_>) -> Result<TraceSampler, ConfigError> {
    let name = var(env, "OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".into());
    let ratio = || -> Result<f64, ConfigError> {
        let ratio: f64 = env_num(
            env,
            "OTEL_TRACES_SAMPLER_ARG",
            None,
            1.0,
            "a number from 0 to 1",
        )?;
        if (0.0..=1.0).contains(&ratio) {
            Ok(ratio)
        } else {
            Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("expected a number from 0 to 1, got {ratio}"),
            ))
        }
    };
    Ok(match name.trim() {
        "always_on" => TraceSampler::AlwaysOn,
        "always_off" => TraceSampler::AlwaysOff,
        "traceidratio" => TraceSampler::Ratio(ratio()?),
        "parentbased_always_on" => TraceSampler::ParentBasedAlwaysOn,
        "parentbased_always_off" => TraceSampler::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => TraceSampler::ParentBasedRatio(ratio()?),
        other => {
            return Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER",
                format!("expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio, got {other:?}"),
            ))
        }
    })
}
