//! What kind of server a provider is: which dialect it speaks, how it takes its credential and
//! where its endpoints live, and where its health is checked. The names are the ones
//! `cortex.toml`, the admin API and the console use.

use std::fmt;
use std::str::FromStr;

/// A provider's kind (SPEC §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-style server (vLLM, Ollama, llama.cpp…): `Authorization:
    /// Bearer`, `{base_url}/chat/completions`.
    #[default]
    OpenAi,
    /// Anthropic's Messages API: `x-api-key` and `anthropic-version`, `{base_url}/messages`.
    Anthropic,
    /// Azure OpenAI: `api-key`,
    /// `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`.
    Azure,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Azure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
        }
    }

    /// The `api_version` used when the provider sets none: Azure's `api-version` query
    /// parameter, Anthropic's `anthropic-version` header. OpenAI-style servers take none.
    pub fn default_api_version(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => None,
            ProviderKind::Anthropic => Some("2023-06-01"),
            ProviderKind::Azure => Some("2024-10-21"),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of `openai`, `anthropic`, `azure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProviderKind;

impl fmt::Display for UnknownProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`kind` must be one of openai, anthropic, azure")
    }
}

impl std::error::Error for UnknownProviderKind {}

impl FromStr for ProviderKind {
    type Err = UnknownProviderKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ProviderKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or(UnknownProviderKind)
    }
}

/// Whether `version` may be sent as an `api-version` query value or an `anthropic-version`
/// header: 1 to 64 characters of letters, digits, `-`, `.` and `_`, so it can neither break
/// out of the query string nor split a header.
pub fn is_valid_api_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The path below `base_url` that the active health check asks (`GET {base_url}/models`, SPEC
/// §16) when a provider sets none.
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "models";

/// The longest `health_check_path` accepted.
pub const MAX_HEALTH_CHECK_PATH_LEN: usize = 200;

/// Whether `path` may be a provider's `health_check_path`: 1 to 200 characters of letters,
/// digits, `/`, `_`, `.` and `-`, relative (no leading `/`) and without a `..` segment. It is
/// joined below the provider's `base_url`, so it can neither leave that prefix nor carry a
/// scheme, host, query or fragment of its own (`:`, `?`, `#`, `@` and `%` are not allowed).
pub fn is_valid_health_check_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_HEALTH_CHECK_PATH_LEN
        && !path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'))
        && !path.split('/').any(|segment| segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_as_they_are_written() {
        for kind in ProviderKind::ALL {
            assert_eq!(kind.as_str().parse::<ProviderKind>(), Ok(kind));
        }
        assert_eq!("OpenAI".parse::<ProviderKind>(), Err(UnknownProviderKind));
        assert_eq!("".parse::<ProviderKind>(), Err(UnknownProviderKind));
        assert_eq!(ProviderKind::default(), ProviderKind::OpenAi);
    }

    #[test]
    fn api_versions_cannot_carry_query_or_header_syntax() {
        assert!(is_valid_api_version("2024-10-21"));
        assert!(is_valid_api_version("2024-12-01-preview"));
        for bad in ["", "a&b=c", "1\r\nx: y", "a b", "a/b", &"9".repeat(65)] {
            assert!(!is_valid_api_version(bad), "{bad:?}");
        }
    }

    #[test]
    fn health_check_paths_stay_below_the_base_url() {
        assert!(is_valid_health_check_path(DEFAULT_HEALTH_CHECK_PATH));
        for good in [
            "health",
            "v1/health",
            "api/v2/ready.json",
            "a_b-c.d",
            "..x/y..",
            &"a".repeat(200),
        ] {
            assert!(is_valid_health_check_path(good), "{good:?}");
        }
        for bad in [
            "",
            "/models",
            "../x",
            "a/../b",
            "a/..",
            "..",
            "http://evil",
            "models?x=1",
            "models#top",
            "a b",
            "a%2e%2e",
            "user@host",
            "a\\b",
            "mödels",
            &"a".repeat(201),
        ] {
            assert!(!is_valid_health_check_path(bad), "{bad:?}");
        }
    }
}
