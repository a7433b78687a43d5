//! Provider kinds through the admin API (SPEC §15): `kind`, `api_version` and `responses_api`
//! on create, PATCH, listings and the config export; bad values refused with 400 naming the
//! field; a model whose providers mix Anthropic with OpenAI-style kinds refused; and a model
//! that ends up mixed after a provider's kind changed routes only to the providers that speak
//! its first provider's dialect.

use cortex_testkit::{FakeUpstream, TestServer};
use serde_json::{json, Value};

use crate::admin::{admin, Session};
use crate::{all_scopes_key, assert_error, post_chat};

async fn send(
    server: &TestServer,
    session: &Session,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = server
        .http()
        .request(method, server.url(path))
        .bearer_auth(&session.access_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn created(server: &TestServer, session: &Session, path: &str, body: Value) -> Value {
    let response = send(server, session, reqwest::Method::POST, path, Some(body)).await;
    assert_eq!(response.status(), 201, "{path}");
    response.json().await.unwrap()
}

async fn patched(server: &TestServer, session: &Session, path: &str, body: Value) -> Value {
    let response = send(server, session, reqwest::Method::PATCH, path, Some(body)).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// The 400's message for `body` sent to `path` with `method`.
async fn refused(
    server: &TestServer,
    session: &Session,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> String {
    let response = send(server, session, method, path, Some(body)).await;
    let answer = assert_error(response, 400, "invalid_request").await;
    answer["error"]["message"].as_str().unwrap().to_owned()
}

async fn listed(server: &TestServer, session: &Session, path: &str) -> Vec<Value> {
    let response = send(server, session, reqwest::Method::GET, path, None).await;
    let body: Value = response.json().await.unwrap();
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn providers_take_a_kind_an_api_version_and_a_responses_flag() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let secret = "sk-ant-planted-kind-secret";
    let claude = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "claude", "base_url": "https://api.anthropic.example/v1", "api_key": secret,
                "kind": "anthropic", "api_version": "2023-06-01" }),
    )
    .await;
    assert_eq!(claude["kind"], "anthropic");
    assert_eq!(claude["api_version"], "2023-06-01");
    assert_eq!(claude["responses_api"], false);
    assert_eq!(claude["has_api_key"], true);
    assert!(!claude.to_string().contains(secret));
    let azure = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "az", "base_url": "https://r.openai.azure.example", "kind": "azure",
                "api_version": "2024-12-01-preview" }),
    )
    .await;
    let openai = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "oa", "base_url": "https://api.openai.example/v1", "responses_api": true }),
    )
    .await;
    assert_eq!(openai["kind"], "openai", "openai is the default kind");
    assert_eq!(openai["api_version"], Value::Null);
    assert_eq!(openai["responses_api"], true);

    // Bad values are refused with the field named, and nothing is created.
    let post = reqwest::Method::POST;
    for (body, field) in [
        (json!({ "kind": "bedrock" }), "`kind`"),
        (json!({ "api_version": "2024-10-21" }), "`api_version`"),
        (
            json!({ "kind": "azure", "api_version": "2024-10-21&x=1" }),
            "`api_version`",
        ),
        (
            json!({ "kind": "anthropic", "api_version": "2023-06-01\r\nx-evil: 1" }),
            "`api_version`",
        ),
        (
            json!({ "kind": "anthropic", "responses_api": true }),
            "`responses_api`",
        ),
        (
            json!({ "kind": "azure", "responses_api": true }),
            "`responses_api`",
        ),
        (json!({ "kinds": "azure" }), "unknown field"),
        (json!({ "responses_api": "yes" }), "expected a boolean"),
    ] {
        let mut full = json!({ "name": "bad", "base_url": "http://127.0.0.1:9/v1" });
        full.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let message = refused(&server, &admin, post.clone(), "/admin/providers", full).await;
        assert!(message.contains(field), "{body}: {message}");
        assert!(
            !message.contains("evil"),
            "values are not echoed: {message}"
        );
    }
    assert_eq!(listed(&server, &admin, "/admin/providers").await.len(), 3);

    // PATCH: a change of kind resets the version it does not name; a version the kind cannot
    // take is refused; null goes back to the kind's default.
    let az = format!("/admin/providers/{}", azure["id"].as_str().unwrap());
    let oa = format!("/admin/providers/{}", openai["id"].as_str().unwrap());
    let now_openai = patched(&server, &admin, &az, json!({ "kind": "openai" })).await;
    assert_eq!(now_openai["kind"], "openai");
    assert_eq!(now_openai["api_version"], Value::Null);
    let message = refused(
        &server,
        &admin,
        reqwest::Method::PATCH,
        &az,
        json!({ "api_version": "2024-10-21" }),
    )
    .await;
    assert!(message.contains("`api_version`"), "{message}");
    let back = patched(
        &server,
        &admin,
        &az,
        json!({ "kind": "azure", "api_version": "2024-10-21" }),
    )
    .await;
    assert_eq!(
        (&back["kind"], &back["api_version"]),
        (&json!("azure"), &json!("2024-10-21"))
    );
    let default_version = patched(&server, &admin, &az, json!({ "api_version": null })).await;
    assert_eq!(default_version["api_version"], Value::Null);
    assert_eq!(default_version["kind"], "azure");
    let flag_off = patched(&server, &admin, &oa, json!({ "responses_api": false })).await;
    assert_eq!(flag_off["responses_api"], false);
    let message = refused(
        &server,
        &admin,
        reqwest::Method::PATCH,
        &oa,
        json!({ "kind": "openai", "region": "eu" }),
    )
    .await;
    assert!(message.contains("unknown field"), "{message}");

    // Listings and the export show all three; the secret stays write-only.
    let providers = listed(&server, &admin, "/admin/providers").await;
    let kinds: Vec<(&str, &str)> = providers
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("az", "azure"), ("claude", "anthropic"), ("oa", "openai")]
    );
    let export = send(
        &server,
        &admin,
        reqwest::Method::GET,
        "/admin/config/export",
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(!export.contains(secret), "the export holds no secret");
    let export: Value = serde_json::from_str(&export).unwrap();
    let exported = export["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "claude")
        .unwrap()
        .clone();
    assert_eq!(exported["kind"], "anthropic");
    assert_eq!(exported["api_version"], "2023-06-01");
    assert_eq!(exported["responses_api"], false);
    server.stop().await;
}

#[tokio::test]
async fn a_model_cannot_mix_anthropic_with_openai_style_providers() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    for (name, kind) in [("claude", "anthropic"), ("oa", "openai"), ("az", "azure")] {
        created(
            &server,
            &admin,
            "/admin/providers",
            json!({ "name": name, "base_url": format!("http://127.0.0.1:9/{name}/v1"), "kind": kind }),
        )
        .await;
    }
    let message = refused(
        &server,
        &admin,
        reqwest::Method::POST,
        "/admin/models",
        json!({ "name": "mixed", "providers": ["claude", "oa"] }),
    )
    .await;
    assert!(message.contains("different dialects"), "{message}");
    assert!(
        message.contains("claude") && message.contains("oa"),
        "{message}"
    );
    let model = created(
        &server,
        &admin,
        "/admin/models",
        json!({ "name": "gpt", "providers": ["oa", "az"] }),
    )
    .await;
    let path = format!("/admin/models/{}", model["id"].as_str().unwrap());
    let message = refused(
        &server,
        &admin,
        reqwest::Method::PATCH,
        &path,
        json!({ "provider": "claude", "providers": ["az"] }),
    )
    .await;
    assert!(message.contains("different dialects"), "{message}");
    let models = listed(&server, &admin, "/admin/models").await;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["providers"], json!(["oa", "az"]));
    created(
        &server,
        &admin,
        "/admin/models",
        json!({ "name": "sonnet", "provider": "claude" }),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_provider_whose_kind_changed_later_is_left_out_of_the_models_routes() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "first", "base_url": first.base_url() }),
    )
    .await;
    let moved = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "second", "base_url": second.base_url() }),
    )
    .await;
    created(
        &server,
        &admin,
        "/admin/models",
        json!({ "name": "llama", "providers": ["first", "second"] }),
    )
    .await;
    let key = all_scopes_key(&server).await;
    for _ in 0..2 {
        assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    }
    assert_eq!((first.received().len(), second.received().len()), (1, 1));

    // The second provider becomes an Anthropic one: the model keeps only the first.
    let path = format!("/admin/providers/{}", moved["id"].as_str().unwrap());
    patched(&server, &admin, &path, json!({ "kind": "anthropic" })).await;
    for _ in 0..4 {
        assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
    }
    assert_eq!(
        (first.received().len(), second.received().len()),
        (5, 1),
        "a provider that speaks another dialect is not tried"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_config_file_sets_and_changes_a_providers_kind() {
    let server = TestServer::builder().start().await;
    let state = server.state();
    let master_text = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    let master = cortex_crypto::envelope::MasterKey::parse(&master_text).unwrap();
    let sync = |toml: String| {
        let store = state.store().clone();
        let master = &master;
        async move {
            let file = cortex_config::FileConfig::parse(&toml).unwrap();
            let config = cortex_config::Config::resolve(file, None, &|_| None).unwrap();
            cortex_control::bootstrap::sync_catalog(&store, &config, master, 1)
                .await
                .unwrap();
            store.get_provider("az").await.unwrap().unwrap()
        }
    };
    let declared = |extra: &str| {
        format!(
            "[[providers]]\nname = \"az\"\nbase_url = \"https://r.openai.azure.example\"\n{extra}\n\
             [[models]]\nname = \"gpt\"\nprovider = \"az\"\n"
        )
    };
    let first = sync(declared("kind = \"azure\"\napi_version = \"2024-10-21\"")).await;
    assert_eq!(first.kind, cortex_domain::ProviderKind::Azure);
    assert_eq!(first.api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(first.source, "config");
    let changed = sync(declared(
        "kind = \"azure\"\napi_version = \"2024-12-01-preview\"",
    ))
    .await;
    assert_eq!(changed.id, first.id);
    assert_eq!(changed.api_version.as_deref(), Some("2024-12-01-preview"));
    let openai = sync(declared("")).await;
    assert_eq!(openai.kind, cortex_domain::ProviderKind::OpenAi);
    assert_eq!(openai.api_version, None);
    server.stop().await;
}
