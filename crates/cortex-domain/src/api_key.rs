//! The API key wire format `ctx_<public id>_<secret>` and the scopes a key may carry.

use serde::{Deserialize, Serialize};

/// Every Cortex key starts with this prefix, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "ctx_";
/// Length of the public id part: the lookup handle, not a secret.
pub const PUBLIC_ID_LEN: usize = 12;
/// Length of the secret part: 43 base62 characters carry a little over 256 bits.
pub const SECRET_LEN: usize = 43;

/// A presented key split into its parts. Borrowed, so parsing allocates nothing.
#[derive(Clone, Copy)]
pub struct ParsedApiKey<'a> {
    pub public_id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for ParsedApiKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedApiKey")
            .field("public_id", &self.public_id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyFormatError {
    #[error("the API key does not have the form ctx_<id>_<secret>")]
    Malformed,
}

/// Splits `ctx_<public id>_<secret>`. Checks lengths and alphabet so that garbage never reaches
/// the key cache or the database.
pub fn parse_api_key(presented: &str) -> Result<ParsedApiKey<'_>, ApiKeyFormatError> {
    let rest = presented
        .strip_prefix(KEY_PREFIX)
        .ok_or(ApiKeyFormatError::Malformed)?;
    let (public_id, secret) = rest.split_once('_').ok_or(ApiKeyFormatError::Malformed)?;
    let is_base62 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    if public_id.len() != PUBLIC_ID_LEN
        || secret.len() != SECRET_LEN
        || !is_base62(public_id)
        || !is_base62(secret)
    {
        return Err(ApiKeyFormatError::Malformed);
    }
    Ok(ParsedApiKey { public_id, secret })
}

/// What a key may be used for; each `/v1` endpoint needs one (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Chat,
    Completions,
    Embeddings,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Chat, Scope::Completions, Scope::Embeddings];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Completions => "completions",
            Scope::Embeddings => "embeddings",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Parses the comma-separated form used in storage and on the command line.
    pub fn parse_list(text: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope = Scope::parse(part).ok_or_else(|| format!("unknown scope `{part}`"))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }

    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "ctx_AbCdEf012345_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw";

    #[test]
    fn parses_well_formed_key() {
        let parsed = parse_api_key(GOOD).unwrap();
        assert_eq!(parsed.public_id, "AbCdEf012345");
        assert_eq!(parsed.secret.len(), SECRET_LEN);
    }

    #[test]
    fn refuses_malformed_keys() {
        for bad in [
            "",
            "ctx_",
            "sk-AbCdEf012345_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw",
            "ctx_AbCdEf01234_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw",
            "ctx_AbCdEf012345_0123456789abcdefghijABCDEFGHIJklmnopqrstuv",
            "ctx_AbCdEf01234!_0123456789abcdefghijABCDEFGHIJklmnopqrstuvw",
            "ctx_AbCdEf012345_0123456789abcdefghijABCDEFGHIJklmnopqrstuv_",
            "ctx_AbCdEf012345_0123456789abcdefghijABCDEFGHIJklmnopqrstuÄ",
        ] {
            assert_eq!(
                parse_api_key(bad).err(),
                Some(ApiKeyFormatError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_hides_secret() {
        let parsed = parse_api_key(GOOD).unwrap();
        let shown = format!("{parsed:?}");
        assert!(!shown.contains(parsed.secret));
        assert!(shown.contains("[REDACTED]"));
    }

    #[test]
    fn scope_lists_round_trip_and_refuse_unknown() {
        let scopes = Scope::parse_list("chat, embeddings,chat").unwrap();
        assert_eq!(scopes, vec![Scope::Chat, Scope::Embeddings]);
        assert_eq!(Scope::join(&scopes), "chat,embeddings");
        assert!(Scope::parse_list("chat,admin").is_err());
    }
}
