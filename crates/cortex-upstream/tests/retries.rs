//! Retries, failover and active health checks (SPEC §16) against scripted providers on
//! loopback: what is retried and what is not, how long the client waits, what it reports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use cortex_upstream::breaker::BreakerSettings;
use cortex_upstream::{
    ModelRoute, ProviderTarget, RetryPolicy, RetryReason, UpstreamClient, UpstreamError,
    UpstreamEvents, UpstreamRequest, UpstreamResponse, UpstreamTimeouts,
};
use secrecy::SecretString;

/// What a scripted provider saw: each request's method, path, credential and arrival time.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, Option<String>, Instant)>,
}

/// A provider answering its `n`-th request (from 0) with `script(n)`: a status and headers.
async fn provider(
    script: impl Fn(usize) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync + 'static,
) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = Arc::new(script);
    let app = axum::Router::new().fallback({
        let seen = Arc::clone(&seen);
        move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
            let seen = Arc::clone(&seen);
            let script = Arc::clone(&script);
            async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.requests.push((
                        method.to_string(),
                        uri.to_string(),
                        headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned()),
                        Instant::now(),
                    ));
                    seen.requests.len() - 1
                };
                let (status, extra) = script(n);
                let mut response = (
                    StatusCode::from_u16(status).unwrap(),
                    format!("{{\"answer\":{n}}}"),
                )
                    .into_response();
                for (name, value) in extra {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), seen)
}

/// A loopback address nothing listens on.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

/// Counts what the client reports.
#[derive(Default)]
struct Recorded {
    retried: Mutex<Vec<(String, RetryReason)>>,
    opened: Mutex<Vec<String>>,
    closed: Mutex<Vec<String>>,
}

impl UpstreamEvents for Recorded {
    fn retried(&self, failed: &ProviderTarget, reason: RetryReason) {
        self.retried
            .lock()
            .unwrap()
            .push((failed.name.clone(), reason));
    }
    fn breaker_opened(&self, provider: &ProviderTarget, _cooldown_millis: i64) {
        self.opened.lock().unwrap().push(provider.name.clone());
    }
    fn breaker_closed(&self, provider: &ProviderTarget) {
        self.closed.lock().unwrap().push(provider.name.clone());
    }
}

fn client(first_byte: Duration, events: Arc<Recorded>) -> UpstreamClient {
    UpstreamClient::new(
        UpstreamTimeouts {
            connect: Duration::from_secs(2),
            first_byte,
            idle: Duration::from_secs(2),
        },
        1,
    )
    .unwrap()
    .with_retries(RetryPolicy::default())
    .with_breaker(BreakerSettings {
        failures: 3,
        cooldown_millis: 60_000,
    })
    .with_events(events)
}

fn target(name: &str, base_url: &str) -> Arc<ProviderTarget> {
    Arc::new(ProviderTarget::new(
        name.into(),
        name.into(),
        base_url,
        Some(SecretString::from("sk-provider-secret")),
    ))
}

fn route(targets: Vec<Arc<ProviderTarget>>) -> ModelRoute {
    ModelRoute::new("m".into(), None, targets, 0.0, 0.0)
        .with_strategy(cortex_domain::RoutingStrategy::Priority)
}

async fn send(
    client: &UpstreamClient,
    route: &ModelRoute,
    streaming: bool,
) -> (Result<UpstreamResponse, UpstreamError>, u32) {
    let request = UpstreamRequest {
        path: "chat/completions",
        model: "m",
        body: Bytes::from_static(b"{}"),
        request_id: "r",
        streaming,
    };
    let mut attempts = 0;
    let answer = client.send(route, &request, 0, &mut attempts).await;
    (answer, attempts)
}

fn arrivals(seen: &Mutex<Seen>) -> Vec<Instant> {
    seen.lock().unwrap().requests.iter().map(|r| r.3).collect()
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let (url, seen) = provider(|n| match n {
        0 => (429, vec![("retry-after", "1")]),
        _ => (200, vec![]),
    })
    .await;
    let events = Arc::new(Recorded::default());
    let client = client(Duration::from_secs(10), Arc::clone(&events));
    let (answer, attempts) = send(&client, &route(vec![target("p", &url)]), false).await;
    let answer = answer.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.read_all(100).await.unwrap(), "{\"answer\":1}");
    assert_eq!(attempts, 2);
    let at = arrivals(&seen);
    assert_eq!(at.len(), 2);
    let waited = at[1] - at[0];
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before the provider's Retry-After"
    );
    assert_eq!(
        *events.retried.lock().unwrap(),
        [("p".to_owned(), RetryReason::RateLimited)]
    );
    assert!(
        events.opened.lock().unwrap().is_empty(),
        "a 429 is no mark against the breaker"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_is_not_waited_for_and_the_429_goes_back() {
    let (url, seen) = provider(|_| (429, vec![("retry-after", "30")])).await;
    let client = client(Duration::from_secs(2), Arc::default());
    let started = Instant::now();
    let (answer, attempts) = send(&client, &route(vec![target("p", &url)]), false).await;
    let answer = answer.unwrap();
    assert_eq!(answer.status, 429);
    assert_eq!(answer.retry_after_secs, Some(30));
    assert_eq!(attempts, 1);
    assert_eq!(seen.lock().unwrap().requests.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn server_errors_are_retried_up_to_max_retries_with_backoff() {
    let (url, seen) = provider(|_| (503, vec![])).await;
    let events = Arc::new(Recorded::default());
    let client = client(Duration::from_secs(10), Arc::clone(&events));
    let (answer, attempts) = send(&client, &route(vec![target("p", &url)]), false).await;
    assert_eq!(answer.err(), Some(UpstreamError::ServerError(503)));
    assert_eq!(attempts, 3, "the first attempt and max_retries (2) more");
    let at = arrivals(&seen);
    assert_eq!(at.len(), 3);
    // Backoff: 100 ms then 200 ms, each jittered to between half and all of it.
    assert!(
        at[1] - at[0] >= Duration::from_millis(50),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[2] - at[1] >= Duration::from_millis(100),
        "{:?}",
        at[2] - at[1]
    );
    assert_eq!(events.retried.lock().unwrap().len(), 2);
    assert_eq!(
        *events.opened.lock().unwrap(),
        ["p"],
        "three failures in a row opened the breaker, once"
    );
}

#[tokio::test]
async fn a_failure_moves_to_the_next_provider_at_once() {
    let dead = closed_port().await;
    let (good, seen) = provider(|_| (200, vec![])).await;
    let events = Arc::new(Recorded::default());
    let client = client(Duration::from_secs(10), Arc::clone(&events));
    let started = Instant::now();
    let route = route(vec![target("dead", &dead), target("good", &good)]);
    let (answer, attempts) = send(&client, &route, false).await;
    assert_eq!(answer.unwrap().provider.name, "good");
    assert_eq!(attempts, 2);
    assert_eq!(seen.lock().unwrap().requests.len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no backoff before a provider not yet tried"
    );
    assert_eq!(
        *events.retried.lock().unwrap(),
        [("dead".to_owned(), RetryReason::Unreachable)]
    );
}

#[tokio::test]
async fn a_stream_moves_to_another_provider_but_never_retries_the_same_one() {
    let (failing, failing_seen) = provider(|_| (500, vec![])).await;
    let client = client(Duration::from_secs(10), Arc::default());
    let (answer, attempts) = send(&client, &route(vec![target("p", &failing)]), true).await;
    assert_eq!(answer.err(), Some(UpstreamError::ServerError(500)));
    assert_eq!(attempts, 1);
    assert_eq!(failing_seen.lock().unwrap().requests.len(), 1);

    let (good, good_seen) = provider(|_| (200, vec![])).await;
    let both = route(vec![target("p", &failing), target("good", &good)]);
    let (answer, attempts) = send(&client, &both, true).await;
    assert_eq!(answer.unwrap().provider.name, "good");
    assert_eq!(attempts, 2);
    assert_eq!(good_seen.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn other_client_errors_are_not_retried() {
    let (url, seen) = provider(|_| (400, vec![])).await;
    let client = client(Duration::from_secs(10), Arc::default());
    let (answer, attempts) = send(&client, &route(vec![target("p", &url)]), false).await;
    assert_eq!(answer.unwrap().status, 400);
    assert_eq!(attempts, 1);
    assert_eq!(seen.lock().unwrap().requests.len(), 1);
}

#[tokio::test]
async fn the_in_flight_count_lasts_until_the_body_is_dropped() {
    let (url, _) = provider(|_| (200, vec![])).await;
    let client = client(Duration::from_secs(10), Arc::default());
    let provider = target("p", &url);
    let (answer, _) = send(&client, &route(vec![Arc::clone(&provider)]), false).await;
    let answer = answer.unwrap();
    assert_eq!(provider.health.in_flight(), 1);
    assert!(provider.health.ewma_ttfb_micros() > 0);
    drop(answer);
    assert_eq!(provider.health.in_flight(), 0);
}

#[tokio::test]
async fn health_checks_get_models_with_the_credential_and_judge_by_status() {
    let (up, seen) = provider(|n| if n == 0 { (200, vec![]) } else { (401, vec![]) }).await;
    let (broken, _) = provider(|_| (502, vec![])).await;
    let dead = closed_port().await;
    let events = Arc::new(Recorded::default());
    let client = client(Duration::from_secs(10), Arc::clone(&events));
    let timeout = Duration::from_secs(2);

    let good = target("good", &up);
    assert!(client.check(&good, timeout, 1_000).await.is_some());
    assert!(
        client.check(&good, timeout, 2_000).await.is_some(),
        "a 401 means up, with a wrong key"
    );
    let request = seen.lock().unwrap().requests[0].clone();
    assert_eq!(request.0, "GET");
    assert_eq!(request.1, "/v1/models");
    assert_eq!(request.2.as_deref(), Some("Bearer sk-provider-secret"));
    let view = good.health.view(2_000);
    assert_eq!(view.last_check, Some((2_000, true)));
    assert_eq!(view.state.as_str(), "healthy");

    let custom = Arc::new(
        ProviderTarget::new("c".into(), "c".into(), &up, None)
            .with_routing(1, Some("health".into())),
    );
    assert!(client.check(&custom, timeout, 1_000).await.is_some());
    assert_eq!(seen.lock().unwrap().requests[2].1, "/v1/health");

    for (name, url) in [("broken", broken), ("dead", dead)] {
        let failing = target(name, &url);
        for at in 1..=3 {
            assert!(
                client.check(&failing, timeout, at).await.is_none(),
                "{name}"
            );
        }
        assert_eq!(failing.health.view(10).state.as_str(), "open", "{name}");
        assert_eq!(failing.health.view(10).last_check, Some((3, false)));
    }
    assert_eq!(*events.opened.lock().unwrap(), ["broken", "dead"]);

    // After the cooldown, a passing check closes the breaker, and says so.
    let (recovered, _) = provider(|_| (200, vec![])).await;
    let flaky = target("flaky", &recovered);
    flaky.health.breaker.open_until(5_000);
    assert!(client.check(&flaky, timeout, 4_000).await.is_some());
    assert_eq!(
        flaky.health.view(4_000).state.as_str(),
        "open",
        "cooling down"
    );
    assert!(client.check(&flaky, timeout, 5_000).await.is_some());
    assert_eq!(flaky.health.view(5_000).state.as_str(), "healthy");
    assert_eq!(*events.closed.lock().unwrap(), ["flaky"]);
}
