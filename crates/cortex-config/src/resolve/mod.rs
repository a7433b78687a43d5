//! Merging the file and the environment into a [`Config`], one group of settings at a time.
//!
//! The groups run in this order and each stops at its first invalid setting, so when several
//! settings are wrong the one reported is the first in this list.

mod audit;
mod cache;
mod cors;
mod credentials;
mod engines;
mod flags;
mod mcp;
mod proxies;
mod request_limits;
mod routing;
mod server;
mod sessions;
mod sso;
mod storage;
mod telemetry;
mod tls;
mod upstream;

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::Env;
use crate::settings::Config;

pub use sso::OIDC_CALLBACK_PATH;

pub(crate) fn resolve(
    file: &FileConfig,
    config_file: Option<PathBuf>,
    env: Env<'_>,
) -> Result<Config, ConfigError> {
    let listen = server::listen(env, file)?;
    let data_dir = storage::data_dir(env, file);
    let database_url = storage::database_url(env, file, &data_dir)?;
    let redis = storage::redis(env, file)?;
    let credentials = credentials::credentials(env, file, &data_dir)?;
    let cors = cors::cors(env, file)?;
    let rate_limit = request_limits::rate_limit(env, file)?;
    let concurrency = request_limits::concurrency(env, file)?;
    let mcp = mcp::mcp(env, file)?;
    let trusted_proxies = proxies::trusted_proxies(env, file)?;
    let tls = tls::tls(env, file)?;
    let usage_retention_days = storage::usage_retention_days(env, file)?;
    let sessions = sessions::sessions(env, file)?;
    let sign_in = sso::sign_in(env, file)?;
    let shutdown_grace_sec = server::shutdown_grace_sec(env, file)?;
    let log_format = server::log_format(env, file)?;
    let flags = flags::feature_flags(env, file)?;
    let audit_forward = audit::forward(env, file, &flags.flags)?;
    let storage_root = storage::storage_root(env, file, &data_dir);
    let max_body_bytes = server::max_body_bytes(env, file)?;
    let connections = server::connections(env, file)?;
    let metrics_listen = server::metrics_listen(env, file)?;
    let allowed_hosts = server::allowed_hosts(env, file)?;
    let serve_threads = server::serve_threads(env, file)?;
    let upstream = upstream::upstream(env, file, &credentials.internal_upstream_key)?;
    let routing = routing::routing(env, file)?;
    let engines = engines::engines(env)?;
    let traces = telemetry::traces(env)?;
    let cache = cache::cache(env, redis.url.is_some())?;

    Ok(Config {
        listen,
        data_dir,
        database_url,
        redis_url: redis.url,
        redis_ca_file: redis.ca_file,
        redis_failure_mode: redis.failure_mode,
        config_file,
        admin_user: credentials.admin_user,
        admin_password: credentials.admin_password,
        master_key: credentials.master_key,
        metrics_token: credentials.metrics_token,
        dev_allow_all_keys: credentials.dev_allow_all_keys,
        internal_upstream_key: credentials.internal_upstream_key,
        cors,
        oidc: sign_in.oidc,
        webauthn: sign_in.webauthn,
        local_login: sign_in.local_login,
        rate_limit,
        concurrency,
        mcp_token: mcp.token,
        mcp_api_key: mcp.api_key,
        mcp_requests_per_minute: mcp.requests_per_minute,
        trusted_proxies,
        behind_tls: tls.behind_tls,
        tls: tls.tls,
        usage_retention_days,
        require_mfa_for: sessions.require_mfa_for,
        access_token_ttl_sec: sessions.access_token_ttl_sec,
        refresh_token_ttl_sec: sessions.refresh_token_ttl_sec,
        shutdown_grace_sec,
        log_format,
        feature_flags_file: flags.file,
        feature_flags: flags.flags,
        audit_forward,
        storage_root,
        max_body_bytes,
        header_read_timeout_sec: connections.header_read_timeout_sec,
        max_connections: connections.max_connections,
        max_connections_per_ip: connections.max_connections_per_ip,
        body_read_timeout_sec: connections.body_read_timeout_sec,
        http2_idle_timeout_sec: connections.http2_idle_timeout_sec,
        metrics_listen,
        allowed_hosts,
        serve_threads,
        upstream_timeouts: upstream.timeouts,
        upstream_allow: upstream.allow,
        routing,
        engines,
        providers: upstream.providers,
        models: upstream.models,
        traces,
        cache,
    })
}
