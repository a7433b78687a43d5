//! The validated configuration ([`Config`]) and the typed settings it is made of: what the rest
//! of Cortex reads. Building it from the file and the environment is the `resolve` module's job.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cortex_domain::egress::EgressPolicy;
use cortex_domain::features::FeatureFlags;
use cortex_domain::{Role, RoutingStrategy};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::provider_kind::ProviderDialect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// What to do with limits when Redis cannot be reached (SPEC §6: a documented, tested choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailureMode {
    /// Keep serving; limits fall back to this instance's in-process limiter. The default: an
    /// outage of the limiter store should not become an outage of the gateway.
    FailOpen,
    /// Refuse limited requests with 503 while Redis is unreachable.
    FailClosed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub requests_per_second: f64,
    pub burst: u32,
    pub window_sec: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencySettings {
    pub enabled: bool,
    pub max_streams_per_id: u32,
    /// How long a stream slot outlives an instance that died holding it (renewed every third
    /// of it while the stream runs).
    pub stream_lease_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsSettings {
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum MasterKeySource {
    Inline(SecretString),
    File(PathBuf),
    /// Not given: a key file is generated in the data dir on first start (mode 0600).
    Generated(PathBuf),
}

/// Where audit events are forwarded (SPEC §8: a SIEM over HTTP or syslog over TCP or TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditForwardTarget {
    /// POST JSON Lines to this URL (https, or http to a loopback address only).
    Http { url: String },
    /// RFC 5424 messages with octet-counting framing (RFC 6587) over a TCP connection, in
    /// clear text to a loopback relay (`syslog+tcp://`) or over TLS (RFC 5425, `syslog+tls://`).
    Syslog { host: String, port: u16, tls: bool },
}

#[derive(Debug, Clone)]
pub struct AuditForwardSettings {
    pub target: AuditForwardTarget,
    /// Sent as `Authorization: Bearer …` to an HTTP sink.
    pub token: Option<SecretString>,
    /// `CORTEX_AUDIT_FORWARD_CA_FILE`: PEM CA certificates trusted for the sink's TLS
    /// certificate besides the public roots (a SIEM behind a private CA).
    pub ca_file: Option<PathBuf>,
}

impl AuditForwardSettings {
    /// A stable name for the sink, without credentials: the forwarding cursor is kept per sink, so
    /// pointing Cortex at a new SIEM sends that SIEM the whole log from the start.
    pub fn sink_name(&self) -> String {
        match &self.target {
            AuditForwardTarget::Http { url } => url.clone(),
            AuditForwardTarget::Syslog { host, port, tls } => {
                // Unchanged since the first release (IPv6 without brackets): the name keys the
                // forwarding cursor, and a new name would send the whole log again.
                let scheme = if *tls { "syslog+tls" } else { "syslog+tcp" };
                format!("{scheme}://{host}:{port}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect_ms: u64,
    pub first_byte_ms: u64,
    pub idle_ms: u64,
}

/// How providers are watched and requests retried (SPEC §16): keys of the file's `[upstream]`
/// table, each overridden by its `CORTEX_*` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSettings {
    /// `CORTEX_BREAKER_FAILURES`: consecutive failures that open a provider's circuit breaker
    /// (1 to 1000, default 5).
    pub breaker_failures: u32,
    /// `CORTEX_BREAKER_COOLDOWN_SEC`: how long an open breaker waits before one probe request
    /// may go through (half-open; 1 to 3600, default 30).
    pub breaker_cooldown_sec: u64,
    /// `CORTEX_HEALTH_CHECK_INTERVAL_SEC`: seconds between active health checks of each
    /// provider (up to 3600, default 10); 0 turns active checks off, leaving passive outcomes.
    pub health_check_interval_sec: u64,
    /// `CORTEX_HEALTH_CHECK_TIMEOUT_MS`: how long one health check may take (1 to 60000,
    /// default 5000).
    pub health_check_timeout_ms: u64,
    /// `CORTEX_MAX_RETRIES`: retries of a non-streamed request after a connect error, 429 or
    /// 5xx, so up to `max_retries + 1` attempts (0 to 10, default 2).
    pub max_retries: u32,
}

impl Default for RoutingSettings {
    /// The documented defaults (README, SPEC §16).
    fn default() -> Self {
        RoutingSettings {
            breaker_failures: 5,
            breaker_cooldown_sec: 30,
            health_check_interval_sec: 10,
            health_check_timeout_ms: 5_000,
            max_retries: 2,
        }
    }
}

/// Inference engines (SPEC §17).
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// `CORTEX_MODELS_DIR`: local model paths must be inside it; without it only Hugging Face
    /// repo ids are accepted.
    pub models_dir: Option<PathBuf>,
    /// `CORTEX_VLLM_BIN` (default `vllm`, found on `PATH`).
    pub vllm_program: PathBuf,
    /// `CORTEX_LLAMA_SERVER_BIN` (default `llama-server`).
    pub llama_server_program: PathBuf,
    /// `CORTEX_ENGINES_DOCKER_HOST`: the Docker Engine API for `docker` engines (e.g.
    /// `unix:///var/run/docker.sock`); without it the docker runtime is off.
    pub docker_host: Option<String>,
}

/// Single sign-on at an OpenID Provider (SPEC §19): set when `CORTEX_OIDC_ISSUER` (or the
/// file's `[oidc] issuer`) is.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The provider's issuer identifier, exactly as its ID tokens' `iss` says it.
    pub issuer: String,
    pub client_id: String,
    /// Absent for a public client (PKCE alone).
    pub client_secret: Option<SecretString>,
    /// This server's callback, `…/admin/auth/oidc/callback`, as registered at the provider.
    pub redirect_url: String,
    pub display_name: String,
    /// Asked for at the provider; always holds `openid`.
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub role_claim: Option<String>,
    pub org_claim: Option<String>,
    pub rules: Vec<OidcRule>,
    pub post_logout_redirect_url: Option<String>,
}

/// Passkeys (SPEC §19): the relying party the browser's credentials are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebauthnSettings {
    /// The console's origin (`https://host[:port]`), the only one assertions may come from.
    pub origin: String,
    /// The relying party id: the origin's host or a registrable parent domain of it.
    pub rp_id: String,
    pub rp_name: String,
}

/// Claim → organization (by name) and role; the first rule that matches decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcRule {
    pub claim: Option<String>,
    pub value: Option<String>,
    pub org: String,
    pub role: Role,
}

/// The whole validated configuration. Secrets are `SecretString`, so `Debug` cannot leak them.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: SecretString,
    pub redis_url: Option<SecretString>,
    /// PEM CA bundle for a `rediss://` server behind a private CA.
    pub redis_ca_file: Option<PathBuf>,
    pub redis_failure_mode: RedisFailureMode,
    pub config_file: Option<PathBuf>,
    pub admin_user: String,
    pub admin_password: Option<SecretString>,
    pub master_key: MasterKeySource,
    pub metrics_token: Option<SecretString>,
    pub dev_allow_all_keys: bool,
    /// The gateway's own credential towards providers (`INTERNAL_VLLM_API_KEY`), sent only to
    /// the providers `cortex.toml` declares with `use_internal_key = true`.
    pub internal_upstream_key: Option<SecretString>,
    pub cors: CorsSettings,
    /// Single sign-on (SPEC §19); `None` when not configured.
    pub oidc: Option<OidcSettings>,
    /// Passkeys (SPEC §19); `None` when `CORTEX_WEBAUTHN_ORIGIN` is not set.
    pub webauthn: Option<WebauthnSettings>,
    /// `CORTEX_LOCAL_LOGIN` (default true): false allows password and passkey sign-in only to
    /// break-glass admins (local admins of the default organization).
    pub local_login: bool,
    pub rate_limit: RateLimitSettings,
    pub concurrency: ConcurrencySettings,
    pub mcp_token: Option<SecretString>,
    /// The `ctx_` key the MCP `chat` tool uses, so MCP requests get that key's limits and usage.
    pub mcp_api_key: Option<SecretString>,
    pub mcp_requests_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub behind_tls: bool,
    pub tls: Option<TlsPaths>,
    pub usage_retention_days: u32,
    pub require_mfa_for: Vec<Role>,
    pub access_token_ttl_sec: u64,
    pub refresh_token_ttl_sec: u64,
    pub shutdown_grace_sec: u64,
    pub log_format: LogFormat,
    pub feature_flags_file: Option<PathBuf>,
    /// Every known flag, off unless `CORTEX_FEATURE_FLAGS_FILE` turned it on.
    pub feature_flags: FeatureFlags,
    /// `CORTEX_AUDIT_FORWARD_URL` (and `_TOKEN`); used only with the `audit_forwarding` flag on.
    pub audit_forward: Option<AuditForwardSettings>,
    pub storage_root: PathBuf,
    pub max_body_bytes: usize,
    /// A client must send its request head within this many seconds (slowloris defence).
    pub header_read_timeout_sec: u64,
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64 counts as one address) beyond
    /// this are closed at once; peers in `trusted_proxies` are not counted.
    pub max_connections_per_ip: usize,
    /// A request body must arrive whole within this many seconds of its head (slow bodies).
    pub body_read_timeout_sec: u64,
    /// An HTTP/2 connection with no open stream for this many seconds is closed.
    pub http2_idle_timeout_sec: u64,
    /// `CORTEX_METRICS_LISTEN`: a separate address that serves only `/metrics`. Without a
    /// metrics token this is the only place metrics are served.
    pub metrics_listen: Option<SocketAddr>,
    /// `CORTEX_ALLOWED_HOSTS`: when not empty, a request whose `Host` (or `:authority`) is not
    /// in the list is refused (DNS rebinding). Lower-case, with or without a port.
    pub allowed_hosts: Vec<String>,
    /// Threads that accept and serve connections, each with its own single-threaded runtime
    /// and upstream connection pool (default: one per core).
    pub serve_threads: usize,
    pub upstream_timeouts: UpstreamTimeouts,
    /// `CORTEX_UPSTREAM_ALLOW`: where provider connections may go, checked on every connect.
    pub upstream_allow: EgressPolicy,
    /// Circuit breakers, health checks and retries.
    pub routing: RoutingSettings,
    /// Inference engines: models directory, programs, Docker daemon.
    pub engines: EngineSettings,
    pub providers: Vec<ProviderSpec>,
    pub models: Vec<ModelSpec>,
    /// OpenTelemetry traces (`OTEL_*`); `None`: off.
    pub traces: Option<TraceExport>,
    /// The response cache's backend and bounds (`CORTEX_CACHE_*`).
    pub cache: CacheSettings,
}

/// Where the response cache keeps answers (SPEC §21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    /// In this process, bounded by `max_bytes`; each instance has its own.
    Memory,
    /// In Redis (`REDIS_URL`), shared by every instance; bounded by Redis's own `maxmemory`.
    Redis,
}

/// `CORTEX_CACHE_BACKEND` (default: `redis` when `REDIS_URL` is set, else `memory`),
/// `CORTEX_CACHE_MAX_BYTES` (default 64 MiB, 1 MiB to 64 GiB; the in-process bound) and
/// `CORTEX_CACHE_MAX_ENTRY_BYTES` (default 1 MiB, at most the bound; larger answers are not
/// stored, whatever the backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub backend: CacheBackend,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
}

/// Where and how traces are exported (OTLP over HTTP, protobuf).
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub endpoint: String,
    /// Sent with every export (a collector's credential, typically): secret values.
    pub headers: Vec<(String, SecretString)>,
    pub timeout_ms: u64,
    pub service_name: String,
    pub sampler: TraceSampler,
    /// Spans waiting for export beyond this are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Time between two exports (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay_ms: u64,
}

/// `OTEL_TRACES_SAMPLER` (and its `OTEL_TRACES_SAMPLER_ARG` ratio).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// A provider declared in the config file, with its secret already resolved.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub ca_bundle: Option<PathBuf>,
    /// Receives `INTERNAL_VLLM_API_KEY` (only while its base URL keeps the declared origin).
    pub use_internal_key: bool,
    /// Its kind, API version and Responses flag, checked.
    pub dialect: ProviderDialect,
    /// Its share under a model's `weighted` strategy (1 to 1000).
    pub weight: u32,
    /// The path below `base_url` the active health check asks; `None` is `models`.
    pub health_check_path: Option<String>,
}

/// A model declared in the config file, checked: its providers exist and speak one dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    /// Provider names in failover order (`provider` first, then `providers`).
    pub providers: Vec<String>,
    pub upstream_name: Option<String>,
    pub input_price_per_mtok: Option<f64>,
    pub output_price_per_mtok: Option<f64>,
    pub strategy: RoutingStrategy,
    /// The output cap set on a budgeted request that carries none (SPEC §18).
    pub max_output_tokens: Option<u32>,
}

/// The fixed admin API body limit (SPEC §14).
pub const ADMIN_MAX_BODY_BYTES: usize = 1024 * 1024;

impl Config {
    /// The SQLite file used when `DATABASE_URL` is not set.
    pub fn default_sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", data_dir.join("cortex.db").display())
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }

    /// True when the gateway is reached over TLS, natively or through a trusted TLS proxy.
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some() || self.behind_tls
    }
}
