//! Limits on `/v1`: per-key rate with RateLimit headers, stream concurrency, tokens per minute,
//! spend budgets, and the client IP behind (un)trusted proxies.

use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{eventually, FakeUpstream, TestServer};
use futures_util::StreamExt;

use crate::{assert_error, chat_body};

async fn server_with(env: &[(&str, &str)]) -> (TestServer, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let mut builder = TestServer::builder()
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1_000_000.0, 1_000_000.0);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    (builder.start().await, upstream)
}

#[tokio::test]
async fn per_key_rate_limit_answers_429_with_headers() {
    let (server, _upstream) = server_with(&[
        ("RATE_LIMIT_RPS", "1"),
        ("RATE_LIMIT_BURST", "2"),
        ("RATE_LIMIT_WINDOW_SEC", "30"),
    ])
    .await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    let other = server
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                burst: Some(5),
                ..KeyLimits::default()
            },
        )
        .await;
    let get = |k: String| {
        server
            .http()
            .get(server.url("/v1/models"))
            .bearer_auth(k)
            .send()
    };
    let first = get(key.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(first.headers()["ratelimit-policy"], "2;w=30");
    assert_eq!(get(key.clone()).await.unwrap().status(), 200);
    let refused = get(key.clone()).await.unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_error(refused, 429, "rate_limit_exceeded").await;
    // Another key with its own override is not affected.
    for _ in 0..5 {
        assert_eq!(get(other.clone()).await.unwrap().status(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn stream_slots_are_capped_and_freed_on_disconnect() {
    let (server, upstream) = server_with(&[("MAX_CONCURRENT_STREAMS_PER_ID", "1")]).await;
    let key = server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await;
    upstream.hold_streams(true);
    let http = server.http();
    let first = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", true))
        .send()
        .await
        .unwrap();
    let mut body = first.bytes_stream();
    body.next().await.unwrap().unwrap();
    let second = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", true))
        .send()
        .await
        .unwrap();
    assert_error(second, 429, "concurrency_limit_exceeded").await;
    // Non-streamed requests do not take a slot.
    let plain = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    drop(body);
    let url = server.url("/v1/chat/completions");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .json(&chat_body("llama", true))
                .send()
                .await
                .unwrap();
            response.status() == 200
        })
        .await,
        "the slot was not freed after the client went away"
    );
    upstream.hold_streams(false);
    server.stop().await;
}

#[tokio::test]
async fn tokens_per_minute_and_budgets_refuse_until_raised() {
    let (server, _upstream) = server_with(&[]).await;
    let http = server.http();
    // Each chat costs 18 tokens at the fake upstream (11 + 7).
    let tpm = server
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                tokens_per_minute: Some(30),
                ..KeyLimits::default()
            },
        )
        .await;
    let chat = |k: &str| {
        http.post(server.url("/v1/chat/completions"))
            .bearer_auth(k)
            .json(&chat_body("llama", false))
            .send()
    };
    assert_eq!(chat(&tpm).await.unwrap().status(), 200);
    assert_eq!(chat(&tpm).await.unwrap().status(), 200);
    let tpm_key = tpm.clone();
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&tpm_key).await.unwrap().status() == 429
        })
        .await,
        "36 tokens > 30 per minute must be refused"
    );
    assert_error(chat(&tpm).await.unwrap(), 429, "tokens_per_minute_exceeded").await;

    // Prices are $1 per token here: an 18-token request costs $18 against a $20 budget.
    let budget = server
        .create_key(
            &Scope::ALL,
            None,
            KeyLimits {
                budget_usd: Some(20.0),
                ..KeyLimits::default()
            },
        )
        .await;
    assert_eq!(chat(&budget).await.unwrap().status(), 200);
    assert_eq!(chat(&budget).await.unwrap().status(), 200);
    let budget_key = budget.clone();
    assert!(
        eventually(Duration::from_secs(3), || async {
            chat(&budget_key).await.unwrap().status() == 429
        })
        .await
    );
    let refused = chat(&budget).await.unwrap();
    assert!(
        !refused.headers().contains_key("retry-after"),
        "waiting does not help an exhausted budget"
    );
    assert_error(refused, 429, "budget_exceeded").await;
    server.stop().await;
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_identity() {
    // Failed key checks are limited per client IP; a client rotating X-Forwarded-For must still
    // be one identity when the peer is not a trusted proxy.
    let (server, _upstream) =
        server_with(&[("RATE_LIMIT_RPS", "0.1"), ("RATE_LIMIT_BURST", "3")]).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let response = server
            .http()
            .get(server.url("/v1/models"))
            .bearer_auth("ctx_bad")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    server.stop().await;

    // Behind a trusted proxy, the forwarded address is the identity: five clients, five buckets.
    let (server, _upstream) = server_with(&[
        ("RATE_LIMIT_RPS", "0.1"),
        ("RATE_LIMIT_BURST", "3"),
        ("CORTEX_TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    for i in 0..5 {
        let response = server
            .http()
            .get(server.url("/v1/models"))
            .bearer_auth("ctx_bad")
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    server.stop().await;
}
