//! Providers and how they are reached: upstream timeouts, the egress allow list, and the
//! providers and models the file declares.

use std::path::PathBuf;

use cortex_domain::egress::EgressPolicy;
use secrecy::SecretString;

use crate::error::ConfigError;
use crate::file::FileConfig;
use crate::parse::{
    check_egress, positive_u64, resolve_secret, split_list, validate_base_url, var, Env,
};
use crate::provider_kind::{check_provider_dialect, mixed_dialects, ProviderDialect};
use crate::routing::{check_health_check_path, check_strategy, check_weight};
use crate::settings::{ModelSpec, ProviderSpec, UpstreamTimeouts};

pub(super) struct Upstream {
    pub timeouts: UpstreamTimeouts,
    pub allow: EgressPolicy,
    pub providers: Vec<ProviderSpec>,
    pub models: Vec<ModelSpec>,
}

/// What the file says about one provider beyond its name, URL and key, checked.
struct CheckedProvider {
    dialect: ProviderDialect,
    weight: u32,
    health_check_path: Option<String>,
}

pub(super) fn upstream(
    env: Env<'_>,
    file: &FileConfig,
    internal_upstream_key: &Option<SecretString>,
) -> Result<Upstream, ConfigError> {
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

    let (checked, models) = validate_catalog(file)?;
    let providers = file
        .providers
        .iter()
        .zip(checked)
        .map(|(p, checked)| {
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
                internal_upstream_key,
            )?;
            check_egress(&place, &p.base_url, &upstream_allow)?;
            Ok(ProviderSpec {
                name: p.name.clone(),
                base_url: p.base_url.clone(),
                api_key,
                ca_bundle: p.ca_bundle.as_ref().map(PathBuf::from),
                use_internal_key: p.use_internal_key,
                dialect: checked.dialect,
                weight: checked.weight,
                health_check_path: checked.health_check_path,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(Upstream {
        timeouts: upstream_timeouts,
        allow: upstream_allow,
        providers,
        models,
    })
}

/// Providers and models declared in the file must form a consistent catalogue: unique names,
/// well-formed URLs, kinds, weights, health check paths and strategies, known providers, and
/// one dialect per model. Returns what was checked for each provider, in the file's order, and
/// the models.
fn validate_catalog(
    file: &FileConfig,
) -> Result<(Vec<CheckedProvider>, Vec<ModelSpec>), ConfigError> {
    let mut provider_names = Vec::new();
    let mut checked = Vec::new();
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
        checked.push(CheckedProvider {
            dialect: check_provider_dialect(
                &setting,
                provider.kind.as_deref(),
                provider.api_version.as_deref(),
                provider.responses_api,
            )?,
            weight: check_weight(&setting, provider.weight)?,
            health_check_path: check_health_check_path(
                &setting,
                provider.health_check_path.as_deref(),
            )?,
        });
        provider_names.push(provider.name.clone());
    }
    let mut models = Vec::new();
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
        let kinds = names.iter().filter_map(|name| {
            let at = provider_names.iter().position(|n| n == name)?;
            Some((name.as_str(), checked.get(at)?.dialect.kind))
        });
        if let Some(why) = mixed_dialects(kinds) {
            return Err(ConfigError::new(setting, why));
        }
        for price in [model.input_price_per_mtok, model.output_price_per_mtok]
            .into_iter()
            .flatten()
        {
            if !(price.is_finite() && price >= 0.0) {
                return Err(ConfigError::new(setting, "prices must be zero or more"));
            }
        }
        let strategy = check_strategy(&setting, model.strategy.as_deref())?;
        if model
            .max_output_tokens
            .is_some_and(|cap| cap == 0 || cap > 1_000_000)
        {
            return Err(ConfigError::new(
                setting,
                "max_output_tokens must be 1 to 1000000",
            ));
        }
        model_names.push(model.name.clone());
        models.push(ModelSpec {
            name: model.name.clone(),
            providers: names,
            upstream_name: model.upstream_name.clone(),
            input_price_per_mtok: model.input_price_per_mtok,
            output_price_per_mtok: model.output_price_per_mtok,
            strategy,
            max_output_tokens: model.max_output_tokens,
        });
    }
    Ok((checked, models))
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
