//! Gateway policies (SPEC §21) through the admin API: the object, its checks, PATCH's
//! absent-versus-null, the data plane's in-memory set following every change at once, and
//! guardrail events written off the hot path and read per organization.

use std::time::Duration;

use cortex_domain::policy::GuardAction;
use cortex_domain::Role;
use cortex_gateway::guard_events::GuardEvent;
use cortex_testkit::{eventually, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{admin, user_with_role, Session};
use crate::gateway_with_upstream;

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

fn resolved(server: &TestServer, key_id: &str, org: &str, model: &str) -> Option<(String, i64)> {
    server
        .state()
        .data_plane()
        .catalog
        .policies()
        .resolve(key_id, org, model)
        .map(|p| (p.id.clone(), p.version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_checked_stored_and_applied_to_the_data_plane_at_once() {
    let (server, _upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let (status, key) = call(
        &server,
        &root,
        Method::POST,
        "/admin/keys",
        Some(json!({ "name": "policy-key", "scopes": ["chat"] })),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();

    // The organization's: its target is the organization, and may be omitted.
    let (status, org_policy) = call(
        &server,
        &root,
        Method::POST,
        "/admin/policies",
        Some(json!({ "scope": "organization", "cache": { "ttl_seconds": 300 } })),
    )
    .await;
    assert_eq!(status, 201, "{org_policy}");
    assert_eq!(org_policy["object"], "policy");
    assert_eq!(org_policy["org_id"], "default");
    assert_eq!(org_policy["target"], "default");
    assert_eq!(org_policy["version"], 1);
    assert_eq!(org_policy["cache"]["ttl_seconds"], 300);
    assert!(org_policy["guardrails"].is_null());
    assert!(org_policy["created_at"].as_str().unwrap().ends_with('Z'));
    let org_policy_id = org_policy["id"].as_str().unwrap().to_owned();
    assert_eq!(
        resolved(&server, &key_id, "default", "llama"),
        Some((org_policy_id.clone(), 1))
    );

    let guardrails = json!({ "rules": [
        { "detector": { "type": "pii", "kinds": ["email"] }, "action": "redact" },
        { "detector": { "type": "regex", "name": "ticket", "pattern": "TCK-[0-9]{6}" }, "action": "block" }
    ] });
    let (status, model_policy) = call(
        &server,
        &root,
        Method::POST,
        "/admin/policies",
        Some(json!({ "scope": "model", "target": "llama", "guardrails": guardrails })),
    )
    .await;
    assert_eq!(status, 201, "{model_policy}");
    assert_eq!(
        model_policy["guardrails"]["rules"][1]["detector"]["name"],
        "ticket"
    );
    assert_eq!(model_policy["guardrails"]["scan_responses"], true);
    let model_policy_id = model_policy["id"].as_str().unwrap().to_owned();

    let (status, key_policy) = call(
        &server,
        &root,
        Method::POST,
        "/admin/policies",
        Some(json!({ "scope": "key", "target": key_id, "cache": { "ttl_seconds": 60 }, "guardrails": guardrails })),
    )
    .await;
    assert_eq!(status, 201, "{key_policy}");
    let key_policy_id = key_policy["id"].as_str().unwrap().to_owned();
    // Precedence, in memory, right after the answers.
    assert_eq!(
        resolved(&server, &key_id, "default", "llama"),
        Some((key_policy_id.clone(), 1))
    );
    assert_eq!(
        resolved(&server, "another-key", "default", "llama"),
        Some((model_policy_id.clone(), 1))
    );
    assert_eq!(
        resolved(&server, "another-key", "default", "mistral"),
        Some((org_policy_id.clone(), 1))
    );

    // What is refused, and how.
    for (body, status, says) in [
        (
            json!({ "scope": "key", "target": key_id, "bogus": 1 }),
            400,
            "unknown field",
        ),
        (json!({ "scope": "team" }), 400, "scope"),
        (json!({ "scope": "key" }), 400, "target"),
        (
            json!({ "scope": "organization", "target": "someone-else" }),
            400,
            "target",
        ),
        (
            json!({ "scope": "model", "target": "no-such-model" }),
            404,
            "not",
        ),
        (
            json!({ "scope": "key", "target": "no-such-key" }),
            404,
            "not",
        ),
        (
            json!({ "scope": "model", "target": "mistral", "cache": { "ttl_seconds": 0 } }),
            400,
            "cache.ttl_seconds",
        ),
        (
            json!({ "scope": "model", "target": "mistral", "cache": { "ttl": 5 } }),
            400,
            "unknown field",
        ),
        (
            json!({ "scope": "model", "target": "mistral", "guardrails": { "rules": [
                { "detector": { "type": "regex", "name": "bad", "pattern": "secret([" }, "action": "log" }
            ] } }),
            400,
            "does not compile",
        ),
        (
            json!({ "scope": "model", "target": "llama" }),
            409,
            "policy",
        ),
    ] {
        let (got, answer) = call(
            &server,
            &root,
            Method::POST,
            "/admin/policies",
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].to_string();
        assert!(message.contains(says), "{body}: {answer}");
        assert!(
            !message.contains("secret(["),
            "never echoes a pattern: {answer}"
        );
    }

    // PATCH: an absent part stays, null removes one; the version moves.
    let path = format!("/admin/policies/{key_policy_id}");
    let (status, patched) = call(
        &server,
        &root,
        Method::PATCH,
        &path,
        Some(json!({ "cache": null })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched["cache"].is_null(), "{patched}");
    assert_eq!(patched["guardrails"]["rules"].as_array().unwrap().len(), 2);
    assert_eq!(patched["version"], 2);
    assert_eq!(
        resolved(&server, &key_id, "default", "llama"),
        Some((key_policy_id.clone(), 2))
    );
    let (status, patched) = call(
        &server,
        &root,
        Method::PATCH,
        &path,
        Some(json!({ "guardrails": null })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    // Neither part: the key opts out, it does not fall through to the model's guardrails.
    let policy = server
        .state()
        .data_plane()
        .catalog
        .policies()
        .resolve(&key_id, "default", "llama")
        .unwrap();
    assert_eq!(policy.id, key_policy_id);
    assert!(policy.cache.is_none() && policy.guardrails.is_none());
    for body in [
        json!({ "bogus": true }),
        json!({ "scope": "model" }),
        json!({ "cache": { "ttl_seconds": 999_999_999 } }),
    ] {
        let (status, answer) = call(&server, &root, Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, fetched) = call(&server, &root, Method::GET, &path, None).await;
    assert_eq!((status, &fetched["version"]), (200, &json!(3)), "{fetched}");

    let (status, list) = call(&server, &root, Method::GET, "/admin/policies", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 3);

    // Delete: gone from the API and from memory; the model's applies again.
    let (status, deleted) = call(&server, &root, Method::DELETE, &path, None).await;
    assert_eq!(
        (status, &deleted["deleted"]),
        (200, &json!(true)),
        "{deleted}"
    );
    let (status, _) = call(&server, &root, Method::GET, &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&server, &root, Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    assert_eq!(
        resolved(&server, &key_id, "default", "llama"),
        Some((model_policy_id, 1))
    );

    // A viewer reads, an operator writes, a developer does neither.
    let viewer = user_with_role(&server, &root, "policy-viewer", Role::Viewer).await;
    let (status, _) = call(&server, &viewer, Method::GET, "/admin/policies", None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &server,
        &viewer,
        Method::DELETE,
        &format!("/admin/policies/{org_policy_id}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let developer = user_with_role(&server, &root, "policy-dev", Role::Developer).await;
    let (status, _) = call(&server, &developer, Method::GET, "/admin/policies", None).await;
    assert_eq!(status, 403);

    // Every change is in the audit log, and the chain still verifies.
    let (_, audit) = call(&server, &root, Method::GET, "/admin/audit?limit=1000", None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("policy."))
        .collect();
    assert_eq!(
        actions,
        [
            "policy.delete",
            "policy.update",
            "policy.update",
            "policy.create",
            "policy.create",
            "policy.create"
        ]
    );
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains("TCK-"),
        "patterns stay out of the audit log"
    );

    // Usage rows say whether the answer came from the cache: this one did not.
    let response = crate::post_chat(&server, key["key"].as_str().unwrap(), "llama", false).await;
    assert_eq!(response.status(), 200);
    let row = std::sync::Mutex::new(Value::Null);
    let written = eventually(Duration::from_secs(10), || async {
        let (_, usage) = call(&server, &root, Method::GET, "/admin/usage", None).await;
        *row.lock().unwrap() = usage["data"][0].clone();
        usage["data"][0].is_object()
    })
    .await;
    assert!(written, "a usage row");
    let row = row.into_inner().unwrap();
    assert_eq!(row["cached"], false, "{row}");
}

fn event(org: &str, n: u32, action: GuardAction) -> GuardEvent {
    GuardEvent {
        org_id: org.to_owned(),
        key_id: format!("{org}-key"),
        user_id: format!("{org}-user"),
        model: "llama".into(),
        request_id: format!("{org}-req-{n}"),
        policy_id: format!("{org}-policy"),
        direction: if n.is_multiple_of(2) {
            "request"
        } else {
            "response"
        },
        detector: "pii",
        action,
        label: "email".into(),
        count: n,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_events_reach_the_audit_log_of_their_organization_only() {
    let (server, _upstream) = gateway_with_upstream().await;
    let root = admin(&server).await;
    let (status, other) = call(
        &server,
        &root,
        Method::POST,
        "/admin/orgs",
        Some(json!({ "name": "guarded-org" })),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    let other_id = other["id"].as_str().unwrap().to_owned();
    let events = &server.state().data_plane().guard_events;
    events.record(event("default", 1, GuardAction::Block));
    events.record(event(&other_id, 2, GuardAction::Redact));
    events.record(event("default", 3, GuardAction::Log));

    let written = eventually(Duration::from_secs(10), || async {
        let (_, list) = call(
            &server,
            &root,
            Method::GET,
            "/admin/guardrails/events",
            None,
        )
        .await;
        list["data"].as_array().is_some_and(|d| d.len() == 3)
    })
    .await;
    assert!(written, "the writer appended the events");

    // A viewer of the default organization sees its two, newest first, and nothing else.
    let viewer = user_with_role(&server, &root, "guard-viewer", Role::Viewer).await;
    let (status, list) = call(
        &server,
        &viewer,
        Method::GET,
        "/admin/guardrails/events",
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{list}");
    assert_eq!(data[0]["request_id"], "default-req-3");
    assert_eq!(data[0]["action"], "log");
    assert_eq!(data[0]["direction"], "response");
    assert_eq!(data[0]["detector"], "pii");
    assert_eq!(data[0]["count"], 3);
    assert_eq!(data[0]["key_id"], "default-key");
    assert_eq!(data[0]["policy_id"], "default-policy");
    assert_eq!(data[0]["model"], "llama");
    assert!(data[0]["id"].is_string() && data[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(data[1]["action"], "block");
    assert!(!list.to_string().contains(&other_id), "{list}");
    let (_, one) = call(
        &server,
        &viewer,
        Method::GET,
        "/admin/guardrails/events?limit=1",
        None,
    )
    .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    for bad in ["?limit=0", "?limit=501", "?limit=x", "?since=1"] {
        let (status, answer) = call(
            &server,
            &viewer,
            Method::GET,
            &format!("/admin/guardrails/events{bad}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    // A developer may not read them.
    let developer = user_with_role(&server, &root, "guard-dev", Role::Developer).await;
    let (status, _) = call(
        &server,
        &developer,
        Method::GET,
        "/admin/guardrails/events",
        None,
    )
    .await;
    assert_eq!(status, 403);

    let (status, verify) = call(&server, &root, Method::GET, "/admin/audit/verify", None).await;
    assert_eq!(status, 200);
    assert_eq!(verify["ok"], true, "{verify}");
}
