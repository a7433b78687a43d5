//! The HTTP client towards providers: pooled connections, timeouts, failover.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};

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
    pub response: reqwest::Response,
}

/// Why a provider's CA bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("holds no PEM certificate")]
    Empty,
    #[error("is not a PEM bundle of valid CA certificates")]
    Unreadable,
}

pub struct UpstreamClient {
    http: reqwest::Client,
    timeouts: UpstreamTimeouts,
    first_byte: Duration,
    /// How long a failed provider is passed over before it is tried first again.
    unhealthy_for: Duration,
}

impl UpstreamClient {
    pub fn new(timeouts: UpstreamTimeouts) -> Result<Self, reqwest::Error> {
        let http = Self::builder(&timeouts).build()?;
        Ok(Self {
            http,
            timeouts,
            first_byte: timeouts.first_byte,
            unhealthy_for: Duration::from_secs(10),
        })
    }

    /// A client like the shared one that also trusts the CA certificates in `pem` (a bundle),
    /// for providers behind a private CA. The public roots stay trusted too.
    /// A bundle without any certificate is refused: trusting nothing extra is never what the
    /// operator meant by naming a file.
    pub fn client_with_ca(&self, pem: &[u8]) -> Result<reqwest::Client, CaBundleError> {
        let certificates =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|_| CaBundleError::Unreadable)?;
        if certificates.is_empty() {
            return Err(CaBundleError::Empty);
        }
        let mut builder = Self::builder(&self.timeouts);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
        builder.build().map_err(|_| CaBundleError::Unreadable)
    }

    fn builder(timeouts: &UpstreamTimeouts) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // A provider must not bounce our credential elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // Cortex talks to its providers directly; an ambient HTTP_PROXY must not reroute
            // (and see) the provider credentials.
            .no_proxy()
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
                        response,
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
    ) -> Result<reqwest::Response, UpstreamError> {
        let UpstreamRequest {
            path,
            body,
            fallback_key,
            request_id,
            streaming,
        } = request;
        let url = provider.url(path).ok_or(UpstreamError::Unreachable)?;
        let mut headers = HeaderMap::with_capacity(4);
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
            headers.insert("x-request-id", value);
        }
        // Bytes clones are reference counts: failover resends without copying the body.
        let http = provider.http.as_ref().unwrap_or(&self.http);
        let pending = http.post(url).headers(headers).body(body.clone()).send();
        match tokio::time::timeout(self.first_byte, pending).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(err)) if err.is_timeout() => Err(UpstreamError::Timeout),
            Ok(Err(_)) => Err(UpstreamError::Unreachable),
            Ok(Ok(response)) => Ok(response),
        }
    }
}
