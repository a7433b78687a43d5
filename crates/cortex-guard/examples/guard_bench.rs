//! Guardrail cost: CPU per `apply_json` of a 4 KiB chat request with the default policy
//! (`secrets` + `pii`, all kinds, redact), once over clean English text and once over the same
//! text with five secrets and personal data to redact. `cargo run --release -p cortex-guard
//! --example guard_bench` (scripts/bench.sh runs it). The figure is the median over batches,
//! after a warm-up, measured with `Instant` around each batch.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::hint::black_box;
use std::time::Instant;

use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec};
use cortex_guard::Guard;

const PROSE: &str = "When we planned the move to the new office, the team agreed that the \
first week would be spent on setting up the shared spaces rather than on client work. \
Everyone brought a list of what they needed, and we compared notes over lunch on Tuesday. \
The kitchen was the easy part; the meeting rooms took longer, because nobody could agree on \
whether the screens should face the windows or the door. In the end we chose the door, \
since the afternoon light makes the windows useless for presentations anyway. ";

/// A chat request whose user message is `content`, padded with prose to about 4 KiB.
fn body(extra: &str) -> Vec<u8> {
    let mut content = String::new();
    while content.len() + extra.len() < 3900 {
        content.push_str(PROSE);
        content.push_str("\n\n");
    }
    content.truncate(3900 - extra.len());
    content.push_str(extra);
    let doc = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": content}
        ],
        "temperature": 0.2,
        "max_tokens": 512,
        "stream": true
    });
    serde_json::to_vec(&doc).unwrap()
}

fn median_ns(guard: &Guard, body: &[u8]) -> u64 {
    const BATCH: u32 = 200;
    for _ in 0..2000 {
        black_box(guard.apply_json(black_box(body)));
    }
    let mut samples: Vec<u64> = (0..300)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..BATCH {
                black_box(guard.apply_json(black_box(body)));
            }
            (started.elapsed().as_nanos() / u128::from(BATCH)) as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let guard = Guard::build(&GuardrailSpec {
        rules: vec![
            GuardrailRule {
                detector: DetectorSpec::Secrets,
                action: GuardAction::Redact,
            },
            GuardrailRule {
                detector: DetectorSpec::Pii { kinds: vec![] },
                action: GuardAction::Redact,
            },
        ],
        scan_responses: true,
    })
    .unwrap();
    let clean = body("");
    // Fakes, assembled so no literal here looks like a key.
    let dirty = body(&format!(
        " My key is {}{} and AWS {}{}; mail alice@example.com, card 4111 1111 1111 1111, \
         call +1 (415) 555-2671.",
        "sk-",
        "a1B2".repeat(12),
        "AK",
        "IAIOSFODNN7EXAMPLE"
    ));
    assert!(
        guard.apply_json(&clean).hits.is_empty(),
        "the clean body has a finding"
    );
    let found: u32 = guard.apply_json(&dirty).hits.iter().map(|h| h.count).sum();
    assert_eq!(found, 5, "the dirty body should have five findings");
    println!(
        "guard clean 4KiB: median {} ns per request",
        median_ns(&guard, &clean)
    );
    println!(
        "guard dirty 4KiB: median {} ns per request",
        median_ns(&guard, &dirty)
    );
}
