//! Benchmark helper, not an operator tool: appends chained audit events to a database until it
//! holds `TOTAL` events, so `cortex audit verify` can be timed over a large log
//! (`scripts/bench-audit.sh`). It has no master key, so it writes them unkeyed, as a version
//! before keyed chains did: the first `cortex` command with the key re-keys them once (the
//! upgrade path, which the benchmark times too).
//!
//! Usage: `cargo run --release -p cortex-store --example audit_fill -- DATABASE_URL TOTAL`

#![allow(clippy::print_stdout)] // A command-line helper reports on stdout.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cortex_domain::audit::NewAuditEvent;
use cortex_store::Store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(total)) = (args.next(), args.next()) else {
        return Err("usage: audit_fill DATABASE_URL TOTAL".into());
    };
    let total: i64 = total.parse()?;
    let store = Store::open(&url).await?;
    let started = Instant::now();
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    const BATCH: i64 = 50_000;
    loop {
        let (head, _) = store.audit_head().await?;
        let missing = total - head;
        if missing <= 0 {
            break;
        }
        // Events shaped like real ones: an actor, an action, an id, small JSON details, an IP.
        let events: Vec<NewAuditEvent> = (0..missing.min(BATCH))
            .map(|i| {
                let n = head + i + 1;
                NewAuditEvent::new("admin", "key.create", format!("{n:032x}"))
                    .with_details(&serde_json::json!({ "name": format!("bench-key-{n}"), "scopes": ["chat", "embeddings"] }))
                    .with_ip("10.0.0.1")
            })
            .collect();
        store.append_audit_batch(&events, now).await?;
    }
    let (head, _) = store.audit_head().await?;
    println!(
        "audit log holds {head} events (filled in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}
