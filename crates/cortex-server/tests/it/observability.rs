//! Observability (SPEC §20): every `/v1` request counted by endpoint, status class and code,
//! refused ones included; time to first token and upstream latency per provider.
//!
//! The metrics recorder is process-wide and other tests run beside these, so shared series are
//! compared as increases of at least the requests made here; per-provider series carry a
//! provider name only these tests use, and are compared exactly.

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{FakeUpstream, TestServer};
use futures_util::StreamExt;

use crate::{assert_error, chat_body};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

async fn scrape(server: &TestServer) -> String {
    server
        .http()
        .get(server.url("/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` in a scrape (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn requests(endpoint: &str, status: &str, code: &str) -> String {
    format!(r#"gateway_requests_total{{endpoint="{endpoint}",status="{status}",code="{code}"}}"#)
}

#[tokio::test]
async fn refused_requests_are_counted_by_status_class_and_code() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_METRICS_TOKEN", METRICS_TOKEN)
        .provider("obs-live", &upstream.base_url(), None)
        // Nothing listens on port 9: every attempt fails to connect.
        .provider("obs-dead", "http://127.0.0.1:9/v1", None)
        .model("llama", &["obs-live"], 0.0, 0.0)
        .model("gone", &["obs-dead"], 0.0, 0.0)
        .start()
        .await;
    let limited = server
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                requests_per_second: Some(0.001),
                burst: Some(1),
                ..KeyLimits::default()
            },
        )
        .await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    let before = scrape(&server).await;

    // 401 from authentication, on the embeddings door.
    let unauthenticated = server
        .http()
        .post(server.url("/v1/embeddings"))
        .json(&serde_json::json!({ "model": "llama", "input": "x" }))
        .send()
        .await
        .unwrap();
    assert_error(unauthenticated, 401, "missing_credentials").await;
    // 429 from the key's request rate: the first request passes, the second is refused.
    let post = |key: &str, model: &str| {
        server
            .http()
            .post(server.url("/v1/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({ "model": model, "prompt": "x" }))
            .send()
    };
    assert_eq!(post(&limited, "llama").await.unwrap().status(), 200);
    assert_error(
        post(&limited, "llama").await.unwrap(),
        429,
        "rate_limit_exceeded",
    )
    .await;
    // 502: the model's only provider cannot be reached.
    assert_error(post(&key, "gone").await.unwrap(), 502, "upstream_error").await;
    // A /v1 path no door serves is counted too.
    let unknown = server
        .http()
        .get(server.url("/v1/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let after = scrape(&server).await;
    let increase = |series: &str| value(&after, series) - value(&before, series);
    for (series, at_least) in [
        (requests("embeddings", "4xx", "missing_credentials"), 1.0),
        (requests("completions", "2xx", "none"), 1.0),
        (requests("completions", "4xx", "rate_limit_exceeded"), 1.0),
        (requests("completions", "5xx", "upstream_error"), 1.0),
        (requests("other", "4xx", "not_found"), 1.0),
    ] {
        assert!(
            increase(&series) >= at_least,
            "{series}: {} → {}",
            value(&before, &series),
            value(&after, &series)
        );
    }
    // The refusals went nowhere else: no success was counted for the refused doors' codes.
    assert!(after.contains(r#"gateway_rate_limited_total{limit="requests"}"#));
    // The dead provider's attempts are in its own latency histogram (three: two retries).
    let dead = r#"gateway_upstream_duration_seconds_count{provider="obs-dead"}"#;
    assert_eq!(increase(dead), 3.0, "{dead}");
    server.stop().await;
}

#[tokio::test]
async fn time_to_first_token_counts_streams_per_provider() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_METRICS_TOKEN", METRICS_TOKEN)
        .provider("obs-ttft", &upstream.base_url(), None)
        .model("llama", &["obs-ttft"], 0.0, 0.0)
        .start()
        .await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    let ttft = r#"gateway_time_to_first_token_seconds_count{provider="obs-ttft"}"#;
    let upstream_latency = r#"gateway_upstream_duration_seconds_count{provider="obs-ttft"}"#;
    let before = scrape(&server).await;
    assert_eq!(value(&before, ttft), 0.0, "registered at zero: {before}");
    assert!(
        before.lines().any(|line| line.starts_with(ttft)),
        "{before}"
    );

    for stream in [true, true, false] {
        let response = server
            .http()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("llama", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The whole stream is read, so it has ended (and been counted) when this returns.
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    }
    let after = scrape(&server).await;
    // Two streams, one time to first token each; the plain request has none.
    assert_eq!(value(&after, ttft), 2.0, "{after}");
    let sum = r#"gateway_time_to_first_token_seconds_sum{provider="obs-ttft"}"#;
    assert!(value(&after, sum) > 0.0);
    // Every request's upstream attempt is timed for its provider.
    assert_eq!(value(&after, upstream_latency), 3.0);
    server.stop().await;
}
