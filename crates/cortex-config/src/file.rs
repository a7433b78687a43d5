//! The `cortex.toml` file: the same settings as the environment (lower-case, without the
//! `CORTEX_` prefix), plus providers and models so an operator can keep them in version control.

use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;

/// A secret in the config file: a literal (discouraged), an environment variable, or a file.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    Literal(String),
    Reference(SecretSource),
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Literal(_) => f.write_str("SecretRef::Literal([REDACTED])"),
            SecretRef::Reference(SecretSource { env, file }) => f
                .debug_struct("SecretRef::Reference")
                .field("env", env)
                .field("file", file)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFileEntry {
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<SecretRef>,
    /// PEM file with extra CA certificates trusted for this provider's HTTPS (private CAs).
    #[serde(default)]
    pub ca_bundle: Option<String>,
    /// Sends `INTERNAL_VLLM_API_KEY` to this provider (which then has no `api_key` of its
    /// own). Only the config file can say this: providers made through the admin API never
    /// receive the internal key.
    #[serde(default)]
    pub use_internal_key: bool,
    /// `openai` (the default), `anthropic` or `azure` (SPEC §15).
    #[serde(default)]
    pub kind: Option<String>,
    /// Azure's `api-version` or Anthropic's `anthropic-version`; the kind's default when unset.
    #[serde(default)]
    pub api_version: Option<String>,
    /// An `openai` provider that serves `/responses` itself.
    #[serde(default)]
    pub responses_api: bool,
    /// Its share under a model's `weighted` strategy: 1 to 1000, 1 when unset (SPEC §16).
    #[serde(default)]
    pub weight: Option<u32>,
    /// The path below `base_url` the active health check asks; `models` when unset.
    #[serde(default)]
    pub health_check_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFileEntry {
    pub name: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    #[serde(default)]
    pub upstream_name: Option<String>,
    #[serde(default)]
    pub input_price_per_mtok: Option<f64>,
    #[serde(default)]
    pub output_price_per_mtok: Option<f64>,
    /// How requests spread over the providers: `round_robin` (the default), `weighted`,
    /// `least_latency` or `priority` (SPEC §16).
    #[serde(default)]
    pub strategy: Option<String>,
    /// The output cap set on a budgeted request that carries none: 1 to 1,000,000.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
}

impl ModelFileEntry {
    /// `provider` and `providers` merged, in order.
    pub fn provider_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.provider.iter().cloned().collect();
        names.extend(self.providers.iter().flatten().cloned());
        names
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub enabled: Option<bool>,
    pub rps: Option<f64>,
    pub burst: Option<u32>,
    pub window_sec: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    /// `CORTEX_UPSTREAM_ALLOW` as a list: CIDR ranges, addresses, host names, `*.domain`.
    pub allow: Option<Vec<String>>,
    /// `CORTEX_BREAKER_FAILURES` and the rest of [`crate::RoutingSettings`] (SPEC §16).
    pub breaker_failures: Option<u32>,
    pub breaker_cooldown_sec: Option<u64>,
    pub health_check_interval_sec: Option<u64>,
    pub health_check_timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
}

/// `[oidc]`: single sign-on for the console at an OpenID Provider (SPEC §19). Each key is
/// overridden by its `CORTEX_OIDC_*` variable; the rules exist only here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretRef>,
    pub redirect_url: Option<String>,
    /// The provider's name on the login page's button ("Sign in with …").
    pub display_name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// The ID token claim a new user's username comes from (`preferred_username`).
    pub username_claim: Option<String>,
    /// A claim naming the user's role itself, used when no rule matches.
    pub role_claim: Option<String>,
    /// A claim naming the user's organization, with `role_claim`.
    pub org_claim: Option<String>,
    /// Where the identity provider sends the browser after signing out there.
    pub post_logout_redirect_url: Option<String>,
    /// Claim → organization and role, first match wins.
    #[serde(default)]
    pub rules: Vec<OidcRuleFile>,
}

/// One `[[oidc.rules]]` entry: users whose ID token's `claim` is (or, for a list, contains)
/// `value` get `role` in organization `org`. Without `claim` the rule matches everyone; without
/// `value`, everyone who has the claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcRuleFile {
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    /// The organization's name; `default` when left out.
    #[serde(default)]
    pub org: Option<String>,
    pub role: String,
}

/// `[webauthn]`: passkeys (SPEC §19), on when `origin` (`CORTEX_WEBAUTHN_ORIGIN`) is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebauthnFile {
    /// The console's origin as browsers see it, e.g. `https://cortex.example.com`.
    pub origin: Option<String>,
    /// The relying party id passkeys are bound to: the origin's host or a parent domain of it.
    pub rp_id: Option<String>,
    /// The name authenticators show.
    pub rp_name: Option<String>,
}

/// Every key is optional; the environment overrides what the file says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<String>,
    pub database_url: Option<SecretRef>,
    pub redis_url: Option<SecretRef>,
    pub redis_ca_file: Option<String>,
    pub redis_failure_mode: Option<String>,
    pub admin_user: Option<String>,
    pub master_key_file: Option<String>,
    pub metrics_token: Option<SecretRef>,
    /// `INTERNAL_VLLM_API_KEY`: the file key keeps the variable's name, like every other key
    /// here; validated, it is [`crate::Config::internal_upstream_key`].
    pub internal_vllm_api_key: Option<SecretRef>,
    pub cors_allow_origins: Option<Vec<String>>,
    pub cors_allow_credentials: Option<bool>,
    pub rate_limit: Option<RateLimitFile>,
    pub concurrency_limit_enabled: Option<bool>,
    pub max_concurrent_streams_per_id: Option<u32>,
    pub stream_lease_sec: Option<u64>,
    pub mcp_requests_per_minute: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
    pub behind_tls: Option<bool>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub usage_retention_days: Option<u32>,
    pub require_mfa_for: Option<Vec<String>>,
    pub access_token_ttl_sec: Option<u64>,
    pub refresh_token_ttl_sec: Option<u64>,
    pub shutdown_grace_sec: Option<u64>,
    pub log_format: Option<String>,
    pub feature_flags_file: Option<String>,
    pub audit_forward_url: Option<String>,
    pub audit_forward_token: Option<SecretRef>,
    pub audit_forward_ca_file: Option<String>,
    pub storage_root: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub header_read_timeout_sec: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub body_read_timeout_sec: Option<u64>,
    pub http2_idle_timeout_sec: Option<u64>,
    pub metrics_listen: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub trust_all_proxies: Option<bool>,
    pub serve_threads: Option<usize>,
    pub upstream: Option<UpstreamFile>,
    pub oidc: Option<OidcFile>,
    pub webauthn: Option<WebauthnFile>,
    /// `CORTEX_LOCAL_LOGIN`: false turns password and passkey sign-in off except for
    /// break-glass admins.
    pub local_login: Option<bool>,
    #[serde(default)]
    pub providers: Vec<ProviderFileEntry>,
    #[serde(default)]
    pub models: Vec<ModelFileEntry>,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "CORTEX_CONFIG",
                format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })?;
        FileConfig::parse(&text)
    }

    pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's message names the key and line; it does not echo whole values.
            let message = e.message().to_owned();
            let place = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::new("CORTEX_CONFIG", format!("{message}{place}"))
        })
    }
}
