//! The in-memory routing table: which providers serve which model, at what price.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cortex_domain::routing::DEFAULT_WEIGHT;
use cortex_domain::{ProviderKind, RoutingStrategy};
use cortex_wire::Dialect;
use secrecy::SecretString;

use crate::breaker::{BreakerSettings, BreakerState};
use crate::health::ProviderHealth;
use crate::provider_http::ProviderHttp;

/// The data-plane paths below a provider's base URL, whose full URLs are parsed once when the
/// target is built rather than on every request (parsing cost more than any other step of
/// building the upstream request).
const DATA_PLANE_PATHS: [&str; 5] = [
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "messages",
];

/// One upstream server, with its health (shared with every routing table that names it).
pub struct ProviderTarget {
    pub id: String,
    pub name: String,
    /// Absolute URL including the version prefix, without a trailing slash.
    pub base_url: String,
    /// `base_url/path` for each of [`DATA_PLANE_PATHS`] that parses.
    parsed_urls: Vec<(&'static str, http::Uri)>,
    /// Sent as the bearer token: the provider's own key, or the internal key when the config
    /// file declares the provider for it (decided when the routing table is built).
    pub api_key: Option<SecretString>,
    /// A client of its own when the provider trusts a private CA; `None` uses the shared one.
    pub http: Option<ProviderHttp>,
    /// How the credential is sent and where the endpoints are (SPEC §15).
    pub kind: ProviderKind,
    /// Azure's `api-version` query value or Anthropic's `anthropic-version` header; the kind's
    /// default when the provider sets none.
    pub api_version: Option<String>,
    /// An OpenAI-style provider that serves `/responses` itself, so Responses requests pass
    /// through instead of being translated to chat completions.
    pub responses_api: bool,
    /// Its share of requests under the `weighted` strategy (1 to 1,000).
    pub weight: u32,
    /// `GET {base_url}/{health_check_path}` is the active health check (`models` unless set).
    pub health_check_path: Option<String>,
    /// Breaker, demotion, latency and load: kept by provider id across routing tables.
    pub health: Arc<ProviderHealth>,
}

impl std::fmt::Debug for ProviderTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderTarget")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("has_api_key", &self.api_key.is_some())
            .finish_non_exhaustive()
    }
}

impl ProviderTarget {
    pub fn new(id: String, name: String, base_url: &str, api_key: Option<SecretString>) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        let parsed_urls = DATA_PLANE_PATHS
            .iter()
            .filter_map(|path| {
                let url = http::Uri::try_from(format!("{base_url}/{path}")).ok()?;
                Some((*path, url))
            })
            .collect();
        Self {
            id,
            name,
            base_url,
            parsed_urls,
            api_key,
            http: None,
            kind: ProviderKind::OpenAi,
            api_version: None,
            responses_api: false,
            weight: DEFAULT_WEIGHT,
            health_check_path: None,
            health: Arc::default(),
        }
    }

    /// Shares `health` (the registry's, for this provider id) instead of a fresh one.
    pub fn with_health(mut self, health: Arc<ProviderHealth>) -> Self {
        self.health = health;
        self
    }

    /// Its `weight` (clamped to 1..=1,000) and its health check path.
    pub fn with_routing(mut self, weight: u32, health_check_path: Option<String>) -> Self {
        self.weight = weight.clamp(1, cortex_domain::routing::MAX_WEIGHT);
        self.health_check_path = health_check_path;
        self
    }

    /// Makes the target a provider of `kind`.
    pub fn with_kind(
        mut self,
        kind: ProviderKind,
        api_version: Option<String>,
        responses_api: bool,
    ) -> Self {
        self.kind = kind;
        self.api_version = api_version;
        self.responses_api = responses_api && kind == ProviderKind::OpenAi;
        self
    }

    /// Whether requests in `dialect` can be sent to this provider as they are.
    pub fn speaks(&self, dialect: Dialect) -> bool {
        match self.kind {
            ProviderKind::Anthropic => dialect == Dialect::Messages,
            ProviderKind::Azure => dialect == Dialect::Chat,
            ProviderKind::OpenAi => match dialect {
                Dialect::Chat => true,
                Dialect::Responses => self.responses_api,
                Dialect::Messages => false,
            },
        }
    }

    /// Uses `client` (built with the provider's CA bundle) for this provider's calls.
    pub fn with_client(mut self, client: ProviderHttp) -> Self {
        self.http = Some(client);
        self
    }

    /// The full URL of `path` below the base URL; `None` when it does not parse.
    pub fn url(&self, path: &str) -> Option<http::Uri> {
        match self.parsed_urls.iter().find(|(known, _)| *known == path) {
            Some((_, url)) => Some(url.clone()),
            None => http::Uri::try_from(format!("{}/{}", self.base_url, path)).ok(),
        }
    }

    /// Not demoted by a recent failure.
    pub fn is_healthy(&self, now_millis: i64) -> bool {
        self.health.is_healthy(now_millis)
    }
}

/// A model clients can name, with its providers in failover order.
#[derive(Debug)]
pub struct ModelRoute {
    pub name: String,
    /// The name sent upstream (defaults to `name`).
    pub upstream_name: String,
    pub targets: Vec<Arc<ProviderTarget>>,
    pub input_price_per_mtok: f64,
    pub output_price_per_mtok: f64,
    pub strategy: RoutingStrategy,
    /// The output cap set on a budgeted request that carries none (`None`: the gateway's
    /// default).
    pub output_cap: Option<u32>,
    /// Under `weighted`: each target's weight divided by the weights' greatest common divisor,
    /// and their sum; a request's ticket modulo the sum picks the target.
    weights: Vec<u32>,
    weight_total: u32,
    next: AtomicUsize,
}

impl ModelRoute {
    pub fn new(
        name: String,
        upstream_name: Option<String>,
        targets: Vec<Arc<ProviderTarget>>,
        input_price_per_mtok: f64,
        output_price_per_mtok: f64,
    ) -> Self {
        Self {
            upstream_name: upstream_name.unwrap_or_else(|| name.clone()),
            name,
            targets,
            input_price_per_mtok,
            output_price_per_mtok,
            strategy: RoutingStrategy::RoundRobin,
            weights: Vec::new(),
            weight_total: 0,
            output_cap: None,
            next: AtomicUsize::new(0),
        }
    }

    /// Spreads requests by `strategy` (round-robin unless set).
    pub fn with_output_cap(mut self, cap: Option<u32>) -> Self {
        self.output_cap = cap;
        self
    }

    pub fn with_strategy(mut self, strategy: RoutingStrategy) -> Self {
        self.strategy = strategy;
        if strategy == RoutingStrategy::Weighted {
            let divisor = self
                .targets
                .iter()
                .map(|t| t.weight.max(1))
                .fold(0, gcd)
                .max(1);
            self.weights = self
                .targets
                .iter()
                .map(|t| t.weight.max(1) / divisor)
                .collect();
            self.weight_total = self.weights.iter().sum();
        }
        self
    }

    /// Whether every provider of the model takes requests in `dialect` as they are (a model
    /// without providers speaks chat, and fails with `NoProvider` when sent).
    pub fn speaks(&self, dialect: Dialect) -> bool {
        if self.targets.is_empty() {
            return dialect == Dialect::Chat;
        }
        self.targets.iter().all(|t| t.speaks(dialect))
    }

    /// Where the strategy starts this request: the index of the provider it prefers, and for
    /// `least_latency` the runner-up, which goes second.
    fn preferred(&self, now_millis: i64) -> (usize, Option<usize>) {
        let n = self.targets.len();
        match self.strategy {
            RoutingStrategy::Priority => (0, None),
            RoutingStrategy::RoundRobin => (self.next.fetch_add(1, Ordering::Relaxed) % n, None),
            RoutingStrategy::Weighted if self.weight_total > 0 => {
                let ticket =
                    self.next.fetch_add(1, Ordering::Relaxed) as u64 % u64::from(self.weight_total);
                let mut below = 0u64;
                for (index, weight) in self.weights.iter().enumerate() {
                    below += u64::from(*weight);
                    if ticket < below {
                        return (index, None);
                    }
                }
                (0, None)
            }
            RoutingStrategy::Weighted => (0, None),
            RoutingStrategy::LeastLatency => {
                // Power of two choices: two distinct providers at random, the cheaper first.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (score_a, score_b) = (
                    self.targets[a].health.load_score(now_millis),
                    self.targets[b].health.load_score(now_millis),
                );
                if score_b < score_a || (score_b == score_a && fastrand::bool()) {
                    (b, Some(a))
                } else {
                    (a, Some(b))
                }
            }
        }
    }

    /// The order to try providers in: a provider whose breaker just half-opened first (its
    /// one probe; another provider follows if it fails), then the healthy ones in the
    /// strategy's order, then the recently failed ones, and last those whose breaker is open.
    /// Open providers stay in the list (fail open): a model whose every provider is open is
    /// still attempted, so a lone provider comes back on its first good answer rather than
    /// after a cooldown.
    pub fn attempt_order(
        &self,
        now_millis: i64,
        breaker: BreakerSettings,
    ) -> Vec<Arc<ProviderTarget>> {
        let n = self.targets.len();
        if n <= 1 {
            return self.targets.clone();
        }
        let (start, runner_up) = self.preferred(now_millis);
        let rest = (0..n)
            .map(|offset| (start + offset) % n)
            .filter(|index| Some(*index) != runner_up);
        let ranked = std::iter::once(start).chain(runner_up).chain(rest.skip(1));
        // The common case (every provider healthy) fills one vector in one pass; providers
        // that must wait are set aside, with their rank, and appended in rank order.
        let mut order = Vec::with_capacity(n);
        let mut probes = 0;
        let mut later: Vec<(u8, Arc<ProviderTarget>)> = Vec::new();
        for index in ranked {
            let target = &self.targets[index];
            match target.health.breaker.state(now_millis) {
                BreakerState::Closed if target.is_healthy(now_millis) => {
                    order.push(Arc::clone(target));
                }
                BreakerState::Closed => later.push((0, Arc::clone(target))),
                BreakerState::HalfOpen if target.health.breaker.try_probe(breaker, now_millis) => {
                    order.insert(probes, Arc::clone(target));
                    probes += 1;
                }
                BreakerState::Open | BreakerState::HalfOpen => later.push((1, Arc::clone(target))),
            }
        }
        if !later.is_empty() {
            later.sort_by_key(|(rank, _)| *rank);
            order.extend(later.into_iter().map(|(_, target)| target));
        }
        order
    }

    /// Cost in USD of a request's tokens at this model's prices (per million tokens).
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_price_per_mtok
            + completion_tokens as f64 * self.output_price_per_mtok)
            / 1_000_000.0
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Every model by name, and every provider (those no model names too, for health checks and
/// the health page); replaced whole when the catalogue changes.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pub version: i64,
    models: HashMap<String, Arc<ModelRoute>>,
    providers: Vec<Arc<ProviderTarget>>,
}

impl RoutingTable {
    pub fn new(version: i64, routes: Vec<ModelRoute>) -> Self {
        let models = routes
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect();
        Self {
            version,
            models,
            providers: Vec::new(),
        }
    }

    /// Lists `providers` (sorted by name) as the table's providers.
    pub fn with_providers(mut self, mut providers: Vec<Arc<ProviderTarget>>) -> Self {
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        self.providers = providers;
        self
    }

    /// This table with `routes` added, each replacing a route of the same name (the engines a
    /// node runs, laid over the catalogue: SPEC §17). The catalogue's routes are shared, not
    /// copied, so their round-robin positions carry over; `providers` stays the catalogue's.
    pub fn overlaid(&self, routes: &[Arc<ModelRoute>]) -> RoutingTable {
        let mut models = self.models.clone();
        for route in routes {
            models.insert(route.name.clone(), route.clone());
        }
        RoutingTable {
            version: self.version,
            models,
            providers: self.providers.clone(),
        }
    }

    /// Every provider in the catalogue, by name.
    pub fn providers(&self) -> &[Arc<ProviderTarget>] {
        &self.providers
    }

    pub fn get(&self, model: &str) -> Option<&Arc<ModelRoute>> {
        self.models.get(model)
    }

    /// Model names, sorted, for `/v1/models`.
    pub fn model_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str) -> Arc<ProviderTarget> {
        Arc::new(ProviderTarget::new(
            name.into(),
            name.into(),
            "http://127.0.0.1:1/v1/",
            None,
        ))
    }

    #[test]
    fn round_robin_with_unhealthy_last() {
        let route = ModelRoute::new(
            "m".into(),
            None,
            vec![target("a"), target("b"), target("c")],
            0.0,
            0.0,
        );
        assert_eq!(route.upstream_name, "m");
        assert_eq!(route.targets[0].base_url, "http://127.0.0.1:1/v1");
        assert_eq!(
            route.targets[0]
                .url("chat/completions")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert_eq!(
            route.targets[0].url("other").unwrap().to_string(),
            "http://127.0.0.1:1/v1/other"
        );
        let first: Vec<_> = route
            .attempt_order(0, BreakerSettings::default())
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let second: Vec<_> = route
            .attempt_order(0, BreakerSettings::default())
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(first, ["a", "b", "c"]);
        assert_eq!(second, ["b", "c", "a"]);
        route.targets[2].health.demote_until(1_000);
        let third: Vec<_> = route
            .attempt_order(500, BreakerSettings::default())
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(third, ["a", "b", "c"]);
        let fourth: Vec<_> = route
            .attempt_order(500, BreakerSettings::default())
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(
            fourth,
            ["a", "b", "c"],
            "c is down, so a and b lead and c comes last"
        );
        assert!(route.targets[2].is_healthy(1_000));
    }

    #[test]
    fn cost_uses_per_million_prices() {
        let route = ModelRoute::new("m".into(), Some("up".into()), vec![], 2.0, 10.0);
        assert!((route.cost_usd(500_000, 100_000) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn an_open_breaker_is_passed_over_and_its_probe_goes_first() {
        let settings = BreakerSettings {
            failures: 2,
            cooldown_millis: 1_000,
        };
        let route = ModelRoute::new("m".into(), None, vec![target("a"), target("b")], 0.0, 0.0);
        let names = |order: Vec<Arc<ProviderTarget>>| {
            order.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
        };
        route.targets[0].health.breaker.record_failure(settings, 0);
        route.targets[0].health.breaker.record_failure(settings, 0);
        for _ in 0..4 {
            assert_eq!(names(route.attempt_order(10, settings)), ["b", "a"]);
        }
        // After the cooldown, one request probes it first; the next does not.
        assert_eq!(names(route.attempt_order(1_000, settings)), ["a", "b"]);
        assert_eq!(names(route.attempt_order(1_001, settings)), ["b", "a"]);
        route.targets[0].health.record_success(1_000, 0);
        let both: Vec<_> = (0..2)
            .map(|_| names(route.attempt_order(1_002, settings))[0].clone())
            .collect();
        assert!(
            both.contains(&"a".to_owned()),
            "back in the rotation: {both:?}"
        );
    }

    fn weighted(name: &str, weight: u32) -> Arc<ProviderTarget> {
        Arc::new(
            ProviderTarget::new(name.into(), name.into(), "http://127.0.0.1:1/v1", None)
                .with_routing(weight, None),
        )
    }

    fn first_choices(route: &ModelRoute, requests: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..requests {
            let order = route.attempt_order(0, BreakerSettings::default());
            assert_eq!(order.len(), route.targets.len(), "every provider is listed");
            *counts.entry(order[0].name.clone()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn weights_give_exact_shares_and_common_factors_do_not_matter() {
        let route = ModelRoute::new(
            "m".into(),
            None,
            vec![weighted("a", 300), weighted("b", 100), weighted("c", 600)],
            0.0,
            0.0,
        )
        .with_strategy(RoutingStrategy::Weighted);
        assert_eq!(route.weights, [3, 1, 6]);
        let counts = first_choices(&route, 1_000);
        assert_eq!(counts["a"], 300);
        assert_eq!(counts["b"], 100);
        assert_eq!(counts["c"], 600);
    }

    #[test]
    fn priority_keeps_the_listed_order_until_one_fails() {
        let route = ModelRoute::new(
            "m".into(),
            None,
            vec![target("a"), target("b"), target("c")],
            0.0,
            0.0,
        )
        .with_strategy(RoutingStrategy::Priority);
        for _ in 0..3 {
            let order: Vec<_> = route
                .attempt_order(0, BreakerSettings::default())
                .iter()
                .map(|t| t.name.clone())
                .collect();
            assert_eq!(order, ["a", "b", "c"]);
        }
        route.targets[0].health.demote_until(100);
        let order: Vec<_> = route
            .attempt_order(0, BreakerSettings::default())
            .iter()
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(order, ["b", "c", "a"]);
    }

    #[test]
    fn least_latency_prefers_the_faster_and_the_less_loaded() {
        let route = ModelRoute::new(
            "m".into(),
            None,
            vec![target("fast"), target("slow")],
            0.0,
            0.0,
        )
        .with_strategy(RoutingStrategy::LeastLatency);
        route.targets[0].health.record_success(10_000, 0);
        route.targets[1].health.record_success(200_000, 0);
        assert_eq!(first_choices(&route, 200)["fast"], 200);
        // Thirty requests waiting on the fast one make it the dearer choice.
        let _busy: Vec<_> = (0..30)
            .map(|_| route.targets[0].health.start_request())
            .collect();
        assert_eq!(first_choices(&route, 200)["slow"], 200);
        // Among three, the two drawn are random: the slowest still goes first sometimes
        // (when it is drawn with no faster one), never the most often.
        let three = ModelRoute::new(
            "m".into(),
            None,
            vec![target("a"), target("b"), target("c")],
            0.0,
            0.0,
        )
        .with_strategy(RoutingStrategy::LeastLatency);
        for (target, micros) in three.targets.iter().zip([1_000, 2_000, 3_000]) {
            target.health.record_success(micros, 0);
        }
        let counts = first_choices(&three, 3_000);
        assert!(
            !counts.contains_key("c"),
            "c is never the better of two: {counts:?}"
        );
        assert!(counts["a"] > counts["b"], "{counts:?}");
    }
}
