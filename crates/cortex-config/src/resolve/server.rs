//! The serving process: its listen addresses, request and connection limits, which hosts it
//! answers for, its threads, shutdown grace and log format.

use std::net::SocketAddr;
use std::str::FromStr;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{env_num, positive_u64, split_host_port, split_list, var, Env};
use crate::settings::LogFormat;

pub(super) fn listen(env: Env<'_>, file: &FileConfig) -> Result<SocketAddr, ConfigError> {
    let listen_text = var(env, "CORTEX_LISTEN")
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8084".to_owned());
    SocketAddr::from_str(listen_text.trim()).map_err(|_| {
        ConfigError::new(
            "CORTEX_LISTEN",
            format!("expected ip:port, got {listen_text:?}"),
        )
    })
}

pub(super) fn shutdown_grace_sec(env: Env<'_>, file: &FileConfig) -> Result<u64, ConfigError> {
    env_num(
        env,
        "CORTEX_SHUTDOWN_GRACE_SEC",
        file.shutdown_grace_sec,
        30,
        "a whole number of seconds",
    )
}

pub(super) fn log_format(env: Env<'_>, file: &FileConfig) -> Result<LogFormat, ConfigError> {
    let log_format = match var(env, "CORTEX_LOG_FORMAT")
        .or(file.log_format.clone())
        .as_deref()
        .map(str::trim)
    {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            return Err(ConfigError::new(
                "CORTEX_LOG_FORMAT",
                format!("expected json or text, got {other:?}"),
            ))
        }
    };
    Ok(log_format)
}

pub(super) fn max_body_bytes(env: Env<'_>, file: &FileConfig) -> Result<usize, ConfigError> {
    let max_body_bytes = env_num(
        env,
        "CORTEX_MAX_BODY_BYTES",
        file.max_body_bytes,
        10 * 1024 * 1024,
        "a number of bytes",
    )?;
    if max_body_bytes < 1024 {
        return Err(ConfigError::new(
            "CORTEX_MAX_BODY_BYTES",
            "must be at least 1024",
        ));
    }
    Ok(max_body_bytes)
}

/// How long a client may take, and how many connections it may hold.
pub(super) struct Connections {
    pub header_read_timeout_sec: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub body_read_timeout_sec: u64,
    pub http2_idle_timeout_sec: u64,
}

pub(super) fn connections(env: Env<'_>, file: &FileConfig) -> Result<Connections, ConfigError> {
    let header_read_timeout_sec = positive_u64(
        "CORTEX_HEADER_READ_TIMEOUT_SEC",
        env_num(
            env,
            "CORTEX_HEADER_READ_TIMEOUT_SEC",
            file.header_read_timeout_sec,
            10,
            "a whole number of seconds",
        )?,
    )?;
    let max_connections = env_num(
        env,
        "CORTEX_MAX_CONNECTIONS",
        file.max_connections,
        10_000,
        "a whole number",
    )?;
    if max_connections == 0 {
        return Err(ConfigError::new(
            "CORTEX_MAX_CONNECTIONS",
            "must be at least 1",
        ));
    }
    let max_connections_per_ip = env_num(
        env,
        "CORTEX_MAX_CONNECTIONS_PER_IP",
        file.max_connections_per_ip,
        256,
        "a whole number",
    )?;
    if max_connections_per_ip == 0 {
        return Err(ConfigError::new(
            "CORTEX_MAX_CONNECTIONS_PER_IP",
            "must be at least 1",
        ));
    }
    let body_read_timeout_sec = positive_u64(
        "CORTEX_BODY_READ_TIMEOUT_SEC",
        env_num(
            env,
            "CORTEX_BODY_READ_TIMEOUT_SEC",
            file.body_read_timeout_sec,
            30,
            "a whole number of seconds",
        )?,
    )?;
    let http2_idle_timeout_sec = positive_u64(
        "CORTEX_HTTP2_IDLE_TIMEOUT_SEC",
        env_num(
            env,
            "CORTEX_HTTP2_IDLE_TIMEOUT_SEC",
            file.http2_idle_timeout_sec,
            60,
            "a whole number of seconds",
        )?,
    )?;
    Ok(Connections {
        header_read_timeout_sec,
        max_connections,
        max_connections_per_ip,
        body_read_timeout_sec,
        http2_idle_timeout_sec,
    })
}

pub(super) fn metrics_listen(
    env: Env<'_>,
    file: &FileConfig,
) -> Result<Option<SocketAddr>, ConfigError> {
    let metrics_listen = var(env, "CORTEX_METRICS_LISTEN")
        .or_else(|| file.metrics_listen.clone())
        .filter(|text| !text.trim().is_empty())
        .map(|text| {
            SocketAddr::from_str(text.trim()).map_err(|_| {
                ConfigError::new(
                    "CORTEX_METRICS_LISTEN",
                    format!("expected host:port with an IP address, got {text:?}"),
                )
            })
        })
        .transpose()?;
    Ok(metrics_listen)
}

pub(super) fn allowed_hosts(env: Env<'_>, file: &FileConfig) -> Result<Vec<String>, ConfigError> {
    let allowed_hosts = match var(env, "CORTEX_ALLOWED_HOSTS") {
        Some(text) => split_list(&text),
        None => file.allowed_hosts.clone().unwrap_or_default(),
    }
    .iter()
    .map(|host| parse_allowed_host(host))
    .collect::<Result<Vec<_>, _>>()?;
    Ok(allowed_hosts)
}

pub(super) fn serve_threads(env: Env<'_>, file: &FileConfig) -> Result<usize, ConfigError> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let serve_threads = env_num(
        env,
        "CORTEX_SERVE_THREADS",
        file.serve_threads,
        cores,
        "a whole number",
    )?;
    if !(1..=1024).contains(&serve_threads) {
        return Err(ConfigError::new(
            "CORTEX_SERVE_THREADS",
            "must be between 1 and 1024",
        ));
    }
    Ok(serve_threads)
}

/// One entry of `CORTEX_ALLOWED_HOSTS`: a host name or IP, optionally with a port, as a client
/// writes it in `Host` (IPv6 in brackets).
fn parse_allowed_host(text: &str) -> Result<String, ConfigError> {
    let host = text.trim().to_ascii_lowercase();
    let (name, port) = split_host_port(&host);
    // The split drops a stray tail after an IPv6 literal's bracket; such an entry is refused.
    let whole = port.map_or(name.len(), |p| name.len() + 1 + p.len()) == host.len();
    let valid = whole && {
        let name_ok = match name.strip_prefix('[') {
            Some(bracketed) => bracketed
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
            None => {
                !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            }
        };
        name_ok && port.is_none_or(|p| p.parse::<u16>().is_ok())
    };
    if !valid {
        return Err(ConfigError::new(
            "CORTEX_ALLOWED_HOSTS",
            format!("{text:?} is not a host name or host:port"),
        ));
    }
    Ok(host)
}
