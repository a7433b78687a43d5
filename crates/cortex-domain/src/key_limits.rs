//! Per-key limit overrides (SPEC §14 `limits`). Enforcement lives in `cortex-limits`.

use serde::{Deserialize, Serialize};

use crate::tenancy::BudgetPeriod;

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
    /// The period `budget_usd` is counted over (UTC); `total` when not given, which is what a
    /// key budget meant before periods existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<BudgetPeriod>,
}

/// Bounds on every key's limits, whoever sets them (the command line included). Above them a
/// value means "unlimited" in a way the limiter's arithmetic was not made for: GCRA keeps
/// `burst × (1 / rate)` in milliseconds as an `f64` (here at most 10¹³, exact), spend is counted
/// in micro-dollars in an `i64` (here at most 10¹⁵). They are generous: the benchmark's key
/// asks for 10,000,000 requests a second with bursts of as many.
pub mod bounds {
    pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
    pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000_000.0;
    pub const MAX_BURST: u32 = 10_000_000;
    pub const MAX_CONCURRENT_STREAMS: u32 = 1_000_000;
    pub const MAX_TOKENS_PER_MINUTE: u64 = 1_000_000_000_000;
    pub const MAX_BUDGET_USD: f64 = 1_000_000_000.0;
}

/// The deployment's defaults (`RATE_LIMIT_RPS`, `RATE_LIMIT_BURST`,
/// `MAX_CONCURRENT_STREAMS_PER_ID`): the most a key's own limits may allow when the one setting
/// them may not manage every key. Tokens per minute and budget have no default, so any value
/// within [`bounds`] only narrows what a key may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitCeiling {
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_concurrent_streams: u32,
}

impl KeyLimits {
    /// Refuses values that cannot be meant: negative, zero rates, NaN, and anything beyond
    /// [`bounds`]. The message names the field and the bound.
    pub fn validate(&self) -> Result<(), String> {
        use bounds::*;
        if let Some(rps) = self.requests_per_second {
            if !(rps.is_finite() && rps > 0.0) {
                return Err("limits.requests_per_second must be a positive number".into());
            }
            if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&rps) {
                return Err(format!(
                    "limits.requests_per_second must be between {MIN_REQUESTS_PER_SECOND} and {MAX_REQUESTS_PER_SECOND}"
                ));
            }
        }
        match self.burst {
            Some(0) => return Err("limits.burst must be at least 1".into()),
            Some(burst) if burst > MAX_BURST => {
                return Err(format!("limits.burst must be at most {MAX_BURST}"))
            }
            _ => {}
        }
        match self.max_concurrent_streams {
            Some(0) => return Err("limits.max_concurrent_streams must be at least 1".into()),
            Some(streams) if streams > MAX_CONCURRENT_STREAMS => {
                return Err(format!(
                    "limits.max_concurrent_streams must be at most {MAX_CONCURRENT_STREAMS}"
                ))
            }
            _ => {}
        }
        if self
            .tokens_per_minute
            .is_some_and(|tokens| tokens > MAX_TOKENS_PER_MINUTE)
        {
            return Err(format!(
                "limits.tokens_per_minute must be at most {MAX_TOKENS_PER_MINUTE}"
            ));
        }
        if let Some(budget) = self.budget_usd {
            if !(budget.is_finite() && budget >= 0.0) {
                return Err("limits.budget_usd must be zero or more".into());
            }
            if budget > MAX_BUDGET_USD {
                return Err(format!(
                    "limits.budget_usd must be at most {MAX_BUDGET_USD}"
                ));
            }
        }
        if self.budget_period.is_some() && self.budget_usd.is_none() {
            return Err("limits.budget_period needs limits.budget_usd".into());
        }
        Ok(())
    }

    /// The key's own budget, when it has one.
    pub fn budget(&self) -> Option<crate::tenancy::Budget> {
        self.budget_usd.map(|usd| crate::tenancy::Budget {
            usd,
            period: self.budget_period.unwrap_or(BudgetPeriod::Total),
        })
    }

    /// The first limit above `ceiling`, as a message naming the field and the ceiling.
    pub fn check_ceiling(&self, ceiling: &LimitCeiling) -> Result<(), String> {
        let above = |field: &str, ceiling: &dyn std::fmt::Display, setting: &str| {
            format!(
                "limits.{field} may be at most {ceiling} (this deployment's {setting}); \
                 only a role that manages all keys may set more"
            )
        };
        if self
            .requests_per_second
            .is_some_and(|rps| rps > ceiling.requests_per_second)
        {
            return Err(above(
                "requests_per_second",
                &ceiling.requests_per_second,
                "RATE_LIMIT_RPS",
            ));
        }
        if self.burst.is_some_and(|burst| burst > ceiling.burst) {
            return Err(above("burst", &ceiling.burst, "RATE_LIMIT_BURST"));
        }
        if self
            .max_concurrent_streams
            .is_some_and(|streams| streams > ceiling.max_concurrent_streams)
        {
            return Err(above(
                "max_concurrent_streams",
                &ceiling.max_concurrent_streams,
                "MAX_CONCURRENT_STREAMS_PER_ID",
            ));
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

    #[test]
    fn a_key_budget_has_a_period_total_unless_told() {
        let old: KeyLimits = serde_json::from_str(r#"{"budget_usd":2}"#).unwrap();
        assert_eq!(old.budget().unwrap().period, BudgetPeriod::Total);
        let daily: KeyLimits =
            serde_json::from_str(r#"{"budget_usd":2,"budget_period":"daily"}"#).unwrap();
        assert_eq!(daily.budget().unwrap().period, BudgetPeriod::Daily);
        assert_eq!(
            serde_json::to_string(&daily).unwrap(),
            r#"{"budget_usd":2.0,"budget_period":"daily"}"#
        );
        assert!(serde_json::from_str::<KeyLimits>(r#"{"budget_period":"weekly"}"#).is_err());
        let orphan: KeyLimits = serde_json::from_str(r#"{"budget_period":"daily"}"#).unwrap();
        assert!(orphan
            .validate()
            .unwrap_err()
            .contains("limits.budget_period"));
    }

    #[test]
    fn absurd_values_are_refused_for_everyone_with_the_field_named() {
        let cases = [
            (
                KeyLimits {
                    burst: Some(4_000_000_000),
                    ..KeyLimits::default()
                },
                "limits.burst",
            ),
            (
                KeyLimits {
                    requests_per_second: Some(1e-9),
                    ..KeyLimits::default()
                },
                "limits.requests_per_second",
            ),
            (
                KeyLimits {
                    requests_per_second: Some(1e12),
                    ..KeyLimits::default()
                },
                "limits.requests_per_second",
            ),
            (
                KeyLimits {
                    max_concurrent_streams: Some(u32::MAX),
                    ..KeyLimits::default()
                },
                "limits.max_concurrent_streams",
            ),
            (
                KeyLimits {
                    tokens_per_minute: Some(u64::MAX),
                    ..KeyLimits::default()
                },
                "limits.tokens_per_minute",
            ),
            (
                KeyLimits {
                    budget_usd: Some(1e18),
                    ..KeyLimits::default()
                },
                "limits.budget_usd",
            ),
        ];
        for (limits, field) in cases {
            let message = limits.validate().unwrap_err();
            assert!(message.contains(field), "{message}");
        }
        // The benchmark's key stays valid.
        let bench = KeyLimits {
            requests_per_second: Some(10_000_000.0),
            burst: Some(10_000_000),
            max_concurrent_streams: Some(10_000),
            ..KeyLimits::default()
        };
        assert!(bench.validate().is_ok());
    }

    #[test]
    fn the_ceiling_names_the_first_field_above_it() {
        let ceiling = LimitCeiling {
            requests_per_second: 10.0,
            burst: 20,
            max_concurrent_streams: 5,
        };
        let at = KeyLimits {
            requests_per_second: Some(10.0),
            burst: Some(20),
            max_concurrent_streams: Some(5),
            tokens_per_minute: Some(u64::MAX),
            budget_usd: Some(1e9),
            budget_period: None,
        };
        assert!(at.check_ceiling(&ceiling).is_ok());
        let above = KeyLimits {
            burst: Some(21),
            ..KeyLimits::default()
        };
        let message = above.check_ceiling(&ceiling).unwrap_err();
        assert!(
            message.contains("limits.burst") && message.contains("20"),
            "{message}"
        );
    }
}
