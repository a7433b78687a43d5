//! The Cortex server: the only crate that knows HTTP. It builds the application state, the
//! router with its layer stack, the background tasks, and serves on a bound listener.
//!
//! Invariants kept here:
//! - the `/v1` hot path does no database query (keys and routes are in memory; usage goes
//!   through a queue);
//! - every response, errors included, is OpenAI-shaped JSON when it is an error;
//! - handlers reach data only through the state passed to them; there are no global settings.

pub mod admin;
pub mod app;
pub mod body_deadline;
pub mod conn_guard;
pub mod console;
pub mod engines;
pub mod mcp;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod serve_loop;
pub mod state;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cortex_config::{Config, ConfigError, RedisFailureMode};
use cortex_domain::Clock;
use cortex_limits::Limiter;
use cortex_store::Store;
use cortex_upstream::breaker::BreakerSettings;
use cortex_upstream::{RetryPolicy, UpstreamClient, UpstreamTimeouts};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use cortex_control::ops::audit as audit_ops;
use cortex_control::{audit_forward, bootstrap};
use cortex_gateway::invalidation::{self, Reload};
use cortex_gateway::upstream_events::GatewayEvents;
use cortex_gateway::{
    catalog_cache, guard_events, health_check, key_cache, metrics, usage_sink, DataPlane,
};

use crate::state::{AppState, Inner};

pub use cortex_control::bootstrap::StartError;

/// A built gateway, ready to serve.
pub struct Gateway {
    state: AppState,
    usage_writer: usage_sink::UsageWriter,
    usage_stop: CancellationToken,
    guard_writer: guard_events::GuardEventWriter,
    /// Native TLS, when CORTEX_TLS_CERT/KEY are set; loaded at build so a bad file stops start-up.
    tls: Option<Arc<tls::ReloadableTls>>,
    /// `CORTEX_METRICS_LISTEN`, bound at build so a taken address stops start-up.
    metrics_listener: Option<TcpListener>,
    /// The certificates of CORTEX_AUDIT_FORWARD_CA_FILE, read at build for the same reason.
    audit_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The first admin's generated password, to be shown once by the caller.
    pub generated_admin_password: Option<SecretString>,
}

impl Gateway {
    /// Opens storage, bootstraps, and loads keys and routes into memory.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> Result<Gateway, StartError> {
        cortex_store::create_private_dir(&config.data_dir).map_err(|e| {
            StartError::Io(format!(
                "CORTEX_DATA_DIR: cannot create {}: {}",
                config.data_dir.display(),
                e.kind()
            ))
        })?;
        let master_key = bootstrap::load_master_key(&config)?;
        let tls = config
            .tls
            .as_ref()
            .map(tls::ReloadableTls::load)
            .transpose()
            .map_err(|e| StartError::Io(e.to_string()))?;
        let store = Store::open(config.database_url.expose_secret()).await?;
        let now = clock.now_millis();
        let master_key = bootstrap::verify_master_key(&store, &config, master_key, now).await?;
        // From here on every audit event is keyed; an unkeyed chain is verified and re-keyed once.
        let store = audit_ops::open_chain(store, &master_key, now)
            .await
            .map_err(|e| match e {
                audit_ops::ChainOpenError::Store(e) => StartError::Store(e),
                other => StartError::Io(other.to_string()),
            })?;
        let generated_admin_password = bootstrap::ensure_first_admin(&store, &config, now).await?;
        bootstrap::sync_catalog(&store, &config, &master_key, now).await?;

        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(TcpListener::bind(address).await.map_err(|e| {
                StartError::Io(format!(
                    "invalid setting CORTEX_METRICS_LISTEN: cannot listen on {address}: {}",
                    e.kind()
                ))
            })?),
            None => None,
        };
        let redis_ca = config
            .redis_ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|e| {
                    ConfigError::new(
                        "CORTEX_REDIS_CA_FILE",
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })
            })
            .transpose()?;
        let audit_ca = match config
            .audit_forward
            .as_ref()
            .and_then(|s| s.ca_file.as_ref())
        {
            Some(path) => audit_forward::read_ca_file(path)?,
            None => Vec::new(),
        };
        let limiter = match &config.redis_url {
            None => Limiter::in_process(),
            Some(url) => {
                let mode = match config.redis_failure_mode {
                    RedisFailureMode::FailOpen => cortex_limits::RedisFailureMode::FailOpen,
                    RedisFailureMode::FailClosed => cortex_limits::RedisFailureMode::FailClosed,
                };
                Limiter::redis_with_ca(url.expose_secret(), redis_ca.as_deref(), "cortex", mode)
                    .await
                    .map_err(|e| StartError::Redis(e.to_string()))?
            }
        };
        let invalidation = match &config.redis_url {
            Some(url) => Some(
                invalidation::Invalidation::connect(url, redis_ca.as_deref())
                    .await
                    .map_err(|e| StartError::Redis(e.to_string()))?,
            ),
            None => None,
        };
        let timeouts = &config.upstream_timeouts;
        // One connection pool per serving thread, and one for everything else.
        // Every provider connection is checked against CORTEX_UPSTREAM_ALLOW after resolution.
        let upstream = UpstreamClient::with_egress(
            UpstreamTimeouts {
                connect: Duration::from_millis(timeouts.connect_ms),
                first_byte: Duration::from_millis(timeouts.first_byte_ms),
                idle: Duration::from_millis(timeouts.idle_ms),
            },
            config.serve_threads + 1,
            config.upstream_allow.clone(),
        )
        .map_err(|_| StartError::Io("cannot build the upstream HTTP client".to_owned()))?
        .with_breaker(BreakerSettings {
            failures: config.routing.breaker_failures,
            cooldown_millis: i64::try_from(config.routing.breaker_cooldown_sec)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000),
        })
        .with_retries(RetryPolicy {
            max_retries: config.routing.max_retries,
            ..RetryPolicy::default()
        })
        .with_events(GatewayEvents::new(invalidation.clone()));

        let keys = key_cache::KeyCache::new();
        keys.refresh(&store).await?;
        // Providers behind a private CA get a client that trusts their bundle; an unreadable or
        // empty bundle stops start-up rather than failing every request later.
        let mut declared = std::collections::HashMap::new();
        for provider in &config.providers {
            let mut declaration = catalog_cache::DeclaredProvider::default();
            if let Some(path) = &provider.ca_bundle {
                let setting = format!("providers[{}].ca_bundle", provider.name);
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::new(
                        setting.clone(),
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
                let client = upstream
                    .client_with_ca(&pem)
                    .map_err(|e| ConfigError::new(setting, format!("{} {e}", path.display())))?;
                declaration.ca_client = Some(client);
            }
            // Only a provider the file asks it for receives the internal key (config
            // validation made sure the key is set then).
            if provider.use_internal_key {
                let origin = cortex_domain::egress::Origin::of(&provider.base_url);
                if let (Some(origin), Some(key)) = (origin, &config.internal_upstream_key) {
                    declaration.internal_key = Some((origin, key.clone()));
                }
            }
            declared.insert(provider.name.clone(), declaration);
        }
        if config.internal_upstream_key.is_some()
            && !config.providers.iter().any(|p| p.use_internal_key)
        {
            tracing::warn!("INTERNAL_VLLM_API_KEY is set but no provider in the config file has use_internal_key = true: the internal key is sent to no provider");
        }
        if config.upstream_allow.is_restricted() {
            tracing::info!("CORTEX_UPSTREAM_ALLOW is set: provider connections go only to the listed ranges and host names");
        }
        let catalog = catalog_cache::CatalogCache::new(declared);
        catalog.refresh(&store, &master_key).await?;

        let (usage, usage_writer) = usage_sink::channel(store.clone());
        let (guard_events, guard_writer) = guard_events::channel(store.clone(), clock.clone());
        let forwarding_on = config
            .feature_flags
            .is_enabled(cortex_domain::features::AUDIT_FORWARDING);
        if config.audit_forward.is_some() && !forwarding_on {
            tracing::warn!("CORTEX_AUDIT_FORWARD_URL is set but the audit_forwarding feature flag is off: audit events are not forwarded (they will be, from where the sink left off, once the flag is on)");
        }
        if config.dev_allow_all_keys {
            tracing::warn!("GATEWAY_DEV_ALLOW_ALL_KEYS is on: every /v1 request is accepted without a valid key. Never use this in production.");
        }
        let jwt = cortex_crypto::jwt::JwtKeys::new(
            secrecy::ExposeSecret::expose_secret(&master_key.derive_subkey("cortex-jwt-v1")),
            "cortex",
            "cortex-admin",
        );
        let oidc = config
            .oidc
            .clone()
            .map(cortex_control::oidc::OidcProvider::new)
            .transpose()
            .map_err(StartError::Io)?
            .map(Arc::new);
        let passkeys = config
            .webauthn
            .clone()
            .map(|settings| cortex_control::passkeys::Passkeys::new(settings, &master_key))
            .transpose()
            .map_err(StartError::Io)?
            .map(Arc::new);
        if !config.local_login {
            tracing::info!("CORTEX_LOCAL_LOGIN is false: password and passkey sign-in only for break-glass admins (local admins of the default organization)");
        }
        // OpenTelemetry traces only when an OTLP endpoint is set; exports run on this (the
        // main) runtime, away from the serving threads.
        let traces = match &config.traces {
            None => None,
            Some(settings) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| StartError::Io(e.to_string()))?;
                let traces = cortex_gateway::telemetry::Traces::new(settings, runtime)
                    .map_err(|e| StartError::Io(e.to_string()))?;
                // The endpoint is not logged: a collector's URL may carry a token in its query.
                tracing::info!("exporting OpenTelemetry traces over OTLP/HTTP");
                Some(traces)
            }
        };
        // Not connected yet with Redis: a cache that cannot be reached is only misses.
        let cache = cortex_gateway::cache::ResponseCache::from_config(
            &config,
            redis_ca.as_deref(),
            clock.clone(),
        )
        .map_err(|e| StartError::Io(e.to_string()))?;
        let webhooks = cortex_gateway::webhook::Webhooks::new(config.upstream_allow.clone())
            .map_err(|e| {
                StartError::Io(format!("cannot build the guardrail webhook client: {e}"))
            })?;
        let config = Arc::new(config);
        let data = DataPlane::new(cortex_gateway::Parts {
            config: config.clone(),
            clock: clock.clone(),
            keys,
            catalog,
            upstream,
            limiter,
            usage,
            guard_events,
            ledger: Arc::new(cortex_gateway::budget::StoreLedger(store.clone())),
            traces,
            cache,
            webhooks,
        });
        let engines = Arc::new(engines::Engines::build(&config, data.clone()).await?);
        // Every metric family is on the first scrape: the series with fixed labels at zero,
        // each provider's with the catalogue, its health as it stands.
        metrics::register_families();
        for family in [
            audit_ops::CHECKPOINT_REFUSALS,
            audit_forward::FORWARDED,
            audit_forward::FORWARD_FAILURES,
        ] {
            let _ = ::metrics::counter!(family);
        }
        health_check::set_gauges(&data, data.catalog.current().providers());
        let state = AppState::new(Inner {
            engines,
            jwt,
            device_cookies: cortex_crypto::device::DeviceCookieKey::derive(&master_key),
            password_gate: admin::hashing::PasswordGate::for_this_machine(),
            oidc,
            passkeys,
            config,
            store,
            clock,
            master_key: Arc::new(master_key),
            data,
            invalidation,
            prometheus: metrics::prometheus(),
            shutdown: CancellationToken::new(),
            audit_forward: Arc::default(),
            checkpoint_trail: Arc::default(),
        });
        Ok(Gateway {
            state,
            usage_writer,
            usage_stop: CancellationToken::new(),
            guard_writer,
            tls,
            metrics_listener,
            audit_ca,
            generated_admin_password,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Where `CORTEX_METRICS_LISTEN` was bound (its port, when the setting asked for port 0).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Installs the SIGHUP handler: it reloads the TLS certificate when Cortex terminates TLS
    /// itself, and is otherwise only logged (log rotation tools send it, and its default action
    /// would kill the process without a drain). The handler is in place when this returns, so
    /// a caller that announces readiness afterwards cannot be killed by an early SIGHUP.
    pub fn watch_sighup(&self) {
        #[cfg(unix)]
        {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP");
                return;
            };
            let tls = self.tls.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    match &tls {
                        Some(tls) => tls.reload(),
                        None => {
                            tracing::info!("SIGHUP received: nothing to reload (no native TLS)");
                        }
                    }
                }
            });
        }
    }

    /// Serves until `shutdown` completes, then drains: no new connections, in-flight requests
    /// and streams get `CORTEX_SHUTDOWN_GRACE_SEC` to finish, and queued usage is written.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Gateway {
            state,
            usage_writer,
            usage_stop,
            guard_writer,
            tls,
            metrics_listener,
            audit_ca,
            ..
        } = self;
        // Cover what an earlier run may have left unsigned (it was killed before its final
        // checkpoint), after checking it.
        checkpoint(&state, "start-up ").await;
        let writer = usage_writer.spawn(
            usage_stop.clone(),
            Duration::from_secs(state.config.shutdown_grace_sec),
        );
        let guard_stop = CancellationToken::new();
        let guard_task = guard_writer.spawn(
            guard_stop.clone(),
            Duration::from_secs(state.config.shutdown_grace_sec),
        );
        let pollers = spawn_pollers(state.clone());
        // Engines with auto_start start here; later changes are picked up by polling.
        let engines_stop = CancellationToken::new();
        let reconciler = state.engines.spawn_reconciler(
            state.store.clone(),
            state.master_key.clone(),
            engines_stop.clone(),
        );
        // SIEM forwarding stops last; whatever it has not sent goes out from the stored cursor
        // on the next start.
        let forward_stop = CancellationToken::new();
        let forwarder = match &state.config.audit_forward {
            Some(settings)
                if state
                    .config
                    .feature_flags
                    .is_enabled(cortex_domain::features::AUDIT_FORWARDING) =>
            {
                match audit_forward::spawn(
                    audit_forward::AuditSource {
                        store: state.store.clone(),
                        clock: state.clock.clone(),
                    },
                    settings,
                    &audit_ca,
                    state.audit_forward.clone(),
                    forward_stop.clone(),
                ) {
                    Ok(task) => Some(task),
                    Err(problem) => {
                        tracing::error!(problem = %problem, "audit forwarding could not start");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some(invalidation) = &state.invalidation {
            invalidation.spawn_listener(
                Reload {
                    store: state.store.clone(),
                    master_key: state.master_key.clone(),
                    plane: state.data.clone(),
                },
                state.shutdown.clone(),
            );
        }
        let routing = &state.config.routing;
        health_check::spawn(
            state.data.clone(),
            health_check::CheckSettings {
                interval: (routing.health_check_interval_sec > 0)
                    .then(|| Duration::from_secs(routing.health_check_interval_sec)),
                timeout: Duration::from_millis(routing.health_check_timeout_ms),
            },
            state.shutdown.clone(),
        );
        if let Some(listener) = metrics_listener {
            let stopping = state.shutdown.clone();
            let router = ops::metrics_router(state.clone());
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stopping.cancelled().await })
                    .await;
                if let Err(err) = served {
                    tracing::warn!(error = %err, "the metrics listener failed");
                }
            });
        }
        let grace = Duration::from_secs(state.config.shutdown_grace_sec);
        let stopping = state.shutdown.clone();
        let edge = app::edge(&state);
        let settings = serve_loop::LoopSettings {
            header_read_timeout: Duration::from_secs(state.config.header_read_timeout_sec),
            body_read_timeout: Duration::from_secs(state.config.body_read_timeout_sec),
            http2_idle_timeout: Duration::from_secs(state.config.http2_idle_timeout_sec),
            max_connections: state.config.max_connections,
            max_connections_per_ip: state.config.max_connections_per_ip,
            exempt_from_per_ip: state.config.trusted_proxies.clone(),
            grace,
            tls,
            threads: state.config.serve_threads,
        };
        {
            let stopping = stopping.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: draining in-flight requests");
                stopping.cancel();
            });
        }
        let result = serve_loop::run(listener, edge, settings, stopping.clone()).await;
        stopping.cancel();
        pollers.abort();
        // Engines leave routing and stop (in parallel) once no request is in flight.
        engines_stop.cancel();
        let _ = reconciler.await;
        state.engines.shutdown().await;
        // Guardrail events are audit events: written before the final checkpoint seals them.
        guard_stop.cancel();
        if guard_task.await.is_err() {
            tracing::error!("the guardrail event writer failed during shutdown");
        }
        // Seal the tail of the audit chain written during this run.
        checkpoint(&state, "final ").await;
        usage_stop.cancel();
        if writer.await.is_err() {
            tracing::error!("the usage writer failed during shutdown");
        }
        forward_stop.cancel();
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await;
        }
        // The spans of the drained requests go out before exit (blocking: the exporter's
        // thread hands the last batch to this runtime and waits for it).
        let data = state.data.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(traces) = &data.traces {
                traces.shutdown();
            }
        })
        .await;
        state.store.close().await;
        // Only now may the serving threads' runtimes go: connections opened on them (database
        // ones included) were in use until here.
        result.map(serve_loop::Served::release)
    }
}

/// Signs the audit head (after verifying the chain since the last checkpoint); failures are
/// logged (a refusal by the writer itself, as an error).
async fn checkpoint(state: &AppState, which: &str) {
    if let Err(err) = audit_ops::write_checkpoint_with(
        &state.store,
        &state.master_key,
        &state.checkpoint_trail,
        state.now_millis(),
    )
    .await
    {
        tracing::warn!(error = %err, "writing the {which}audit checkpoint failed");
    }
}

/// Keeps keys and routes fresh (about once a second), folds metric samples into their
/// histograms (every 5 s), signs audit checkpoints (every 30 s) and purges old usage (hourly).
fn spawn_pollers(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seconds: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = state.shutdown.cancelled() => break,
            }
            if let Err(err) = state.data.keys.refresh(&state.store).await {
                tracing::warn!(error = %err, "refreshing keys failed");
            }
            if let Err(err) = state
                .data
                .catalog
                .refresh(&state.store, &state.master_key)
                .await
            {
                tracing::warn!(error = %err, "refreshing the model catalogue failed");
            }
            // Histogram samples wait in a buffer until they are folded into their buckets;
            // without a scrape that buffer grows with every request unless upkeep drains it.
            if seconds % 5 == 4 {
                if let Some(prometheus) = &state.prometheus {
                    prometheus.run_upkeep();
                }
            }
            if seconds % 30 == 29 {
                checkpoint(&state, "").await;
            }
            if seconds % 3600 == 60 {
                let days = i64::from(state.config.usage_retention_days);
                let cutoff = state.now_millis() - days * 86_400_000;
                match state.store.purge_usage_before(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged usage past retention"),
                    Err(err) => tracing::warn!(error = %err, "purging usage failed"),
                }
            }
            seconds += 1;
        }
    })
}
