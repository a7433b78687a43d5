//! How a model spreads its requests over its providers (SPEC §16). The names are the ones
//! `cortex.toml`, the admin API and the console use.

use std::fmt;
use std::str::FromStr;

/// A model's balancing strategy. Whatever the strategy, a provider whose breaker is open is
/// tried only after every other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RoutingStrategy {
    /// Each request starts at the next provider in turn.
    #[default]
    RoundRobin,
    /// Providers get a share of requests proportional to their `weight`.
    Weighted,
    /// Two providers picked at random; the one with the lower time to first byte (weighed by
    /// its requests in flight) goes first.
    LeastLatency,
    /// The providers in the order the model lists them; the next only when one fails.
    Priority,
}

impl RoutingStrategy {
    pub const ALL: [RoutingStrategy; 4] = [
        RoutingStrategy::RoundRobin,
        RoutingStrategy::Weighted,
        RoutingStrategy::LeastLatency,
        RoutingStrategy::Priority,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoutingStrategy::RoundRobin => "round_robin",
            RoutingStrategy::Weighted => "weighted",
            RoutingStrategy::LeastLatency => "least_latency",
            RoutingStrategy::Priority => "priority",
        }
    }
}

impl fmt::Display for RoutingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the strategy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStrategy;

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`strategy` must be one of round_robin, weighted, least_latency, priority")
    }
}

impl std::error::Error for UnknownStrategy {}

impl FromStr for RoutingStrategy {
    type Err = UnknownStrategy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RoutingStrategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == text)
            .ok_or(UnknownStrategy)
    }
}

/// A provider's `weight` under [`RoutingStrategy::Weighted`]: 1 unless set.
pub const DEFAULT_WEIGHT: u32 = 1;
/// The largest `weight` accepted; a larger one is refused where it is set.
pub const MAX_WEIGHT: u32 = 1_000;

/// Whether `weight` may be given to a provider (1 to [`MAX_WEIGHT`]; a provider that should
/// get nothing is left out of the model instead).
pub fn is_valid_weight(weight: u32) -> bool {
    (1..=MAX_WEIGHT).contains(&weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_read_as_they_are_written() {
        for strategy in RoutingStrategy::ALL {
            assert_eq!(strategy.as_str().parse::<RoutingStrategy>(), Ok(strategy));
        }
        assert_eq!(
            "RoundRobin".parse::<RoutingStrategy>(),
            Err(UnknownStrategy)
        );
        assert_eq!("".parse::<RoutingStrategy>(), Err(UnknownStrategy));
        assert_eq!(RoutingStrategy::default(), RoutingStrategy::RoundRobin);
    }

    #[test]
    fn weights_are_bounded() {
        assert!(is_valid_weight(1) && is_valid_weight(MAX_WEIGHT));
        assert!(!is_valid_weight(0) && !is_valid_weight(MAX_WEIGHT + 1));
    }
}
