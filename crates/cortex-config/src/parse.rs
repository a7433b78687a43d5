//! Merging the file and the environment, and validating every value.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use cortex_domain::Role;
use ipnet::IpNet;
use secrecy::SecretString;

use crate::file::{FileConfig, SecretRef, SecretSource};
use cortex_domain::egress::{EgressPolicy, Origin};
use cortex_domain::features::FeatureFlags;

use crate::{
    AuditForwardSettings, AuditForwardTarget, ConcurrencySettings, Config, ConfigError,
    CorsSettings, LogFormat, MasterKeySource, RateLimitSettings, RedisFailureMode, TlsPaths,
    UpstreamTimeouts,
};

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads a variable, treating an empty value as unset (a common shell/compose artefact).
fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn parse_bool(setting: &str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            setting,
            format!("expected true or false, got {text:?}"),
        )),
    }
}

fn parse_num<T: FromStr>(setting: &str, text: &str, what: &str) -> Result<T, ConfigError> {
    text.trim()
        .parse::<T>()
        .map_err(|_| ConfigError::new(setting, format!("expected {what}, got {text:?}")))
}

fn env_bool(
    env: Env<'_>,
    name: &str,
    file: Option<bool>,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(env, name) {
        Some(text) => parse_bool(name, &text),
        None => Ok(file.unwrap_or(default)),
    }
}

fn env_num<T: FromStr + Copy>(
    env: Env<'_>,
    name: &str,
    file: Option<T>,
    default: T,
    what: &str,
) -> Result<T, ConfigError> {
    match var(env, name) {
        Some(text) => parse_num(name, &text, what),
        None => Ok(file.unwrap_or(default)),
    }
}

fn positive_u64(name: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(name, "must be greater than zero"));
    }
    Ok(value)
}

/// Resolves a secret from the file: a literal, `{ env = "NAME" }` or `{ file = "/path" }`.
pub(crate) fn resolve_secret(
    setting: &str,
    secret: &SecretRef,
    env: Env<'_>,
) -> Result<SecretString, ConfigError> {
    match secret {
        SecretRef::Literal(text) => Ok(SecretString::from(text.clone())),
        SecretRef::Reference(SecretSource {
            env: Some(name),
            file: None,
        }) => var(env, name).map(SecretString::from).ok_or_else(|| {
            ConfigError::new(setting, format!("environment variable {name} is not set"))
        }),
        SecretRef::Reference(SecretSource {
            env: None,
            file: Some(path),
        }) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    setting,
                    format!("cannot read secret file {path}: {}", e.kind()),
                )
            })?;
            Ok(SecretString::from(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
        SecretRef::Reference(_) => Err(ConfigError::new(
            setting,
            "give exactly one of `env` or `file`",
        )),
    }
}

fn secret_setting(
    env: Env<'_>,
    name: &str,
    file_key: &str,
    file: Option<&SecretRef>,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = var(env, name) {
        return Ok(Some(SecretString::from(value)));
    }
    file.map(|secret| resolve_secret(file_key, secret, env))
        .transpose()
}

/// An origin is `scheme://host[:port]`, nothing more; `*` is the wildcard.
fn validate_origin(origin: &str) -> Result<String, ConfigError> {
    let origin = origin.trim().trim_end_matches('/');
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            ConfigError::new(
                "CORS_ALLOW_ORIGINS",
                format!("{origin:?} is not an http(s) origin"),
            )
        })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(ConfigError::new(
            "CORS_ALLOW_ORIGINS",
            format!("{origin:?} must be scheme://host[:port] without a path"),
        ));
    }
    Ok(origin.to_ascii_lowercase())
}

fn parse_proxy(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let net = IpNet::from_str(text)
        .or_else(|_| std::net::IpAddr::from_str(text).map(IpNet::from))
        .map_err(|_| {
            ConfigError::new(
                "CORTEX_TRUSTED_PROXIES",
                format!("{text:?} is not an IP or CIDR"),
            )
        })?;
    Ok(canonical_net(net))
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it means: peers are
/// matched in their IPv4 form, whichever socket family accepted them.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
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

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn resolve(
    file: FileConfig,
    config_file: Option<PathBuf>,
    env: Env<'_>,
) -> Result<Config, ConfigError> {
    let listen_text = var(env, "CORTEX_LISTEN")
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8084".to_owned());
    let listen = SocketAddr::from_str(listen_text.trim()).map_err(|_| {
        ConfigError::new(
            "CORTEX_LISTEN",
            format!("expected ip:port, got {listen_text:?}"),
        )
    })?;

    let data_dir = PathBuf::from(
        var(env, "CORTEX_DATA_DIR")
            .or(file.data_dir.clone())
            .unwrap_or_else(|| "./cortex-data".to_owned()),
    );

    let database_url = match secret_setting(
        env,
        "DATABASE_URL",
        "database_url",
        file.database_url.as_ref(),
    )? {
        Some(url) => {
            use secrecy::ExposeSecret;
            let text = url.expose_secret();
            if !(text.starts_with("sqlite:")
                || text.starts_with("postgres://")
                || text.starts_with("postgresql://"))
            {
                return Err(ConfigError::new(
                    "DATABASE_URL",
                    "must start with sqlite: or postgres://",
                ));
            }
            url
        }
        None => SecretString::from(Config::default_sqlite_url(&data_dir)),
    };

    let redis_url = secret_setting(env, "REDIS_URL", "redis_url", file.redis_url.as_ref())?;
    if let Some(url) = &redis_url {
        use secrecy::ExposeSecret;
        let text = url.expose_secret();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
    }
    let redis_ca_file = var(env, "CORTEX_REDIS_CA_FILE")
        .or(file.redis_ca_file.clone())
        .map(PathBuf::from);
    if redis_ca_file.is_some() {
        use secrecy::ExposeSecret;
        let tls = redis_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().starts_with("rediss://"));
        if !tls {
            return Err(ConfigError::new(
                "CORTEX_REDIS_CA_FILE",
                "is only used with a rediss:// REDIS_URL",
            ));
        }
    }
    let redis_failure_mode = match var(env, "CORTEX_REDIS_FAILURE_MODE")
        .or(file.redis_failure_mode.clone())
        .as_deref()
        .map(str::trim)
    {
        None | Some("fail-open") => RedisFailureMode::FailOpen,
        Some("fail-closed") => RedisFailureMode::FailClosed,
        Some(other) => {
            return Err(ConfigError::new(
                "CORTEX_REDIS_FAILURE_MODE",
                format!("expected fail-open or fail-closed, got {other:?}"),
            ))
        }
    };

    let admin_user = var(env, "CORTEX_ADMIN_USER")
        .or(file.admin_user.clone())
        .unwrap_or_else(|| "admin".to_owned());
    if admin_user.len() > 64
        || !admin_user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(ConfigError::new(
            "CORTEX_ADMIN_USER",
            "use 1-64 letters, digits, '.', '_' or '-'",
        ));
    }
    let admin_password = var(env, "CORTEX_ADMIN_PASSWORD").map(SecretString::from);

    let master_key = match (
        var(env, "CORTEX_MASTER_KEY"),
        var(env, "CORTEX_MASTER_KEY_FILE").or(file.master_key_file.clone()),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "CORTEX_MASTER_KEY",
                "set CORTEX_MASTER_KEY or CORTEX_MASTER_KEY_FILE, not both",
            ))
        }
        (Some(inline), None) => MasterKeySource::Inline(SecretString::from(inline)),
        (None, Some(path)) => MasterKeySource::File(PathBuf::from(path)),
        (None, None) => MasterKeySource::Generated(data_dir.join("master.key")),
    };

    let metrics_token = secret_setting(
        env,
        "CORTEX_METRICS_TOKEN",
        "metrics_token",
        file.metrics_token.as_ref(),
    )?;
    if let Some(token) = &metrics_token {
        use secrecy::ExposeSecret;
        if token.expose_secret().len() < 16 {
            return Err(ConfigError::new(
                "CORTEX_METRICS_TOKEN",
                "must be at least 16 characters",
            ));
        }
    }
    let dev_allow_all_keys = env_bool(env, "GATEWAY_DEV_ALLOW_ALL_KEYS", None, false)?;
    let internal_vllm_api_key = secret_setting(
        env,
        "INTERNAL_VLLM_API_KEY",
        "internal_vllm_api_key",
        file.internal_vllm_api_key.as_ref(),
    )?;

    let origins_raw = match var(env, "CORS_ALLOW_ORIGINS") {
        Some(text) => split_list(&text),
        None => file.cors_allow_origins.clone().unwrap_or_default(),
    };
    let allow_origins = origins_raw
        .iter()
        .map(|o| validate_origin(o))
        .collect::<Result<Vec<_>, _>>()?;
    let allow_credentials = env_bool(
        env,
        "CORS_ALLOW_CREDENTIALS",
        file.cors_allow_credentials,
        false,
    )?;
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        return Err(ConfigError::new(
            "CORS_ALLOW_ORIGINS",
            "a wildcard (*) together with CORS_ALLOW_CREDENTIALS=true is refused; list the origins",
        ));
    }

    let rl = file.rate_limit.clone().unwrap_or_default();
    let rate_limit = RateLimitSettings {
        enabled: env_bool(env, "RATE_LIMIT_ENABLED", rl.enabled, true)?,
        requests_per_second: env_num(env, "RATE_LIMIT_RPS", rl.rps, 10.0, "a positive number")?,
        burst: env_num(
            env,
            "RATE_LIMIT_BURST",
            rl.burst,
            20,
            "a whole number of at least 1",
        )?,
        window_sec: env_num(
            env,
            "RATE_LIMIT_WINDOW_SEC",
            rl.window_sec,
            60,
            "a whole number of seconds",
        )?,
    };
    if !(rate_limit.requests_per_second.is_finite() && rate_limit.requests_per_second > 0.0) {
        return Err(ConfigError::new(
            "RATE_LIMIT_RPS",
            "must be a positive number",
        ));
    }
    if rate_limit.burst == 0 {
        return Err(ConfigError::new("RATE_LIMIT_BURST", "must be at least 1"));
    }
    positive_u64("RATE_LIMIT_WINDOW_SEC", rate_limit.window_sec)?;

    let concurrency = ConcurrencySettings {
        enabled: env_bool(
            env,
            "CONCURRENCY_LIMIT_ENABLED",
            file.concurrency_limit_enabled,
            true,
        )?,
        max_streams_per_id: env_num(
            env,
            "MAX_CONCURRENT_STREAMS_PER_ID",
            file.max_concurrent_streams_per_id,
            5,
            "a whole number of at least 1",
        )?,
        stream_lease_sec: env_num(
            env,
            "CORTEX_STREAM_LEASE_SEC",
            file.stream_lease_sec,
            30,
            "a whole number of seconds",
        )?,
    };
    if !(3..=3600).contains(&concurrency.stream_lease_sec) {
        return Err(ConfigError::new(
            "CORTEX_STREAM_LEASE_SEC",
            "must be between 3 and 3600 seconds",
        ));
    }
    if concurrency.max_streams_per_id == 0 {
        return Err(ConfigError::new(
            "MAX_CONCURRENT_STREAMS_PER_ID",
            "must be at least 1",
        ));
    }

    let mcp_token = var(env, "MCP_TOKEN").map(SecretString::from);
    if let Some(token) = &mcp_token {
        use secrecy::ExposeSecret;
        if token.expose_secret().chars().count() < 32 {
            return Err(ConfigError::new(
                "MCP_TOKEN",
                "must be at least 32 characters",
            ));
        }
    }
    let mcp_api_key = var(env, "MCP_API_KEY").map(SecretString::from);
    if let Some(key) = &mcp_api_key {
        use secrecy::ExposeSecret;
        if cortex_domain::api_key::parse_api_key(key.expose_secret()).is_err() {
            return Err(ConfigError::new(
                "MCP_API_KEY",
                "must be a Cortex API key (ctx_…)",
            ));
        }
    }
    let mcp_requests_per_minute = env_num(
        env,
        "CORTEX_MCP_REQUESTS_PER_MINUTE",
        file.mcp_requests_per_minute,
        30,
        "a whole number",
    )?;
    if mcp_requests_per_minute == 0 {
        return Err(ConfigError::new(
            "CORTEX_MCP_REQUESTS_PER_MINUTE",
            "must be at least 1",
        ));
    }

    let proxies_raw = match var(env, "CORTEX_TRUSTED_PROXIES") {
        Some(text) => split_list(&text),
        None => file.trusted_proxies.clone().unwrap_or_default(),
    };
    let trusted_proxies = proxies_raw
        .iter()
        .map(|p| parse_proxy(p))
        .collect::<Result<Vec<_>, _>>()?;
    let trust_all_proxies = env_bool(
        env,
        "CORTEX_TRUST_ALL_PROXIES",
        file.trust_all_proxies,
        false,
    )?;
    // A /0 range makes every peer a proxy, so every client chooses its own address through
    // X-Forwarded-For: refused unless the operator says so in as many words.
    if let Some(everything) = trusted_proxies.iter().find(|net| net.prefix_len() == 0) {
        if !trust_all_proxies {
            return Err(ConfigError::new(
                "CORTEX_TRUSTED_PROXIES",
                format!("{everything} trusts every peer, so any client could pick its own address with X-Forwarded-For; list your proxies' addresses, or set CORTEX_TRUST_ALL_PROXIES=true if every peer really is a proxy"),
            ));
        }
    }

    let behind_tls = env_bool(env, "CORTEX_BEHIND_TLS", file.behind_tls, false)?;
    let tls = match (
        var(env, "CORTEX_TLS_CERT").or(file.tls_cert.clone()),
        var(env, "CORTEX_TLS_KEY").or(file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsPaths {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "CORTEX_TLS_KEY",
                "CORTEX_TLS_CERT is set but CORTEX_TLS_KEY is not",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "CORTEX_TLS_CERT",
                "CORTEX_TLS_KEY is set but CORTEX_TLS_CERT is not",
            ))
        }
    };

    let usage_retention_days = env_num(
        env,
        "CORTEX_USAGE_RETENTION_DAYS",
        file.usage_retention_days,
        90,
        "a whole number of days",
    )?;
    if usage_retention_days == 0 {
        return Err(ConfigError::new(
            "CORTEX_USAGE_RETENTION_DAYS",
            "must be at least 1",
        ));
    }

    let mfa_raw = match var(env, "CORTEX_REQUIRE_MFA_FOR") {
        Some(text) => split_list(&text),
        None => file.require_mfa_for.clone().unwrap_or_default(),
    };
    let require_mfa_for = mfa_raw
        .iter()
        .map(|name| {
            Role::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
                ConfigError::new("CORTEX_REQUIRE_MFA_FOR", format!("unknown role {name:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let access_token_ttl_sec = positive_u64(
        "CORTEX_ACCESS_TOKEN_TTL_SEC",
        env_num(
            env,
            "CORTEX_ACCESS_TOKEN_TTL_SEC",
            file.access_token_ttl_sec,
            900,
            "a whole number of seconds",
        )?,
    )?;
    let refresh_token_ttl_sec = positive_u64(
        "CORTEX_REFRESH_TOKEN_TTL_SEC",
        env_num(
            env,
            "CORTEX_REFRESH_TOKEN_TTL_SEC",
            file.refresh_token_ttl_sec,
            604_800,
            "a whole number of seconds",
        )?,
    )?;
    let shutdown_grace_sec = env_num(
        env,
        "CORTEX_SHUTDOWN_GRACE_SEC",
        file.shutdown_grace_sec,
        30,
        "a whole number of seconds",
    )?;

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

    let feature_flags_file = var(env, "CORTEX_FEATURE_FLAGS_FILE")
        .or(file.feature_flags_file.clone())
        .map(PathBuf::from);
    let feature_flags = match &feature_flags_file {
        None => FeatureFlags::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "CORTEX_FEATURE_FLAGS_FILE",
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            FeatureFlags::parse(&text).map_err(|problem| {
                ConfigError::new(
                    "CORTEX_FEATURE_FLAGS_FILE",
                    format!("{}: {problem}", path.display()),
                )
            })?
        }
    };
    let audit_forward =
        match var(env, "CORTEX_AUDIT_FORWARD_URL").or(file.audit_forward_url.clone()) {
            None => None,
            Some(url) => Some(AuditForwardSettings {
                target: parse_forward_url(url.trim())?,
                token: secret_setting(
                    env,
                    "CORTEX_AUDIT_FORWARD_TOKEN",
                    "audit_forward_token",
                    file.audit_forward_token.as_ref(),
                )?,
                ca_file: var(env, "CORTEX_AUDIT_FORWARD_CA_FILE")
                    .or(file.audit_forward_ca_file.clone())
                    .map(PathBuf::from),
            }),
        };
    if let Some(settings) = &audit_forward {
        let clear_text = match &settings.target {
            AuditForwardTarget::Http { url } => url.starts_with("http://"),
            AuditForwardTarget::Syslog { tls, .. } => !tls,
        };
        if settings.ca_file.is_some() && clear_text {
            return Err(ConfigError::new(
                "CORTEX_AUDIT_FORWARD_CA_FILE",
                "is only used with an https:// or syslog+tls:// sink",
            ));
        }
    }
    if audit_forward.is_none()
        && feature_flags.is_enabled(cortex_domain::features::AUDIT_FORWARDING)
    {
        return Err(ConfigError::new(
            "CORTEX_AUDIT_FORWARD_URL",
            "the audit_forwarding feature flag is on but no sink URL is set",
        ));
    }
    let storage_root = var(env, "CORTEX_STORAGE_ROOT")
        .or(file.storage_root.clone())
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("storage"));
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
    let allowed_hosts = match var(env, "CORTEX_ALLOWED_HOSTS") {
        Some(text) => split_list(&text),
        None => file.allowed_hosts.clone().unwrap_or_default(),
    }
    .iter()
    .map(|host| parse_allowed_host(host))
    .collect::<Result<Vec<_>, _>>()?;
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
    let up = file.upstream.clone().unwrap_or_default();
    let upstream_timeouts = UpstreamTimeouts {
        connect_ms: positive_u64(
            "upstream.connect_timeout_ms",
            up.connect_timeout_ms.unwrap_or(5_000),
        )?,
        first_byte_ms: positive_u64(
            "upstream.first_byte_timeout_ms",
            up.first_byte_timeout_ms.unwrap_or(120_000),
        )?,
        idle_ms: positive_u64(
            "upstream.idle_timeout_ms",
            up.idle_timeout_ms.unwrap_or(60_000),
        )?,
    };

    let upstream_allow = upstream_allow(env, up.allow.as_deref())?;

    validate_catalog(&file)?;
    let providers = file
        .providers
        .iter()
        .map(|p| {
            let setting = format!("providers[{}].api_key", p.name);
            let api_key = p
                .api_key
                .as_ref()
                .map(|s| resolve_secret(&setting, s, env))
                .transpose()?;
            let place = format!("providers[{}]", p.name);
            check_internal_key(
                &place,
                p.use_internal_key,
                api_key.is_some(),
                &internal_vllm_api_key,
            )?;
            check_egress(&place, &p.base_url, &upstream_allow)?;
            Ok(crate::ProviderSpec {
                name: p.name.clone(),
                base_url: p.base_url.clone(),
                api_key,
                ca_bundle: p.ca_bundle.as_ref().map(PathBuf::from),
                use_internal_key: p.use_internal_key,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;

    Ok(Config {
        listen,
        data_dir,
        database_url,
        redis_url,
        redis_ca_file,
        redis_failure_mode,
        config_file,
        admin_user,
        admin_password,
        master_key,
        metrics_token,
        dev_allow_all_keys,
        internal_vllm_api_key,
        cors: CorsSettings {
            allow_origins,
            allow_credentials,
        },
        rate_limit,
        concurrency,
        mcp_token,
        mcp_api_key,
        mcp_requests_per_minute,
        trusted_proxies,
        behind_tls,
        tls,
        usage_retention_days,
        require_mfa_for,
        access_token_ttl_sec,
        refresh_token_ttl_sec,
        shutdown_grace_sec,
        log_format,
        feature_flags_file,
        feature_flags,
        audit_forward,
        storage_root,
        max_body_bytes,
        header_read_timeout_sec,
        max_connections,
        max_connections_per_ip,
        body_read_timeout_sec,
        http2_idle_timeout_sec,
        metrics_listen,
        allowed_hosts,
        serve_threads,
        upstream_timeouts,
        upstream_allow,
        providers,
        models: file.models,
    })
}

/// Providers and models declared in the file must form a consistent catalogue.
fn validate_catalog(file: &FileConfig) -> Result<(), ConfigError> {
    let mut provider_names = Vec::new();
    for provider in &file.providers {
        let setting = format!("providers[{}]", provider.name);
        if provider.name.trim().is_empty() || provider.name.len() > 128 {
            return Err(ConfigError::new(
                "providers",
                "every provider needs a name of 1-128 characters",
            ));
        }
        if provider_names.contains(&provider.name) {
            return Err(ConfigError::new(setting, "the name is used twice"));
        }
        validate_base_url(&setting, &provider.base_url)?;
        provider_names.push(provider.name.clone());
    }
    let mut model_names = Vec::new();
    for model in &file.models {
        let setting = format!("models[{}]", model.name);
        if model.name.trim().is_empty() || model.name.len() > 256 {
            return Err(ConfigError::new(
                "models",
                "every model needs a name of 1-256 characters",
            ));
        }
        if model_names.contains(&model.name) {
            return Err(ConfigError::new(setting, "the name is used twice"));
        }
        let names = model.provider_names();
        if names.is_empty() {
            return Err(ConfigError::new(setting, "give `provider` or `providers`"));
        }
        if let Some(unknown) = names.iter().find(|n| !provider_names.contains(n)) {
            return Err(ConfigError::new(
                setting,
                format!("unknown provider {unknown:?}"),
            ));
        }
        for price in [model.input_price_per_mtok, model.output_price_per_mtok]
            .into_iter()
            .flatten()
        {
            if !(price.is_finite() && price >= 0.0) {
                return Err(ConfigError::new(setting, "prices must be zero or more"));
            }
        }
        model_names.push(model.name.clone());
    }
    Ok(())
}

/// `CORTEX_UPSTREAM_ALLOW` (comma-separated) or the file's `upstream.allow`; unset is the
/// default policy (everything but link-local and metadata addresses).
fn upstream_allow(env: Env<'_>, file: Option<&[String]>) -> Result<EgressPolicy, ConfigError> {
    const SETTING: &str = "CORTEX_UPSTREAM_ALLOW";
    let entries = match var(env, SETTING) {
        Some(text) => split_list(&text),
        None => match file {
            Some(list) => list.to_vec(),
            None => return Ok(EgressPolicy::default()),
        },
    };
    EgressPolicy::allow_list(entries.iter().map(String::as_str))
        .map_err(|e| ConfigError::new(SETTING, e.to_string()))
}

/// The internal key goes only where the file says, and a provider has one key, not two.
fn check_internal_key(
    place: &str,
    use_internal_key: bool,
    has_own_key: bool,
    internal_key: &Option<SecretString>,
) -> Result<(), ConfigError> {
    if !use_internal_key {
        return Ok(());
    }
    if has_own_key {
        return Err(ConfigError::new(
            format!("{place}.use_internal_key"),
            "give `api_key` or `use_internal_key = true`, not both",
        ));
    }
    if internal_key.is_none() {
        return Err(ConfigError::new(
            format!("{place}.use_internal_key"),
            "is true but INTERNAL_VLLM_API_KEY is not set",
        ));
    }
    Ok(())
}

/// A base URL whose host is an address the egress policy refuses, refused with a clear
/// message. (Names are checked when they are resolved, on every connect.)
pub fn check_egress(
    setting: &str,
    base_url: &str,
    policy: &EgressPolicy,
) -> Result<(), ConfigError> {
    let Some(origin) = Origin::of(base_url) else {
        return Ok(());
    };
    if policy.allows_literal(&origin.host) == Some(false) {
        return Err(ConfigError::new(
            setting,
            format!(
                "base_url points at {}, which the egress policy refuses (link-local and cloud \
                 metadata addresses always, anything outside CORTEX_UPSTREAM_ALLOW when it is set)",
                origin.host
            ),
        ));
    }
    Ok(())
}

/// A provider's base URL is an absolute http(s) URL including the version prefix.
pub fn validate_base_url(setting: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(setting, "base_url must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || url.contains(['?', '#', ' ']) {
        return Err(ConfigError::new(
            setting,
            "base_url must be http(s)://host[:port]/path without credentials, query or fragment",
        ));
    }
    Ok(())
}

/// `CORTEX_AUDIT_FORWARD_URL`: `https://…`, `http://` to a loopback address, `syslog+tls://host:port`,
/// or `syslog+tcp://` to a loopback address. Audit events do not cross a network in clear text:
/// the clear-text forms reach only a relay on the same host. Credentials never go in the URL:
/// the token has its own setting.
fn parse_forward_url(url: &str) -> Result<AuditForwardTarget, ConfigError> {
    const SETTING: &str = "CORTEX_AUDIT_FORWARD_URL";
    const EXPECTED: &str =
        "expected https://…, syslog+tls://host:port, or http:// or syslog+tcp:// to a loopback address";
    let bad = |problem: &str| ConfigError::new(SETTING, problem.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(EXPECTED))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "put no credentials in the URL; set CORTEX_AUDIT_FORWARD_TOKEN instead",
        ));
    }
    if url.contains([' ', '\n', '\r']) {
        return Err(bad("the URL may not contain spaces or line breaks"));
    }
    let (host, port) = split_host_port(authority);
    if host.is_empty() {
        return Err(bad("the URL has no host"));
    }
    match scheme {
        "https" => Ok(AuditForwardTarget::Http {
            url: url.to_owned(),
        }),
        "http" if is_loopback_host(host) => Ok(AuditForwardTarget::Http {
            url: url.to_owned(),
        }),
        "http" => Err(bad(
            "plain http is allowed only to a loopback address; use https for a remote SIEM",
        )),
        "syslog+tcp" | "syslog+tls" => {
            if authority.len() != rest.len()
                && !rest[authority.len()..].trim_matches('/').is_empty()
            {
                return Err(bad(&format!("{scheme}://host:port takes no path")));
            }
            let tls = scheme == "syslog+tls";
            if !tls && !is_loopback_host(host) {
                return Err(bad(
                    "syslog+tcp sends in clear text and is allowed only to a loopback address \
                     (a local relay); use syslog+tls://host:port for a remote receiver",
                ));
            }
            let port = port
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    bad(&format!(
                        "{scheme}:// needs a port, e.g. {scheme}://127.0.0.1:6514"
                    ))
                })?;
            Ok(AuditForwardTarget::Syslog {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port,
                tls,
            })
        }
        _ => Err(bad(EXPECTED)),
    }
}

/// Splits `host[:port]`, keeping an IPv6 literal's brackets on the host. Used for URLs here,
/// for `CORTEX_ALLOWED_HOSTS` entries, and by the server for the `Host` it matches against them.
pub fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => {
                let port = authority[end + 1..].strip_prefix(':');
                (&authority[..=end], port)
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
