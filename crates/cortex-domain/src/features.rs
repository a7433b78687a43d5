//! Feature flags (SPEC §10): new capabilities ship default OFF and are turned on by name in the
//! JSON file `CORTEX_FEATURE_FLAGS_FILE` (`{"audit_forwarding": true}`).
//!
//! The set of flags is fixed here, so a misspelt name in the file is an error at start-up rather
//! than a capability that silently stays off.

use std::collections::BTreeMap;

/// One capability that can be turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub description: &'static str,
}

/// Forwarding audit events to a SIEM (`CORTEX_AUDIT_FORWARD_URL`).
pub const AUDIT_FORWARDING: Feature = Feature {
    name: "audit_forwarding",
    description:
        "forward audit events to the SIEM at CORTEX_AUDIT_FORWARD_URL (HTTP or syslog over TCP)",
};

/// Every flag Cortex knows.
pub const FEATURES: &[Feature] = &[AUDIT_FORWARDING];

/// The flags in effect: every known flag, off unless the file turned it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFlags {
    enabled: BTreeMap<&'static str, bool>,
}

impl Default for FeatureFlags {
    fn default() -> Self {
        Self {
            enabled: FEATURES.iter().map(|f| (f.name, false)).collect(),
        }
    }
}

impl FeatureFlags {
    /// Parses the file's text: one JSON object of flag name to boolean. Unknown names, values that
    /// are not booleans and anything but an object are refused with a short reason.
    pub fn parse(text: &str) -> Result<FeatureFlags, String> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let serde_json::Value::Object(object) = value else {
            return Err("must be a JSON object of flag name to true/false".to_owned());
        };
        let mut flags = FeatureFlags::default();
        for (name, value) in object {
            let Some(feature) = FEATURES.iter().find(|f| f.name == name) else {
                let known: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
                return Err(format!(
                    "unknown flag {name:?} (known: {})",
                    known.join(", ")
                ));
            };
            let serde_json::Value::Bool(on) = value else {
                return Err(format!("flag {name:?} must be true or false"));
            };
            flags.enabled.insert(feature.name, on);
        }
        Ok(flags)
    }

    pub fn is_enabled(&self, feature: Feature) -> bool {
        self.enabled.get(feature.name).copied().unwrap_or(false)
    }

    /// Every known flag with its state, in name order.
    pub fn list(&self) -> Vec<(Feature, bool)> {
        FEATURES.iter().map(|f| (*f, self.is_enabled(*f))).collect()
    }

    /// Turns a flag on or off (tests and embedders; operators use the file).
    pub fn set(&mut self, feature: Feature, on: bool) {
        self.enabled.insert(feature.name, on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_defaults_off() {
        let flags = FeatureFlags::default();
        assert!(FEATURES.iter().all(|f| !flags.is_enabled(*f)));
        assert_eq!(FeatureFlags::parse("{}").unwrap(), flags);
    }

    #[test]
    fn known_flags_turn_on() {
        let flags = FeatureFlags::parse(r#"{"audit_forwarding": true}"#).unwrap();
        assert!(flags.is_enabled(AUDIT_FORWARDING));
        let off = FeatureFlags::parse(r#"{"audit_forwarding": false}"#).unwrap();
        assert!(!off.is_enabled(AUDIT_FORWARDING));
    }

    #[test]
    fn unknown_names_wrong_types_and_bad_json_are_refused() {
        assert!(FeatureFlags::parse(r#"{"audit_forwardin": true}"#)
            .unwrap_err()
            .contains("unknown flag"));
        assert!(FeatureFlags::parse(r#"{"audit_forwarding": "yes"}"#)
            .unwrap_err()
            .contains("true or false"));
        assert!(FeatureFlags::parse(r#"["audit_forwarding"]"#).is_err());
        assert!(FeatureFlags::parse("{").unwrap_err().contains("JSON"));
    }
}
