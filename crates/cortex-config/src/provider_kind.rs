//! A provider's kind, API version and Responses flag, checked the same way wherever a provider
//! is declared (`cortex.toml`, the admin API, a config import), and the rule that a model's
//! providers take one request dialect.

use cortex_domain::provider::is_valid_api_version;
use cortex_domain::ProviderKind;

use crate::error::ConfigError;

/// How a provider is spoken to, checked (SPEC §15).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderDialect {
    pub kind: ProviderKind,
    /// Azure's `api-version` query value or Anthropic's `anthropic-version` header; `None` uses
    /// the kind's default.
    pub api_version: Option<String>,
    /// An OpenAI provider that serves `/responses` itself.
    pub responses_api: bool,
}

/// Checks the three settings together: `kind` is one of the known kinds (`openai` when absent),
/// `api_version` is only for `anthropic` and `azure` and can carry no query or header syntax,
/// and `responses_api` only for `openai`.
///
/// `place` prefixes the setting named in the error (`providers[a]` gives
/// `providers[a].api_version`); an empty `place` names the field alone, for the admin API.
pub fn check_provider_dialect(
    place: &str,
    kind: Option<&str>,
    api_version: Option<&str>,
    responses_api: bool,
) -> Result<ProviderDialect, ConfigError> {
    let setting = |field: &str| {
        if place.is_empty() {
            field.to_owned()
        } else {
            format!("{place}.{field}")
        }
    };
    let kind = match kind {
        None => ProviderKind::default(),
        Some(text) => text.parse().map_err(|_| {
            ConfigError::new(setting("kind"), "must be one of openai, anthropic, azure")
        })?,
    };
    if let Some(version) = api_version {
        if kind == ProviderKind::OpenAi {
            return Err(ConfigError::new(
                setting("api_version"),
                "is only for anthropic and azure providers",
            ));
        }
        if !is_valid_api_version(version) {
            return Err(ConfigError::new(
                setting("api_version"),
                "must be 1 to 64 letters, digits, '-', '.' or '_'",
            ));
        }
    }
    if responses_api && kind != ProviderKind::OpenAi {
        return Err(ConfigError::new(
            setting("responses_api"),
            "is only for openai providers",
        ));
    }
    Ok(ProviderDialect {
        kind,
        api_version: api_version.map(str::to_owned),
        responses_api,
    })
}

/// Whether providers of kinds `a` and `b` take the same request body: Anthropic's Messages on
/// one side, OpenAI's chat completions (OpenAI and Azure) on the other.
pub fn same_dialect(a: ProviderKind, b: ProviderKind) -> bool {
    (a == ProviderKind::Anthropic) == (b == ProviderKind::Anthropic)
}

/// A model sends one body to whichever of its providers it tries, so its providers must take
/// one dialect. Returns why not, naming two providers that differ, or `None` when they agree.
pub fn mixed_dialects<'a>(
    providers: impl IntoIterator<Item = (&'a str, ProviderKind)>,
) -> Option<String> {
    let mut providers = providers.into_iter();
    let (first_name, first_kind) = providers.next()?;
    let (other_name, other_kind) = providers.find(|(_, kind)| !same_dialect(first_kind, *kind))?;
    Some(format!(
        "providers {first_name:?} ({first_kind}) and {other_name:?} ({other_kind}) speak different \
         dialects: a model's providers must be all anthropic, or all openai and azure"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_default_to_openai_and_unknown_ones_are_named() {
        let plain = check_provider_dialect("providers[a]", None, None, false).unwrap();
        assert_eq!(plain, ProviderDialect::default());
        assert_eq!(plain.kind, ProviderKind::OpenAi);
        let err = check_provider_dialect("providers[a]", Some("OpenAI"), None, false).unwrap_err();
        assert_eq!(err.setting, "providers[a].kind");
        assert_eq!(err.problem, "must be one of openai, anthropic, azure");
        let err = check_provider_dialect("", Some("bedrock"), None, false).unwrap_err();
        assert_eq!(err.setting, "kind");
    }

    #[test]
    fn api_versions_belong_to_anthropic_and_azure_and_carry_no_syntax() {
        let azure =
            check_provider_dialect("p", Some("azure"), Some("2024-12-01-preview"), false).unwrap();
        assert_eq!(azure.kind, ProviderKind::Azure);
        assert_eq!(azure.api_version.as_deref(), Some("2024-12-01-preview"));
        let anthropic =
            check_provider_dialect("p", Some("anthropic"), Some("2023-06-01"), false).unwrap();
        assert_eq!(anthropic.kind, ProviderKind::Anthropic);
        let openai = check_provider_dialect("p", None, Some("2024-10-21"), false).unwrap_err();
        assert_eq!(openai.setting, "p.api_version");
        assert_eq!(openai.problem, "is only for anthropic and azure providers");
        for bad in ["", "1&x=y", "v\r\nx-evil: 1", "a/b"] {
            let err = check_provider_dialect("p", Some("azure"), Some(bad), false).unwrap_err();
            assert_eq!(err.setting, "p.api_version", "{bad:?}");
            assert!(!err.to_string().contains("evil"), "values are not echoed");
        }
    }

    #[test]
    fn the_responses_flag_is_only_for_openai() {
        assert!(
            check_provider_dialect("p", Some("openai"), None, true)
                .unwrap()
                .responses_api
        );
        for kind in ["anthropic", "azure"] {
            let err = check_provider_dialect("p", Some(kind), None, true).unwrap_err();
            assert_eq!(err.setting, "p.responses_api");
            assert_eq!(err.problem, "is only for openai providers");
        }
    }

    #[test]
    fn anthropic_does_not_mix_with_openai_or_azure() {
        use ProviderKind::{Anthropic, Azure, OpenAi};
        assert_eq!(mixed_dialects([]), None);
        assert_eq!(mixed_dialects([("a", OpenAi), ("b", Azure)]), None);
        assert_eq!(mixed_dialects([("a", Anthropic), ("b", Anthropic)]), None);
        let why = mixed_dialects([("a", Azure), ("b", OpenAi), ("c", Anthropic)]).unwrap();
        assert!(why.contains("\"a\" (azure) and \"c\" (anthropic)"), "{why}");
        assert!(mixed_dialects([("c", Anthropic), ("a", OpenAi)]).is_some());
    }
}
