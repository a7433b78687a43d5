//! Benchmark helper, not an operator tool: CPU time per usage row written to a fresh SQLite
//! database in batches the size the gateway's usage writer uses, so changes to the insert path
//! can be compared without the rest of the gateway (docs/benchmarks.md).
//!
//! Usage: `cargo run --release -p cortex-store --example usage_write -- DIRECTORY [BATCH]`

#![allow(clippy::print_stdout)] // A command-line helper reports on stdout.

use std::time::Instant;

use cortex_store::usage::UsageRecord;
use cortex_store::Store;

const ROWS: i64 = 400_000;

/// User plus system time of this process so far, in seconds (Linux).
fn cpu_seconds() -> Result<f64, Box<dyn std::error::Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which may contain spaces: utime and stime are 12th, 13th.
    let rest = stat
        .rsplit_once(") ")
        .ok_or("unexpected /proc/self/stat")?
        .1;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11).ok_or("no utime")?.parse::<f64>()?
        + fields.get(12).ok_or("no stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// A row shaped like the gateway's: UUID key and user ids, a request id, an address.
fn record(n: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req_0123456789ab{n:010x}"),
        key_id: "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f".into(),
        user_id: "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into(),
        model: "llama".into(),
        provider: "fake".into(),
        endpoint: "chat".into(),
        prompt_tokens: 12,
        completion_tokens: 34,
        cost_usd: 0.000_08,
        latency_ms: 1,
        status: 200,
        client_ip: "127.0.0.1".into(),
        created_at: 1_764_000_000_000 + n,
        attempts: 1,
        org_id: "default".into(),
        team_id: None,
        ttft_ms: None,
        cached: false,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        return Err("usage: usage_write DIRECTORY [BATCH]".into());
    };
    let batch: i64 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(2000);
    let store = Store::open(&format!("sqlite://{dir}/usage.db?mode=rwc")).await?;
    store.migrate().await?;
    let mut next = 0;
    let mut write = async |rows: i64| -> Result<(), Box<dyn std::error::Error>> {
        let records: Vec<UsageRecord> = (next..next + rows).map(record).collect();
        next += rows;
        store.insert_usage(&records).await?;
        Ok(())
    };
    // Warm-up: statements prepared, the table past its first pages.
    for _ in 0..20 {
        write(batch).await?;
    }
    let (cpu, wall) = (cpu_seconds()?, Instant::now());
    let batches = ROWS / batch;
    for _ in 0..batches {
        write(batch).await?;
    }
    let rows = (batches * batch) as f64;
    println!(
        "batch {batch}: {:.2} us CPU per row, {:.2} us wall per row",
        (cpu_seconds()? - cpu) * 1e6 / rows,
        wall.elapsed().as_secs_f64() * 1e6 / rows
    );
    Ok(())
}
