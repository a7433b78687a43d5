//! Router-level and end-to-end tests of the server, each against a real gateway on a loopback
//! port with a fake upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

mod admin;
mod breakers;
mod budgets;
mod cache;
mod data_plane;
mod edge_attacks;
mod engines;
mod front_doors;
mod guardrails;
mod hardening;
mod key_reach;
mod keys;
mod limits;
mod maintenance;
mod mcp;
mod observability;
mod operations;
mod ops;
mod orgs;
mod passkeys;
mod policies;
mod provider_attacks;
mod provider_health;
mod provider_kinds;
mod redis_tls;
mod routing;
mod service_accounts;
mod siem;
mod sso;
mod upstream_faults;
mod upstream_tls;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{FakeUpstream, TestServer};

/// A gateway with one fake upstream serving model `llama` (and `mistral`), provider key set.
pub async fn gateway_with_upstream() -> (TestServer, FakeUpstream) {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .provider("fake", &upstream.base_url(), Some("provider-secret-abc"))
        .model("llama", &["fake"], 1.0, 2.0)
        .model("mistral", &["fake"], 0.0, 0.0)
        .start()
        .await;
    (server, upstream)
}

pub async fn all_scopes_key(server: &TestServer) -> String {
    server
        .create_key(&Scope::ALL, None, KeyLimits::default())
        .await
}

pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": "hello" }], "stream": stream })
}

/// `POST /v1/chat/completions` with `key` for `model`, streamed or not.
pub async fn post_chat(
    server: &TestServer,
    key: &str,
    model: &str,
    stream: bool,
) -> reqwest::Response {
    server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, stream))
        .send()
        .await
        .unwrap()
}

/// Asserts an OpenAI-shaped error with the given status and code.
pub async fn assert_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["type"].is_string());
    body
}

/// Creates `n` chat keys named `{tag}-{i}` through the admin API as `token` (each writes one
/// audit event).
pub async fn create_keys(server: &TestServer, token: &str, n: usize, tag: &str) {
    for i in 0..n {
        let response = server
            .http()
            .post(server.url("/admin/keys"))
            .bearer_auth(token)
            .json(&serde_json::json!({ "name": format!("{tag}-{i}"), "scopes": ["chat"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
}

/// Up to `limit` audit events, newest first: those with `action`, or every action for `None`.
pub async fn audit_events(
    store: &cortex_store::Store,
    action: Option<&str>,
    limit: i64,
) -> Vec<cortex_domain::audit::AuditRecord> {
    store
        .list_audit(
            &cortex_store::Tenant::All,
            &cortex_store::audit::AuditFilter {
                action: action.map(str::to_owned),
                limit,
                ..Default::default()
            },
        )
        .await
        .unwrap()
}
