//! A real Cortex gateway on `127.0.0.1:0`, configured like an operator would, for tests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use cortex_config::{Config, FileConfig};
use cortex_control::keys::KeySpec;
use cortex_domain::{Clock, KeyLimits, Scope, SystemClock};
use cortex_server::state::AppState;
use cortex_server::Gateway;
use cortex_store::testing::TestDb;
use cortex_store::Backend;
use secrecy::ExposeSecret;

/// The first admin's password in every test server (a clearly fake fixture).
pub const ADMIN_PASSWORD: &str = "Test-Fixture-Passphrase-9f3b1c";

pub struct TestServerBuilder {
    env: HashMap<String, String>,
    toml: String,
    backend: Backend,
    clock: Arc<dyn Clock>,
    listener: Option<tokio::net::TcpListener>,
}

impl TestServerBuilder {
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Appends `cortex.toml` text (providers, models, settings).
    pub fn config_toml(mut self, text: &str) -> Self {
        self.toml.push_str(text);
        self.toml.push('\n');
        self
    }

    /// Declares a provider with an optional API key given literally in the file.
    pub fn provider(self, name: &str, base_url: &str, api_key: Option<&str>) -> Self {
        let key = api_key
            .map(|k| format!("api_key = {k:?}\n"))
            .unwrap_or_default();
        self.config_toml(&format!(
            "[[providers]]\nname = {name:?}\nbase_url = {base_url:?}\n{key}"
        ))
    }

    /// Declares a model served by the named providers (in failover order), with prices.
    pub fn model(
        self,
        name: &str,
        providers: &[&str],
        input_price: f64,
        output_price: f64,
    ) -> Self {
        let list = providers
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.config_toml(&format!(
            "[[models]]\nname = {name:?}\nproviders = [{list}]\ninput_price_per_mtok = {input_price}\noutput_price_per_mtok = {output_price}\n"
        ))
    }

    pub fn postgres(mut self) -> Self {
        self.backend = Backend::Postgres;
        self
    }

    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Serves on this listener instead of a fresh `127.0.0.1:0` one: for a test that must know
    /// the server's address before it starts (an identity provider registers the callback).
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The server's clock (default: the system clock), e.g. a host whose clock is behind.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub async fn start(self) -> TestServer {
        self.try_start()
            .await
            .unwrap_or_else(|e| panic!("start: {e}"))
    }

    /// Like [`start`](Self::start), but hands back the start-up error (for tests of settings
    /// that must stop start-up).
    pub async fn try_start(self) -> Result<TestServer, cortex_server::StartError> {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::new(self.backend).await;
        let mut env = HashMap::new();
        env.insert(
            "CORTEX_DATA_DIR".to_owned(),
            data.path().display().to_string(),
        );
        env.insert("DATABASE_URL".to_owned(), db.url.clone());
        env.insert(
            "CORTEX_ADMIN_PASSWORD".to_owned(),
            ADMIN_PASSWORD.to_owned(),
        );
        env.insert("CORTEX_SHUTDOWN_GRACE_SEC".to_owned(), "5".to_owned());
        // Active health checks only where a test asks for them (`.env(…)` overrides this):
        // elsewhere they would add requests and breaker marks the test did not make.
        env.insert(
            "CORTEX_HEALTH_CHECK_INTERVAL_SEC".to_owned(),
            "0".to_owned(),
        );
        env.extend(self.env);
        let file = FileConfig::parse(&self.toml).unwrap_or_else(|e| panic!("test config: {e}"));
        let config = Config::resolve(file, None, &|name| env.get(name).cloned())
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let gateway = match Gateway::build(config, self.clock).await {
            Ok(gateway) => gateway,
            Err(err) => {
                db.cleanup().await;
                return Err(err);
            }
        };
        let state = gateway.state().clone();
        let metrics_addr = gateway.metrics_addr();
        let listener = match self.listener {
            Some(listener) => listener,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Ok(TestServer {
            addr,
            metrics_addr,
            state,
            stop: Some(stop_tx),
            task: Some(task),
            _data: data,
            db: Some(db),
            http,
        })
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `CORTEX_METRICS_LISTEN` was bound, when it is set (use `127.0.0.1:0`).
    pub metrics_addr: Option<SocketAddr>,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _data: tempfile::TempDir,
    db: Option<TestDb>,
    http: reqwest::Client,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            env: HashMap::new(),
            toml: String::new(),
            backend: Backend::Sqlite,
            clock: Arc::new(SystemClock),
            listener: None,
        }
    }

    /// The database this server uses, for a second instance of the same deployment.
    pub fn database_url(&self) -> &str {
        self.db.as_ref().map_or("", |db| db.url.as_str())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._data.path()
    }

    pub async fn admin_id(&self) -> String {
        self.state
            .store()
            .get_user_by_username(&cortex_store::Tenant::All, "admin")
            .await
            .unwrap()
            .unwrap()
            .id
    }

    /// Creates a key owned by the admin and returns the full `ctx_…` key.
    pub async fn create_key(
        &self,
        scopes: &[Scope],
        models: Option<&[&str]>,
        limits: KeyLimits,
    ) -> String {
        self.create_key_with(KeySpec {
            name: "test key".to_owned(),
            owner_user_id: self.admin_id().await,
            scopes: scopes.to_vec(),
            models: models.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
            expires_at: None,
            limits,
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: None,
        })
        .await
        .1
    }

    /// Creates a key from a full spec; returns its id and the full key.
    pub async fn create_key_with(&self, spec: KeySpec) -> (String, String) {
        let issued = cortex_control::keys::create(
            self.state.store(),
            self.state.keys_cache(),
            &spec,
            "test",
            "127.0.0.1",
            self.state.now_millis(),
        )
        .await
        .unwrap_or_else(|e| panic!("create key: {e:?}"));
        (issued.row.id.clone(), issued.key.expose_secret().to_owned())
    }

    /// Graceful stop: waits for the drain to finish.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
