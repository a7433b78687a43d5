//! Limiter cost: CPU per in-process decision and added latency per Redis decision, measured in
//! one run; then the same for budget reservations (reserve + settle at two levels). `cargo run --release -p cortex-limits --example limiter_bench` (scripts/bench.sh
//! runs it). Needs Redis at 127.0.0.1:6379 (or CORTEX_TEST_REDIS_URL) for the second part.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cortex_limits::{
    BudgetDecision, BudgetLevel, LimitError, Limiter, Period, Quota, RedisFailureMode, SpendLedger,
};

/// Nothing recorded yet: every counter starts at zero.
struct EmptyLedger;

impl SpendLedger for EmptyLedger {
    fn spent_since<'a>(
        &'a self,
        _scope: &'a str,
        _from_millis: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, LimitError>> + Send + 'a>> {
        Box::pin(async { Ok(0) })
    }
}

/// A key level and a shared team level, with room for every request of the run.
fn budget_levels(keys: &[String]) -> Vec<Vec<BudgetLevel>> {
    keys.iter()
        .map(|key| {
            vec![
                BudgetLevel {
                    scope: format!("key:{key}"),
                    limit_micro_usd: 1 << 50,
                    period: Period::Daily,
                },
                BudgetLevel {
                    scope: "team:bench".to_owned(),
                    limit_micro_usd: 1 << 50,
                    period: Period::Monthly,
                },
            ]
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn percentile_99(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() * 99 / 100]
}

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

    // Budgets: a reserve and its settle, at a key level and a team level.
    let ledger = EmptyLedger;
    let levels = budget_levels(&keys);
    let now = now_ms();
    let limiter = Limiter::in_process();
    let mut per_pair = Vec::new();
    for _round in 0..5 {
        let n = 200_000;
        let cpu_before = cpu_time();
        for i in 0..n {
            let decision = limiter
                .reserve_budget(&levels[i % levels.len()], 1_000, now, &ledger)
                .await
                .unwrap();
            let BudgetDecision::Reserved(reservation) = decision else {
                panic!("the bench budget is never spent");
            };
            limiter
                .settle_budget(reservation, 700, &ledger)
                .await
                .unwrap();
        }
        let cpu = cpu_time() - cpu_before;
        per_pair.push(cpu.as_secs_f64() * 1e9 / n as f64);
    }
    println!("in-process budget: median {:.0} ns CPU per reserve+settle at two levels (5 rounds of 200,000)", median(per_pair));

    let mut reserves = Vec::new();
    let mut settles = Vec::new();
    for i in 0..20_000 {
        let started = Instant::now();
        let decision = redis
            .reserve_budget(&levels[i % levels.len()], 1_000, now, &ledger)
            .await
            .unwrap();
        reserves.push(started.elapsed().as_secs_f64() * 1e6);
        let BudgetDecision::Reserved(reservation) = decision else {
            panic!("the bench budget is never spent");
        };
        let started = Instant::now();
        redis
            .settle_budget(reservation, 700, &ledger)
            .await
            .unwrap();
        settles.push(started.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "redis budget: added latency p50 {:.0} us, p99 {:.0} us per reserve; p50 {:.0} us, p99 {:.0} us per settle (two levels, 20,000 sequential pairs, loopback)",
        median(reserves.clone()),
        percentile_99(reserves),
        median(settles.clone()),
        percentile_99(settles)
    );
    forget(&url, &prefix).await;
}

/// Budget windows are kept on Redis for days; the bench's are deleted when it is done.
async fn forget(url: &str, prefix: &str) {
    let mut connection = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
