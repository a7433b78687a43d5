//! Per-key limit overrides (SPEC §14 `limits`). Enforcement lives in `cortex-limits`.

use serde::{Deserialize, Serialize};

/// Optional per-key overrides; `None` means "use the gateway default" (or no limit for tokens
/// and budget, which have no default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
}

impl KeyLimits {
    /// Refuses values that cannot be meant: negative, zero rates, NaN.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rps) = self.requests_per_second {
            if !(rps.is_finite() && rps > 0.0) {
                return Err("limits.requests_per_second must be a positive number".into());
            }
        }
        if self.burst == Some(0) {
            return Err("limits.burst must be at least 1".into());
        }
        if self.max_concurrent_streams == Some(0) {
            return Err("limits.max_concurrent_streams must be at least 1".into());
        }
        if let Some(budget) = self.budget_usd {
            if !(budget.is_finite() && budget >= 0.0) {
                return Err("limits.budget_usd must be zero or more".into());
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self == &KeyLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_refuses_unknown_fields() {
        assert!(KeyLimits::default().validate().is_ok());
        let bad = KeyLimits {
            requests_per_second: Some(-1.0),
            ..KeyLimits::default()
        };
        assert!(bad.validate().is_err());
        let nan = KeyLimits {
            budget_usd: Some(f64::NAN),
            ..KeyLimits::default()
        };
        assert!(nan.validate().is_err());
        assert!(serde_json::from_str::<KeyLimits>(r#"{"rps":1}"#).is_err());
        let parsed: KeyLimits = serde_json::from_str(r#"{"burst":3}"#).unwrap();
        assert_eq!(parsed.burst, Some(3));
    }
}
