//! The routing table cache: providers and models from the database, with provider keys
//! opened, rebuilt whenever the catalogue version moves (polled once a second).
//!
//! A model's targets take one dialect: the admin API and the config file refuse a model whose
//! providers mix Anthropic with OpenAI-style kinds, but a provider's kind can still change
//! after its models were made, and such a model keeps only the providers that speak its first
//! provider's dialect (with a warning), never a failover that would send the wrong body.
//!
//! The engines this node runs (SPEC §17) are laid over the catalogue's table, not stored in it:
//! an engine listens on this node's loopback with a key generated for its run, so no other
//! instance could reach it, and the key never needs to be written anywhere. [`CatalogCache::
//! set_engine`] and [`CatalogCache::remove_engine`] swap the table in place synchronously;
//! every reload of the catalogue keeps the overlay. Engines serving the same name share one
//! route (round-robin); an engine's name hides a catalogue model of the same name.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cortex_crypto::envelope::{open, MasterKey};
use cortex_domain::egress::Origin;
use cortex_domain::ProviderKind;
use cortex_store::catalog::ProviderRow;
use cortex_store::{Store, StoreResult};
use cortex_upstream::{HealthRegistry, ModelRoute, ProviderHttp, ProviderTarget, RoutingTable};
use cortex_wire::Dialect;
use secrecy::SecretString;

use crate::metrics::ProviderMeter;
use crate::policies::PolicySet;

/// What the config file says about a provider that the database cannot be trusted to say: an
/// operator can create, rename and re-point providers through the admin API, but only the
/// file decides who trusts a private CA and who receives the internal key.
#[derive(Default)]
pub struct DeclaredProvider {
    /// A client that trusts the provider's `ca_bundle`.
    pub ca_client: Option<ProviderHttp>,
    /// `INTERNAL_VLLM_API_KEY`, for a provider declared with `use_internal_key = true`, and
    /// the origin its base URL had in the file.
    pub internal_key: Option<(Origin, SecretString)>,
}

/// The catalogue's table as loaded, the engines laid over it, and the two merged.
struct Tables {
    /// The ticket of the refresh that loaded `base`.
    ticket: u64,
    base: Arc<RoutingTable>,
    /// Running engines by engine id.
    engines: BTreeMap<String, EngineTarget>,
    /// `base` with the engines' routes: what requests read.
    merged: Arc<RoutingTable>,
    /// Each catalogue provider's metric series, by provider id.
    meters: Arc<HashMap<String, ProviderMeter, foldhash::fast::RandomState>>,
    /// Every organization's gateway policies, loaded with `base` (SPEC §21).
    policies: Arc<PolicySet>,
}

/// A running engine as the routing table sees it.
struct EngineTarget {
    served_model_name: String,
    target: Arc<ProviderTarget>,
}

impl Tables {
    fn merge(&mut self) {
        let mut by_name: BTreeMap<&str, Vec<Arc<ProviderTarget>>> = BTreeMap::new();
        for engine in self.engines.values() {
            by_name
                .entry(engine.served_model_name.as_str())
                .or_default()
                .push(engine.target.clone());
        }
        let routes: Vec<Arc<ModelRoute>> = by_name
            .into_iter()
            .map(|(name, targets)| {
                if self.base.get(name).is_some() {
                    tracing::warn!(model = %name, "a running engine serves a name the catalogue has; the engine is routed to");
                }
                Arc::new(ModelRoute::new(name.to_owned(), None, targets, 0.0, 0.0))
            })
            .collect();
        self.merged = Arc::new(self.base.overlaid(&routes));
    }
}

pub struct CatalogCache {
    table: RwLock<Tables>,
    /// The last ticket handed to a refresh; tickets order refreshes by when they started.
    tickets: AtomicU64,
    /// Providers declared in cortex.toml, by name.
    declared: HashMap<String, DeclaredProvider>,
    /// Each provider's breaker, latency and load, kept across reloads by provider id.
    health: HealthRegistry,
}

impl Default for CatalogCache {
    fn default() -> Self {
        Self::new(HashMap::new())
    }
}

impl CatalogCache {
    pub fn new(declared: HashMap<String, DeclaredProvider>) -> Self {
        Self {
            table: RwLock::new(Tables {
                ticket: 0,
                base: Arc::new(RoutingTable::default()),
                engines: BTreeMap::new(),
                merged: Arc::new(RoutingTable::default()),
                meters: Arc::default(),
                policies: Arc::default(),
            }),
            tickets: AtomicU64::new(0),
            declared,
            health: HealthRegistry::default(),
        }
    }

    /// Every provider's health, by provider id.
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .merged
            .clone()
    }

    /// Every organization's gateway policies as last loaded with the routing table.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .policies
            .clone()
    }

    /// The metric series of the provider with `id` (handles that record nothing for a
    /// provider the loaded catalogue does not have, an engine's included).
    pub fn meter(&self, provider_id: &str) -> ProviderMeter {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .meters
            .get(provider_id)
            .cloned()
            .unwrap_or_else(ProviderMeter::noop)
    }

    /// Routes `served_model_name` to a running engine of this node (`base_url` is
    /// `http://127.0.0.1:<port>`, `api_key` the key generated for its run); in place when this
    /// returns.
    pub fn set_engine(
        &self,
        engine_id: &str,
        served_model_name: &str,
        base_url: &str,
        api_key: SecretString,
    ) {
        let target = ProviderTarget::new(
            format!("engine:{engine_id}"),
            format!("engine:{served_model_name}"),
            &format!("{}/v1", base_url.trim_end_matches('/')),
            Some(api_key),
        );
        let mut tables = self.table.write().unwrap_or_else(|e| e.into_inner());
        tables.engines.insert(
            engine_id.to_owned(),
            EngineTarget {
                served_model_name: served_model_name.to_owned(),
                target: Arc::new(target),
            },
        );
        tables.merge();
    }

    /// Takes an engine out of routing; no request picks it once this returns.
    pub fn remove_engine(&self, engine_id: &str) {
        let mut tables = self.table.write().unwrap_or_else(|e| e.into_inner());
        if tables.engines.remove(engine_id).is_some() {
            tables.merge();
        }
    }

    /// Reloads when the stored version differs from the loaded one; returns whether it did.
    pub async fn refresh(&self, store: &Store, master_key: &MasterKey) -> StoreResult<bool> {
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed) + 1;
        let version = store.catalog_version().await?;
        if version == self.current().version && version != 0 {
            return Ok(false);
        }
        let table = load_table(store, master_key, version, &self.declared, &self.health).await?;
        // Policies move the same version, so they are read in the same reload and installed
        // with the table they were read with.
        let policies = PolicySet::from_rows(&store.list_all_for_gateway().await?);
        Ok(self.install(ticket, table, policies))
    }

    /// Puts `table`, loaded by the refresh holding `ticket`, in place unless a refresh that
    /// started later already has; returns whether it did. Refreshes overlap (the poller, an
    /// admin change, a Redis message), and one that read the database earlier must not finish
    /// last and put older routes back. Versions are not compared: after a restore the stored
    /// version may go down, and that table must still be taken.
    fn install(&self, ticket: u64, table: RoutingTable, policies: PolicySet) -> bool {
        // Every provider's series exist from the load on (zero until used), so a new
        // provider is on the next scrape before its first request.
        let meters = table
            .providers()
            .iter()
            .map(|provider| (provider.id.clone(), ProviderMeter::new(&provider.name)))
            .collect();
        let mut current = self.table.write().unwrap_or_else(|e| e.into_inner());
        if ticket < current.ticket {
            return false;
        }
        current.ticket = ticket;
        current.base = Arc::new(table);
        current.meters = Arc::new(meters);
        current.policies = Arc::new(policies);
        current.merge();
        true
    }
}

async fn load_table(
    store: &Store,
    master_key: &MasterKey,
    version: i64,
    declared: &HashMap<String, DeclaredProvider>,
    health: &HealthRegistry,
) -> StoreResult<RoutingTable> {
    let providers = store.list_providers().await?;
    let mut targets: HashMap<String, Arc<ProviderTarget>> = HashMap::new();
    for provider in providers {
        let own_key = match &provider.api_key_sealed {
            None => None,
            Some(sealed) => match open(master_key, sealed, provider.id.as_bytes()) {
                Ok(plain) => match String::from_utf8(plain.to_vec()) {
                    Ok(text) => Some(SecretString::from(text)),
                    Err(_) => None,
                },
                Err(_) => {
                    // Wrong master key or tampered row: serve without the key rather than crash,
                    // and say so loudly (the provider will likely answer 401).
                    tracing::error!(provider = %provider.name, "cannot decrypt the provider's API key");
                    None
                }
            },
        };
        let declaration = declared.get(&provider.name);
        let api_key = own_key.or_else(|| internal_key_for(&provider, declaration));
        let mut target = ProviderTarget::new(
            provider.id.clone(),
            provider.name.clone(),
            &provider.base_url,
            api_key,
        )
        .with_kind(
            provider.kind,
            provider
                .api_version
                .clone()
                .or_else(|| provider.kind.default_api_version().map(str::to_owned)),
            provider.responses_api,
        )
        .with_health(health.for_provider(&provider.id))
        .with_routing(provider.weight, provider.health_check_path.clone());
        if let Some(client) = declaration.and_then(|d| d.ca_client.as_ref()) {
            target = target.with_client(client.clone());
        }
        targets.insert(provider.id, Arc::new(target));
    }
    let routes = store
        .list_models(&cortex_store::Tenant::All)
        .await?
        .into_iter()
        .map(|model| {
            let model_targets = one_dialect(
                &model.name,
                model
                    .provider_ids
                    .iter()
                    .filter_map(|id| targets.get(id).cloned())
                    .collect(),
            );
            ModelRoute::new(
                model.name,
                model.upstream_name,
                model_targets,
                model.input_price_per_mtok,
                model.output_price_per_mtok,
            )
            .with_strategy(model.strategy)
            .with_output_cap(model.max_output_tokens)
        })
        .collect();
    health.retain(targets.keys().map(String::as_str));
    Ok(RoutingTable::new(version, routes).with_providers(targets.into_values().collect()))
}

/// The dialect a provider of `kind` takes requests in as they are.
fn native_dialect(kind: ProviderKind) -> Dialect {
    match kind {
        ProviderKind::Anthropic => Dialect::Messages,
        ProviderKind::OpenAi | ProviderKind::Azure => Dialect::Chat,
    }
}

/// `targets` without those that do not speak the first one's dialect, each dropped one named
/// in a warning: a model sends one body to whichever provider it tries.
fn one_dialect(model: &str, targets: Vec<Arc<ProviderTarget>>) -> Vec<Arc<ProviderTarget>> {
    let Some(dialect) = targets.first().map(|first| native_dialect(first.kind)) else {
        return targets;
    };
    targets
        .into_iter()
        .filter(|target| {
            let speaks = target.speaks(dialect);
            if !speaks {
                tracing::warn!(
                    model = %model,
                    provider = %target.name,
                    kind = %target.kind,
                    "the model's providers speak different dialects; this provider is left out of its routes"
                );
            }
            speaks
        })
        .collect()
}

/// The internal key, for a provider row that is the one the config file declared with
/// `use_internal_key = true`: made from the file (not through the admin API or an import), under
/// the declared name, and still at the declared origin. A provider re-pointed elsewhere through
/// the admin API, or another provider renamed to the declared name, gets nothing.
fn internal_key_for(
    provider: &ProviderRow,
    declaration: Option<&DeclaredProvider>,
) -> Option<SecretString> {
    let (origin, key) = declaration?.internal_key.as_ref()?;
    let declared_here =
        provider.source == "config" && Origin::of(&provider.base_url).as_ref() == Some(origin);
    declared_here.then(|| key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, kind: ProviderKind) -> Arc<ProviderTarget> {
        Arc::new(
            ProviderTarget::new(name.into(), name.into(), "http://127.0.0.1:9/v1", None)
                .with_kind(kind, None, false),
        )
    }

    fn names(targets: &[Arc<ProviderTarget>]) -> Vec<&str> {
        targets.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn a_model_keeps_only_the_providers_that_speak_its_first_providers_dialect() {
        use ProviderKind::{Anthropic, Azure, OpenAi};
        let mixed = vec![
            target("oa", OpenAi),
            target("claude", Anthropic),
            target("az", Azure),
        ];
        assert_eq!(names(&one_dialect("m", mixed)), ["oa", "az"]);
        let anthropic_first = vec![target("claude", Anthropic), target("oa", OpenAi)];
        assert_eq!(names(&one_dialect("m", anthropic_first)), ["claude"]);
        let agreeing = vec![target("oa", OpenAi), target("az", Azure)];
        assert_eq!(names(&one_dialect("m", agreeing)), ["oa", "az"]);
        assert!(one_dialect("m", Vec::new()).is_empty());
    }

    #[test]
    fn a_refresh_that_started_earlier_and_finished_later_is_not_put_in_place() {
        let cache = CatalogCache::default();
        // Refresh 1 reads version 4; a change is made; refresh 2 reads version 5 and finishes
        // first.
        assert!(cache.install(2, RoutingTable::new(5, Vec::new()), PolicySet::default()));
        assert!(!cache.install(1, RoutingTable::new(4, Vec::new()), PolicySet::default()));
        assert_eq!(cache.current().version, 5);
        // A later refresh is taken even when the stored version went down (a restore).
        assert!(cache.install(3, RoutingTable::new(1, Vec::new()), PolicySet::default()));
        assert_eq!(cache.current().version, 1);
    }

    #[test]
    fn engines_are_laid_over_every_reload_and_removed_at_once() {
        let cache = CatalogCache::default();
        let catalogue = ModelRoute::new(
            "from-db".into(),
            None,
            vec![target("p", ProviderKind::OpenAi)],
            0.0,
            0.0,
        );
        assert!(cache.install(
            1,
            RoutingTable::new(1, vec![catalogue]),
            PolicySet::default()
        ));
        cache.set_engine(
            "e1",
            "small",
            "http://127.0.0.1:4000",
            SecretString::from("k1"),
        );
        cache.set_engine(
            "e2",
            "small",
            "http://127.0.0.1:4001/",
            SecretString::from("k2"),
        );
        let table = cache.current();
        let route = table.get("small").unwrap();
        assert_eq!(
            route.targets.len(),
            2,
            "two engines serving one name share its route"
        );
        assert_eq!(route.targets[0].base_url, "http://127.0.0.1:4000/v1");
        assert_eq!(route.targets[1].base_url, "http://127.0.0.1:4001/v1");
        assert!(table.get("from-db").is_some());
        // A reload of the catalogue keeps the engines.
        assert!(cache.install(2, RoutingTable::new(2, Vec::new()), PolicySet::default()));
        assert!(cache.current().get("small").is_some());
        assert!(cache.current().get("from-db").is_none());
        cache.remove_engine("e1");
        assert_eq!(cache.current().get("small").unwrap().targets.len(), 1);
        cache.remove_engine("e2");
        assert!(cache.current().get("small").is_none());
        assert_eq!(cache.current().version, 2);
    }
}
