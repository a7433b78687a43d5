//! The HTTP client towards providers: pooled connections, timeouts, failover.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cortex_domain::egress::EgressPolicy;
use cortex_domain::ProviderKind;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::body::UpstreamBody;
use crate::breaker::BreakerSettings;
use crate::conn::{ExchangeError, H1Body, SendError};
use crate::h1::{self, RequestHead};
use crate::kinds;
use crate::provider_http::public_roots;
// Part of the client's API (`cortex_upstream::client::ProviderHttp`, …), defined below both
// this module and the routing table, which needs `ProviderHttp` too.
pub use crate::provider_http::{
    ca_bundle, trusted_roots, use_pool, CaBundleError, ClientBuildError, ProviderHttp,
};
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
    /// The provider's name for the model (Azure puts it in the URL as the deployment).
    pub model: &'a str,
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

pub struct UpstreamClient {
    http: ProviderHttp,
    timeouts: UpstreamTimeouts,
    egress: Arc<EgressPolicy>,
    pools: usize,
    /// How long a failed provider is passed over before it is tried first again.
    unhealthy_for: Duration,
    /// When a provider's circuit breaker opens, and for how long.
    breaker: BreakerSettings,
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
            http: ProviderHttp::new(timeouts.connect, public_roots(), Arc::clone(&egress), pools)?,
            timeouts,
            egress,
            pools,
            unhealthy_for: Duration::from_secs(10),
            breaker: BreakerSettings::default(),
        })
    }

    /// Opens a provider's breaker after `settings.failures` consecutive failures, for
    /// `settings.cooldown_millis` (SPEC §16 defaults: 5 and 30 s).
    pub fn with_breaker(mut self, settings: BreakerSettings) -> Self {
        self.breaker = settings;
        self
    }

    /// A client like the shared one that also trusts the CA certificates in `pem` (a bundle),
    /// for providers behind a private CA. The public roots stay trusted too.
    /// A bundle without any certificate is refused: trusting nothing extra is never what the
    /// operator meant by naming a file.
    pub fn client_with_ca(&self, pem: &[u8]) -> Result<ProviderHttp, CaBundleError> {
        let roots = trusted_roots(&ca_bundle(pem)?)?;
        ProviderHttp::new(
            self.timeouts.connect,
            roots,
            Arc::clone(&self.egress),
            self.pools,
        )
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
        let order = route.attempt_order(now_millis, self.breaker);
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
                    provider.health.record_success(0);
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
        if provider.health.record_failure(
            self.breaker,
            now_millis,
            now_millis.saturating_add(for_millis),
        ) {
            tracing::warn!(provider = %provider.name, failures = self.breaker.failures, "circuit breaker opened: the provider is passed over while others can serve");
        }
    }

    async fn send_once(
        &self,
        provider: &ProviderTarget,
        request: &UpstreamRequest<'_>,
    ) -> Result<(u16, H1Body), UpstreamError> {
        let UpstreamRequest {
            path,
            model,
            body,
            request_id,
            streaming,
        } = request;
        let api_version = kinds::api_version(provider.kind, provider.api_version.as_deref());
        let uri = match provider.kind {
            // The hot path: the URL parsed when the routing table was built.
            ProviderKind::OpenAi | ProviderKind::Anthropic => provider.url(path),
            // The deployment is the model, so the URL is built per request.
            ProviderKind::Azure => {
                let url = kinds::azure_url(
                    &provider.base_url,
                    model,
                    path,
                    api_version.unwrap_or_default(),
                );
                if url.is_none() {
                    tracing::warn!(provider = %provider.name, "the model's upstream name or the api_version cannot be put in an Azure URL");
                }
                url
            }
        }
        .ok_or(UpstreamError::Unreachable)?;
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
        let secret = provider.api_key.as_ref().map(|key| key.expose_secret());
        let bearer = match (provider.kind, secret) {
            (ProviderKind::OpenAi, Some(secret)) => {
                let mut value = Zeroizing::new(String::with_capacity(7 + secret.len()));
                value.push_str("Bearer ");
                value.push_str(secret);
                Some(value)
            }
            _ => None,
        };
        // OpenAI's value is `Bearer <key>`; Anthropic's and Azure's headers take the key itself,
        // straight from the secret (no copy but the request head's).
        let credential = match provider.kind {
            ProviderKind::OpenAi => bearer.as_ref().map(|b| b.as_bytes()),
            ProviderKind::Anthropic | ProviderKind::Azure => secret.map(str::as_bytes),
        };
        let version_header = match provider.kind {
            ProviderKind::Anthropic => api_version,
            ProviderKind::OpenAi | ProviderKind::Azure => None,
        };
        let accept: &[u8] = if *streaming {
            b"text/event-stream"
        } else {
            b"application/json"
        };
        let mut headers: [(&str, &[u8]); 5] = [
            ("content-type", b"application/json"),
            ("accept", accept),
            ("", b""),
            ("", b""),
            ("", b""),
        ];
        let mut count = 2;
        if let Some(credential) = credential {
            headers[count] = (kinds::credential_header(provider.kind), credential);
            count += 1;
        }
        if let Some(version) = version_header {
            headers[count] = ("anthropic-version", version.as_bytes());
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
                + credential.map_or(0, <[u8]>::len)
                + version_header.map_or(0, str::len),
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
        let pending = http.send(tls, authority, &head, body);
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
