//! Gateway policies in memory (SPEC §21): every organization's policies, loaded with the routing
//! table (`catalog_cache.rs`) whenever the catalogue's version moves — every policy change moves
//! it — so a request resolves its policy with three map lookups and no query.
//!
//! A request takes the most specific policy there is, whole: its key's, else its model's in the
//! key's organization, else its organization's. A policy with neither part resolves as itself
//! (no cache, no guardrails): that is how a key or model opts out of its organization's policy.
//!
//! A stored spec this version cannot read (or that no longer passes its checks) is never
//! skipped silently in a way that opens: it is logged as an error and its scope gets a
//! fail-closed policy instead — no cache, and guardrails that block every request with text
//! (a `regex` rule labelled `policy_unreadable` matching any character). Falling back to the
//! organization's policy could drop guardrails a key was given on purpose; refusing until the
//! policy is fixed is what an operator can see and act on.

use std::collections::HashMap;
use std::sync::Arc;

use cortex_domain::policy::{
    CacheSpec, DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec, PolicyScope, PolicySpec,
};
use cortex_guard::Guard;
use cortex_store::policies::PolicyRow;

/// The label of the rule a fail-closed policy blocks with.
pub const UNREADABLE_LABEL: &str = "policy_unreadable";

/// What a request gets from its policy.
#[derive(Debug, Clone)]
pub struct EffectivePolicy {
    pub id: String,
    pub version: i64,
    pub org_id: String,
    pub cache: Option<CacheSpec>,
    pub guardrails: Option<GuardrailSpec>,
    /// `guardrails`, compiled once when the policy is loaded.
    pub guard: Option<Arc<Guard>>,
}

impl EffectivePolicy {
    /// The policy a scope gets when its stored spec cannot be read: no cache, and every
    /// request (and answer) with any text blocked.
    pub fn fail_closed(id: &str, version: i64, org_id: &str) -> EffectivePolicy {
        let guardrails = GuardrailSpec {
            rules: vec![GuardrailRule {
                detector: DetectorSpec::Regex {
                    name: UNREADABLE_LABEL.to_owned(),
                    pattern: r"[\s\S]".to_owned(),
                },
                action: GuardAction::Block,
            }],
            scan_responses: true,
        };
        EffectivePolicy {
            id: id.to_owned(),
            version,
            org_id: org_id.to_owned(),
            cache: None,
            // A fixed one-class pattern, which always compiles: the unit test
            // `an_unreadable_policy_fails_closed_instead_of_falling_back` holds this to `Some`,
            // since `None` would open the scope.
            guard: Guard::build(&guardrails).ok().map(Arc::new),
            guardrails: Some(guardrails),
        }
    }

    fn from_row(row: &PolicyRow) -> EffectivePolicy {
        let spec = serde_json::from_str::<PolicySpec>(&row.spec)
            .ok()
            .filter(|spec| spec.validate().is_ok());
        match spec {
            Some(spec) => {
                let guard = spec.guardrails.as_ref().map(Guard::build);
                match guard {
                    Some(Err(error)) => {
                        tracing::error!(policy = %row.id, org = %row.org_id, %error, "a stored policy's guardrails cannot be compiled; its scope's requests are blocked until it is fixed or deleted");
                        EffectivePolicy::fail_closed(&row.id, row.version, &row.org_id)
                    }
                    guard => EffectivePolicy {
                        id: row.id.clone(),
                        version: row.version,
                        org_id: row.org_id.clone(),
                        cache: spec.cache,
                        guardrails: spec.guardrails,
                        guard: guard.and_then(Result::ok).map(Arc::new),
                    },
                }
            }
            None => {
                tracing::error!(
                    policy = %row.id,
                    org = %row.org_id,
                    scope = row.scope.as_str(),
                    "a stored policy cannot be read; its scope's requests are blocked until it is fixed or deleted"
                );
                EffectivePolicy::fail_closed(&row.id, row.version, &row.org_id)
            }
        }
    }
}

type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Every organization's policies, by key id, by organization and model name, and by
/// organization.
#[derive(Debug, Default)]
pub struct PolicySet {
    by_key: Map<Arc<EffectivePolicy>>,
    by_model: Map<Map<Arc<EffectivePolicy>>>,
    by_org: Map<Arc<EffectivePolicy>>,
}

impl PolicySet {
    /// The set of `rows` (as `Store::list_all_for_gateway` gives them).
    pub fn from_rows(rows: &[PolicyRow]) -> PolicySet {
        let mut set = PolicySet::default();
        for row in rows {
            let policy = Arc::new(EffectivePolicy::from_row(row));
            match row.scope {
                PolicyScope::Key => {
                    set.by_key.insert(row.target.clone(), policy);
                }
                PolicyScope::Model => {
                    set.by_model
                        .entry(row.org_id.clone())
                        .or_default()
                        .insert(row.target.clone(), policy);
                }
                PolicyScope::Organization => {
                    // The target is the organization's id; the row's organization decides.
                    set.by_org.insert(row.org_id.clone(), policy);
                }
            }
        }
        set
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.by_key.len() + self.by_model.values().map(Map::len).sum::<usize>() + self.by_org.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy of a request made with key `key_id` of organization `org_id` for `model`:
    /// the key's, else the model's in the organization, else the organization's, else none. A
    /// key policy of another organization than the one given is never taken (keys do not move
    /// between organizations; this holds even if a row said otherwise).
    pub fn resolve(&self, key_id: &str, org_id: &str, model: &str) -> Option<Arc<EffectivePolicy>> {
        if let Some(policy) = self.by_key.get(key_id) {
            if policy.org_id == org_id {
                return Some(policy.clone());
            }
        }
        if let Some(policy) = self.by_model.get(org_id).and_then(|m| m.get(model)) {
            return Some(policy.clone());
        }
        self.by_org.get(org_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, org: &str, scope: PolicyScope, target: &str, spec: &str) -> PolicyRow {
        PolicyRow {
            id: id.into(),
            org_id: org.into(),
            scope,
            target: target.into(),
            spec: spec.into(),
            version: 3,
            created_at: 0,
            updated_at: 0,
        }
    }

    const CACHE: &str = r#"{"cache":{"ttl_seconds":60}}"#;
    const GUARD: &str =
        r#"{"guardrails":{"rules":[{"detector":{"type":"secrets"},"action":"block"}]}}"#;

    fn set() -> PolicySet {
        PolicySet::from_rows(&[
            row("org-acme", "acme", PolicyScope::Organization, "acme", CACHE),
            row("model-acme", "acme", PolicyScope::Model, "llama", GUARD),
            row("key-acme", "acme", PolicyScope::Key, "k1", "{}"),
            row(
                "model-globex",
                "globex",
                PolicyScope::Model,
                "mistral",
                CACHE,
            ),
        ])
    }

    fn id(policy: Option<Arc<EffectivePolicy>>) -> Option<String> {
        policy.map(|p| p.id.clone())
    }

    #[test]
    fn the_most_specific_policy_wins_whole() {
        let set = set();
        assert_eq!(set.len(), 4);
        // The key's, even for a model with its own policy.
        assert_eq!(
            id(set.resolve("k1", "acme", "llama")),
            Some("key-acme".into())
        );
        // Else the model's in the organization: its guardrails, not the organization's cache.
        let model = set.resolve("k2", "acme", "llama").unwrap();
        assert_eq!(model.id, "model-acme");
        assert!(model.cache.is_none() && model.guardrails.is_some());
        // Else the organization's.
        assert_eq!(
            id(set.resolve("k2", "acme", "mistral")),
            Some("org-acme".into())
        );
        // Another organization's model policy is not this organization's.
        assert_eq!(id(set.resolve("k3", "globex", "llama")), None);
        assert_eq!(
            id(set.resolve("k3", "globex", "mistral")),
            Some("model-globex".into())
        );
        assert_eq!(id(set.resolve("k9", "initech", "mistral")), None);
    }

    #[test]
    fn an_empty_policy_opts_out_rather_than_falling_through() {
        let policy = set().resolve("k1", "acme", "mistral").unwrap();
        assert_eq!(policy.id, "key-acme");
        assert_eq!(
            (policy.cache.as_ref(), policy.guardrails.as_ref()),
            (None, None)
        );
        assert_eq!(policy.version, 3);
    }

    #[test]
    fn a_key_policy_never_applies_to_another_organization() {
        // A row claiming key k1 for globex (which cannot be stored through the API).
        let set = PolicySet::from_rows(&[
            row("stray", "globex", PolicyScope::Key, "k1", GUARD),
            row("org-acme", "acme", PolicyScope::Organization, "acme", CACHE),
        ]);
        assert_eq!(
            id(set.resolve("k1", "acme", "llama")),
            Some("org-acme".into())
        );
    }

    #[test]
    fn an_unreadable_policy_fails_closed_instead_of_falling_back() {
        let set = PolicySet::from_rows(&[
            row("org-acme", "acme", PolicyScope::Organization, "acme", CACHE),
            row(
                "broken",
                "acme",
                PolicyScope::Key,
                "k1",
                r#"{"cache":{"ttl":5}}"#,
            ),
            row(
                "invalid",
                "acme",
                PolicyScope::Model,
                "llama",
                r#"{"cache":{"ttl_seconds":0}}"#,
            ),
        ]);
        for (key, model, expected) in [("k1", "mistral", "broken"), ("k2", "llama", "invalid")] {
            let policy = set.resolve(key, "acme", model).unwrap();
            assert_eq!(policy.id, expected);
            assert!(policy.cache.is_none(), "never served from a cache");
            let rules = &policy.guardrails.as_ref().unwrap().rules;
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0].action, GuardAction::Block);
            match &rules[0].detector {
                DetectorSpec::Regex { name, pattern } => {
                    assert_eq!(name, UNREADABLE_LABEL);
                    let any = regex_free_match(pattern);
                    assert!(any, "the pattern matches any character");
                }
                other => panic!("{other:?}"),
            }
        }
        // The fail-closed spec passes the domain's own checks, and its compiled guard blocks
        // any text at all.
        let closed = EffectivePolicy::fail_closed("x", 1, "acme");
        let guard = closed
            .guard
            .as_ref()
            .expect("the fail-closed guard compiles");
        assert_eq!(guard.apply("a").blocked, Some("regex"));
        assert_eq!(guard.apply_json(br#"{"x":"y"}"#).blocked, Some("regex"));
        let spec = PolicySpec {
            cache: closed.cache,
            guardrails: closed.guardrails,
        };
        assert!(spec.validate().is_ok());
    }

    /// `[\s\S]` is "any whitespace or any non-whitespace": any character.
    fn regex_free_match(pattern: &str) -> bool {
        pattern == r"[\s\S]"
    }
}
