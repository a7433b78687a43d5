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
//! Levels: the key (`limits.budget_usd` over `limits.budget_period`), its owner, its team and
//! its organization, each with its own period (UTC). They are read with the key (the store
//! joins them in, and a change to any gives the key a new version), so building them costs the
//! request nothing.

use std::future::Future;
use std::pin::Pin;

use cortex_domain::{Budget, BudgetPeriod};
use cortex_limits::{BudgetLevel, LimitError, Period, SpendLedger};
use cortex_store::keys::ApiKeyRow;
use cortex_store::usage::SpendOf;
use cortex_store::Store;
use cortex_upstream::ModelRoute;
use cortex_wire::Endpoint;

/// The output cap set on a budgeted request that carries none (Anthropic's translator sends the
/// same when a chat request has none).
pub const DEFAULT_OUTPUT_CAP: u64 = cortex_wire::translate::anthropic::DEFAULT_MAX_TOKENS;

/// The budget levels of `row`'s requests, narrowest first: its own, its owner's, its team's,
/// its organization's (those that have a budget).
pub fn levels_of(row: &ApiKeyRow) -> Vec<BudgetLevel> {
    let above = &row.above;
    [
        ("key", Some(row.id.as_str()), row.limits.budget()),
        ("user", Some(row.owner_user_id.as_str()), above.user_budget),
        ("team", row.team_id.as_deref(), above.team_budget),
        ("org", Some(row.org_id.as_str()), above.org_budget),
    ]
    .into_iter()
    .filter_map(|(kind, id, budget)| Some(level(kind, id?, budget?)))
    .collect()
}

fn level(kind: &str, id: &str, budget: Budget) -> BudgetLevel {
    BudgetLevel {
        scope: format!("{kind}:{id}"),
        limit_micro_usd: micro_usd(budget.usd),
        period: period_of(budget.period),
    }
}

pub fn period_of(period: BudgetPeriod) -> Period {
    match period {
        BudgetPeriod::Daily => Period::Daily,
        BudgetPeriod::Monthly => Period::Monthly,
        BudgetPeriod::Total => Period::Total,
    }
}

/// The token-rate windows of `row`'s requests above the key's own: its team's and its
/// organization's tokens per minute, as (window name, limit).
pub fn token_levels_of(row: &ApiKeyRow) -> Vec<(String, u64)> {
    let above = &row.above;
    [
        ("team", row.team_id.as_deref(), above.team_tokens_per_minute),
        (
            "org",
            Some(row.org_id.as_str()),
            above.org_tokens_per_minute,
        ),
    ]
    .into_iter()
    .filter_map(|(kind, id, limit)| {
        let limit = u64::try_from(limit?).ok()?;
        Some((format!("{kind}:{}", id?), limit))
    })
    .collect()
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
                Some(("team", id)) => SpendOf::Team(id),
                Some(("org", id)) => SpendOf::Org(id),
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
    use cortex_domain::KeyLimits;
    use cortex_store::keys::LevelsAbove;

    fn key_row(limits: KeyLimits, team: Option<&str>, above: LevelsAbove) -> ApiKeyRow {
        ApiKeyRow {
            id: "k1".into(),
            public_id: "p1".into(),
            secret_hash: String::new(),
            name: "k".into(),
            owner_user_id: "u1".into(),
            scopes: Vec::new(),
            models: None,
            limits,
            expires_at: None,
            revoked_at: None,
            rotated_to: None,
            created_at: 0,
            updated_at: 0,
            last_used_at: None,
            owner_disabled: false,
            version: 1,
            org_id: "o1".into(),
            team_id: team.map(str::to_owned),
            org_models: None,
            allowed_ips: None,
            above,
        }
    }

    fn budget(usd: f64, period: BudgetPeriod) -> Option<Budget> {
        Some(Budget { usd, period })
    }

    #[test]
    fn every_level_with_a_budget_is_reserved_at_narrowest_first() {
        let limits = KeyLimits {
            budget_usd: Some(1.0),
            budget_period: Some(BudgetPeriod::Daily),
            ..KeyLimits::default()
        };
        let above = LevelsAbove {
            user_budget: budget(2.0, BudgetPeriod::Monthly),
            team_budget: budget(3.0, BudgetPeriod::Total),
            team_tokens_per_minute: Some(500),
            org_budget: budget(4.0, BudgetPeriod::Daily),
            org_tokens_per_minute: Some(900),
        };
        let levels = levels_of(&key_row(limits, Some("t1"), above.clone()));
        let seen: Vec<_> = levels
            .iter()
            .map(|l| (l.scope.as_str(), l.limit_micro_usd, l.period))
            .collect();
        assert_eq!(
            seen,
            [
                ("key:k1", 1_000_000, Period::Daily),
                ("user:u1", 2_000_000, Period::Monthly),
                ("team:t1", 3_000_000, Period::Total),
                ("org:o1", 4_000_000, Period::Daily),
            ]
        );
        assert_eq!(
            token_levels_of(&key_row(KeyLimits::default(), Some("t1"), above.clone())),
            [("team:t1".to_owned(), 500), ("org:o1".to_owned(), 900)]
        );
        // A key outside any team is charged to no team, whatever a team's limits say.
        let teamless = key_row(KeyLimits::default(), None, above);
        assert!(levels_of(&teamless)
            .iter()
            .all(|l| !l.scope.starts_with("team:")));
        assert_eq!(token_levels_of(&teamless), [("org:o1".to_owned(), 900)]);
        // An old key budget without a period counts over all time.
        let old = KeyLimits {
            budget_usd: Some(1.0),
            ..KeyLimits::default()
        };
        let levels = levels_of(&key_row(old, None, LevelsAbove::default()));
        assert_eq!(levels.len(), 1);
        assert_eq!(levels[0].period, Period::Total);
        assert!(levels_of(&key_row(KeyLimits::default(), None, LevelsAbove::default())).is_empty());
    }

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
