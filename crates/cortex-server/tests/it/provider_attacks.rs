//! Attacks on provider credentials and on the network behind the gateway, by an operator
//! (who may create and re-point providers) or through a provider: the stored key following a
//! re-pointed base URL, the internal key reaching providers it was not declared for, requests
//! to the metadata service or outside the egress allow-list, a provider's 401 blamed on the
//! client's key, and provider names shown to roles that may not read providers.

use cortex_domain::Role;
use cortex_testkit::{FakeUpstream, TestServer};
use serde_json::{json, Value};

use crate::admin::{admin, user_with_role, Session};
use crate::{all_scopes_key, assert_error, audit_events, post_chat};

async fn send(
    server: &TestServer,
    session: &Session,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    server
        .http()
        .request(method, server.url(path))
        .bearer_auth(&session.access_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn create_provider(server: &TestServer, session: &Session, body: Value) -> Value {
    let response = send(
        server,
        session,
        reqwest::Method::POST,
        "/admin/providers",
        body,
    )
    .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn patch_provider(server: &TestServer, session: &Session, id: &str, body: Value) -> Value {
    let response = send(
        server,
        session,
        reqwest::Method::PATCH,
        &format!("/admin/providers/{id}"),
        body,
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn create_model(server: &TestServer, session: &Session, name: &str, provider: &str) {
    let response = send(
        server,
        session,
        reqwest::Method::POST,
        "/admin/models",
        json!({ "name": name, "provider": provider }),
    )
    .await;
    assert_eq!(response.status(), 201);
}

/// The `Authorization` header of each request `upstream` received, in order.
fn authorizations(upstream: &FakeUpstream) -> Vec<Option<String>> {
    upstream
        .received()
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn repointing_a_provider_never_sends_its_secret_to_the_new_host() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let secret = "sk-first-host-secret-7f3a";
    let created = create_provider(
        &server,
        &admin,
        json!({ "name": "p", "base_url": first.base_url(), "api_key": secret }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    create_model(&server, &admin, "llama", "p").await;
    let key = all_scopes_key(&server).await;
    assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    assert_eq!(authorizations(&first), [Some(format!("Bearer {secret}"))]);

    // A new path at the same origin keeps the key: the same server already holds it.
    let same_origin = patch_provider(
        &server,
        &admin,
        &id,
        json!({ "base_url": format!("http://{}/v1/", first.addr) }),
    )
    .await;
    assert_eq!(same_origin["has_api_key"], true);

    // The attack: re-point the provider at a host of the operator's choosing.
    let moved = patch_provider(
        &server,
        &admin,
        &id,
        json!({ "base_url": second.base_url() }),
    )
    .await;
    assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    let everything_seen = format!("{:?}", second.received());
    assert!(
        !everything_seen.contains(secret),
        "the old secret reached the new host"
    );
    assert_eq!(
        authorizations(&second),
        [None],
        "the new host got a credential"
    );
    // The answer and the audit event say the key was dropped.
    assert_eq!(moved["has_api_key"], false);
    assert_eq!(moved["api_key_dropped"], true);
    assert_eq!(same_origin["api_key_dropped"], false);
    let event = &audit_events(server.state().store(), Some("provider.update"), 1).await[0];
    let details: Value = serde_json::from_str(&event.details).unwrap();
    assert_eq!(details["api_key_dropped"], true, "{details}");

    // Moving with a new key in the same request is how a provider changes hosts.
    patch_provider(
        &server,
        &admin,
        &id,
        json!({ "base_url": first.base_url() }),
    )
    .await;
    let rekeyed = patch_provider(
        &server,
        &admin,
        &id,
        json!({ "base_url": second.base_url(), "api_key": "sk-second-host-key" }),
    )
    .await;
    assert_eq!(rekeyed["has_api_key"], true);
    assert_eq!(rekeyed["api_key_dropped"], false);
    assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    assert_eq!(
        authorizations(&second).last().unwrap().as_deref(),
        Some("Bearer sk-second-host-key")
    );
    server.stop().await;
}

#[tokio::test]
async fn key_less_providers_never_receive_the_internal_key() {
    let from_file = FakeUpstream::start().await;
    let from_api = FakeUpstream::start().await;
    let internal = "internal-vllm-key-0123456789abcdef";
    let server = TestServer::builder()
        .env("INTERNAL_VLLM_API_KEY", internal)
        .provider("keyless", &from_file.base_url(), None)
        .model("m-file", &["keyless"], 0.0, 0.0)
        .start()
        .await;
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    // A key-less provider made through the admin API, pointing wherever the operator likes.
    create_provider(
        &server,
        &admin,
        json!({ "name": "from-api", "base_url": from_api.base_url() }),
    )
    .await;
    create_model(&server, &admin, "m-api", "from-api").await;
    for model in ["m-file", "m-api"] {
        assert_eq!(post_chat(&server, &key, model, false).await.status(), 200);
    }
    let seen = format!("{:?}{:?}", from_file.received(), from_api.received());
    assert!(!seen.contains(internal), "the internal key left: {seen}");
    assert_eq!(authorizations(&from_file), [None]);
    assert_eq!(authorizations(&from_api), [None]);
    server.stop().await;
}

#[tokio::test]
async fn the_internal_key_stays_with_the_provider_and_origin_the_config_file_declares() {
    let declared = FakeUpstream::start().await;
    let elsewhere = FakeUpstream::start().await;
    let internal = "internal-vllm-key-0123456789abcdef";
    let server = TestServer::builder()
        .env("INTERNAL_VLLM_API_KEY", internal)
        .config_toml(&format!(
            "[[providers]]\nname = \"declared\"\nbase_url = {:?}\nuse_internal_key = true\n",
            declared.base_url()
        ))
        .model("m-declared", &["declared"], 0.0, 0.0)
        .start()
        .await;
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    let api = create_provider(
        &server,
        &admin,
        json!({ "name": "from-api", "base_url": elsewhere.base_url() }),
    )
    .await;
    create_model(&server, &admin, "m-api", "from-api").await;
    assert_eq!(
        post_chat(&server, &key, "m-declared", false).await.status(),
        200
    );
    let bearer = Some(format!("Bearer {internal}"));
    assert_eq!(authorizations(&declared), std::slice::from_ref(&bearer));

    // Taking the declared name over: rename the declared provider away and give its name to
    // the operator's own provider. Neither row is then the one the file declared.
    let declared_id = server
        .state()
        .store()
        .get_provider("declared")
        .await
        .unwrap()
        .unwrap()
        .id;
    let api_id = api["id"].as_str().unwrap().to_owned();
    patch_provider(&server, &admin, &declared_id, json!({ "name": "renamed" })).await;
    patch_provider(&server, &admin, &api_id, json!({ "name": "declared" })).await;
    assert_eq!(post_chat(&server, &key, "m-api", false).await.status(), 200);
    assert_eq!(authorizations(&elsewhere), [None]);

    // Re-pointing the declared provider elsewhere does not take the internal key along.
    patch_provider(&server, &admin, &api_id, json!({ "name": "from-api" })).await;
    patch_provider(&server, &admin, &declared_id, json!({ "name": "declared" })).await;
    assert_eq!(
        post_chat(&server, &key, "m-declared", false).await.status(),
        200
    );
    assert_eq!(authorizations(&declared), [bearer.clone(), bearer]);
    patch_provider(
        &server,
        &admin,
        &declared_id,
        json!({ "base_url": elsewhere.base_url() }),
    )
    .await;
    assert_eq!(
        post_chat(&server, &key, "m-declared", false).await.status(),
        200
    );
    assert_eq!(authorizations(&elsewhere), [None, None]);
    server.stop().await;
}

#[tokio::test]
async fn metadata_and_link_local_addresses_are_refused_at_the_admin_api() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    // Nothing here is ever connected to: the admin API refuses the literal address.
    for url in [
        "http://169.254.169.254/latest/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://[fd00:ec2::254]/v1",
        "https://[fe80::1]:8443/v1",
    ] {
        let response = send(
            &server,
            &admin,
            reqwest::Method::POST,
            "/admin/providers",
            json!({ "name": "metadata", "base_url": url }),
        )
        .await;
        let body = assert_error(response, 400, "invalid_request").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("egress policy"), "{url}: {message}");
    }
    let created = create_provider(
        &server,
        &admin,
        json!({ "name": "ok", "base_url": "http://127.0.0.1:9/v1" }),
    )
    .await;
    let response = send(
        &server,
        &admin,
        reqwest::Method::PATCH,
        &format!("/admin/providers/{}", created["id"].as_str().unwrap()),
        json!({ "base_url": "http://169.254.169.254/v1" }),
    )
    .await;
    assert_error(response, 400, "invalid_request").await;
    assert!(server
        .state()
        .store()
        .get_provider("metadata")
        .await
        .unwrap()
        .is_none());
    server.stop().await;
}

/// A gateway with `allow` as `CORTEX_UPSTREAM_ALLOW` and one model on `upstream`, reached
/// through the host name `localhost` (so only resolution reveals the loopback address).
async fn gateway_allowing(allow: &str, upstream: &FakeUpstream) -> TestServer {
    TestServer::builder()
        .env("CORTEX_UPSTREAM_ALLOW", allow)
        .provider(
            "named",
            &format!("http://localhost:{}/v1", upstream.addr.port()),
            Some("provider-secret-abc"),
        )
        .model("llama", &["named"], 0.0, 0.0)
        .start()
        .await
}

#[tokio::test]
async fn the_egress_allow_list_is_checked_on_every_connect_after_resolution() {
    let upstream = FakeUpstream::start().await;
    // The allow-list has no loopback range: the name resolves to a refused address, so the
    // gateway opens no connection at all and answers 502.
    let server = gateway_allowing("10.0.0.0/8", &upstream).await;
    let key = all_scopes_key(&server).await;
    for stream in [false, true] {
        let response = post_chat(&server, &key, "llama", stream).await;
        assert_error(response, 502, "upstream_error").await;
    }
    assert_eq!(
        upstream.connections(),
        0,
        "a refused address was connected to"
    );
    assert!(upstream.received().is_empty());
    // A literal address outside the list is refused up front.
    let admin = admin(&server).await;
    let response = send(
        &server,
        &admin,
        reqwest::Method::POST,
        "/admin/providers",
        json!({ "name": "loop", "base_url": upstream.base_url() }),
    )
    .await;
    assert_error(response, 400, "invalid_request").await;
    server.stop().await;

    // Allowed by range, the same provider works.
    let server = gateway_allowing("127.0.0.0/8, ::1", &upstream).await;
    let key = all_scopes_key(&server).await;
    assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    assert!(upstream.connections() >= 1);
    server.stop().await;
}

#[tokio::test]
async fn a_provider_refusing_the_gateways_credential_is_a_502_not_the_clients_401() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .provider("fake", &upstream.base_url(), Some("provider-secret-abc"))
        .model("llama", &["fake"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    for status in [401, 403] {
        upstream.set_fail_status(status);
        for stream in [false, true] {
            let response = post_chat(&server, &key, "llama", stream).await;
            assert!(response.headers().get("www-authenticate").is_none());
            let body = assert_error(response, 502, "upstream_auth_failed").await;
            assert_eq!(body["error"]["type"], "upstream_error");
            let text = body.to_string();
            assert!(
                !text.contains("fake upstream failure") && !text.contains("gpu-node-7"),
                "the provider's message reached the client: {text}"
            );
        }
    }
    // Other refusals by the provider are about the request, and pass through as before.
    upstream.set_fail_status(400);
    let response = post_chat(&server, &key, "llama", false).await;
    assert_error(response, 400, "upstream_rejected").await;
    server.stop().await;
}

#[tokio::test]
async fn model_listings_name_providers_only_to_roles_that_may_read_providers() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::builder()
        .provider("secret-gpu-node", &upstream.base_url(), None)
        .model("llama", &["secret-gpu-node"], 0.0, 0.0)
        .start()
        .await;
    let admin_session = admin(&server).await;
    let provider_id = server
        .state()
        .store()
        .get_provider("secret-gpu-node")
        .await
        .unwrap()
        .unwrap()
        .id;
    for role in Role::ALL {
        let session = if role == Role::Admin {
            admin(&server).await
        } else {
            user_with_role(&server, &admin_session, role.as_str(), role).await
        };
        let response = server
            .http()
            .get(server.url("/admin/models"))
            .bearer_auth(&session.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{role:?}");
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        let model = &body["data"][0];
        assert_eq!(model["name"], "llama", "{role:?}");
        if role.permits(cortex_domain::Permission::ProvidersRead) {
            assert_eq!(model["providers"], json!(["secret-gpu-node"]), "{role:?}");
            assert_eq!(model["provider_ids"], json!([provider_id]), "{role:?}");
        } else {
            assert!(model.get("providers").is_none(), "{role:?}: {model}");
            assert!(model.get("provider_ids").is_none(), "{role:?}: {model}");
            assert!(
                !text.contains("secret-gpu-node") && !text.contains(&provider_id),
                "{role:?} saw a provider: {text}"
            );
        }
    }
    let readers: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| r.permits(cortex_domain::Permission::ProvidersRead))
        .collect();
    assert_eq!(readers, [Role::Admin, Role::Operator, Role::Viewer]);
    server.stop().await;
}
