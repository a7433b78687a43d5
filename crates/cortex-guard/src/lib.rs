//! The DLP scanner behind the guardrails (SPEC §21): finds provider secrets, personal data and
//! custom patterns in a request's or an answer's text, and says what the policy does about
//! them — block, redact (`[REDACTED:<type>]`) or log — without ever keeping the matched text.
//!
//! Pure: no IO, no async, no state beyond the compiled [`Guard`]. Webhook rules are only
//! listed ([`Guard::webhooks`]); calling them is the gateway's.
//!
//! Cost: every detector starts from a cheap prefilter (an Aho-Corasick automaton over the
//! secrets' literal prefixes, `memchr` for `@`, a vectorized digit test) and runs its precise
//! check only around what that finds, so clean text costs a few hundred nanoseconds per KiB
//! (`examples/guard_bench.rs`).
//!
//! What it is not: a barrier against someone deliberately hiding data (base64, spacing digits
//! out, look-alike characters). It is a safety net for honest mistakes (docs/security.md).

mod checks;
mod detect;
mod json;
mod scan;
mod stream;

pub use checks::{iban_mod97, luhn};
pub use scan::{Finding, Guard, GuardBuildError, Hit, JsonVerdict, Verdict, WebhookRule};
pub use stream::{StreamGuard, MAX_HOLD};

// One compiled guard is shared by every request (in an `Arc`), and a stream's guard moves with
// its task.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn sent<T: Send>() {}
    shared::<Guard>();
    sent::<StreamGuard>();
};
