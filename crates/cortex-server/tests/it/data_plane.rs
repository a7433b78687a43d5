use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{eventually, FakeUpstream, TestServer};
use futures_util::StreamExt;
use serde_json::json;

use crate::{all_scopes_key, assert_error, chat_body, gateway_with_upstream};

#[tokio::test]
async fn each_endpoint_is_proxied_with_usage_recorded() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = server.http();

    let chat: serde_json::Value = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        chat["choices"][0]["message"]["content"],
        "hello from the fake upstream"
    );

    let completion = http
        .post(server.url("/v1/completions"))
        .bearer_auth(&key)
        .json(&json!({ "model": "llama", "prompt": "once upon" }))
        .send()
        .await
        .unwrap();
    assert_eq!(completion.status(), 200);
    let embedding: serde_json::Value = http
        .post(server.url("/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({ "model": "mistral", "input": "vector me" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(embedding["data"][0]["embedding"][1], 0.2);

    let models: serde_json::Value = http
        .get(server.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(models["object"], "list");
    assert_eq!(ids, ["llama", "mistral"]);

    let paths: Vec<String> = upstream.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    );

    // Usage rows appear off the hot path; the chat row carries tokens and cost.
    let store = server.state().store().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
                .await
                .unwrap()
                .len()
                == 3
        })
        .await
    );
    let rows = store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
        .await
        .unwrap();
    let chat_row = rows.iter().find(|r| r.endpoint == "chat").unwrap();
    assert_eq!(
        (chat_row.prompt_tokens, chat_row.completion_tokens),
        (11, 7)
    );
    assert!((chat_row.cost_usd - (11.0 * 1.0 + 7.0 * 2.0) / 1e6).abs() < 1e-12);
    assert_eq!(chat_row.provider, "fake");
    assert_eq!(chat_row.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn client_credentials_never_reach_upstream_and_the_provider_key_does() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("cookie", "cortex_session=stolen-session")
        .header("x-api-key", "client-header")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = &upstream.received()[0];
    assert_eq!(
        received.headers["authorization"],
        "Bearer provider-secret-abc"
    );
    assert!(received.headers.get("cookie").is_none());
    assert!(received.headers.get("x-api-key").is_none());
    assert!(received.headers.get("x-hop").is_none());
    let all_headers = format!("{:?}", received.headers);
    assert!(!all_headers.contains(&key), "the client key was forwarded");
    assert_eq!(received.body["model"], "llama");
    server.stop().await;
}

#[tokio::test]
async fn internal_key_is_sent_to_a_provider_declared_for_it() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env(
            "INTERNAL_VLLM_API_KEY",
            "internal-vllm-key-0123456789abcdef",
        )
        .config_toml(&format!(
            "[[providers]]\nname = \"vllm\"\nbase_url = {:?}\nuse_internal_key = true\n",
            upstream.base_url()
        ))
        .model("llama", &["vllm"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.received()[0].headers["authorization"],
        "Bearer internal-vllm-key-0123456789abcdef"
    );
    server.stop().await;
}

#[tokio::test]
async fn streamed_chunks_arrive_before_upstream_finishes_and_usage_is_recorded() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    upstream.hold_streams(true);
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    // The upstream is holding after its first chunk: getting it proves there is no buffering.
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("first chunk in time")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("tok0"));
    assert_eq!(upstream.finished_streams(), 0);
    upstream.hold_streams(false);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("[DONE]"));
    // Cortex asked upstream for usage in the stream.
    assert_eq!(
        upstream.received()[0].body["stream_options"]["include_usage"],
        true
    );
    let store = server.state().store().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
                .await
                .unwrap()
                .is_empty()
        })
        .await
    );
    let row = &store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
        .await
        .unwrap()[0];
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.status),
        (13, 3, 200)
    );
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    upstream.hold_streams(true);
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", true))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let _first = body.next().await.unwrap().unwrap();
    drop(body);
    assert!(
        eventually(Duration::from_secs(5), || async {
            upstream.cancelled_streams() == 1
        })
        .await,
        "upstream stream was not cancelled"
    );
    // The usage row says the client went away (499).
    let store = server.state().store().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.status == 499)
        })
        .await
    );
    server.stop().await;
}

#[tokio::test]
async fn failover_moves_past_a_dead_and_a_failing_provider() {
    let healthy = FakeUpstream::start().await;
    let failing = FakeUpstream::start().await;
    failing.set_fail_status(503);
    // A port that was bound and released: connection refused.
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = TestServer::builder()
        .provider("dead", &format!("http://127.0.0.1:{dead_port}/v1"), None)
        .provider("failing", &failing.base_url(), None)
        .provider("healthy", &healthy.base_url(), None)
        .model("llama", &["dead", "failing", "healthy"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    for _ in 0..3 {
        let response = server
            .http()
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("llama", false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(healthy.received().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_4xx_pass_through_sanitized() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    upstream.set_fail_status(500);
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, 502, "upstream_error").await;
    assert!(!body.to_string().contains("gpu-node-7"));

    upstream.set_fail_status(400);
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, 400, "upstream_rejected").await;
    let text = body.to_string();
    assert!(!text.contains("gpu-node-7.internal"), "{text}");
    assert!(!text.contains("internal_host"), "{text}");

    // Each failed request is recorded once (the 4xx used to be recorded twice). Records are
    // written in queue order, so once a later success is in, every earlier record is too.
    upstream.set_fail_status(0);
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let store = server.state().store().clone();
    let statuses = || async {
        let rows = store
            .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
            .await
            .unwrap();
        let mut statuses: Vec<i64> = rows.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        statuses
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            statuses().await.contains(&200)
        })
        .await
    );
    assert_eq!(statuses().await, [200, 400, 502]);
    server.stop().await;
}

#[tokio::test]
async fn upstream_timeout_is_504() {
    let upstream = FakeUpstream::start().await;
    upstream.set_head_delay(Duration::from_secs(3));
    let server = TestServer::builder()
        .config_toml("[upstream]\nfirst_byte_timeout_ms = 300\n")
        .provider("slow", &upstream.base_url(), None)
        .model("llama", &["slow"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_error(response, 504, "upstream_timeout").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400_and_unknown_models_404() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = server.http();
    let post = |body: &'static str| {
        http.post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_error(post("{not json").await.unwrap(), 400, "invalid_json").await;
    assert_error(post("[]").await.unwrap(), 400, "invalid_request").await;
    assert_error(
        post(r#"{"model":"llama"}"#).await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        post(r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#)
            .await
            .unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert!(
        upstream.received().is_empty(),
        "nothing invalid may reach upstream"
    );

    let big = format!(
        r#"{{"model":"llama","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(11 * 1024 * 1024)
    );
    let response = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "payload_too_large").await;
    server.stop().await;
}

#[tokio::test]
async fn dev_bypass_accepts_any_key_when_on() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("GATEWAY_DEV_ALLOW_ALL_KEYS", "true")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 0.0, 0.0)
        .start()
        .await;
    let response = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("anything")
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn scopes_and_model_allow_lists_are_enforced() {
    let (server, upstream) = gateway_with_upstream().await;
    let embeddings_only = server
        .create_key(&[Scope::Embeddings], None, KeyLimits::default())
        .await;
    let llama_only = server
        .create_key(&[Scope::Chat], Some(&["llama"]), KeyLimits::default())
        .await;
    let http = server.http();
    let response = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&embeddings_only)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "scope_denied").await;
    let response = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&llama_only)
        .json(&chat_body("mistral", false))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "model_not_allowed").await;
    let models: serde_json::Value = http
        .get(server.url("/v1/models"))
        .bearer_auth(&llama_only)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert!(upstream.received().is_empty());
    server.stop().await;
}
