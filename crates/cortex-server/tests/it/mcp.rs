//! `/mcp`: off without a token, every refusal as SPEC §10/§14 say, and the tools.

use std::sync::Arc;

use cortex_control::keys::KeySpec;
use cortex_domain::clock::ManualClock;
use cortex_domain::{Clock, KeyLimits, Scope, SystemClock};
use cortex_testkit::{FakeUpstream, TestServer};
use serde_json::{json, Value};

use crate::audit_events;

const TOKEN: &str = "mcp-token-for-tests-0123456789abcdef";

async fn post(server: &TestServer, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = server
        .http()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn mcp_server(extra: &[(&str, &str)]) -> (TestServer, FakeUpstream, String) {
    let upstream = FakeUpstream::start().await;
    let mut builder = TestServer::builder()
        .env("MCP_TOKEN", TOKEN)
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 0.0, 0.0);
    for (k, v) in extra {
        builder = builder.env(k, v);
    }
    let server = builder.start().await;
    let key = server
        .create_key(&[Scope::Chat], Some(&["llama"]), KeyLimits::default())
        .await;
    (server, upstream, key)
}

#[tokio::test]
async fn mcp_is_off_without_a_token_and_short_tokens_stop_start_up() {
    let server = TestServer::builder().start().await;
    let response = post(
        &server,
        Some(TOKEN),
        json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }),
    )
    .await;
    assert_eq!(response.status(), 404);
    server.stop().await;
    let file = cortex_config::FileConfig::default();
    let err = cortex_config::Config::resolve(file, None, &|name| {
        (name == "MCP_TOKEN").then(|| "short".to_owned())
    })
    .unwrap_err();
    assert_eq!(err.setting, "MCP_TOKEN");
}

#[tokio::test]
async fn refusals_no_token_wrong_token_evil_origin_malformed() {
    let (server, _upstream, _key) = mcp_server(&[]).await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    assert_eq!(post(&server, None, ping.clone()).await.status(), 401);
    assert_eq!(
        post(
            &server,
            Some("wrong-token-wrong-token-wrong-token"),
            ping.clone()
        )
        .await
        .status(),
        401
    );
    let evil = server
        .http()
        .post(server.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    let own = server
        .http()
        .post(server.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("origin", format!("http://{}", server.addr))
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);

    let garbage = server
        .http()
        .post(server.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let body: Value = garbage.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32700);
    for bad in [
        json!({ "id": 1, "method": "ping" }),
        json!({ "jsonrpc": "2.0", "id": {"x": 1}, "method": "ping" }),
        json!([{ "jsonrpc": "2.0", "id": 1, "method": "ping" }]),
        json!({ "jsonrpc": "2.0", "id": 1, "method": 5 }),
    ] {
        let response = post(&server, Some(TOKEN), bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], -32600, "{bad}");
    }
    let unknown = post(
        &server,
        Some(TOKEN),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "resources/list" }),
    )
    .await;
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32601);
    server.stop().await;
}

#[tokio::test]
async fn the_31st_request_in_a_minute_is_refused() {
    let (server, _upstream, _key) = mcp_server(&[]).await;
    let ping = json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" });
    for i in 0..30 {
        assert_eq!(
            post(&server, Some(TOKEN), ping.clone()).await.status(),
            200,
            "request {}",
            i + 1
        );
    }
    let refused = post(&server, Some(TOKEN), ping.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Unauthenticated requests count too: the limit is per client IP.
    assert_eq!(post(&server, None, ping).await.status(), 429);
    server.stop().await;
}

#[tokio::test]
async fn tools_list_call_and_use_the_configured_key() {
    let upstream = FakeUpstream::start().await;
    // First start to mint the agent key, then restart on the same database with MCP_API_KEY.
    let db = cortex_testkit::TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let first = TestServer::builder()
        .env("DATABASE_URL", &db.url)
        .env("CORTEX_DATA_DIR", &data_dir)
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 1.0)
        .start()
        .await;
    let key = first
        .create_key(&[Scope::Chat], Some(&["llama"]), KeyLimits::default())
        .await;
    first.stop().await;
    let server = TestServer::builder()
        .env("DATABASE_URL", &db.url)
        .env("CORTEX_DATA_DIR", &data_dir)
        .env("MCP_TOKEN", TOKEN)
        .env("MCP_API_KEY", &key)
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 1.0)
        .model("other", &["fake"], 1.0, 1.0)
        .start()
        .await;
    let init: Value = post(&server, Some(TOKEN), json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": { "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": { "name": "t", "version": "1" } } })).await.json().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(
        post(
            &server,
            Some(TOKEN),
            json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })
        )
        .await
        .status(),
        202
    );
    let tools: Value = post(
        &server,
        Some(TOKEN),
        json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
    )
    .await
    .json()
    .await
    .unwrap();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["list_models", "chat", "usage"]);

    let call = |id: i64, name: &str, arguments: Value| {
        post(
            &server,
            Some(TOKEN),
            json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": arguments } }),
        )
    };
    let models: Value = call(3, "list_models", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["result"]["content"][0]["text"], "[\"llama\"]",
        "only the key's models"
    );
    let chat: Value = call(
        4,
        "chat",
        json!({ "model": "llama", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(chat["result"]["isError"], false, "{chat}");
    assert_eq!(
        chat["result"]["content"][0]["text"],
        "hello from the fake upstream"
    );
    let denied: Value = call(
        5,
        "chat",
        json!({ "model": "other", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        denied["result"]["isError"], true,
        "the key's allow-list applies to MCP too"
    );
    let bad: Value = call(
        6,
        "chat",
        json!({ "model": "llama", "messages": [], "shell": "rm -rf /" }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(bad["result"]["isError"], true);
    let unknown: Value = call(7, "read_file", json!({ "path": "/etc/passwd" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unknown["error"]["code"], -32602);
    // The chat went through /v1: a usage row exists for the agent's key.
    let store = server.state().store().clone();
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(5), || async {
            !store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
                .await
                .unwrap()
                .is_empty()
        })
        .await
    );
    let usage: Value = call(8, "usage", json!({ "days": 1 }))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        usage["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("\"requests\":1"),
        "{usage}"
    );
    let audited = audit_events(&store, Some("mcp.tool_call"), 20).await;
    assert_eq!(audited.len(), 5, "every tool call is audited");
    server.stop().await;
    drop(db);
}

/// Issue 24, item 10: the MCP tools checked the agent key (`MCP_API_KEY`) for revocation only,
/// so `list_models` and `usage` kept working with an expired key. Every tool call now applies
/// the checks `/v1` applies: known key, secret, revoked, owner disabled, expired.
#[tokio::test]
async fn an_expired_or_suspended_agent_key_is_refused_by_every_tool() {
    let upstream = FakeUpstream::start().await;
    let db = cortex_testkit::TestDb::sqlite();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let builder = || {
        TestServer::builder()
            .env("DATABASE_URL", &db.url)
            .env("CORTEX_DATA_DIR", &data_dir)
            .provider("fake", &upstream.base_url(), None)
            .model("llama", &["fake"], 0.0, 0.0)
    };
    // First start to mint the agent key (owned by a developer, expiring in an hour).
    let clock = Arc::new(ManualClock::new(SystemClock.now_millis()));
    let first = builder().start().await;
    let admin = crate::admin::admin(&first).await;
    let agent_id =
        crate::admin::create_user(&first, &admin, "agent", cortex_domain::Role::Developer).await;
    let (_, key) = first
        .create_key_with(KeySpec {
            name: "agent".into(),
            owner_user_id: agent_id.clone(),
            scopes: vec![Scope::Chat],
            models: Some(vec!["llama".into()]),
            expires_at: Some(clock.now_millis() + 3_600_000),
            limits: KeyLimits::default(),
            org_id: cortex_domain::DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: None,
        })
        .await;
    first.stop().await;
    let server = builder()
        .env("MCP_TOKEN", TOKEN)
        .env("MCP_API_KEY", &key)
        .clock(clock.clone())
        .start()
        .await;
    let call = |id: i64, name: &str, arguments: Value| {
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": name, "arguments": arguments } });
        let server = &server;
        async move {
            let answer: Value = post(server, Some(TOKEN), body).await.json().await.unwrap();
            answer["result"].clone()
        }
    };
    let chat = json!({ "model": "llama", "messages": [{ "role": "user", "content": "hi" }] });
    let tools = [
        ("list_models", json!({})),
        ("usage", json!({})),
        ("chat", chat.clone()),
    ];
    for (n, (tool, arguments)) in tools.iter().enumerate() {
        let result = call(n as i64, tool, arguments.clone()).await;
        assert_eq!(result["isError"], false, "{tool} with a live key: {result}");
    }

    // The owner is disabled: every tool refuses, and works again once re-enabled.
    let admin = crate::admin::admin(&server).await;
    let set_disabled = |disabled: bool| {
        server
            .http()
            .patch(server.url(&format!("/admin/users/{agent_id}")))
            .bearer_auth(&admin.access_token)
            .json(&json!({ "disabled": disabled }))
            .send()
    };
    assert_eq!(set_disabled(true).await.unwrap().status(), 200);
    for (n, (tool, arguments)) in tools.iter().enumerate() {
        let result = call(10 + n as i64, tool, arguments.clone()).await;
        assert_eq!(
            result["isError"], true,
            "{tool} with a suspended key: {result}"
        );
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("disabled"), "{tool}: {text}");
    }
    assert_eq!(set_disabled(false).await.unwrap().status(), 200);
    assert_eq!(call(20, "list_models", json!({})).await["isError"], false);

    // An hour and a minute later the key has expired: every tool refuses.
    clock.advance_millis(3_660_000);
    for (n, (tool, arguments)) in tools.iter().enumerate() {
        let result = call(30 + n as i64, tool, arguments.clone()).await;
        assert_eq!(
            result["isError"], true,
            "{tool} with an expired key: {result}"
        );
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("expired"), "{tool}: {text}");
    }
    server.stop().await;
    drop(db);
}
