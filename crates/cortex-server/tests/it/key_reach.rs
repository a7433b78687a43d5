//! Per-key `allowed_ips` (SPEC §18): a key with an allow-list is refused from every other
//! address, whatever the client writes in `X-Forwarded-For`, on every `/v1` door; only a
//! trusted proxy's word moves the address. Bad lists are refused when the key is made.

use cortex_control::keys::KeySpec;
use cortex_domain::{KeyLimits, Scope, DEFAULT_ORG};
use cortex_testkit::{FakeUpstream, TestServer};
use serde_json::{json, Value};

use crate::admin::admin;
use crate::{assert_error, chat_body};

async fn key_from(server: &TestServer, allowed_ips: &[&str]) -> String {
    server
        .create_key_with(KeySpec {
            name: "reach".to_owned(),
            owner_user_id: server.admin_id().await,
            scopes: Scope::ALL.to_vec(),
            models: None,
            expires_at: None,
            limits: KeyLimits::default(),
            org_id: DEFAULT_ORG.to_owned(),
            team_id: None,
            allowed_ips: Some(allowed_ips.iter().map(|s| (*s).to_owned()).collect()),
        })
        .await
        .1
}

async fn chat_from(
    server: &TestServer,
    key: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body("llama", false));
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

async fn server_with(upstream: &FakeUpstream, trusted_proxies: Option<&str>) -> TestServer {
    let mut builder = TestServer::builder()
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 1.0, 2.0);
    if let Some(proxies) = trusted_proxies {
        builder = builder.env("CORTEX_TRUSTED_PROXIES", proxies);
    }
    builder.start().await
}

#[tokio::test]
async fn a_key_is_refused_from_outside_its_ranges_whatever_the_client_claims() {
    let upstream = FakeUpstream::start().await;
    let server = server_with(&upstream, None).await;
    let elsewhere = key_from(&server, &["10.0.0.0/8", "2001:db8::/32"]).await;
    let here = key_from(&server, &["127.0.0.1"]).await;
    let before = upstream.received().len();

    // The test client is 127.0.0.1: outside the ranges, on every door.
    assert_error(
        chat_from(&server, &elsewhere, None).await,
        403,
        "ip_not_allowed",
    )
    .await;
    // A client claiming an allowed address is not believed: no trusted proxy is configured.
    assert_error(
        chat_from(&server, &elsewhere, Some("10.1.2.3")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    let models = server
        .http()
        .get(server.url("/v1/models"))
        .bearer_auth(&elsewhere)
        .send()
        .await
        .unwrap();
    assert_error(models, 403, "ip_not_allowed").await;
    let messages = server
        .http()
        .post(server.url("/v1/messages"))
        .header("x-api-key", &elsewhere)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({ "model": "llama", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(messages.status(), 403);
    let body: Value = messages.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert_eq!(
        upstream.received().len(),
        before,
        "nothing reached the provider"
    );

    // The same gateway serves a key allowed from here.
    assert_eq!(chat_from(&server, &here, None).await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_vouched_address_is_checked_not_the_clients_claim() {
    let upstream = FakeUpstream::start().await;
    let server = server_with(&upstream, Some("127.0.0.1/32")).await;
    let key = key_from(&server, &["10.0.0.0/8"]).await;
    // The proxy (the peer, trusted) vouches for 10.1.2.3.
    assert_eq!(
        chat_from(&server, &key, Some("10.1.2.3")).await.status(),
        200
    );
    // It vouches for 192.0.2.1: refused.
    assert_error(
        chat_from(&server, &key, Some("192.0.2.1")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    // The client wrote an allowed address to the left of what the proxy appended: the
    // proxy's entry is the one checked.
    assert_error(
        chat_from(&server, &key, Some("10.9.9.9, 192.0.2.1")).await,
        403,
        "ip_not_allowed",
    )
    .await;
    // Without the header the proxy itself is the client: outside the range.
    assert_error(chat_from(&server, &key, None).await, 403, "ip_not_allowed").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_allow_lists_are_refused_when_the_key_is_made_and_nothing_is_created() {
    let upstream = FakeUpstream::start().await;
    let server = server_with(&upstream, None).await;
    let root = admin(&server).await;
    let keys_before = server
        .state()
        .store()
        .list_api_keys(&cortex_store::Tenant::All, None)
        .await
        .unwrap()
        .len();
    for bad in [
        json!(["nonsense"]),
        json!(["10.0.0.0/33"]),
        json!([]),
        json!(["10.0.0.1", "*"]),
    ] {
        let response = server
            .http()
            .post(server.url("/admin/keys"))
            .bearer_auth(&root.access_token)
            .json(&json!({ "name": "k", "scopes": ["chat"], "allowed_ips": bad }))
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allowed_ips"),
            "{body}"
        );
    }
    let keys_after = server
        .state()
        .store()
        .list_api_keys(&cortex_store::Tenant::All, None)
        .await
        .unwrap()
        .len();
    assert_eq!(keys_before, keys_after, "no key was created");

    // A good list is stored in canonical form and shown with the key.
    let response = server
        .http()
        .post(server.url("/admin/keys"))
        .bearer_auth(&root.access_token)
        .json(&json!({ "name": "k", "scopes": ["chat"], "allowed_ips": ["10.1.2.3/8", "::ffff:192.0.2.9"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["allowed_ips"], json!(["10.0.0.0/8", "192.0.2.9/32"]));
    server.stop().await;
}
