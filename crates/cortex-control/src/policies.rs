//! Gateway policies (SPEC §21): the checks a policy passes before it is stored, and each change
//! with its audit event in the same transaction (`policy.create`, `policy.update`,
//! `policy.delete`). The event belongs to the policy's organization.
//!
//! A policy's target must exist in its organization: a key of that organization (a key of
//! another is not found, as any other object of another organization), a model the
//! organization sees in the catalogue, or the organization itself. What the caller may reach is
//! the [`Tenant`] they pass, which the store applies.
//!
//! Audit events name the scope, target and which parts the policy has, never its patterns or
//! webhook URLs: a URL may carry a token in its query, and a pattern may spell out what it
//! looks for.

use cortex_domain::audit::NewAuditEvent;
use cortex_domain::policy::{DetectorSpec, PolicyScope, PolicySpec};
use cortex_domain::Tenant;
use cortex_store::policies::{NewPolicy, PolicyRow};
use cortex_store::{new_id, Store, StoreError};
use serde_json::{json, Value};

use crate::error::ControlError;

/// The largest compiled program a custom pattern may make (the guard scanner's limit too).
/// Every custom `regex` pattern compiles within `cortex-guard`'s size limits (1 MiB), by
/// building the same scanner the gateway runs.
pub fn check_patterns(spec: &PolicySpec) -> Result<(), ControlError> {
    let Some(guardrails) = &spec.guardrails else {
        return Ok(());
    };
    // The scanner the gateway will run, built once here: what it cannot compile is refused
    // now, not found broken on the request path.
    match cortex_guard::Guard::build(guardrails) {
        Ok(_) => Ok(()),
        Err(cortex_guard::GuardBuildError::Pattern { rule }) => Err(ControlError::invalid(
            format!("guardrails.rules[{rule}].detector.pattern does not compile (or is too large)"),
        )),
    }
}

/// The spec's own rules, then its patterns, then its webhooks' addresses.
pub fn check_spec(spec: &PolicySpec) -> Result<(), ControlError> {
    spec.validate()
        .map_err(|e| ControlError::invalid(e.to_string()))?;
    check_patterns(spec)?;
    check_webhook_hosts(spec)
}

/// A webhook at a literal address that no egress policy opens (link-local, the cloud metadata
/// services) is refused now, with a clear message, rather than found unanswered on every
/// request. Names and the deployment's allow-list are checked where the call is made, on
/// every resolved address (`cortex-gateway/src/webhook.rs`).
fn check_webhook_hosts(spec: &PolicySpec) -> Result<(), ControlError> {
    let Some(guardrails) = &spec.guardrails else {
        return Ok(());
    };
    let always_denied = cortex_domain::egress::EgressPolicy::default();
    for (i, rule) in guardrails.rules.iter().enumerate() {
        if let DetectorSpec::Webhook { url, .. } = &rule.detector {
            let host = reqwest::Url::parse(url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned));
            let Some(host) = host else {
                return Err(ControlError::invalid(format!(
                    "guardrails.rules[{i}].detector.url is not a URL with a host"
                )));
            };
            if always_denied.allows_literal(&host) == Some(false) {
                return Err(ControlError::invalid(format!(
                    "guardrails.rules[{i}].detector.url is a link-local or metadata address, which the gateway never calls"
                )));
            }
        }
    }
    Ok(())
}

/// The stored spec of `policy`; a spec that no longer parses is reported as corrupt data.
pub fn parse_spec(policy: &PolicyRow) -> Result<PolicySpec, ControlError> {
    serde_json::from_str(&policy.spec).map_err(|_| ControlError::Store(StoreError::Corrupt))
}

fn spec_text(spec: &PolicySpec) -> Result<String, ControlError> {
    serde_json::to_string(spec).map_err(|e| ControlError::Internal {
        context: "writing a policy",
        cause: e.to_string(),
    })
}

/// What the audit event says about a spec: its parts and detectors, nothing they contain.
fn spec_summary(spec: &PolicySpec) -> Value {
    json!({
        "cache_ttl_seconds": spec.cache.as_ref().map(|c| c.ttl_seconds),
        "guardrails": spec.guardrails.as_ref().map(|g| g
            .rules
            .iter()
            .map(|r| json!({ "detector": r.detector.name(), "action": r.action.as_str() }))
            .collect::<Vec<_>>()),
    })
}

/// The target of a new policy, checked in `org_id`: the organization's own id for
/// [`PolicyScope::Organization`] (absent means it), a key of the organization, or a model the
/// organization sees. `NotFound` for a key or model it does not have.
async fn check_target(
    store: &Store,
    org_id: &str,
    scope: PolicyScope,
    target: Option<&str>,
) -> Result<String, ControlError> {
    let org = Tenant::Org(org_id.to_owned());
    match (scope, target) {
        (PolicyScope::Organization, None) => Ok(org_id.to_owned()),
        (PolicyScope::Organization, Some(target)) if target == org_id => Ok(org_id.to_owned()),
        (PolicyScope::Organization, Some(_)) => Err(ControlError::invalid(
            "`target` of an organization policy is the organization's id (or absent)",
        )),
        (PolicyScope::Model | PolicyScope::Key, None) => Err(ControlError::invalid(
            "`target` is required for a model or key policy",
        )),
        (PolicyScope::Key, Some(key_id)) => {
            let key = store.get_api_key(&org, key_id).await?;
            match key {
                Some(key) => Ok(key.id),
                None => Err(ControlError::NotFound),
            }
        }
        (PolicyScope::Model, Some(name)) => {
            let models = store.list_models(&org).await?;
            if models.iter().any(|m| m.name == name) {
                Ok(name.to_owned())
            } else {
                Err(ControlError::NotFound)
            }
        }
    }
}

/// Creates a policy in `org_id`, which `tenant` must see (`NotFound` otherwise, as for an
/// organization that does not exist).
#[allow(clippy::too_many_arguments)]
pub async fn create_policy(
    store: &Store,
    tenant: &Tenant,
    org_id: &str,
    scope: PolicyScope,
    target: Option<&str>,
    spec: &PolicySpec,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<PolicyRow, ControlError> {
    if !tenant.sees(org_id) {
        return Err(ControlError::NotFound);
    }
    check_spec(spec)?;
    let target = check_target(store, org_id, scope, target).await?;
    let policy = NewPolicy {
        id: new_id(),
        org_id: org_id.to_owned(),
        scope,
        target,
        spec: spec_text(spec)?,
    };
    let mut details = spec_summary(spec);
    details["scope"] = json!(scope.as_str());
    details["target"] = json!(policy.target);
    let event = NewAuditEvent::new(actor, "policy.create", &policy.id)
        .with_details(&details)
        .with_ip(ip)
        .with_org(org_id);
    store
        .create_policy(tenant, &policy, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => ControlError::Conflict(
                "the organization has a policy for that scope and target".into(),
            ),
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Replaces the spec of a policy `tenant` sees (`policy.update`); its version moves by one.
pub async fn update_policy(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    spec: &PolicySpec,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<PolicyRow, ControlError> {
    let current = store
        .get_policy(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    check_spec(spec)?;
    let event = NewAuditEvent::new(actor, "policy.update", id)
        .with_details(&spec_summary(spec))
        .with_ip(ip)
        .with_org(&current.org_id);
    store
        .update_policy(tenant, id, &spec_text(spec)?, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

/// Deletes a policy `tenant` sees (`policy.delete`).
pub async fn delete_policy(
    store: &Store,
    tenant: &Tenant,
    id: &str,
    actor: &str,
    ip: &str,
    now: i64,
) -> Result<(), ControlError> {
    let current = store
        .get_policy(tenant, id)
        .await?
        .ok_or(ControlError::NotFound)?;
    let event = NewAuditEvent::new(actor, "policy.delete", id)
        .with_details(&json!({ "scope": current.scope.as_str(), "target": current.target }))
        .with_ip(ip)
        .with_org(&current.org_id);
    store
        .delete_policy(tenant, id, &event, now)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ControlError::NotFound,
            other => other.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> PolicySpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn patterns_that_do_not_compile_or_grow_too_large_are_refused_without_echo() {
        let ok = spec(
            r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"t","pattern":"TCK-[0-9]{6}"},"action":"log"}]}}"#,
        );
        assert!(check_spec(&ok).is_ok());
        let broken = spec(
            r#"{"guardrails":{"rules":[{"detector":{"type":"secrets"},"action":"block"},{"detector":{"type":"regex","name":"t","pattern":"secret(["},"action":"log"}]}}"#,
        );
        let message = check_spec(&broken).unwrap_err().to_string();
        assert!(message.contains("rules[1].detector.pattern"), "{message}");
        assert!(!message.contains("secret("), "{message}");
        // Small text, huge program: a counted repetition of a Unicode class.
        let huge = spec(
            r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"t","pattern":"\\w{1000}\\w{1000}\\w{1000}"},"action":"log"}]}}"#,
        );
        assert!(check_spec(&huge).is_err());
        let invalid = spec(r#"{"cache":{"ttl_seconds":0}}"#);
        assert!(check_spec(&invalid)
            .unwrap_err()
            .to_string()
            .contains("cache.ttl_seconds"));
    }

    #[test]
    fn webhooks_at_metadata_or_link_local_literals_are_refused_up_front() {
        let webhook = |url: &str| {
            spec(&format!(
                r#"{{"guardrails":{{"rules":[{{"detector":{{"type":"webhook","url":"{url}"}},"action":"block"}}]}}}}"#
            ))
        };
        for url in [
            "http://169.254.169.254/latest",
            "http://[fe80::1]/scan",
            "http://[::ffff:169.254.169.254]/",
            "https://169.254.10.1:8443/x",
        ] {
            let message = check_spec(&webhook(url)).unwrap_err().to_string();
            assert!(
                message.contains("rules[0].detector.url"),
                "{url}: {message}"
            );
        }
        // Loopback and names pass here; the allow-list decides at call time.
        for url in ["http://127.0.0.1:9/scan", "https://dlp.example.com/scan"] {
            assert!(check_spec(&webhook(url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn audit_details_never_carry_patterns_or_urls() {
        let s = spec(
            r#"{"guardrails":{"rules":[{"detector":{"type":"regex","name":"t","pattern":"hunter2"},"action":"log"},{"detector":{"type":"webhook","url":"https://x/?token=abc"},"action":"block"}]}}"#,
        );
        let text = spec_summary(&s).to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("token=abc"),
            "{text}"
        );
        assert!(text.contains("webhook") && text.contains("regex"), "{text}");
    }
}
