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
use crate::conn::{Answer, ExchangeError, SendError};
use crate::h1::{self, Method, RequestHead};
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
    /// The provider's `Retry-After` in seconds, on a 429 passed to the client.
    pub retry_after_secs: Option<u32>,
}

/// How failed attempts are retried (SPEC §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first (default 2).
    pub max_retries: u32,
    /// The wait before a provider is tried again, doubled on each round over the providers
    /// and jittered (a random half to all of it), at most `max_backoff`. A provider's
    /// `Retry-After` is waited out when it is longer.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Why an attempt is followed by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The provider could not be reached, timed out, or sent an unreadable answer.
    Unreachable,
    /// It answered 429.
    RateLimited,
    /// It answered 5xx.
    ServerError,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Unreachable => "unreachable",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ServerError => "server_error",
        }
    }
}

/// What the client tells the layer above as it works: metrics, and breakers shared with other
/// instances, live there. Every method defaults to doing nothing.
pub trait UpstreamEvents: Send + Sync {
    /// Another attempt follows one on `failed` that ended for `reason`.
    fn retried(&self, _failed: &ProviderTarget, _reason: RetryReason) {}
    /// `provider`'s breaker opened (or reopened after a failed probe) for `cooldown_millis`.
    fn breaker_opened(&self, _provider: &ProviderTarget, _cooldown_millis: i64) {}
    /// `provider`'s breaker closed again.
    fn breaker_closed(&self, _provider: &ProviderTarget) {}
}

/// One upstream attempt: which provider, when it started, how long until the answer's head (or
/// the failure), and how it ended. The layer above turns these into per-provider latency
/// metrics and one trace span per attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub provider: Arc<ProviderTarget>,
    pub started: std::time::Instant,
    pub took: Duration,
    pub outcome: AttemptOutcome,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The provider answered with this status (a 5xx or 429 here was followed by another
    /// attempt, or passed on).
    Answered(u16),
    /// No usable answer.
    Failed(UpstreamError),
}

/// The attempts of one request, in order. The first is held inline: nearly every request makes
/// one attempt, which then costs no allocation.
#[derive(Debug, Default)]
pub struct Attempts {
    first: Option<Attempt>,
    rest: Vec<Attempt>,
}

impl Attempts {
    fn push(&mut self, attempt: Attempt) {
        if self.first.is_none() {
            self.first = Some(attempt);
        } else {
            self.rest.push(attempt);
        }
    }

    /// How many attempts were made (retries and failovers included).
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attempt> {
        self.first.iter().chain(self.rest.iter())
    }
}

/// The events of a client nobody listens to.
struct Unobserved;

impl UpstreamEvents for Unobserved {}

pub struct UpstreamClient {
    http: ProviderHttp,
    timeouts: UpstreamTimeouts,
    egress: Arc<EgressPolicy>,
    pools: usize,
    /// How long a failed provider is passed over before it is tried first again.
    unhealthy_for: Duration,
    /// When a provider's circuit breaker opens, and for how long.
    breaker: BreakerSettings,
    retry: RetryPolicy,
    events: Arc<dyn UpstreamEvents>,
}

/// How the last attempt ended, when none succeeded.
enum Failed {
    /// An error: the client gets the gateway's own answer (502 or 504).
    Error(UpstreamError),
    /// A 429: passed to the client as the provider sent it (boxed: it is the rare case).
    RateLimited(Box<UpstreamResponse>),
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
            retry: RetryPolicy::default(),
            events: Arc::new(Unobserved),
        })
    }

    /// Opens a provider's breaker after `settings.failures` consecutive failures, for
    /// `settings.cooldown_millis` (SPEC §16 defaults: 5 and 30 s).
    pub fn with_breaker(mut self, settings: BreakerSettings) -> Self {
        self.breaker = settings;
        self
    }

    /// Retries failed attempts by `policy` (SPEC §16 default: 2 retries).
    pub fn with_retries(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Tells `events` about retries and breakers.
    pub fn with_events(mut self, events: Arc<dyn UpstreamEvents>) -> Self {
        self.events = events;
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

    /// Sends the request, trying providers in the route's order, and returns the first
    /// answer that is neither a 5xx nor a 429. A connect error, timeout, unreadable answer,
    /// 5xx or 429 moves on to the next provider; once every provider was tried, a non-streamed
    /// request goes round again after a jittered backoff (or the provider's `Retry-After`,
    /// when longer), up to `max_retries` retries in all and never past the first-byte
    /// deadline. A stream is only moved to another provider, never retried on the same one,
    /// and never once its answer started (that is after this returns). When every attempt
    /// failed, the last 429 goes to the client as it is, or else the last error.
    ///
    /// `attempts` counts the attempts made, for the usage record.
    pub async fn send(
        &self,
        route: &ModelRoute,
        request: &UpstreamRequest<'_>,
        now_millis: i64,
        attempts: &mut u32,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut log = Attempts::default();
        let answer = self.send_logged(route, request, now_millis, &mut log).await;
        *attempts += u32::try_from(log.len()).unwrap_or(u32::MAX);
        answer
    }

    /// [`send`](Self::send), with each attempt written to `log` (provider, start, time to the
    /// answer's head, outcome).
    pub async fn send_logged(
        &self,
        route: &ModelRoute,
        request: &UpstreamRequest<'_>,
        now_millis: i64,
        log: &mut Attempts,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let order = route.attempt_order(now_millis, self.breaker);
        let providers = order.len();
        if providers == 0 {
            return Err(UpstreamError::NoProvider);
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeouts.first_byte;
        let max_attempts = if request.streaming {
            providers.min(self.retry.max_retries as usize + 1)
        } else {
            self.retry.max_retries as usize + 1
        };
        // Each provider's `Retry-After` from its last answer, waited out before it is tried
        // again.
        let mut retry_after: Vec<Option<Duration>> = Vec::new();
        let mut last = Failed::Error(UpstreamError::NoProvider);
        for attempt in 0..max_attempts {
            let index = attempt % providers;
            let provider = &order[index];
            if attempt > 0 {
                let round = attempt / providers;
                let wait = if round == 0 {
                    Duration::ZERO
                } else {
                    let own = retry_after.get(index).copied().flatten();
                    self.backoff(round).max(own.unwrap_or_default())
                };
                if !retryable(&last, round) || tokio::time::Instant::now() + wait >= deadline {
                    break;
                }
                let failed = &order[(attempt - 1) % providers];
                self.events.retried(failed, reason(&last));
                tracing::info!(provider = %failed.name, next = %provider.name, wait_ms = wait.as_millis() as u64, reason = reason(&last).as_str(), "retrying the upstream request");
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let now = now_millis.saturating_add(millis(started.elapsed()));
            let sent_at = std::time::Instant::now();
            let in_flight = provider.health.start_request();
            let outcome = self.send_once(provider, request).await;
            let took = sent_at.elapsed();
            let ttfb = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            log.push(Attempt {
                provider: Arc::clone(provider),
                started: sent_at,
                took,
                outcome: match &outcome {
                    Ok(answer) => AttemptOutcome::Answered(answer.status),
                    Err(err) => AttemptOutcome::Failed(err.clone()),
                },
            });
            match outcome {
                Ok(answer) if answer.status >= 500 || answer.status == 429 => {
                    if retry_after.len() < providers {
                        retry_after.resize(providers, None);
                    }
                    retry_after[index] = answer
                        .retry_after_secs
                        .map(|secs| Duration::from_secs(u64::from(secs)));
                    if answer.status == 429 {
                        // Busy, not broken: tried after the others for as long as it asked,
                        // without a mark against its breaker.
                        tracing::info!(provider = %provider.name, "upstream 429");
                        let for_millis = answer
                            .retry_after_secs
                            .map_or(1_000, |secs| i64::from(secs).saturating_mul(1_000));
                        provider.health.demote_until(now.saturating_add(for_millis));
                        last = Failed::RateLimited(Box::new(UpstreamResponse {
                            status: 429,
                            provider: Arc::clone(provider),
                            body: UpstreamBody::new(answer.body, self.timeouts.idle)
                                .counted(in_flight),
                            retry_after_secs: answer.retry_after_secs,
                        }));
                    } else {
                        tracing::warn!(provider = %provider.name, status = answer.status, "upstream 5xx");
                        self.mark_down(provider, now);
                        last = Failed::Error(UpstreamError::ServerError(answer.status));
                    }
                }
                Ok(answer) => {
                    if provider.health.record_success(ttfb, now) {
                        self.events.breaker_closed(provider);
                    }
                    return Ok(UpstreamResponse {
                        status: answer.status,
                        provider: Arc::clone(provider),
                        body: UpstreamBody::new(answer.body, self.timeouts.idle).counted(in_flight),
                        retry_after_secs: answer.retry_after_secs,
                    });
                }
                Err(err) => {
                    tracing::warn!(provider = %provider.name, error = %err, "upstream failed");
                    self.mark_down(provider, now);
                    last = Failed::Error(err);
                }
            }
        }
        match last {
            Failed::Error(err) => Err(err),
            Failed::RateLimited(answer) => Ok(*answer),
        }
    }

    /// The wait before round `round` (1, 2, …) over the providers: `backoff` doubled each
    /// round, at most `max_backoff`, of which a random half to all is taken (jitter, so that
    /// clients that failed together do not retry together).
    fn backoff(&self, round: usize) -> Duration {
        let doubled = self
            .retry
            .backoff
            .saturating_mul(1u32 << (round.saturating_sub(1)).min(16))
            .min(self.retry.max_backoff);
        doubled.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    fn mark_down(&self, provider: &ProviderTarget, now_millis: i64) {
        let for_millis = millis(self.unhealthy_for);
        if provider.health.record_failure(
            self.breaker,
            now_millis,
            now_millis.saturating_add(for_millis),
        ) {
            tracing::warn!(provider = %provider.name, failures = self.breaker.failures, "circuit breaker opened: the provider is passed over while others can serve");
            self.events
                .breaker_opened(provider, self.breaker.cooldown_millis);
        }
    }

    /// The active health check (SPEC §16): `GET {base_url}/{health_check_path}` (`models`
    /// unless the provider sets a path; Azure's `{base_url}/openai/models?api-version=…`)
    /// with the provider's credential, within `timeout`. Passing means an answer that is not
    /// a 5xx (a 401 says the provider is up and the gateway's key is wrong, which the data
    /// plane reports on its own); its outcome goes to the provider's health and breaker, and
    /// a breaker it opens or closes is announced like one a request did. Returns the time to
    /// the answer's head when it passed.
    pub async fn check(
        &self,
        provider: &ProviderTarget,
        timeout: Duration,
        now_millis: i64,
    ) -> Option<Duration> {
        let started = std::time::Instant::now();
        let outcome = match self.check_url(provider) {
            Some(uri) => {
                let request = Outgoing {
                    method: Method::Get,
                    uri: &uri,
                    body: &Bytes::new(),
                    request_id: "",
                    streaming: false,
                };
                tokio::time::timeout(timeout, self.exchange(provider, &request))
                    .await
                    .unwrap_or(Err(UpstreamError::Timeout))
            }
            None => Err(UpstreamError::Unreachable),
        };
        let passed = match outcome {
            Ok(answer) if answer.status < 500 => {
                let took = started.elapsed();
                // Read (a bounded amount of) the body so the connection can be reused.
                let body = UpstreamBody::new(answer.body, self.timeouts.idle);
                let _ = tokio::time::timeout(timeout, body.read_all(64 * 1024)).await;
                Some(took)
            }
            Ok(answer) => {
                tracing::warn!(provider = %provider.name, status = answer.status, "health check failed");
                None
            }
            Err(err) => {
                tracing::warn!(provider = %provider.name, error = %err, "health check failed");
                None
            }
        };
        let was_open =
            provider.health.breaker.state(now_millis) != crate::breaker::BreakerState::Closed;
        let micros = passed.map(|took| u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if provider
            .health
            .record_check(micros, self.breaker, now_millis)
        {
            tracing::warn!(provider = %provider.name, "circuit breaker opened by failed health checks");
            self.events
                .breaker_opened(provider, self.breaker.cooldown_millis);
        } else if was_open
            && provider.health.breaker.state(now_millis) == crate::breaker::BreakerState::Closed
        {
            self.events.breaker_closed(provider);
        }
        passed
    }

    fn check_url(&self, provider: &ProviderTarget) -> Option<http::Uri> {
        match provider.kind {
            ProviderKind::Azure => {
                let version = kinds::api_version(provider.kind, provider.api_version.as_deref())?;
                if !cortex_domain::provider::is_valid_api_version(version) {
                    return None;
                }
                http::Uri::try_from(format!(
                    "{}/openai/models?api-version={version}",
                    provider.base_url
                ))
                .ok()
            }
            ProviderKind::OpenAi | ProviderKind::Anthropic => {
                provider.url(provider.health_check_path.as_deref().unwrap_or("models"))
            }
        }
    }

    async fn send_once(
        &self,
        provider: &ProviderTarget,
        request: &UpstreamRequest<'_>,
    ) -> Result<Answer, UpstreamError> {
        let api_version = kinds::api_version(provider.kind, provider.api_version.as_deref());
        let uri = match provider.kind {
            // The hot path: the URL parsed when the routing table was built.
            ProviderKind::OpenAi | ProviderKind::Anthropic => provider.url(request.path),
            // The deployment is the model, so the URL is built per request.
            ProviderKind::Azure => {
                let url = kinds::azure_url(
                    &provider.base_url,
                    request.model,
                    request.path,
                    api_version.unwrap_or_default(),
                );
                if url.is_none() {
                    tracing::warn!(provider = %provider.name, "the model's upstream name or the api_version cannot be put in an Azure URL");
                }
                url
            }
        }
        .ok_or(UpstreamError::Unreachable)?;
        let outgoing = Outgoing {
            method: Method::Post,
            uri: &uri,
            body: &request.body,
            request_id: request.request_id,
            streaming: request.streaming,
        };
        tokio::time::timeout(self.timeouts.first_byte, self.exchange(provider, &outgoing))
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }

    /// Sends one request to `provider` and waits for the answer's head.
    async fn exchange(
        &self,
        provider: &ProviderTarget,
        request: &Outgoing<'_>,
    ) -> Result<Answer, UpstreamError> {
        let Outgoing {
            method,
            uri,
            body,
            request_id,
            streaming,
        } = *request;
        let api_version = kinds::api_version(provider.kind, provider.api_version.as_deref());
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
        let accept: &[u8] = if streaming {
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
        if !request_id.is_empty() && h1::is_header_value(request_id.as_bytes()) {
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
                method,
                path_and_query,
                authority: host,
                headers: &headers[..count],
                content_length: body.len(),
            },
            &mut head,
        )
        .map_err(|_| UpstreamError::Unreachable)?;

        let http = provider.http.as_ref().unwrap_or(&self.http);
        match http.send(tls, authority, &head, body).await {
            Err(SendError::ConnectTimeout) => Err(UpstreamError::Timeout),
            Err(SendError::Unreachable | SendError::Exchange(ExchangeError::NoAnswer)) => {
                Err(UpstreamError::Unreachable)
            }
            Err(SendError::EgressDenied) => Err(UpstreamError::EgressDenied),
            Err(SendError::Exchange(ExchangeError::Bad(problem))) => {
                tracing::debug!(provider = %provider.name, %problem, "unreadable answer head");
                Err(UpstreamError::BadResponse)
            }
            Err(SendError::Exchange(ExchangeError::Broken)) => Err(UpstreamError::BadResponse),
            Ok(answer) => Ok(answer),
        }
    }
}

/// One request as it goes on the wire.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    method: Method,
    uri: &'a http::Uri,
    body: &'a Bytes,
    request_id: &'a str,
    streaming: bool,
}

/// Whether the attempt that ended in `last` may be followed by one in round `round` (0: the
/// first pass over the providers, where any failure moves on). A provider is tried again only
/// after failures that may pass: not a refused address, nor a timeout, which has already spent
/// the deadline's worth of waiting.
fn retryable(last: &Failed, round: usize) -> bool {
    round == 0
        || !matches!(
            last,
            Failed::Error(UpstreamError::EgressDenied | UpstreamError::Timeout)
        )
}

fn reason(last: &Failed) -> RetryReason {
    match last {
        Failed::RateLimited(_) => RetryReason::RateLimited,
        Failed::Error(UpstreamError::ServerError(_)) => RetryReason::ServerError,
        Failed::Error(_) => RetryReason::Unreachable,
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
