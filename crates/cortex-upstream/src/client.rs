//! The HTTP client towards providers: pooled connections, timeouts, failover.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_domain::egress::EgressPolicy;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::body::UpstreamBody;
use crate::conn::{Connector, ExchangeError, H1Body, SendError};
use crate::h1::{self, RequestHead};
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
    #[error("upstream answered with a malformed or cut-short response")]
    BadResponse,
    /// Every address of the provider's host is refused by the egress policy; nothing was
    /// connected to, so no credential left.
    #[error("egress denied: the provider's address is refused by the egress policy")]
    EgressDenied,
}

/// One request to send: where below the base URL, what body, and how.
pub struct UpstreamRequest<'a> {
    /// Relative to the provider's base URL, e.g. `chat/completions`.
    pub path: &'a str,
    pub body: Bytes,
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

thread_local! {
    /// Which pool of every [`ProviderHttp`] this thread takes connections from.
    static POOL: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread use pool `index` (modulo the number of pools) of every provider
/// client from now on. Each serving thread runs its own single-threaded runtime and calls this
/// once with its own index, so the connections a thread reuses are ones its own runtime
/// registered with its I/O driver. Threads that never call it share pool 0.
pub fn use_pool(index: usize) {
    POOL.with(|pool| pool.set(index));
}

/// HTTP/1.1 over TCP or TLS towards providers, with one pool of idle connections per serving
/// thread ([`use_pool`]). Clones share the pools.
///
/// It does only what a gateway needs and nothing that could misdirect a credential: no
/// redirects are followed (a provider must not bounce our credential elsewhere), no ambient
/// `HTTP_PROXY` is consulted (it would reroute, and see, the provider credentials), and URLs
/// are parsed once per provider, not per request. TLS offers only `http/1.1` by ALPN.
#[derive(Clone)]
pub struct ProviderHttp {
    connector: Arc<Connector>,
}

impl ProviderHttp {
    fn new(
        timeouts: &UpstreamTimeouts,
        roots: RootCertStore,
        egress: Arc<EgressPolicy>,
        pools: usize,
    ) -> Result<Self, ClientBuildError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|_| ClientBuildError)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
        Ok(Self {
            connector: Arc::new(Connector::new(tls, timeouts.connect, egress, pools)),
        })
    }
}

/// The public web PKI roots (Mozilla's, compiled in), which every client trusts.
fn public_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// The CA certificates of a PEM bundle. A bundle without any certificate is refused: trusting
/// nothing extra is never what the operator meant by naming a file.
pub fn ca_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaBundleError> {
    let certificates = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CaBundleError::Unreadable)?;
    if certificates.is_empty() {
        return Err(CaBundleError::Empty);
    }
    Ok(certificates)
}

/// The public roots plus `extra` (a private CA's certificates, from [`ca_bundle`]).
pub fn trusted_roots(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, CaBundleError> {
    let mut roots = public_roots();
    for certificate in extra {
        roots
            .add(certificate.clone())
            .map_err(|_| CaBundleError::Unreadable)?;
    }
    Ok(roots)
}

pub struct UpstreamClient {
    http: ProviderHttp,
    timeouts: UpstreamTimeouts,
    egress: Arc<EgressPolicy>,
    pools: usize,
    /// How long a failed provider is passed over before it is tried first again.
    unhealthy_for: Duration,
}

impl UpstreamClient {
    /// `pools`: how many connection pools each provider client keeps ([`use_pool`]); one
    /// per serving thread, and one for every other thread.
    /// With the default egress policy (everything but link-local and metadata addresses).
    pub fn new(timeouts: UpstreamTimeouts, pools: usize) -> Result<Self, ClientBuildError> {
        Self::with_egress(timeouts, pools, EgressPolicy::default())
    }

    /// Every connection this client (and those from [`client_with_ca`](Self::client_with_ca))
    /// opens is checked against `egress` after DNS resolution.
    pub fn with_egress(
        timeouts: UpstreamTimeouts,
        pools: usize,
        egress: EgressPolicy,
    ) -> Result<Self, ClientBuildError> {
        let egress = Arc::new(egress);
        Ok(Self {
            http: ProviderHttp::new(&timeouts, public_roots(), Arc::clone(&egress), pools)?,
            timeouts,
            egress,
            pools,
            unhealthy_for: Duration::from_secs(10),
        })
    }

    /// A client like the shared one that also trusts the CA certificates in `pem` (a bundle),
    /// for providers behind a private CA. The public roots stay trusted too.
    /// A bundle without any certificate is refused: trusting nothing extra is never what the
    /// operator meant by naming a file.
    pub fn client_with_ca(&self, pem: &[u8]) -> Result<ProviderHttp, CaBundleError> {
        let roots = trusted_roots(&ca_bundle(pem)?)?;
        ProviderHttp::new(&self.timeouts, roots, Arc::clone(&self.egress), self.pools)
            .map_err(|_| CaBundleError::Unreadable)
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
                Ok((status, body)) => {
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
                        body: UpstreamBody::new(body, self.timeouts.idle),
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
    ) -> Result<(u16, H1Body), UpstreamError> {
        let UpstreamRequest {
            path,
            body,
            request_id,
            streaming,
        } = request;
        let uri = provider.url(path).ok_or(UpstreamError::Unreachable)?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(UpstreamError::Unreachable),
        };
        let authority = uri.authority().ok_or(UpstreamError::Unreachable)?;
        // User information in a base URL is never sent, not even as the Host header.
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());

        // The provider's credential passes through these buffers, which are sized up front (no
        // reallocation leaves a copy behind) and wiped when dropped.
        // Only the provider's own key: the internal key is given to a target when the routing
        // table is built, and only to providers the config file declares for it.
        let bearer = provider.api_key.as_ref().map(|key| {
            let secret = key.expose_secret();
            let mut value = Zeroizing::new(String::with_capacity(7 + secret.len()));
            value.push_str("Bearer ");
            value.push_str(secret);
            value
        });
        let accept: &[u8] = if *streaming {
            b"text/event-stream"
        } else {
            b"application/json"
        };
        let mut headers: [(&str, &[u8]); 4] = [
            ("content-type", b"application/json"),
            ("accept", accept),
            ("authorization", b""),
            ("x-request-id", b""),
        ];
        let mut count = 2;
        if let Some(bearer) = bearer.as_ref() {
            headers[count] = ("authorization", bearer.as_bytes());
            count += 1;
        }
        // A request id that could not be a header value is left out, not the request.
        if h1::is_header_value(request_id.as_bytes()) {
            headers[count] = ("x-request-id", request_id.as_bytes());
            count += 1;
        }
        let mut head = Zeroizing::new(Vec::with_capacity(
            256 + path_and_query.len()
                + host.len()
                + request_id.len()
                + bearer.as_ref().map_or(0, |b| b.len()),
        ));
        h1::encode_request(
            &RequestHead {
                path_and_query,
                authority: host,
                headers: &headers[..count],
                content_length: body.len(),
            },
            &mut head,
        )
        .map_err(|_| UpstreamError::Unreachable)?;

        let http = provider.http.as_ref().unwrap_or(&self.http);
        let pool = POOL.with(Cell::get);
        let pending = http.connector.send(pool, tls, authority, &head, body);
        match tokio::time::timeout(self.timeouts.first_byte, pending).await {
            Err(_) | Ok(Err(SendError::ConnectTimeout)) => Err(UpstreamError::Timeout),
            Ok(Err(SendError::Unreachable | SendError::Exchange(ExchangeError::NoAnswer))) => {
                Err(UpstreamError::Unreachable)
            }
            Ok(Err(SendError::EgressDenied)) => Err(UpstreamError::EgressDenied),
            Ok(Err(SendError::Exchange(ExchangeError::Bad(problem)))) => {
                tracing::debug!(provider = %provider.name, %problem, "unreadable answer head");
                Err(UpstreamError::BadResponse)
            }
            Ok(Err(SendError::Exchange(ExchangeError::Broken))) => Err(UpstreamError::BadResponse),
            Ok(Ok(answer)) => Ok(answer),
        }
    }
}
