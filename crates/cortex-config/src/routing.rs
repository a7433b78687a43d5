//! A provider's `weight` and `health_check_path` and a model's `strategy` (SPEC §16), checked
//! the same way wherever they are declared (`cortex.toml`, the admin API, a config import), so
//! the three places refuse the same values with the same words.

use cortex_domain::provider::{is_valid_health_check_path, MAX_HEALTH_CHECK_PATH_LEN};
use cortex_domain::routing::{is_valid_weight, DEFAULT_WEIGHT, MAX_WEIGHT};
use cortex_domain::RoutingStrategy;

use crate::error::ConfigError;

/// `place.field`, or the field alone when `place` is empty (the admin API names body fields).
fn setting(place: &str, field: &str) -> String {
    if place.is_empty() {
        field.to_owned()
    } else {
        format!("{place}.{field}")
    }
}

/// A provider's weight under the `weighted` strategy: [`DEFAULT_WEIGHT`] when absent, else 1
/// to [`MAX_WEIGHT`]. `place` prefixes the setting named in the error, as in
/// [`crate::check_provider_dialect`].
pub fn check_weight(place: &str, weight: Option<u32>) -> Result<u32, ConfigError> {
    match weight {
        None => Ok(DEFAULT_WEIGHT),
        Some(weight) if is_valid_weight(weight) => Ok(weight),
        Some(_) => Err(ConfigError::new(
            setting(place, "weight"),
            format!("must be a whole number from 1 to {MAX_WEIGHT}"),
        )),
    }
}

/// A provider's health check path, below its `base_url`; `None` checks
/// [`cortex_domain::provider::DEFAULT_HEALTH_CHECK_PATH`]. The value is not echoed: it is
/// whatever the operator typed, and may be long.
pub fn check_health_check_path(
    place: &str,
    path: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match path {
        None => Ok(None),
        Some(path) if is_valid_health_check_path(path) => Ok(Some(path.to_owned())),
        Some(_) => Err(ConfigError::new(
            setting(place, "health_check_path"),
            format!(
                "must be a path below base_url: 1 to {MAX_HEALTH_CHECK_PATH_LEN} letters, digits, \
                 '/', '_', '.' or '-', not starting with '/', without a '..' segment"
            ),
        )),
    }
}

/// A model's balancing strategy: `round_robin` when absent; an unknown name is refused with
/// the names that are allowed.
pub fn check_strategy(place: &str, strategy: Option<&str>) -> Result<RoutingStrategy, ConfigError> {
    match strategy {
        None => Ok(RoutingStrategy::default()),
        Some(text) => text.parse().map_err(|_| {
            let names: Vec<&str> = RoutingStrategy::ALL.iter().map(|s| s.as_str()).collect();
            ConfigError::new(
                setting(place, "strategy"),
                format!("must be one of {}", names.join(", ")),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_default_to_one_and_stay_in_range() {
        assert_eq!(check_weight("providers[a]", None).unwrap(), 1);
        assert_eq!(check_weight("providers[a]", Some(1000)).unwrap(), 1000);
        for bad in [0, 1001, u32::MAX] {
            let err = check_weight("providers[a]", Some(bad)).unwrap_err();
            assert_eq!(err.setting, "providers[a].weight");
            assert_eq!(err.problem, "must be a whole number from 1 to 1000");
        }
        assert_eq!(check_weight("", Some(0)).unwrap_err().setting, "weight");
    }

    #[test]
    fn health_check_paths_are_relative_and_plain() {
        assert_eq!(check_health_check_path("p", None).unwrap(), None);
        assert_eq!(
            check_health_check_path("p", Some("v1/health")).unwrap(),
            Some("v1/health".to_owned())
        );
        for bad in ["", "/models", "../x", "http://evil", "a?b", "a#b"] {
            let err = check_health_check_path("p", Some(bad)).unwrap_err();
            assert_eq!(err.setting, "p.health_check_path", "{bad:?}");
            assert!(!err.problem.contains("evil"), "values are not echoed");
        }
    }

    #[test]
    fn strategies_default_to_round_robin_and_unknown_ones_name_the_allowed() {
        assert_eq!(
            check_strategy("models[m]", None).unwrap(),
            RoutingStrategy::RoundRobin
        );
        assert_eq!(
            check_strategy("models[m]", Some("least_latency")).unwrap(),
            RoutingStrategy::LeastLatency
        );
        let err = check_strategy("models[m]", Some("fastest")).unwrap_err();
        assert_eq!(err.setting, "models[m].strategy");
        assert_eq!(
            err.problem,
            "must be one of round_robin, weighted, least_latency, priority"
        );
        assert_eq!(
            check_strategy("", Some("")).unwrap_err().setting,
            "strategy"
        );
    }
}
