use cortex_testkit::TestServer;

use crate::{all_scopes_key, assert_error, chat_body, gateway_with_upstream};

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::builder().start().await;
    let health: serde_json::Value = server
        .http()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = server
        .http()
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.headers().contains_key("x-request-id"));
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_in_openai_shape() {
    let server = TestServer::builder().start().await;
    assert_error(
        server.http().get(server.url("/nope")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    // The key check runs before method routing on /v1; with a key, a wrong method is 405 JSON.
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let response = server.http().get(server.url(path)).send().await.unwrap();
        assert_error(response, 401, "missing_credentials").await;
    }
    let key = all_scopes_key(&server).await;
    let response = server
        .http()
        .get(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    assert_error(response, 405, "method_not_allowed").await;
    server.stop().await;
}

#[tokio::test]
async fn metrics_need_the_token_and_carry_the_seed_names() {
    let upstream = cortex_testkit::FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_METRICS_TOKEN", "metrics-token-0123456789")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_body("llama", false))
        .send()
        .await
        .unwrap();
    server
        .http()
        .get(server.url("/v1/models"))
        .bearer_auth("ctx_bad")
        .send()
        .await
        .unwrap();

    assert_error(
        server
            .http()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap(),
        401,
        "missing_credentials",
    )
    .await;
    assert_error(
        server
            .http()
            .get(server.url("/metrics"))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap(),
        401,
        "missing_credentials",
    )
    .await;
    let text = server
        .http()
        .get(server.url("/metrics"))
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gateway_key_auth_allowed_total",
        "gateway_key_auth_blocked_total",
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    server.stop().await;
}

#[tokio::test]
async fn responses_carry_a_fresh_request_id() {
    let (server, _upstream) = gateway_with_upstream().await;
    let response = server
        .http()
        .get(server.url("/healthz"))
        .header("x-request-id", "attacker-chosen")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_"), "{id}");
    server.stop().await;
}
