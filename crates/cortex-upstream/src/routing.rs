//! The in-memory routing table: which providers serve which model, at what price.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use cortex_domain::ProviderKind;
use cortex_wire::Dialect;
use secrecy::SecretString;

use crate::breaker::{Breaker, BreakerSettings, BreakerState};
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

/// One upstream server. Health is passive: a failure marks it unhealthy for a short time.
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
    /// Passive demotion: after a failure the provider is tried after the others for a while.
    unhealthy_until_millis: AtomicI64,
    /// Opens after consecutive failures: the provider is passed over while others can serve.
    pub breaker: Breaker,
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
            unhealthy_until_millis: AtomicI64::new(0),
            breaker: Breaker::default(),
        }
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

    pub fn is_healthy(&self, now_millis: i64) -> bool {
        self.unhealthy_until_millis.load(Ordering::Relaxed) <= now_millis
    }

    pub fn mark_unhealthy(&self, until_millis: i64) {
        self.unhealthy_until_millis
            .store(until_millis, Ordering::Relaxed);
    }

    /// It answered: no longer demoted, and its breaker closes.
    pub fn mark_healthy(&self) {
        self.unhealthy_until_millis.store(0, Ordering::Relaxed);
        self.breaker.record_success();
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
            next: AtomicUsize::new(0),
        }
    }

    /// Whether every provider of the model takes requests in `dialect` as they are (a model
    /// without providers speaks chat, and fails with `NoProvider` when sent).
    pub fn speaks(&self, dialect: Dialect) -> bool {
        if self.targets.is_empty() {
            return dialect == Dialect::Chat;
        }
        self.targets.iter().all(|t| t.speaks(dialect))
    }

    /// The order to try providers in: a provider whose breaker just half-opened first (its
    /// one probe; another provider follows if it fails), then the healthy ones rotated
    /// round-robin so load spreads, then the recently failed ones, and last those whose
    /// breaker is open. Open providers stay in the list (fail open): a model whose every
    /// provider is open is still attempted, so a lone provider comes back on its first good
    /// answer rather than after a cooldown.
    pub fn attempt_order(
        &self,
        now_millis: i64,
        breaker: BreakerSettings,
    ) -> Vec<Arc<ProviderTarget>> {
        let n = self.targets.len();
        if n <= 1 {
            return self.targets.clone();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let rotated = self.targets[start..].iter().chain(&self.targets[..start]);
        let mut probes = Vec::new();
        let mut healthy = Vec::with_capacity(n);
        let mut demoted = Vec::new();
        let mut open = Vec::new();
        for target in rotated {
            match target.breaker.state(now_millis) {
                BreakerState::Open => open.push(target.clone()),
                BreakerState::HalfOpen if target.breaker.try_probe(breaker, now_millis) => {
                    probes.push(target.clone());
                }
                BreakerState::HalfOpen => open.push(target.clone()),
                BreakerState::Closed if target.is_healthy(now_millis) => {
                    healthy.push(target.clone());
                }
                BreakerState::Closed => demoted.push(target.clone()),
            }
        }
        probes.extend(healthy);
        probes.extend(demoted);
        probes.extend(open);
        probes
    }

    /// Cost in USD of a request's tokens at this model's prices (per million tokens).
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_price_per_mtok
            + completion_tokens as f64 * self.output_price_per_mtok)
            / 1_000_000.0
    }
}

/// Every model by name; replaced whole when the catalogue changes.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pub version: i64,
    models: HashMap<String, Arc<ModelRoute>>,
}

impl RoutingTable {
    pub fn new(version: i64, routes: Vec<ModelRoute>) -> Self {
        let models = routes
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect();
        Self { version, models }
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
        route.targets[2].mark_unhealthy(1_000);
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
        route.targets[0].breaker.record_failure(settings, 0);
        route.targets[0].breaker.record_failure(settings, 0);
        for _ in 0..4 {
            assert_eq!(names(route.attempt_order(10, settings)), ["b", "a"]);
        }
        // After the cooldown, one request probes it first; the next does not.
        assert_eq!(names(route.attempt_order(1_000, settings)), ["a", "b"]);
        assert_eq!(names(route.attempt_order(1_001, settings)), ["b", "a"]);
        route.targets[0].mark_healthy();
        let both: Vec<_> = (0..2)
            .map(|_| names(route.attempt_order(1_002, settings))[0].clone())
            .collect();
        assert!(
            both.contains(&"a".to_owned()),
            "back in the rotation: {both:?}"
        );
    }
}
