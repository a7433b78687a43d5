//! Provider kinds through the admin API (SPEC §15): `kind`, `api_version` and `responses_api`
//! on create, PATCH, listings and the config export; bad values refused with 400 naming the
//! field; a model whose providers mix Anthropic with OpenAI-style kinds refused; and a model
//! that ends up mixed after a provider's kind changed routes only to the providers that speak
//! its first provider's dialect.
//!
//! The routing fields (SPEC §16) travel the same paths: a provider's `weight` and
//! `health_check_path` and a model's `strategy` through the admin API, the config file sync,
//! and export then import; a usage row's `attempts` through `/admin/usage`.

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

/// `GET /admin/config/export` as `session`.
async fn export(server: &TestServer, session: &Session) -> Value {
    send(
        server,
        session,
        reqwest::Method::GET,
        "/admin/config/export",
        None,
    )
    .await
    .json()
    .await
    .unwrap()
}

/// `body` with the fields of `extra` added (or replaced).
fn with(mut body: Value, extra: &Value) -> Value {
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn providers_take_a_weight_and_a_health_check_path_and_models_a_strategy() {
    let server = TestServer::builder().start().await;
    let admin = admin(&server).await;
    let heavy = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "heavy", "base_url": "http://127.0.0.1:9/a/v1", "weight": 5,
                "health_check_path": "v1/health" }),
    )
    .await;
    assert_eq!(heavy["weight"], 5);
    assert_eq!(heavy["health_check_path"], "v1/health");
    let light = created(
        &server,
        &admin,
        "/admin/providers",
        json!({ "name": "light", "base_url": "http://127.0.0.1:9/b/v1" }),
    )
    .await;
    assert_eq!(light["weight"], 1, "the default weight");
    assert_eq!(light["health_check_path"], Value::Null, "the default path");

    // Bad values are refused with the field named, and nothing is created.
    let post = reqwest::Method::POST;
    let base = json!({ "name": "bad", "base_url": "http://127.0.0.1:9/v1" });
    for (extra, field) in [
        (json!({ "weight": 0 }), "`weight`"),
        (json!({ "weight": 1001 }), "`weight`"),
        (json!({ "weight": -1 }), "`weight`"),
        (json!({ "weight": 2.5 }), "`weight`"),
        (json!({ "weight": "5" }), "`weight`"),
        (json!({ "weight": 4_294_967_296_u64 }), "`weight`"),
        (
            json!({ "health_check_path": "../x" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "a/../../b" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "http://evil" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "/models" }),
            "`health_check_path`",
        ),
        (json!({ "health_check_path": "" }), "`health_check_path`"),
        (
            json!({ "health_check_path": "models?x=1" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "models#x" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "x".repeat(201) }),
            "`health_check_path`",
        ),
    ] {
        let body = with(base.clone(), &extra);
        let message = refused(&server, &admin, post.clone(), "/admin/providers", body).await;
        assert!(message.contains(field), "{extra}: {message}");
        assert!(
            !message.contains("evil"),
            "values are not echoed: {message}"
        );
    }
    assert_eq!(listed(&server, &admin, "/admin/providers").await.len(), 2);

    // PATCH changes what it names; null goes back to the default path; a bad value changes
    // nothing.
    let path = format!("/admin/providers/{}", heavy["id"].as_str().unwrap());
    let patch = reqwest::Method::PATCH;
    let max = patched(&server, &admin, &path, json!({ "weight": 1000 })).await;
    assert_eq!(max["weight"], 1000);
    assert_eq!(max["health_check_path"], "v1/health");
    for (body, field) in [
        (json!({ "weight": 0 }), "`weight`"),
        (json!({ "weight": 1001 }), "`weight`"),
        (json!({ "weight": "heavy" }), "`weight`"),
        (json!({ "weight": -3 }), "`weight`"),
        (
            json!({ "health_check_path": "../x" }),
            "`health_check_path`",
        ),
        (
            json!({ "health_check_path": "http://evil" }),
            "`health_check_path`",
        ),
    ] {
        let message = refused(&server, &admin, patch.clone(), &path, body.clone()).await;
        assert!(message.contains(field), "{body}: {message}");
    }
    let reset = patched(&server, &admin, &path, json!({ "health_check_path": null })).await;
    assert_eq!(reset["health_check_path"], Value::Null);
    assert_eq!(reset["weight"], 1000, "a bad PATCH changed nothing");
    let renamed = patched(&server, &admin, &path, json!({ "name": "heavier" })).await;
    assert_eq!(renamed["weight"], 1000);
    let light_path = format!("/admin/providers/{}", light["id"].as_str().unwrap());
    patched(&server, &admin, &light_path, json!({ "weight": 3 })).await;
    let default_weight = patched(&server, &admin, &light_path, json!({ "weight": null })).await;
    assert_eq!(default_weight["weight"], 1, "null goes back to the default");

    // Models: round_robin by default, any of the four names, anything else refused.
    let balanced = created(
        &server,
        &admin,
        "/admin/models",
        json!({ "name": "llama", "providers": ["heavier", "light"], "strategy": "weighted" }),
    )
    .await;
    assert_eq!(balanced["strategy"], "weighted");
    let plain = created(
        &server,
        &admin,
        "/admin/models",
        json!({ "name": "mistral", "provider": "light" }),
    )
    .await;
    assert_eq!(plain["strategy"], "round_robin");
    for (bad, said) in [
        (json!("fastest"), "`strategy`"),
        (json!("RoundRobin"), "`strategy`"),
        (json!(""), "`strategy`"),
        (json!(3), "expected a string"),
    ] {
        let body = json!({ "name": "bad", "provider": "light", "strategy": bad });
        let message = refused(&server, &admin, post.clone(), "/admin/models", body).await;
        assert!(message.contains(said), "{bad}: {message}");
    }
    assert_eq!(listed(&server, &admin, "/admin/models").await.len(), 2);
    let message = refused(
        &server,
        &admin,
        post.clone(),
        "/admin/models",
        json!({ "name": "bad", "provider": "light", "strategy": "fastest" }),
    )
    .await;
    assert_eq!(
        message,
        "`strategy` must be one of round_robin, weighted, least_latency, priority"
    );
    let model_path = format!("/admin/models/{}", balanced["id"].as_str().unwrap());
    for strategy in ["least_latency", "priority", "round_robin", "weighted"] {
        let changed = patched(
            &server,
            &admin,
            &model_path,
            json!({ "strategy": strategy }),
        )
        .await;
        assert_eq!(changed["strategy"], strategy);
    }
    let message = refused(
        &server,
        &admin,
        patch.clone(),
        &model_path,
        json!({ "strategy": "fastest" }),
    )
    .await;
    assert!(message.contains("round_robin"), "{message}");
    let renamed = patched(&server, &admin, &model_path, json!({ "name": "llama-3" })).await;
    assert_eq!(
        renamed["strategy"], "weighted",
        "a PATCH keeps what it does not name"
    );
    let plain_path = format!("/admin/models/{}", plain["id"].as_str().unwrap());
    patched(
        &server,
        &admin,
        &plain_path,
        json!({ "strategy": "priority" }),
    )
    .await;
    let default_strategy = patched(&server, &admin, &plain_path, json!({ "strategy": null })).await;
    assert_eq!(default_strategy["strategy"], "round_robin");

    // Listings show them, to roles that may read models but not providers too.
    let providers = listed(&server, &admin, "/admin/providers").await;
    let fields: Vec<(&str, &Value, &Value)> = providers
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                &p["weight"],
                &p["health_check_path"],
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("heavier", &json!(1000), &Value::Null),
            ("light", &json!(1), &Value::Null)
        ]
    );
    let models = listed(&server, &admin, "/admin/models").await;
    let strategies: Vec<(&str, &str)> = models
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["strategy"].as_str().unwrap()))
        .collect();
    assert_eq!(
        strategies,
        [("llama-3", "weighted"), ("mistral", "round_robin")]
    );
    let developer = crate::admin::user_with_role(
        &server,
        &admin,
        "dev.routing",
        cortex_domain::Role::Developer,
    )
    .await;
    let seen = listed(&server, &developer, "/admin/models").await;
    assert_eq!(seen[0]["strategy"], "weighted");
    assert!(seen[0]["providers"].is_null());
    server.stop().await;
}

#[tokio::test]
async fn routing_fields_survive_export_then_import() {
    let source = TestServer::builder().start().await;
    let admin = admin(&source).await;
    created(
        &source,
        &admin,
        "/admin/providers",
        json!({ "name": "a", "base_url": "http://127.0.0.1:9/a/v1", "weight": 7,
                "health_check_path": "health/ready" }),
    )
    .await;
    created(
        &source,
        &admin,
        "/admin/providers",
        json!({ "name": "b", "base_url": "http://127.0.0.1:9/b/v1" }),
    )
    .await;
    created(
        &source,
        &admin,
        "/admin/models",
        json!({ "name": "llama", "providers": ["a", "b"], "strategy": "least_latency" }),
    )
    .await;
    created(
        &source,
        &admin,
        "/admin/models",
        json!({ "name": "mistral", "provider": "b" }),
    )
    .await;
    let exported = export(&source, &admin).await;
    assert_eq!(exported["providers"][0]["weight"], 7);
    assert_eq!(
        exported["providers"][0]["health_check_path"],
        "health/ready"
    );
    assert_eq!(exported["providers"][1]["weight"], 1);
    assert_eq!(exported["providers"][1]["health_check_path"], Value::Null);
    assert_eq!(exported["models"][0]["strategy"], "least_latency");
    assert_eq!(exported["models"][1]["strategy"], "round_robin");
    source.stop().await;

    // Into PostgreSQL, so both backends carry the fields end to end.
    let target = TestServer::builder().postgres().start().await;
    let state = target.state();
    let master_text = std::fs::read_to_string(target.data_dir().join("master.key")).unwrap();
    let master = cortex_crypto::envelope::MasterKey::parse(&master_text).unwrap();
    let import = |text: String| {
        let store = state.store().clone();
        let master = &master;
        async move { cortex_control::ops::import::import(&store, master, &text, "test", false, 1).await }
    };
    let report = import(exported.to_string()).await.unwrap();
    assert_eq!(report.providers_created, ["a", "b"]);
    let admin = crate::admin::admin(&target).await;
    let imported = export(&target, &admin).await;
    assert_eq!(imported["providers"], exported["providers"]);
    assert_eq!(imported["models"], exported["models"]);
    let row = state.store().get_provider("a").await.unwrap().unwrap();
    assert_eq!(
        (row.weight, row.health_check_path.as_deref()),
        (7, Some("health/ready"))
    );

    // An export from before routing fields imports with the defaults; bad values are refused
    // like the admin API refuses them, naming the entry and the field, and change nothing.
    let mut older = exported.clone();
    for provider in older["providers"].as_array_mut().unwrap() {
        let fields = provider.as_object_mut().unwrap();
        fields.remove("weight");
        fields.remove("health_check_path");
    }
    for model in older["models"].as_array_mut().unwrap() {
        model.as_object_mut().unwrap().remove("strategy");
    }
    import(older.to_string()).await.unwrap();
    let reset = state.store().get_provider("a").await.unwrap().unwrap();
    assert_eq!((reset.weight, reset.health_check_path), (1, None));
    let version = state.store().catalog_version().await.unwrap();
    for (what, change, setting) in [
        ("weight 0", json!({ "weight": 0 }), "providers[a].weight"),
        (
            "weight 1001",
            json!({ "weight": 1001 }),
            "providers[a].weight",
        ),
        (
            "path ../x",
            json!({ "health_check_path": "../x" }),
            "providers[a].health_check_path",
        ),
        (
            "path http://evil",
            json!({ "health_check_path": "http://evil" }),
            "providers[a].health_check_path",
        ),
    ] {
        let mut bad = exported.clone();
        bad["providers"][0] = with(bad["providers"][0].clone(), &change);
        let err = import(bad.to_string()).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("{setting}: ")), "{what}: {err}");
        assert!(!err.contains("evil"), "{err}");
    }
    let mut bad = exported.clone();
    bad["models"][0]["strategy"] = json!("fastest");
    let err = import(bad.to_string()).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "models[llama].strategy: must be one of round_robin, weighted, least_latency, priority"
    );
    assert_eq!(state.store().catalog_version().await.unwrap(), version);
    let unchanged = state.store().get_model("llama").await.unwrap().unwrap();
    assert_eq!(
        unchanged.strategy,
        cortex_domain::RoutingStrategy::RoundRobin
    );
    target.stop().await;
}

#[tokio::test]
async fn the_config_file_sets_and_changes_the_routing_fields() {
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
            (
                store.get_provider("p").await.unwrap().unwrap(),
                store.get_model("m").await.unwrap().unwrap(),
            )
        }
    };
    let declared = |provider: &str, model: &str| {
        format!(
            "[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n{provider}\n\
             [[models]]\nname = \"m\"\nprovider = \"p\"\n{model}\n"
        )
    };
    let (provider, model) = sync(declared(
        "weight = 4\nhealth_check_path = \"ping\"",
        "strategy = \"priority\"",
    ))
    .await;
    assert_eq!(provider.weight, 4);
    assert_eq!(provider.health_check_path.as_deref(), Some("ping"));
    assert_eq!(model.strategy, cortex_domain::RoutingStrategy::Priority);
    // A change in the file changes the rows; removing the keys goes back to the defaults.
    let (provider, model) = sync(declared("weight = 9", "strategy = \"weighted\"")).await;
    assert_eq!((provider.weight, provider.health_check_path), (9, None));
    assert_eq!(model.strategy, cortex_domain::RoutingStrategy::Weighted);
    let (provider, model) = sync(declared("", "")).await;
    assert_eq!((provider.weight, provider.health_check_path), (1, None));
    assert_eq!(model.strategy, cortex_domain::RoutingStrategy::RoundRobin);
    server.stop().await;
}

#[tokio::test]
async fn usage_listings_show_how_many_attempts_a_request_took() {
    let (server, _upstream) = crate::gateway_with_upstream().await;
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    assert_eq!(post_chat(&server, &key, "llama", false).await.status(), 200);
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
    let rows = listed(&server, &admin, "/admin/usage").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["attempts"], 1,
        "one attempt unless retried: {}",
        rows[0]
    );
    // A request that was retried (written as the routing engine will write it).
    let first = store
        .list_usage(&cortex_store::Tenant::All, &Default::default(), 1)
        .await
        .unwrap()[0]
        .clone();
    let retried = cortex_store::usage::UsageRecord {
        request_id: "req-retried".into(),
        attempts: 3,
        created_at: first.created_at + 1,
        ..first
    };
    store.insert_usage(&[retried]).await.unwrap();
    let rows = listed(&server, &admin, "/admin/usage").await;
    assert_eq!(rows[0]["request_id"], "req-retried");
    assert_eq!(rows[0]["attempts"], 3);
    server.stop().await;
}
