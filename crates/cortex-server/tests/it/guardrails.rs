//! Guardrails end to end (SPEC §21): policies set through the admin API, requests through the
//! doors, a fake upstream that records what reached it and answers with the text a test gives
//! it, and a webhook service on a loopback port. What is checked is what an attacker or a
//! careless client would rely on: a blocked request never reaches the provider, redacted text
//! never does either, an answer's secret never reaches the client — not even split across two
//! stream events — and no matched text ever lands in an error, an event or the audit log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use cortex_testkit::{eventually, FakeUpstream, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{admin, Session};
use crate::gateway_with_upstream;

/// A fake OpenAI key, built in pieces so no literal here looks like a real one. The split
/// point is where a test cuts it across two stream events.
fn fake_secret() -> (String, String) {
    let head = ["sk-", "proj", "FAKE0", "TEST1", "FA"].concat();
    let tail = ["KE2", "TEST3", "FAKE4", "TEST5", "NOTREAL"].concat();
    (head, tail)
}

fn fake_secret_whole() -> String {
    let (head, tail) = fake_secret();
    head + &tail
}

/// A fake address, for the email detector.
fn fake_email() -> String {
    ["jane.doe", "@", "example", ".test"].concat()
}

struct Setup {
    server: TestServer,
    upstream: FakeUpstream,
    root: Session,
    key: String,
    key_id: String,
}

async fn setup() -> Setup {
    let (server, upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let (key_id, key) = new_key(&server, &root, "guarded").await;
    Setup {
        server,
        upstream,
        root,
        key,
        key_id,
    }
}

/// A chat key made through the admin API: (id, key).
async fn new_key(server: &TestServer, root: &Session, name: &str) -> (String, String) {
    let (status, key) = call(
        server,
        root,
        Method::POST,
        "/admin/keys",
        Some(json!({ "name": name, "scopes": ["chat"] })),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

async fn call(
    server: &TestServer,
    who: &Session,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http()
        .request(method, server.url(path))
        .bearer_auth(&who.access_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Creates a policy; its id.
async fn policy(setup: &Setup, body: Value) -> String {
    let (status, created) = call(
        &setup.server,
        &setup.root,
        Method::POST,
        "/admin/policies",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}: {created}");
    created["id"].as_str().unwrap().to_owned()
}

/// An organization-wide policy with these rules.
async fn org_rules(setup: &Setup, rules: Value, scan_responses: bool) -> String {
    policy(
        setup,
        json!({ "scope": "organization", "guardrails": { "rules": rules, "scan_responses": scan_responses } }),
    )
    .await
}

async fn chat(
    setup: &Setup,
    key: &str,
    model: &str,
    text: &str,
    stream: bool,
) -> reqwest::Response {
    setup
        .server
        .http()
        .post(setup.server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({ "model": model, "messages": [{ "role": "user", "content": text }], "stream": stream }))
        .send()
        .await
        .unwrap()
}

async fn messages(setup: &Setup, text: &str, stream: bool) -> reqwest::Response {
    setup
        .server
        .http()
        .post(setup.server.url("/v1/messages"))
        .header("x-api-key", &setup.key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({ "model": "llama", "max_tokens": 64, "messages": [{ "role": "user", "content": text }], "stream": stream }))
        .send()
        .await
        .unwrap()
}

async fn responses(setup: &Setup, text: &str, stream: bool) -> reqwest::Response {
    setup
        .server
        .http()
        .post(setup.server.url("/v1/responses"))
        .bearer_auth(&setup.key)
        .json(&json!({ "model": "llama", "input": text, "stream": stream }))
        .send()
        .await
        .unwrap()
}

/// The events of an SSE body: (event name, data).
fn events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            (name, data.join("\n"))
        })
        .collect()
}

/// The text a chat stream carries.
fn chat_text(body: &str) -> String {
    events(body)
        .iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The text a Messages stream carries.
fn messages_text(body: &str) -> String {
    events(body)
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

/// The text a Responses stream carries, after checking its events are numbered 0, 1, 2, ….
fn responses_text(body: &str) -> String {
    let values: Vec<Value> = events(body)
        .iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(data).ok())
        .collect();
    for (i, value) in values.iter().enumerate() {
        assert_eq!(value["sequence_number"], i as u64, "{body}");
    }
    values
        .iter()
        .filter(|v| v["type"] == "response.output_text.delta")
        .filter_map(|v| v["delta"].as_str().map(str::to_owned))
        .collect()
}

fn assert_blocked_openai(body: &Value, detector: &str) {
    assert_eq!(body["error"]["code"], "guardrail_blocked", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("blocked by the {detector} guardrail"),
        "{body}"
    );
}

async fn blocked_openai(response: reqwest::Response, detector: &str) -> Value {
    let body = crate::assert_error(response, 400, "guardrail_blocked").await;
    assert_blocked_openai(&body, detector);
    body
}

/// Never any piece of the fake secret or the fake address.
fn assert_clean(text: &str) {
    let (head, tail) = fake_secret();
    for part in [head.as_str(), tail.as_str(), &fake_email(), "jane.doe"] {
        assert!(!text.contains(part), "{part:?} leaked into: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_request_never_reaches_the_provider_and_names_only_the_detector() {
    let setup = setup().await;
    org_rules(
        &setup,
        json!([{ "detector": { "type": "secrets" }, "action": "block" }]),
        true,
    )
    .await;
    let text = format!("please use {} for this", fake_secret_whole());

    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    let body = blocked_openai(response, "secrets").await;
    assert_clean(&body.to_string());
    let response = chat(&setup, &setup.key, "llama", &text, true).await;
    blocked_openai(response, "secrets").await;

    // The Messages door: Anthropic's error shape, the same refusal.
    for stream in [false, true] {
        let response = messages(&setup, &text, stream).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(
            body["error"]["message"], "blocked by the secrets guardrail",
            "{body}"
        );
        assert!(body["error"].get("code").is_none(), "not OpenAI's: {body}");
        assert_clean(&body.to_string());
    }
    assert!(setup.upstream.received().is_empty());
    assert_eq!(setup.upstream.connections(), 0, "not even a connection");

    // The same key without the secret goes through: the block is the detector's doing.
    let response = chat(&setup, &setup.key, "llama", "nothing to see", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(setup.upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_request_text_never_reaches_the_provider() {
    let setup = setup().await;
    org_rules(
        &setup,
        json!([
            { "detector": { "type": "pii", "kinds": ["email"] }, "action": "redact" },
            { "detector": { "type": "secrets" }, "action": "redact" },
            { "detector": { "type": "regex", "name": "ticket", "pattern": "TCK-[0-9]{6}" }, "action": "redact" }
        ]),
        true,
    )
    .await;
    let text = format!(
        "mail {} about TCK-123456 with key {} today",
        fake_email(),
        fake_secret_whole()
    );
    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the fake upstream"
    );
    let response = messages(&setup, &text, false).await;
    assert_eq!(response.status(), 200);

    let received = setup.upstream.received();
    assert_eq!(received.len(), 2);
    for sent in &received {
        let content = sent.body["messages"][0]["content"].to_string();
        assert!(
            content.contains(
                "mail [REDACTED:email] about [REDACTED:ticket] with key [REDACTED:openai_key] today"
            ),
            "{}: {content}",
            sent.path
        );
        assert_clean(&sent.body.to_string());
        assert!(!sent.body.to_string().contains("TCK-123456"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rule_lets_the_text_through_and_writes_an_event() {
    let setup = setup().await;
    let policy_id = org_rules(
        &setup,
        json!([{ "detector": { "type": "pii", "kinds": ["email"] }, "action": "log" }]),
        true,
    )
    .await;
    let text = format!("write to {} please", fake_email());
    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    assert_eq!(response.status(), 200);
    let received = setup.upstream.received();
    assert_eq!(received[0].body["messages"][0]["content"], text);

    let list = Mutex::new(Value::Null);
    let written = eventually(Duration::from_secs(10), || async {
        let (_, got) = call(
            &setup.server,
            &setup.root,
            Method::GET,
            "/admin/guardrails/events",
            None,
        )
        .await;
        let done = got["data"].as_array().is_some_and(|d| !d.is_empty());
        *list.lock().unwrap() = got;
        done
    })
    .await;
    assert!(written, "a guardrail event");
    let list = list.into_inner().unwrap();
    let event = &list["data"][0];
    assert_eq!(event["action"], "log", "{list}");
    assert_eq!(event["detector"], "pii");
    assert_eq!(event["label"], "email");
    assert_eq!(event["count"], 1);
    assert_eq!(event["direction"], "request");
    assert_eq!(event["policy_id"], policy_id);
    assert_eq!(event["key_id"], setup.key_id);
    assert_clean(&list.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_answer_with_a_secret_is_redacted_unless_answers_are_not_scanned() {
    let setup = setup().await;
    let policy_id = org_rules(
        &setup,
        json!([{ "detector": { "type": "secrets" }, "action": "redact" }]),
        true,
    )
    .await;
    let secret = fake_secret_whole();
    setup
        .upstream
        .set_reply(Some(&["your key is ", &secret, " ok"]));
    let response = chat(&setup, &setup.key, "llama", "what is my key", false).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "your key is [REDACTED:openai_key] ok"
    );
    // A translated door: the answer is scanned in the client's dialect.
    let response = messages(&setup, "what is my key", false).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["content"][0]["text"], "your key is [REDACTED:openai_key] ok",
        "{body}"
    );

    // Block on answers: the provider did the work, the client gets the refusal only.
    let (status, _) = call(
        &setup.server,
        &setup.root,
        Method::PATCH,
        &format!("/admin/policies/{policy_id}"),
        Some(
            json!({ "guardrails": { "rules": [{ "detector": { "type": "secrets" }, "action": "block" }] } }),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let response = chat(&setup, &setup.key, "llama", "what is my key", false).await;
    let body = blocked_openai(response, "secrets").await;
    assert_clean(&body.to_string());

    // scan_responses: false leaves answers alone.
    let (status, _) = call(
        &setup.server,
        &setup.root,
        Method::PATCH,
        &format!("/admin/policies/{policy_id}"),
        Some(
            json!({ "guardrails": { "rules": [{ "detector": { "type": "secrets" }, "action": "redact" }], "scan_responses": false } }),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let response = chat(&setup, &setup.key, "llama", "what is my key", false).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("your key is {secret} ok")
    );
    let response = chat(&setup, &setup.key, "llama", "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_eq!(chat_text(&text), format!("your key is {secret} ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_split_across_stream_events_is_redacted_on_every_door() {
    let setup = setup().await;
    org_rules(
        &setup,
        json!([{ "detector": { "type": "secrets" }, "action": "redact" }]),
        true,
    )
    .await;
    let (head, tail) = fake_secret();
    setup
        .upstream
        .set_reply(Some(&["your key is ", &head, &tail, " keep it safe"]));
    let expected = "your key is [REDACTED:openai_key] keep it safe";

    let response = chat(&setup, &setup.key, "llama", "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_clean(&body);
    assert_eq!(chat_text(&body), expected, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    // The Messages door, translated from the provider's chat stream.
    let response = messages(&setup, "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_clean(&body);
    assert_eq!(messages_text(&body), expected, "{body}");
    assert!(
        events(&body).iter().any(|(name, _)| name == "message_stop"),
        "{body}"
    );
    // The Responses door: the deltas, and the events that repeat the whole text.
    let response = responses(&setup, "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_clean(&body);
    assert_eq!(responses_text(&body), expected, "{body}");
    let completed = events(&body)
        .into_iter()
        .find(|(name, _)| name == "response.completed")
        .expect("a response.completed event");
    let completed: Value = serde_json::from_str(&completed.1).unwrap();
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"], expected,
        "{completed}"
    );
    // Every request reached the provider, which streamed the secret whole.
    assert_eq!(setup.upstream.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_a_streamed_answer_ends_the_stream_with_an_error_event() {
    let setup = setup().await;
    org_rules(
        &setup,
        json!([{ "detector": { "type": "secrets" }, "action": "block" }]),
        true,
    )
    .await;
    let (head, tail) = fake_secret();
    setup
        .upstream
        .set_reply(Some(&["fine so far ", &head, &tail, " and more text"]));

    let response = chat(&setup, &setup.key, "llama", "what is my key", true).await;
    assert_eq!(response.status(), 200, "the stream had begun");
    let body = response.text().await.unwrap();
    assert_clean(&body);
    assert!(!body.contains("and more text"), "{body}");
    assert!(!body.contains("[DONE]"), "the stream was cut: {body}");
    let all = events(&body);
    let (_, last) = all.last().unwrap();
    let last: Value = serde_json::from_str(last).unwrap();
    assert_blocked_openai(&last, "secrets");

    let response = messages(&setup, "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_clean(&body);
    let all = events(&body);
    let (name, last) = all.last().unwrap();
    assert_eq!(name, "error", "{body}");
    let last: Value = serde_json::from_str(last).unwrap();
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "invalid_request_error");
    assert_eq!(last["error"]["message"], "blocked by the secrets guardrail");
    assert!(
        !all.iter().any(|(name, _)| name == "message_stop"),
        "{body}"
    );
}

/// What the webhook service keeps, answers and waits.
type HookState = (Arc<Mutex<Vec<Value>>>, Value, Duration);

/// A guardrail webhook service on a loopback port: answers `answer` after `delay`, and keeps
/// what it was sent.
struct Hook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    async fn start(answer: Value, delay: Duration) -> Hook {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = (received.clone(), answer, delay);
        let app = Router::new()
            .route(
                "/check",
                post(
                    |State((received, answer, delay)): State<HookState>,
                     axum::Json(body): axum::Json<Value>| async move {
                        received.lock().unwrap().push(body);
                        tokio::time::sleep(delay).await;
                        axum::Json(answer)
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook {
            addr,
            received,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/check", self.addr)
    }

    fn calls(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// Replaces the organization's policy with one webhook rule.
async fn webhook_policy(setup: &Setup, policy_id: &mut Option<String>, detector: Value) {
    if let Some(id) = policy_id.take() {
        let (status, _) = call(
            &setup.server,
            &setup.root,
            Method::DELETE,
            &format!("/admin/policies/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    *policy_id = Some(
        org_rules(
            setup,
            json!([{ "detector": detector, "action": "block" }]),
            true,
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_block_pass_and_fail_closed_or_open() {
    let setup = setup().await;
    let mut policy_id = None;

    // Flagged under block: refused, never sent on.
    let flagging = Hook::start(json!({ "flagged": true }), Duration::ZERO).await;
    webhook_policy(
        &setup,
        &mut policy_id,
        json!({ "type": "webhook", "url": flagging.url() }),
    )
    .await;
    let response = chat(&setup, &setup.key, "llama", "is this fine", false).await;
    blocked_openai(response, "webhook").await;
    assert!(setup.upstream.received().is_empty());
    let sent = flagging.received.lock().unwrap()[0].clone();
    assert_eq!(sent["direction"], "request", "{sent}");
    assert_eq!(sent["model"], "llama", "{sent}");
    assert_eq!(
        sent["body"]["messages"][0]["content"], "is this fine",
        "{sent}"
    );

    // Not flagged: through.
    let passing = Hook::start(json!({ "flagged": false }), Duration::ZERO).await;
    webhook_policy(
        &setup,
        &mut policy_id,
        json!({ "type": "webhook", "url": passing.url() }),
    )
    .await;
    let response = chat(&setup, &setup.key, "llama", "is this fine", false).await;
    assert_eq!(response.status(), 200);
    assert_eq!(passing.calls(), 1);
    assert_eq!(setup.upstream.received().len(), 1);

    // Too slow: fail-closed refuses, fail-open lets through, each within about the timeout.
    let slow = Hook::start(json!({ "flagged": false }), Duration::from_secs(5)).await;
    webhook_policy(
        &setup,
        &mut policy_id,
        json!({ "type": "webhook", "url": slow.url(), "timeout_ms": 200, "fail_open": false }),
    )
    .await;
    let started = Instant::now();
    let response = chat(&setup, &setup.key, "llama", "is this fine", false).await;
    blocked_openai(response, "webhook").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(setup.upstream.received().len(), 1, "not sent on");
    webhook_policy(
        &setup,
        &mut policy_id,
        json!({ "type": "webhook", "url": slow.url(), "timeout_ms": 200, "fail_open": true }),
    )
    .await;
    let started = Instant::now();
    let response = chat(&setup, &setup.key, "llama", "is this fine", false).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(setup.upstream.received().len(), 2);
    assert_eq!(slow.calls(), 2);

    // A service that answers something else is no answer: fail-closed refuses.
    let confused = Hook::start(json!({ "flagged": "maybe" }), Duration::ZERO).await;
    webhook_policy(
        &setup,
        &mut policy_id,
        json!({ "type": "webhook", "url": confused.url() }),
    )
    .await;
    let response = chat(&setup, &setup.key, "llama", "is this fine", false).await;
    blocked_openai(response, "webhook").await;
    assert_eq!(setup.upstream.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_on_the_metadata_address_is_refused_when_the_policy_is_made() {
    let setup = setup().await;
    // The metadata address as written, and in the other spellings a URL parser accepts for it
    // (decimal, hex, a trailing dot, IPv4-mapped IPv6), and a link-local IPv6 address: refused
    // by the admin API naming the field, nothing stored. (Names, and addresses outside an
    // allow-list, are refused where the call is made: the next test.)
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://2852039166/latest/meta-data",
        "http://0xA9FEA9FE/latest/meta-data",
        "http://169.254.169.254./latest/meta-data",
        "http://[::ffff:169.254.169.254]/latest/meta-data",
        "http://[fe80::1]/x",
    ] {
        let (status, body) = call(
            &setup.server,
            &setup.root,
            Method::POST,
            "/admin/policies",
            Some(json!({ "scope": "organization", "guardrails": { "rules": [
                { "detector": { "type": "webhook", "url": url, "timeout_ms": 10000 }, "action": "block" }] } })),
        )
        .await;
        assert_eq!(status, 400, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("detector.url"), "{url}: {message}");
    }
    let (status, list) = call(
        &setup.server,
        &setup.root,
        Method::GET,
        "/admin/policies",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]), "{list}");
    let response = chat(&setup, &setup.key, "llama", "hello", false).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_policy_wins_over_the_model_policy_over_the_organization_policy() {
    let setup = setup().await;
    let (_, other_key) = new_key(&setup.server, &setup.root, "unguarded-key").await;
    policy(
        &setup,
        json!({ "scope": "organization", "guardrails": { "rules": [
            { "detector": { "type": "regex", "name": "ticket", "pattern": "TCK-[0-9]{6}" }, "action": "block" }] } }),
    )
    .await;
    policy(
        &setup,
        json!({ "scope": "model", "target": "llama", "guardrails": { "rules": [
            { "detector": { "type": "pii" }, "action": "block" }] } }),
    )
    .await;
    let key_policy = policy(
        &setup,
        json!({ "scope": "key", "target": setup.key_id, "guardrails": { "rules": [
            { "detector": { "type": "secrets" }, "action": "block" }] } }),
    )
    .await;
    // Text every policy would refuse: which one does tells which applies.
    let text = format!("{} {} TCK-123456", fake_email(), fake_secret_whole());
    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    blocked_openai(response, "secrets").await;
    let response = chat(&setup, &setup.key, "mistral", &text, false).await;
    blocked_openai(response, "secrets").await;
    let response = chat(&setup, &other_key, "llama", &text, false).await;
    blocked_openai(response, "pii").await;
    let response = chat(&setup, &other_key, "mistral", &text, false).await;
    blocked_openai(response, "regex").await;
    // Without its own, the key falls back to the model's.
    let (status, _) = call(
        &setup.server,
        &setup.root,
        Method::DELETE,
        &format!("/admin/policies/{key_policy}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    blocked_openai(response, "pii").await;
    assert!(setup.upstream.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_events_and_the_audit_log_never_hold_the_matched_text() {
    let setup = setup().await;
    org_rules(
        &setup,
        json!([
            { "detector": { "type": "pii", "kinds": ["email"] }, "action": "redact" },
            { "detector": { "type": "secrets" }, "action": "redact" }
        ]),
        true,
    )
    .await;
    let (head, tail) = fake_secret();
    setup
        .upstream
        .set_reply(Some(&["here: ", &head, &tail, " done"]));
    let text = format!("mail {} and {}", fake_email(), fake_secret_whole());
    let response = chat(&setup, &setup.key, "llama", &text, false).await;
    assert_eq!(response.status(), 200);
    let response = chat(&setup, &setup.key, "llama", "again", true).await;
    assert_eq!(response.status(), 200);
    assert_clean(&response.text().await.unwrap());

    // Request: email + secret; whole answer: secret; streamed answer: secret.
    let list = Mutex::new(Value::Null);
    let written = eventually(Duration::from_secs(10), || async {
        let (_, got) = call(
            &setup.server,
            &setup.root,
            Method::GET,
            "/admin/guardrails/events",
            None,
        )
        .await;
        let done = got["data"].as_array().is_some_and(|d| d.len() >= 4);
        *list.lock().unwrap() = got;
        done
    })
    .await;
    let list = list.into_inner().unwrap();
    assert!(written, "{list}");
    let mut seen: Vec<(String, String, String, String, u64)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["direction"].as_str().unwrap().to_owned(),
                e["detector"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["label"].as_str().unwrap().to_owned(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let row = |d: &str, det: &str, l: &str| {
        (
            d.to_owned(),
            det.to_owned(),
            "redact".to_owned(),
            l.to_owned(),
            1u64,
        )
    };
    assert_eq!(
        seen,
        vec![
            row("request", "pii", "email"),
            row("request", "secrets", "openai_key"),
            row("response", "secrets", "openai_key"),
            row("response", "secrets", "openai_key"),
        ],
        "{list}"
    );
    assert_clean(&list.to_string());

    // The raw audit log: the events are there, the text is not.
    let (status, audit) = call(
        &setup.server,
        &setup.root,
        Method::GET,
        "/admin/audit?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let redactions = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "guardrail.redact")
        .count();
    assert_eq!(redactions, 4, "{audit}");
    assert_clean(&audit.to_string());
    let (status, verify) = call(
        &setup.server,
        &setup.root,
        Method::GET,
        "/admin/audit/verify",
        None,
    )
    .await;
    assert_eq!((status, &verify["ok"]), (200, &json!(true)), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_refused_naming_the_field_and_nothing_is_stored() {
    let setup = setup().await;
    for (guardrails, says) in [
        (
            json!({ "rules": [{ "detector": { "type": "antivirus" }, "action": "block" }] }),
            "guardrails",
        ),
        (
            json!({ "rules": [{ "detector": { "type": "regex", "name": "broken", "pattern": "(" }, "action": "block" }] }),
            "guardrails.rules[0].detector.pattern",
        ),
        (
            json!({ "rules": [{ "detector": { "type": "webhook", "url": "http://127.0.0.1:9/x" }, "action": "redact" }] }),
            "guardrails.rules[0].action",
        ),
        (
            json!({ "rules": [{ "detector": { "type": "secrets" }, "action": "shred" }] }),
            "guardrails",
        ),
        (
            json!({ "rules": [{ "detector": { "type": "webhook", "url": "ftp://hooks.example/x" }, "action": "block" }] }),
            "guardrails.rules[0].detector.url",
        ),
    ] {
        let (status, answer) = call(
            &setup.server,
            &setup.root,
            Method::POST,
            "/admin/policies",
            Some(json!({ "scope": "organization", "guardrails": guardrails })),
        )
        .await;
        assert_eq!(status, 400, "{guardrails}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{guardrails}: {message}");
    }
    let (status, list) = call(
        &setup.server,
        &setup.root,
        Method::GET,
        "/admin/policies",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([]), "{list}");
    // Nothing applies: a request goes through as it came.
    let response = chat(&setup, &setup.key, "llama", "hello", false).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_policy_that_became_unreadable_fails_closed() {
    use sqlx::Executor;

    let setup = setup().await;
    let id = policy(
        &setup,
        json!({ "scope": "model", "target": "llama", "guardrails": { "rules": [
            { "detector": { "type": "pii", "kinds": ["email"] }, "action": "log" }] } }),
    )
    .await;
    let response = chat(&setup, &setup.key, "llama", "hello", false).await;
    assert_eq!(response.status(), 200);
    // A spec this version cannot read, written behind the API's back (a newer instance's shape,
    // or a damaged row); any change to the catalogue reloads it.
    setup
        .server
        .state()
        .store()
        .pool()
        .execute(
            format!(
                r#"UPDATE gateway_policies SET spec = '{{"guardrails":{{"rules":[{{"detector":{{"type":"antivirus"}},"action":"block"}}]}}}}' WHERE id = '{id}'"#
            )
            .as_str(),
        )
        .await
        .unwrap();
    policy(
        &setup,
        json!({ "scope": "model", "target": "mistral", "cache": { "ttl_seconds": 60 } }),
    )
    .await;
    let response = chat(&setup, &setup.key, "llama", "hello", false).await;
    let body = crate::assert_error(response, 400, "guardrail_blocked").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("blocked by the "),
        "{body}"
    );
    assert_eq!(setup.upstream.received().len(), 1, "not sent on");
    // Other models' policies are not affected.
    let response = chat(&setup, &setup.key, "mistral", "hello", false).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_outside_the_egress_allow_list_is_never_called() {
    // The provider on 127.0.0.2, the only address allowed; the webhook service on 127.0.0.1,
    // answering "not flagged" to anyone who asks.
    let upstream = FakeUpstream::start_on("127.0.0.2:0").await;
    let server = TestServer::builder()
        .env("CORTEX_UPSTREAM_ALLOW", "127.0.0.2/32")
        .provider("fake", &upstream.base_url(), Some("provider-secret-abc"))
        .model("llama", &["fake"], 1.0, 2.0)
        .start()
        .await;
    let root = admin(&server).await;
    let (key_id, key) = new_key(&server, &root, "allow-listed").await;
    let setup = Setup {
        server,
        upstream,
        root,
        key,
        key_id,
    };
    let hook = Hook::start(json!({ "flagged": false }), Duration::ZERO).await;
    let port = hook.addr.port();
    let mut policy_id = None;
    // A literal address, and a name that resolves to it.
    for url in [hook.url(), format!("http://localhost:{port}/check")] {
        webhook_policy(
            &setup,
            &mut policy_id,
            json!({ "type": "webhook", "url": url, "timeout_ms": 2000, "fail_open": false }),
        )
        .await;
        let response = chat(&setup, &setup.key, "llama", "hello", false).await;
        blocked_openai(response, "webhook").await;
    }
    assert_eq!(hook.calls(), 0, "the webhook was never reached");
    assert!(setup.upstream.received().is_empty());
    // The provider itself is allowed: without the webhook the request goes through.
    let (status, _) = call(
        &setup.server,
        &setup.root,
        Method::DELETE,
        &format!("/admin/policies/{}", policy_id.unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let response = chat(&setup, &setup.key, "llama", "hello", false).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_rules_on_answers_and_flagging_webhooks_under_log_let_everything_through() {
    let setup = setup().await;
    let hook = Hook::start(json!({ "flagged": true }), Duration::ZERO).await;
    org_rules(
        &setup,
        json!([
            { "detector": { "type": "secrets" }, "action": "log" },
            { "detector": { "type": "webhook", "url": hook.url() }, "action": "log" }
        ]),
        true,
    )
    .await;
    let (head, tail) = fake_secret();
    setup
        .upstream
        .set_reply(Some(&["your key is ", &head, &tail, " ok"]));
    let response = chat(&setup, &setup.key, "llama", "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(chat_text(&body), format!("your key is {head}{tail} ok"));
    assert_eq!(hook.calls(), 1);
    // The Responses door repeats the text in its `…done` and `response.completed` events: the
    // secret is still one match.
    let response = responses(&setup, "what is my key", true).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(
        responses_text(&body),
        format!("your key is {head}{tail} ok")
    );
    assert_eq!(hook.calls(), 2);

    let list = Mutex::new(Value::Null);
    let written = eventually(Duration::from_secs(10), || async {
        let (_, got) = call(
            &setup.server,
            &setup.root,
            Method::GET,
            "/admin/guardrails/events",
            None,
        )
        .await;
        let done = got["data"].as_array().is_some_and(|d| d.len() >= 4);
        *list.lock().unwrap() = got;
        done
    })
    .await;
    let list = list.into_inner().unwrap();
    assert!(written, "{list}");
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["count"] == 1),
        "every match counted once: {list}"
    );
    let mut seen: Vec<(String, String, String, String)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["direction"].as_str().unwrap().to_owned(),
                e["detector"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let row = |d: &str, det: &str, l: &str| {
        (d.to_owned(), det.to_owned(), "log".to_owned(), l.to_owned())
    };
    assert_eq!(
        seen,
        vec![
            row("request", "webhook", "flagged"),
            row("request", "webhook", "flagged"),
            row("response", "secrets", "openai_key"),
            row("response", "secrets", "openai_key"),
        ],
        "{list}"
    );
    assert_clean(&list.to_string());
}
