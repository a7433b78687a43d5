//! The HTTP client towards providers: pooled connections, timeouts, failover.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::Method;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use secrecy::{ExposeSecret, SecretString};

use crate::body::UpstreamBody;
use crate::routing::{ModelRoute, ProviderTarget};

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP (and TLS) connect.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// Longest silence between two reads of a body.
    pub idle: Duration,
}

/// An upstream fault is not a client fault (pingora's distinction): each variant says whether
/// another provider may be tried, and maps to 502 or 504 at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the model has no provider")]
    NoProvider,
    #[error("upstream unreachable")]
    Unreachable,
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream answered with status {0}")]
    ServerError(u16),
}

impl UpstreamError {
    /// Whether trying the next provider makes sense.
    pub fn retryable(&self) -> bool {
        match self {
            UpstreamError::NoProvider => false,
            UpstreamError::Unreachable | UpstreamError::Timeout | UpstreamError::ServerError(_) => {
                true
            }
        }
    }
}

/// One request to send: where below the base URL, what body, and how.
pub struct UpstreamRequest<'a> {
    /// Relative to the provider's base URL, e.g. `chat/completions`.
    pub path: &'a str,
    pub body: Bytes,
    /// Sent when the provider has no key of its own (`INTERNAL_VLLM_API_KEY`).
    pub fallback_key: Option<&'a SecretString>,
    pub request_id: &'a str,
    pub streaming: bool,
}

/// A response head from the provider that answered; the body has not been read.
pub struct UpstreamResponse {
    pub status: u16,
    pub provider: Arc<ProviderTarget>,
    pub body: UpstreamBody,
}

/// Why a provider's CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("holds no PEM certificate")]
    Empty,
    #[error("is not a PEM bundle of valid CA certificates")]
    Unreadable,
}

/// Why the shared client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for upstream calls")]
pub struct ClientBuildError;

type Connector = HttpsConnector<HttpConnector>;

thread_local! {
    /// Which pool of every [`ProviderHttp`] this thread takes connections from.
    static POOL: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread use pool `index` (modulo the number of pools) of every provider
/// client from now on. Each serving thread runs its own single-threaded runtime and calls this
/// once with its own index: a pooled connection is driven by a task on the runtime that opened
/// it, so a request reusing a connection of another thread's pool would hand every read and
/// write over to that thread. Threads that never call it share pool 0.
pub fn use_pool(index: usize) {
    POOL.with(|pool| pool.set(index));
}

/// Pooled HTTP/1.1 and HTTP/2 clients towards providers (hyper-util's pool over rustls), one
/// pool per serving thread ([`use_pool`]). Clones share the pools.
///
/// It is hyper's client with nothing on top: no redirects are followed (a provider must not
/// bounce our credential elsewhere), no ambient `HTTP_PROXY` is consulted (it would reroute,
/// and see, the provider credentials), and URLs are built once per provider, not per request.
#[derive(Clone)]
pub struct ProviderHttp {
    pools: Arc<[Client<Connector, Full<Bytes>>]>,
}

impl ProviderHttp {
    fn new(
        timeouts: &UpstreamTimeouts,
        roots: RootCertStore,
        pools: usize,
    ) -> Result<Self, ClientBuildError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        // https:// is handled by the TLS connector around this one.
        http.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|_| ClientBuildError)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let pools = (0..pools.max(1))
            .map(|_| builder.build(connector.clone()))
            .collect();
        Ok(Self { pools })
    }

    /// The calling thread's pool.
    fn client(&self) -> &Client<Connector, Full<Bytes>> {
        let index = POOL.with(Cell::get) % self.pools.len();
        &self.pools[index]
    }
}

/// The public web PKI roots (Mozilla's, compiled in), which every client trusts.
fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

pub struct UpstreamClient {
    http: ProviderHttp,
    timeouts: UpstreamTimeouts,
    pools: usize,
    /// How long a failed provider is passed over before it is tried first again.
    unhealthy_for: Duration,
}

impl UpstreamClient {
    /// `pools`: how many connection pools each provider client keeps ([`use_pool`]); one
    /// per serving thread, and one for every other thread.
    pub fn new(timeouts: UpstreamTimeouts, pools: usize) -> Result<Self, ClientBuildError> {
        Ok(Self {
            http: ProviderHttp::new(&timeouts, public_roots(), pools)?,
            timeouts,
            pools,
            unhealthy_for: Duration::from_secs(10),
        })
    }

    /// A client like the shared one that also trusts the CA certificates in `pem` (a bundle),
    /// for providers behind a private CA. The public roots stay trusted too.
    /// A bundle without any certificate is refused: trusting nothing extra is never what the
    /// operator meant by naming a file.
    pub fn client_with_ca(&self, pem: &[u8]) -> Result<ProviderHttp, CaBundleError> {
        let mut roots = public_roots();
        let mut added = 0usize;
        for certificate in rustls_pemfile::certs(&mut &pem[..]) {
            let certificate = certificate.map_err(|_| CaBundleError::Unreadable)?;
            roots
                .add(certificate)
                .map_err(|_| CaBundleError::Unreadable)?;
            added += 1;
        }
        if added == 0 {
            return Err(CaBundleError::Empty);
        }
        ProviderHttp::new(&self.timeouts, roots, self.pools).map_err(|_| CaBundleError::Unreadable)
    }

    /// Sends the request, trying providers in the route's order. A connect error, timeout or
    /// 5xx before the first byte moves on to the next provider; any other answer is returned
    /// as it is.
    pub async fn send(
        &self,
        route: &ModelRoute,
        request: &UpstreamRequest<'_>,
        now_millis: i64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let order = route.attempt_order(now_millis);
        let mut last_error = UpstreamError::NoProvider;
        for provider in order {
            match self.send_once(&provider, request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status >= 500 {
                        tracing::warn!(provider = %provider.name, status, "upstream 5xx; trying the next provider");
                        self.mark_down(&provider, now_millis);
                        last_error = UpstreamError::ServerError(status);
                        continue;
                    }
                    provider.mark_healthy();
                    return Ok(UpstreamResponse {
                        status,
                        provider,
                        body: UpstreamBody::new(response.into_body(), self.timeouts.idle),
                    });
                }
                Err(err) => {
                    tracing::warn!(provider = %provider.name, error = %err, "upstream failed; trying the next provider");
                    self.mark_down(&provider, now_millis);
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    fn mark_down(&self, provider: &ProviderTarget, now_millis: i64) {
        let for_millis = i64::try_from(self.unhealthy_for.as_millis()).unwrap_or(i64::MAX);
        provider.mark_unhealthy(now_millis.saturating_add(for_millis));
    }

    async fn send_once(
        &self,
        provider: &ProviderTarget,
        request: &UpstreamRequest<'_>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let UpstreamRequest {
            path,
            body,
            fallback_key,
            request_id,
            streaming,
        } = request;
        let uri = provider.url(path).ok_or(UpstreamError::Unreachable)?;
        // Bytes clones are reference counts: failover resends without copying the body.
        let mut outgoing = http::Request::new(Full::new(body.clone()));
        *outgoing.method_mut() = Method::POST;
        *outgoing.uri_mut() = uri;
        let headers = outgoing.headers_mut();
        headers.reserve(4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(if *streaming {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        if let Some(key) = provider.api_key.as_ref().or(*fallback_key) {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose_secret()))
                .map_err(|_| UpstreamError::Unreachable)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if let Ok(value) = HeaderValue::try_from(*request_id) {
            headers.insert(X_REQUEST_ID, value);
        }
        let http = provider.http.as_ref().unwrap_or(&self.http);
        let pending = http.client().request(outgoing);
        match tokio::time::timeout(self.timeouts.first_byte, pending).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(err)) if timed_out(&err) => Err(UpstreamError::Timeout),
            Ok(Err(_)) => Err(UpstreamError::Unreachable),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether an error (or one of its causes) is a timeout, such as the connect timeout.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}
