//! Guardrail webhooks (SPEC §21): an external service asked whether a request's text may go
//! on. Cortex POSTs `{"direction":"request","model":…,"body":<the request body>}` and reads
//! `{"flagged": true|false}`; anything else — no answer within the rule's timeout, a status
//! other than 200, a body that does not say — is "unanswered", which the rule's `fail_open`
//! decides.
//!
//! A webhook's URL is set through the admin API, so it gets the providers' egress policy
//! (`CORTEX_UPSTREAM_ALLOW`, the metadata and link-local ranges always refused) on every
//! address it resolves to, and no redirects: it cannot be turned into a way to reach what the
//! gateway's network position can reach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use cortex_domain::egress::EgressPolicy;
use cortex_guard::WebhookRule;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A webhook's answer is read up to this size.
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flagged {
    No,
    Yes,
    /// No usable answer in time.
    Unanswered,
}

/// The client every webhook call goes through.
#[derive(Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    egress: Arc<EgressPolicy>,
}

impl Webhooks {
    pub fn new(egress: EgressPolicy) -> Result<Self, reqwest::Error> {
        let egress = Arc::new(egress);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(EgressResolver {
                egress: egress.clone(),
            }))
            .no_proxy()
            .build()?;
        Ok(Self { client, egress })
    }
}

/// Asks `rule`'s service about `body`.
pub async fn ask(webhooks: &Webhooks, rule: &WebhookRule, model: &str, body: &Bytes) -> Flagged {
    // A literal address is not resolved, so the resolver never sees it: checked here.
    let Ok(url) = reqwest::Url::parse(&rule.url) else {
        return Flagged::Unanswered;
    };
    if let Some(host) = url.host_str() {
        if webhooks.egress.allows_literal(host) == Some(false) {
            tracing::warn!("a guardrail webhook's address is refused by the egress policy");
            return Flagged::Unanswered;
        }
    }
    let mut payload = Vec::with_capacity(body.len() + 64);
    payload.extend_from_slice(br#"{"direction":"request","model":"#);
    match serde_json::to_vec(model) {
        Ok(model) => payload.extend_from_slice(&model),
        Err(_) => return Flagged::Unanswered,
    }
    payload.extend_from_slice(br#","body":"#);
    payload.extend_from_slice(body);
    payload.push(b'}');
    let call = async {
        let mut response = webhooks
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .send()
            .await
            .ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.ok()? {
            if answer.len() + chunk.len() > MAX_ANSWER {
                return None;
            }
            answer.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()?
            .get("flagged")?
            .as_bool()
    };
    match tokio::time::timeout(Duration::from_millis(u64::from(rule.timeout_ms)), call).await {
        Ok(Some(true)) => Flagged::Yes,
        Ok(Some(false)) => Flagged::No,
        Ok(None) | Err(_) => Flagged::Unanswered,
    }
}

/// Resolves with the system resolver and keeps only the addresses the egress policy allows.
struct EgressResolver {
    egress: Arc<EgressPolicy>,
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = self.egress.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found
                .filter(|addr| egress.allows(&host, addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    "the webhook's host resolves only to addresses the egress policy refuses"
                        .into(),
                );
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
