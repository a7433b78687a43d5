//! What differs between provider kinds on the wire (SPEC §15): the header that carries the
//! provider's credential, Anthropic's version header, and Azure's URL, which names the model
//! (the deployment) in its path and the API version in its query.
//!
//! The deployment name is the model's upstream name, which an operator chooses through the
//! admin API: it is percent-encoded byte by byte (everything but RFC 3986's unreserved
//! characters), and a name of dots only (`.`, `..`) is refused, so it can neither
//! climb out of `/openai/deployments/`, start a query, nor split the request head.

use std::fmt::Write as _;

use cortex_domain::provider::is_valid_api_version;
use cortex_domain::ProviderKind;

/// Longest deployment name put in a URL; model names are at most 256 characters.
const DEPLOYMENT_MAX: usize = 256;

/// The header name that carries the provider's key for `kind`. OpenAI's value is
/// `Bearer <key>`; the others take the key as it is.
pub(crate) fn credential_header(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "authorization",
        ProviderKind::Anthropic => "x-api-key",
        ProviderKind::Azure => "api-key",
    }
}

/// The version `kind` is sent with: the provider's own, else the kind's default.
pub(crate) fn api_version(kind: ProviderKind, own: Option<&str>) -> Option<&str> {
    own.or(kind.default_api_version())
}

/// `{base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}`, or `None`
/// when the deployment name or the version cannot be put in a URL safely, or the result does
/// not parse. `path` is one of the gateway's own upstream paths.
pub(crate) fn azure_url(
    base_url: &str,
    deployment: &str,
    path: &str,
    api_version: &str,
) -> Option<http::Uri> {
    if !is_valid_api_version(api_version) {
        return None;
    }
    let deployment = deployment_segment(deployment)?;
    let url =
        format!("{base_url}/openai/deployments/{deployment}/{path}?api-version={api_version}");
    http::Uri::try_from(url).ok()
}

/// `name` as one path segment: every byte but `A-Z a-z 0-9 - . _ ~` percent-encoded (`/`, `?`,
/// `#`, `%`, spaces, CR and LF included), and never dots only (`.`, `..`: dot segments).
fn deployment_segment(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > DEPLOYMENT_MAX || name.bytes().all(|b| b == b'.') {
        return None;
    }
    let mut segment = String::with_capacity(name.len() * 3);
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(segment, "%{byte:02X}");
        }
    }
    Some(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_credential_header_and_version() {
        assert_eq!(credential_header(ProviderKind::OpenAi), "authorization");
        assert_eq!(credential_header(ProviderKind::Anthropic), "x-api-key");
        assert_eq!(credential_header(ProviderKind::Azure), "api-key");
        assert_eq!(api_version(ProviderKind::OpenAi, None), None);
        assert_eq!(
            api_version(ProviderKind::Anthropic, None),
            Some("2023-06-01")
        );
        assert_eq!(api_version(ProviderKind::Azure, None), Some("2024-10-21"));
        assert_eq!(
            api_version(ProviderKind::Azure, Some("2025-01-01-preview")),
            Some("2025-01-01-preview")
        );
    }

    #[test]
    fn azure_urls_name_the_deployment_and_the_version() {
        let url = azure_url(
            "https://r.openai.azure.com",
            "gpt-4o.mini_2~x",
            "chat/completions",
            "2024-10-21",
        )
        .unwrap();
        assert_eq!(
            url.to_string(),
            "https://r.openai.azure.com/openai/deployments/gpt-4o.mini_2~x/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn a_deployment_name_cannot_change_the_path_query_or_head() {
        for (name, segment) in [
            ("../../admin", "..%2F..%2Fadmin"),
            ("a?api-version=evil", "a%3Fapi-version%3Devil"),
            ("a#frag", "a%23frag"),
            ("a\r\nx-evil: 1", "a%0D%0Ax-evil%3A%201"),
            ("%2e%2e", "%252e%252e"),
            ("a/b", "a%2Fb"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(
                deployment_segment(name).as_deref(),
                Some(segment),
                "{name:?}"
            );
            let url = azure_url("http://h/x", name, "embeddings", "2024-10-21").unwrap();
            assert_eq!(
                url.path(),
                format!("/x/openai/deployments/{segment}/embeddings")
            );
            assert_eq!(url.query(), Some("api-version=2024-10-21"));
        }
        for dots in ["", ".", "..", "..."] {
            assert_eq!(deployment_segment(dots), None, "{dots:?}");
        }
        assert_eq!(deployment_segment(&"m".repeat(257)), None);
        assert!(azure_url("http://h", "m", "embeddings", "1&x=y").is_none());
    }
}
