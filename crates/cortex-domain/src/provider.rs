//! What kind of server a provider is: which dialect it speaks, how it takes its credential and
//! where its endpoints live. The names are the ones `cortex.toml`, the admin API and the
//! console use.

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
}
