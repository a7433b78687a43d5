//! One provider-facing HTTP client ([`ProviderHttp`]) and the TLS roots it trusts. Below both
//! the routing table, whose targets may carry a client of their own (a private CA), and the
//! client that sends requests, so neither of those has to import the other for it.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_domain::egress::EgressPolicy;
use http::uri::Authority;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::conn::{Answer, Connector, SendError};

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
    pub(crate) fn new(
        connect_timeout: Duration,
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
            connector: Arc::new(Connector::new(tls, connect_timeout, egress, pools)),
        })
    }

    /// Sends the request on the calling thread's pool ([`use_pool`]); the pool is chosen now,
    /// on the thread that sends, not when the returned future is first polled.
    pub(crate) fn send<'a>(
        &'a self,
        tls: bool,
        authority: &'a Authority,
        head: &'a [u8],
        body: &'a Bytes,
    ) -> impl Future<Output = Result<Answer, SendError>> + 'a {
        let pool = POOL.with(Cell::get);
        self.connector.send(pool, tls, authority, head, body)
    }
}

/// The public web PKI roots (Mozilla's, compiled in), which every client trusts.
pub(crate) fn public_roots() -> RootCertStore {
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
