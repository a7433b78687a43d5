//! The Responses and Messages front doors and the provider dialects (SPEC §15): every door
//! against every kind of provider, checked on both sides — what the client gets, and what the
//! fake upstream received (path, credential headers, body).

use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{eventually, FakeUpstream, ReceivedRequest, TestServer};
use serde_json::{json, Value};

use crate::all_scopes_key;

/// One fake upstream per provider, so each test reads what its provider received.
struct Doors {
    server: TestServer,
    /// kind openai, chat only (no `/responses` of its own).
    plain: FakeUpstream,
    /// kind openai with `responses_api = true`.
    native: FakeUpstream,
    /// kind anthropic.
    anthropic: FakeUpstream,
    /// kind azure.
    azure: FakeUpstream,
}

async fn doors() -> Doors {
    let plain = FakeUpstream::start().await;
    let native = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let azure = FakeUpstream::start().await;
    let server = TestServer::builder()
        .config_toml(&format!(
            r#"
[[providers]]
name = "plain"
base_url = "{plain}"
api_key = "sk-plain-provider-key"

[[providers]]
name = "native"
base_url = "{native}"
responses_api = true

[[providers]]
name = "anthro"
kind = "anthropic"
base_url = "{anthropic}"
api_key = "sk-ant-provider-key"

[[providers]]
name = "az"
kind = "azure"
base_url = "{azure}"
api_key = "azure-provider-key"
api_version = "2024-10-21"

[[models]]
name = "gpt-plain"
provider = "plain"
input_price_per_mtok = 1.0
output_price_per_mtok = 2.0

[[models]]
name = "gpt-native"
provider = "native"

[[models]]
name = "claude"
provider = "anthro"
upstream_name = "claude-upstream"
input_price_per_mtok = 3.0
output_price_per_mtok = 15.0

[[models]]
name = "gpt-azure"
provider = "az"
upstream_name = "gpt-deployment"
"#,
            plain = plain.base_url(),
            native = native.base_url(),
            anthropic = anthropic.base_url(),
            azure = azure.root_url(),
        ))
        .start()
        .await;
    Doors {
        server,
        plain,
        native,
        anthropic,
        azure,
    }
}

async fn post(server: &TestServer, path: &str, key: &str, body: &Value) -> reqwest::Response {
    server
        .http()
        .post(server.url(path))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn only(received: Vec<ReceivedRequest>) -> ReceivedRequest {
    assert_eq!(received.len(), 1, "{received:?}");
    received.into_iter().next().unwrap()
}

fn header<'a>(request: &'a ReceivedRequest, name: &str) -> Option<&'a str> {
    request.headers.get(name).map(|v| v.to_str().unwrap())
}

/// The data lines of an SSE body, parsed (`[DONE]` left out).
fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// Waits for `n` usage rows and returns them, newest first.
async fn usage_rows(server: &TestServer, n: usize) -> Vec<cortex_store::usage::UsageRecord> {
    let store = server.state().store().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 50)
                .await
                .unwrap()
                .len()
                >= n
        })
        .await,
        "{n} usage rows"
    );
    store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 50)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chat_request_to_an_anthropic_provider_is_sent_as_messages_with_its_credential() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    let body = json!({
        "model": "claude",
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": "hi" },
        ],
        "max_tokens": 100,
        "temperature": 0.5,
        "stop": ["END"],
    });
    let answer: Value = post(&doors.server, "/v1/chat/completions", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "hello from the fake upstream"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 11);
    assert_eq!(answer["usage"]["completion_tokens"], 7);

    let sent = only(doors.anthropic.received());
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(header(&sent, "x-api-key"), Some("sk-ant-provider-key"));
    assert_eq!(header(&sent, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        header(&sent, "authorization"),
        None,
        "no bearer to Anthropic"
    );
    assert_eq!(sent.body["model"], "claude-upstream");
    assert_eq!(sent.body["system"], "be brief");
    assert_eq!(sent.body["messages"][0]["role"], "user");
    assert_eq!(sent.body["max_tokens"], 100);
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));

    // Streamed: Anthropic's events come back as chat chunks, and the usage is metered.
    let streamed = post(
        &doors.server,
        "/v1/chat/completions",
        &key,
        &json!({ "model": "claude", "messages": [{ "role": "user", "content": "hi" }], "stream": true }),
    )
    .await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = sse_data(&text);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 ");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));

    let rows = usage_rows(&doors.server, 2).await;
    let streamed_row = rows.iter().find(|r| r.prompt_tokens == 13).unwrap();
    assert_eq!(streamed_row.completion_tokens, 3);
    assert_eq!(streamed_row.provider, "anthro");
    assert_eq!(streamed_row.endpoint, "chat");
    let whole_row = rows.iter().find(|r| r.prompt_tokens == 11).unwrap();
    assert!((whole_row.cost_usd - (11.0 * 3.0 + 7.0 * 15.0) / 1e6).abs() < 1e-12);
    doors.server.stop().await;
}

#[tokio::test]
async fn a_chat_request_to_an_azure_provider_goes_to_its_deployment_with_api_key() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    let body =
        json!({ "model": "gpt-azure", "messages": [{ "role": "user", "content": "hi" }], "n": 1 });
    let answer: Value = post(&doors.server, "/v1/chat/completions", &key, &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "hello from the fake upstream"
    );
    let sent = only(doors.azure.received());
    assert_eq!(
        sent.path,
        "/openai/deployments/gpt-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(header(&sent, "api-key"), Some("azure-provider-key"));
    assert_eq!(header(&sent, "authorization"), None);
    assert_eq!(header(&sent, "x-api-key"), None);
    // Same dialect: the body passes through, the deployment's name in `model`.
    assert_eq!(sent.body["n"], 1);
    assert_eq!(sent.body["model"], "gpt-deployment");
    doors.server.stop().await;
}

#[tokio::test]
async fn the_messages_door_passes_through_to_anthropic_and_translates_to_chat() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    let body = json!({
        "model": "claude",
        "max_tokens": 50,
        "system": "be brief",
        "messages": [{ "role": "user", "content": "hi" }],
        "top_k": 5,
    });
    // Anthropic's SDKs send the key as x-api-key.
    let native = doors
        .server
        .http()
        .post(doors.server.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(native.status(), 200);
    let native: Value = native.json().await.unwrap();
    assert_eq!(native["type"], "message");
    assert_eq!(native["content"][0]["text"], "hello from the fake upstream");
    let sent = only(doors.anthropic.received());
    assert_eq!(sent.path, "/v1/messages");
    // Same dialect: fields pass through, only the model is the provider's name for it; the
    // client's key never reaches the provider.
    assert_eq!(sent.body["top_k"], 5);
    assert_eq!(sent.body["model"], "claude-upstream");
    assert!(sent.body.get("stream_options").is_none());
    assert_eq!(header(&sent, "x-api-key"), Some("sk-ant-provider-key"));

    // To an OpenAI-style provider it becomes a chat request, and the answer a message.
    let translated: Value = post(
        &doors.server,
        "/v1/messages",
        &key,
        &json!({ "model": "gpt-plain", "max_tokens": 50, "system": "be brief", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(translated["type"], "message", "{translated}");
    assert_eq!(translated["role"], "assistant");
    assert_eq!(
        translated["content"][0]["text"],
        "hello from the fake upstream"
    );
    assert_eq!(translated["stop_reason"], "end_turn");
    assert_eq!(translated["usage"]["input_tokens"], 11);
    let sent = only(doors.plain.received());
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        header(&sent, "authorization"),
        Some("Bearer sk-plain-provider-key")
    );
    assert_eq!(sent.body["messages"][0]["role"], "system");
    assert_eq!(sent.body["messages"][1]["content"], "hi");
    assert_eq!(sent.body["max_tokens"], 50);

    // Streamed both ways, with the usage of each metered under the `messages` endpoint.
    for model in ["claude", "gpt-plain"] {
        let response = post(
            &doors.server,
            "/v1/messages",
            &key,
            &json!({ "model": model, "max_tokens": 50, "stream": true, "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let events = sse_data(&text);
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"message_start"), "{model}: {text}");
        assert_eq!(types.last(), Some(&"message_stop"), "{model}: {text}");
        let content: String = events
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str())
            .collect();
        assert_eq!(content, "tok0 tok1 tok2 ", "{model}");
    }
    let rows = usage_rows(&doors.server, 4).await;
    assert!(rows.iter().all(|r| r.endpoint == "messages"));
    let streamed: Vec<(i64, i64)> = rows
        .iter()
        .filter(|r| r.prompt_tokens == 13)
        .map(|r| (r.prompt_tokens, r.completion_tokens))
        .collect();
    assert_eq!(streamed, [(13, 3), (13, 3)]);
    doors.server.stop().await;
}

#[tokio::test]
async fn the_responses_door_passes_through_where_it_is_spoken_and_translates_elsewhere() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    for (model, upstream, path) in [
        ("gpt-native", &doors.native, "/v1/responses"),
        ("gpt-plain", &doors.plain, "/v1/chat/completions"),
        ("claude", &doors.anthropic, "/v1/messages"),
    ] {
        let body = json!({ "model": model, "instructions": "be brief", "input": "hi", "max_output_tokens": 40 });
        let answer: Value = post(&doors.server, "/v1/responses", &key, &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(answer["object"], "response", "{model}: {answer}");
        assert_eq!(answer["status"], "completed", "{model}");
        assert_eq!(
            answer["output"][0]["content"][0]["text"], "hello from the fake upstream",
            "{model}"
        );
        assert_eq!(answer["usage"]["input_tokens"], 11, "{model}");
        let sent = only(upstream.received());
        assert_eq!(sent.path, path, "{model}");

        let streamed = post(
            &doors.server,
            "/v1/responses",
            &key,
            &json!({ "model": model, "input": "hi", "stream": true }),
        )
        .await
        .text()
        .await
        .unwrap();
        let events = sse_data(&streamed);
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types.first(),
            Some(&"response.created"),
            "{model}: {streamed}"
        );
        assert_eq!(
            types.last(),
            Some(&"response.completed"),
            "{model}: {streamed}"
        );
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .filter_map(|e| e["delta"].as_str())
            .collect();
        assert_eq!(text, "tok0 tok1 tok2 ", "{model}");
    }
    let sent = doors.native.received();
    assert_eq!(sent[0].body["instructions"], "be brief", "passed through");
    let sent = doors.plain.received();
    assert_eq!(sent[0].body["messages"][0]["role"], "system");
    assert_eq!(sent[0].body["max_tokens"], 40);
    let rows = usage_rows(&doors.server, 6).await;
    assert!(rows.iter().all(|r| r.endpoint == "responses"));
    assert_eq!(
        rows.iter()
            .filter(|r| r.prompt_tokens == 13 && r.completion_tokens == 3)
            .count(),
        3
    );
    doors.server.stop().await;
}

#[tokio::test]
async fn a_field_that_cannot_be_carried_is_refused_not_dropped() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    let response = post(
        &doors.server,
        "/v1/chat/completions",
        &key,
        &json!({ "model": "claude", "messages": [{ "role": "user", "content": "hi" }], "n": 2 }),
    )
    .await;
    let body = crate::assert_error(response, 400, "unsupported_parameter").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`n`"),
        "{body}"
    );
    // Cortex keeps no conversation state.
    let response = post(
        &doors.server,
        "/v1/responses",
        &key,
        &json!({ "model": "gpt-plain", "input": "hi", "previous_response_id": "resp_1" }),
    )
    .await;
    let body = crate::assert_error(response, 400, "unsupported_parameter").await;
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("previous_response_id"));
    // Completions and embeddings exist only on OpenAI-style servers.
    let response = post(
        &doors.server,
        "/v1/embeddings",
        &key,
        &json!({ "model": "claude", "input": "x" }),
    )
    .await;
    crate::assert_error(response, 400, "invalid_request").await;
    assert!(doors.anthropic.received().is_empty());
    assert!(doors.plain.received().is_empty());
    doors.server.stop().await;
}

/// Asserts Anthropic's error shape with the given status and error type.
async fn assert_anthropic_error(response: reqwest::Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(
        body["error"].get("code").is_none(),
        "not OpenAI's shape: {body}"
    );
    body
}

#[tokio::test]
async fn the_messages_door_answers_errors_in_anthropic_shape_with_the_same_statuses() {
    let doors = doors().await;
    let key = all_scopes_key(&doors.server).await;
    let http = doors.server.http();
    let url = doors.server.url("/v1/messages");
    let body = json!({ "model": "claude", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] });

    let wrong = http
        .post(&url)
        .header("x-api-key", "ctx_wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(wrong, 401, "authentication_error").await;
    let missing = http.post(&url).json(&body).send().await.unwrap();
    assert_anthropic_error(missing, 401, "authentication_error").await;
    // Two different keys: refused, whichever one a proxy or a log looked at.
    let two = http
        .post(&url)
        .header("x-api-key", &key)
        .bearer_auth("ctx_other")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(two, 400, "invalid_request_error").await;
    let twice = http
        .post(&url)
        .header("x-api-key", &key)
        .header("x-api-key", "ctx_other")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(twice, 400, "invalid_request_error").await;
    // x-api-key is read on the Messages door only.
    let elsewhere = http
        .post(doors.server.url("/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&json!({ "model": "claude", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    crate::assert_error(elsewhere, 401, "missing_credentials").await;

    let unknown = http
        .post(&url)
        .header("x-api-key", &key)
        .json(&json!({ "model": "nope", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_anthropic_error(unknown, 404, "not_found_error").await;
    let malformed = http
        .post(&url)
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_anthropic_error(malformed, 400, "invalid_request_error").await;
    let wrong_method = http
        .get(&url)
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(wrong_method, 405, "invalid_request_error").await;

    // A key without the chat scope may use neither new door.
    let embeddings_only = doors
        .server
        .create_key(&[Scope::Embeddings], None, KeyLimits::default())
        .await;
    let denied = http
        .post(&url)
        .header("x-api-key", &embeddings_only)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_anthropic_error(denied, 403, "permission_error").await;
    let denied = post(
        &doors.server,
        "/v1/responses",
        &embeddings_only,
        &json!({ "model": "gpt-plain", "input": "hi" }),
    )
    .await;
    assert_eq!(denied.status(), 403);

    // An upstream refusal passes through with its status, in the door's shape.
    doors.anthropic.set_fail_status(400);
    let refused = http
        .post(&url)
        .header("x-api-key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let refused = assert_anthropic_error(refused, 400, "invalid_request_error").await;
    assert!(
        !refused.to_string().contains("gpu-node-7"),
        "sanitized: {refused}"
    );
    doors.server.stop().await;
}

#[tokio::test]
async fn the_new_doors_share_the_keys_limits_with_chat_completions() {
    let doors = doors().await;
    // One request per second, no burst beyond it: the second request on any door is refused.
    let limits = KeyLimits {
        requests_per_second: Some(1.0),
        burst: Some(1),
        ..KeyLimits::default()
    };
    let key = doors.server.create_key(&[Scope::Chat], None, limits).await;
    let first = post(
        &doors.server,
        "/v1/chat/completions",
        &key,
        &json!({ "model": "gpt-plain", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(first.status(), 200);
    let limited = doors
        .server
        .http()
        .post(doors.server.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({ "model": "claude", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert!(limited.headers().contains_key("retry-after"));
    assert_anthropic_error(limited, 429, "rate_limit_error").await;
    let limited = post(
        &doors.server,
        "/v1/responses",
        &key,
        &json!({ "model": "gpt-plain", "input": "hi" }),
    )
    .await;
    crate::assert_error(limited, 429, "rate_limit_exceeded").await;
    doors.server.stop().await;
}
