//! Limiter cost: CPU per in-process decision and added latency per Redis decision, measured in
//! one run. `cargo run --release -p cortex-limits --example limiter_bench` (scripts/bench.sh
//! runs it). Needs Redis at 127.0.0.1:6379 (or CORTEX_TEST_REDIS_URL) for the second part.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cortex_limits::{Limiter, Quota, RedisFailureMode};

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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quota = Quota {
        rate_per_second: 1_000_000.0,
        burst: 1_000_000,
    };
    let limiter = Limiter::in_process();
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    let mut per_call = Vec::new();
    for _round in 0..5 {
        let n = 1_000_000;
        let cpu_before = cpu_time();
        for i in 0..n {
            let allowed = limiter
                .check_rate(&keys[i % keys.len()], quota)
                .await
                .unwrap()
                .allowed;
            std::hint::black_box(allowed);
        }
        let cpu = cpu_time() - cpu_before;
        per_call.push(cpu.as_secs_f64() * 1e9 / n as f64);
    }
    println!("in-process limiter: median {:.0} ns CPU per decision (5 rounds of 1,000,000; target < 2000 ns)", median(per_call));

    let url = std::env::var("CORTEX_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("cortex-bench-{}", std::process::id());
    let redis = Limiter::redis(&url, &prefix, RedisFailureMode::FailClosed)
        .await
        .expect("Redis is needed for the second half");
    let mut latencies = Vec::new();
    for i in 0..20_000 {
        let started = Instant::now();
        redis
            .check_rate(&keys[i % keys.len()], quota)
            .await
            .unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let p50 = median(latencies.clone());
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = latencies[latencies.len() * 99 / 100];
    println!("redis limiter: added latency p50 {p50:.0} us, p99 {p99:.0} us per decision (20,000 sequential decisions, loopback)");
}
