//! Gateway policies (SPEC §21): the response cache and the guardrails a `/v1` request gets.
//!
//! A policy belongs to one organization and applies to one scope in it: the whole
//! organization, one model (by name) or one key (by id). A request takes the most specific
//! policy there is — its key's, else its model's in the key's organization, else its
//! organization's — whole: policies do not merge, so what a request gets can be read from one
//! object.
//!
//! This module holds the shapes and their checks only; the scanner that runs the detectors is
//! `cortex-guard`, and the cache is the gateway's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest time an answer may stay cached: seven days.
pub const MAX_CACHE_TTL_SECONDS: u32 = 7 * 24 * 3600;
/// Rules in one policy.
pub const MAX_RULES: usize = 32;
/// A custom pattern's length, in characters.
pub const MAX_PATTERN_CHARS: usize = 1000;
/// A webhook detector's longest timeout.
pub const MAX_WEBHOOK_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u32 = 1_000;

/// What a policy applies to, inside its organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyScope {
    /// Every request made with the organization's keys (the target is the organization's id).
    Organization,
    /// Requests for one model (the target is the model's name).
    Model,
    /// Requests made with one key (the target is the key's id).
    Key,
}

impl PolicyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyScope::Organization => "organization",
            PolicyScope::Model => "model",
            PolicyScope::Key => "key",
        }
    }

    pub fn parse(text: &str) -> Option<PolicyScope> {
        match text {
            "organization" => Some(PolicyScope::Organization),
            "model" => Some(PolicyScope::Model),
            "key" => Some(PolicyScope::Key),
            _ => None,
        }
    }
}

/// What a policy turns on. Both parts are optional; a policy with neither turns both off for
/// its scope (so a key can opt out of its organization's policy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<GuardrailSpec>,
}

/// The response cache for a scope: exact match, answers kept for `ttl_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    pub ttl_seconds: u32,
    /// Also cache answers to requests that set `temperature` above 0 (off: such answers are
    /// sampled, and a client asking twice expects two).
    #[serde(default)]
    pub cache_nonzero_temperature: bool,
}

/// The guardrails for a scope: each rule is one detector and what to do when it finds
/// something.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    pub rules: Vec<GuardrailRule>,
    /// Scan answers (whole and streamed) too, not only requests.
    #[serde(default = "yes")]
    pub scan_responses: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailRule {
    pub detector: DetectorSpec,
    pub action: GuardAction,
}

/// What is looked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum DetectorSpec {
    /// Well-known provider keys (OpenAI, Anthropic, AWS, GitHub, Slack), private key blocks,
    /// JWTs and Cortex's own `ctx_` keys.
    Secrets,
    /// Personal data; `kinds` empty means every kind.
    Pii {
        #[serde(default)]
        kinds: Vec<PiiKind>,
    },
    /// A custom pattern; matches are labelled with `name` (`[REDACTED:<name>]`).
    Regex { name: String, pattern: String },
    /// An external service asked about each request's text: it answers `{"flagged": bool}`.
    /// When it does not answer within `timeout_ms`, the request is refused (`fail_open`
    /// false) or let through (`fail_open` true).
    Webhook {
        url: String,
        #[serde(default = "default_webhook_timeout")]
        timeout_ms: u32,
        #[serde(default)]
        fail_open: bool,
    },
}

fn default_webhook_timeout() -> u32 {
    DEFAULT_WEBHOOK_TIMEOUT_MS
}

impl DetectorSpec {
    /// The detector's name in audit events, errors and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            DetectorSpec::Secrets => "secrets",
            DetectorSpec::Pii { .. } => "pii",
            DetectorSpec::Regex { .. } => "regex",
            DetectorSpec::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
}

impl PiiKind {
    pub const ALL: [PiiKind; 5] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::PaymentCard,
        PiiKind::Iban,
        PiiKind::UsSsn,
    ];

    /// The label in `[REDACTED:<label>]` and in audit events.
    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::PaymentCard => "payment_card",
            PiiKind::Iban => "iban",
            PiiKind::UsSsn => "us_ssn",
        }
    }
}

/// What happens when a detector finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    /// Refuse: 400 `guardrail_blocked` naming the detector, never the match.
    Block,
    /// Replace each match with `[REDACTED:<type>]` before the text goes on.
    Redact,
    /// Let it through; the audit event is the only trace.
    Log,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Log => "log",
        }
    }
}

/// Why a policy was refused; the message names the field and never echoes a URL's secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

fn refuse(message: impl Into<String>) -> PolicyError {
    PolicyError(message.into())
}

impl PolicySpec {
    /// Checks everything but whether a custom pattern compiles (`cortex-guard` builds the
    /// scanner, and refuses a pattern it cannot compile within its size limit).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(cache) = &self.cache {
            if cache.ttl_seconds == 0 || cache.ttl_seconds > MAX_CACHE_TTL_SECONDS {
                return Err(refuse(format!(
                    "cache.ttl_seconds must be between 1 and {MAX_CACHE_TTL_SECONDS}"
                )));
            }
        }
        if let Some(guardrails) = &self.guardrails {
            guardrails.validate()?;
        }
        Ok(())
    }
}

impl GuardrailSpec {
    fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(refuse(format!(
                "guardrails.rules must hold between 1 and {MAX_RULES} rules"
            )));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("guardrails.rules[{i}]");
            match &rule.detector {
                DetectorSpec::Secrets => {}
                DetectorSpec::Pii { kinds } => {
                    let unique: std::collections::HashSet<_> = kinds.iter().collect();
                    if unique.len() != kinds.len() {
                        return Err(refuse(format!("{at}.detector.kinds repeats a kind")));
                    }
                }
                DetectorSpec::Regex { name, pattern } => {
                    if !valid_label(name) {
                        return Err(refuse(format!(
                            "{at}.detector.name must be 1 to 32 of a-z, 0-9 and _"
                        )));
                    }
                    if !names.insert(name.as_str()) {
                        return Err(refuse(format!(
                            "{at}.detector.name repeats another rule's name"
                        )));
                    }
                    if pattern.is_empty() || pattern.chars().count() > MAX_PATTERN_CHARS {
                        return Err(refuse(format!(
                            "{at}.detector.pattern must be 1 to {MAX_PATTERN_CHARS} characters"
                        )));
                    }
                }
                DetectorSpec::Webhook {
                    url, timeout_ms, ..
                } => {
                    check_webhook_url(url)
                        .map_err(|why| refuse(format!("{at}.detector.url {why}")))?;
                    if *timeout_ms == 0 || *timeout_ms > MAX_WEBHOOK_TIMEOUT_MS {
                        return Err(refuse(format!(
                            "{at}.detector.timeout_ms must be between 1 and {MAX_WEBHOOK_TIMEOUT_MS}"
                        )));
                    }
                    if rule.action == GuardAction::Redact {
                        return Err(refuse(format!(
                            "{at}.action: a webhook finds no spans to redact; use block or log"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A label: 1 to 32 of `a-z`, `0-9`, `_` (it goes into `[REDACTED:<label>]` and into events).
pub fn valid_label(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `http://` or `https://`, a host, no user or password, no fragment, at most 2048 bytes.
fn check_webhook_url(url: &str) -> Result<(), &'static str> {
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must be a URL of at most 2048 characters without spaces");
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("must name a host");
    }
    if authority.contains('@') {
        return Err("must not carry a user or password");
    }
    if url.contains('#') {
        return Err("must not have a fragment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<PolicySpec, String> {
        let spec: PolicySpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.0)?;
        Ok(spec)
    }

    #[test]
    fn a_full_policy_reads_and_writes_back_the_same() {
        let json = r#"{"cache":{"ttl_seconds":300},"guardrails":{"rules":[
            {"detector":{"type":"secrets"},"action":"block"},
            {"detector":{"type":"pii","kinds":["email","payment_card"]},"action":"redact"},
            {"detector":{"type":"regex","name":"ticket","pattern":"TCK-[0-9]{6}"},"action":"log"},
            {"detector":{"type":"webhook","url":"http://127.0.0.1:9/scan","fail_open":true},"action":"block"}
        ]}}"#;
        let parsed = spec(json).unwrap();
        let guardrails = parsed.guardrails.as_ref().unwrap();
        assert!(guardrails.scan_responses);
        assert_eq!(
            guardrails.rules[3].detector,
            DetectorSpec::Webhook {
                url: "http://127.0.0.1:9/scan".into(),
                timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
                fail_open: true
            }
        );
        let again: PolicySpec =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        for (json, says) in [
            (r#"{"cache":{"ttl_seconds":0}}"#, "cache.ttl_seconds"),
            (r#"{"cache":{"ttl_seconds":604801}}"#, "cache.ttl_seconds"),
            (r#"{"cache":{"ttl":5}}"#, "unknown field"),
            (r#"{"guardrails":{"rules":[]}}"#, "guardrails.rules"),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"dlp"},"action":"block"}]}}"#,
                "unknown variant",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"secrets"},"action":"drop"}]}}"#,
                "unknown variant",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"Bad Name","pattern":"x"},"action":"log"}]}}"#,
                "detector.name",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"a","pattern":""},"action":"log"}]}}"#,
                "detector.pattern",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"a","pattern":"x"},"action":"log"},{"detector":{"type":"regex","name":"a","pattern":"y"},"action":"log"}]}}"#,
                "repeats another rule's name",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"pii","kinds":["email","email"]},"action":"log"}]}}"#,
                "repeats a kind",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"webhook","url":"ftp://x"},"action":"block"}]}}"#,
                "detector.url",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"webhook","url":"https://u:p@x/"},"action":"block"}]}}"#,
                "user or password",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"webhook","url":"https://x/","timeout_ms":0},"action":"block"}]}}"#,
                "timeout_ms",
            ),
            (
                r#"{"guardrails":{"rules":[{"detector":{"type":"webhook","url":"https://x/"},"action":"redact"}]}}"#,
                "no spans to redact",
            ),
        ] {
            let error = spec(json).expect_err(json);
            assert!(error.contains(says), "{json}: {error}");
            assert!(!error.contains("u:p"), "{error}");
        }
    }

    #[test]
    fn labels_are_short_lower_case_words() {
        assert!(valid_label("ticket_id"));
        assert!(valid_label("a1"));
        for bad in ["", "Upper", "with space", "dash-ed", &"x".repeat(33)] {
            assert!(!valid_label(bad), "{bad}");
        }
    }
}
