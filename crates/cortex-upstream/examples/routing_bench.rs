//! Routing cost (SPEC §16, issue 27): CPU per request of the routing decision and the health
//! bookkeeping around it, for every strategy, over a model with three healthy providers. A
//! request pays `attempt_order` (the decision), the in-flight guard, and the success record
//! (breaker, EWMA, outcome ring). `cargo run --release -p cortex-upstream --example
//! routing_bench` (scripts/bench.sh runs it); the budget is 1 µs per request.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cortex_domain::RoutingStrategy;
use cortex_upstream::breaker::BreakerSettings;
use cortex_upstream::{ModelRoute, ProviderTarget};

fn cpu_time() -> Duration {
    // Process CPU time from /proc (utime + stime, in clock ticks of 10 ms on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn route(strategy: RoutingStrategy) -> ModelRoute {
    let targets = (0..3)
        .map(|i| {
            Arc::new(
                ProviderTarget::new(
                    format!("p{i}"),
                    format!("p{i}"),
                    "http://127.0.0.1:8000/v1",
                    None,
                )
                .with_routing(i + 1, None),
            )
        })
        .collect();
    ModelRoute::new("m".into(), None, targets, 0.0, 0.0).with_strategy(strategy)
}

fn main() {
    let settings = BreakerSettings::default();
    let n = 1_000_000;
    let mut worst = 0.0f64;
    for strategy in RoutingStrategy::ALL {
        let route = route(strategy);
        let mut per_request = Vec::new();
        for round in 0..5 {
            let cpu_before = cpu_time();
            for i in 0..n {
                let now = 1_000_000 + i64::from(round) * 1_000 + (i as i64 >> 10);
                let order = route.attempt_order(now, settings);
                let chosen = &order[0];
                let in_flight = chosen.health.start_request();
                chosen.health.record_success(1_000 + (i as u64 & 1023), now);
                drop(in_flight);
                std::hint::black_box(order);
            }
            let cpu = cpu_time() - cpu_before;
            per_request.push(cpu.as_secs_f64() * 1e9 / f64::from(n));
        }
        let ns = median(per_request);
        worst = worst.max(ns);
        println!(
            "routing {}: median {ns:.0} ns CPU per request (decision + health bookkeeping, 3 providers, 5 rounds of 1,000,000)",
            strategy.as_str()
        );
    }
    println!("routing worst strategy: {worst:.0} ns per request (target < 1000 ns)");
}
