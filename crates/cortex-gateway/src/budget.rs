//! Spend budgets that hold exactly (SPEC §18, issue 29): before a request leaves, its
//! worst-case cost is reserved at every budget level it falls under, all at once
//! (`cortex-limits`' reservation engine: one Redis script, or one lock in process); when its
//! usage is known the reservation is settled to the actual cost, or released when it cost
//! nothing. A level admits a request while its spend plus what is reserved is below its limit,
//! so spend passes a budget by at most one request's cost, at any concurrency, on any number of
//! instances.
//!
//! The worst case is the request's input (its body's length in bytes, halved: a token is
//! longer than two bytes of JSON in every tokenizer we know of, and JSON's syntax and escapes
//! only add bytes) at the input price, plus its output cap at the output price. A client
//! that set no output cap gets one set on the request — [`DEFAULT_OUTPUT_CAP`], the same bound
//! the Anthropic translator already sends — so the provider cannot spend past the
//! reservation.
//!
//! Levels today: the key (its `limits.budget_usd`, over all time). The organization, team and
//! user levels join here as they are stored.

use std::future::Future;
use std::pin::Pin;

use cortex_domain::KeyLimits;
use cortex_limits::{BudgetLevel, LimitError, Period, SpendLedger};
use cortex_store::usage::SpendOf;
use cortex_store::Store;
use cortex_upstream::ModelRoute;
use cortex_wire::Endpoint;

/// The output cap set on a budgeted request that carries none (Anthropic's translator sends the
/// same when a chat request has none).
pub const DEFAULT_OUTPUT_CAP: u64 = cortex_wire::translate::anthropic::DEFAULT_MAX_TOKENS;

/// The levels of the key `id` with `limits`: its own budget, over all time.
pub fn levels_of(id: &str, limits: &KeyLimits) -> Vec<BudgetLevel> {
    let mut levels = Vec::new();
    if let Some(budget) = limits.budget_usd {
        levels.push(BudgetLevel {
            scope: format!("key:{id}"),
            limit_micro_usd: micro_usd(budget),
            period: Period::Total,
        });
    }
    levels
}

/// The most a request can cost, in micro-USD: input estimated from `body_len` bytes (half as
/// many tokens), output at `output_cap` tokens, at the model's prices.
pub fn worst_case_micro_usd(route: &ModelRoute, body_len: usize, output_cap: u64) -> i64 {
    let input_tokens = (body_len as u64).div_ceil(2);
    micro_usd(route.cost_usd(input_tokens, output_cap)).max(1)
}

/// The field that caps output in `upstream`'s dialect, when the gateway must add one: chat and
/// completions take `max_tokens`, the Responses API `max_output_tokens`; a Messages body always
/// has `max_tokens` (the door requires it and the translator sets it), embeddings produce no
/// output.
pub fn cap_field(upstream: Endpoint) -> Option<&'static str> {
    match upstream {
        Endpoint::Chat | Endpoint::Completions => Some("max_tokens"),
        Endpoint::Responses => Some("max_output_tokens"),
        Endpoint::Messages | Endpoint::Embeddings => None,
    }
}

/// Appends `"field":cap` to the top-level object `body` (which has no such field: the client
/// set no cap). A body that is not an object with at least one member is left alone.
pub fn append_cap(body: &mut Vec<u8>, field: &str, cap: u64) {
    if body.len() < 3 || body.first() != Some(&b'{') || body.last() != Some(&b'}') {
        return;
    }
    body.pop();
    body.extend_from_slice(b",\"");
    body.extend_from_slice(field.as_bytes());
    body.extend_from_slice(b"\":");
    body.extend_from_slice(itoa::Buffer::new().format(cap).as_bytes());
    body.push(b'}');
}

pub fn micro_usd(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

/// Recorded usage, where a missing budget counter is rebuilt from.
pub struct StoreLedger(pub Store);

impl SpendLedger for StoreLedger {
    fn spent_since<'a>(
        &'a self,
        scope: &'a str,
        from_millis: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, LimitError>> + Send + 'a>> {
        Box::pin(async move {
            let who = match scope.split_once(':') {
                Some(("key", id)) => SpendOf::Key(id),
                Some(("user", id)) => SpendOf::User(id),
                _ => {
                    return Err(LimitError::Ledger(format!(
                        "unknown budget scope {scope:?}"
                    )))
                }
            };
            let usd = self
                .0
                .spend_since(who, from_millis)
                .await
                .map_err(|err| LimitError::Ledger(err.to_string()))?;
            Ok(micro_usd(usd))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_is_appended_to_an_object_and_nothing_else() {
        let mut body = br#"{"model":"m"}"#.to_vec();
        append_cap(&mut body, "max_tokens", 4096);
        assert_eq!(body, br#"{"model":"m","max_tokens":4096}"#);
        for odd in [&b"{}"[..], b"[1]", b""] {
            let mut body = odd.to_vec();
            append_cap(&mut body, "max_tokens", 1);
            assert_eq!(body, odd);
        }
    }

    #[test]
    fn the_worst_case_prices_half_the_body_as_input_and_the_whole_cap_as_output() {
        let route = ModelRoute::new("m".into(), None, Vec::new(), 1.0, 2.0);
        // 100 bytes → 50 input tokens at $1/Mtok, 10 output tokens at $2/Mtok: 70 µUSD.
        assert_eq!(worst_case_micro_usd(&route, 100, 10), 70);
        let free = ModelRoute::new("f".into(), None, Vec::new(), 0.0, 0.0);
        assert_eq!(
            worst_case_micro_usd(&free, 100, 10),
            1,
            "never a zero reservation"
        );
    }
}
