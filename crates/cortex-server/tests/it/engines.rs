//! Inference engines through the gateway (SPEC §17): created and started through the admin API,
//! routed to with a normal Cortex key only while running, withdrawn from routing before they
//! end, stopped at shutdown; refused definitions create nothing; RBAC. The engine is
//! `cortex-fake-engine` (cortex-engines' test binary) standing in for `llama-server`, and once
//! the real `llama-server` (`CORTEX_TEST_LLAMA_SERVER`, `CORTEX_TEST_GGUF_PYTHON`).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cortex_domain::Role;
use cortex_testkit::TestServer;
use serde_json::{json, Value};

use crate::admin::{admin, user_with_role, Session};
use crate::{all_scopes_key, post_chat};

const HF_TOKEN: &str = "hf_engineTokenForTests1234567890";

/// `cortex-fake-engine`, built next to this test binary (cargo builds another package's binary
/// only when asked, so it is built once here when it is missing).
fn fake_engine() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let path = dir.join("cortex-fake-engine");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "cortex-engines",
                "--bin",
                "cortex-fake-engine",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building cortex-fake-engine failed");
        assert!(path.exists(), "{} is missing", path.display());
        path
    })
    .clone()
}

/// A gateway whose `llama-server` is `program`, with a models directory holding `tiny.gguf`.
async fn engine_server(program: &std::path::Path) -> (TestServer, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    std::fs::write(models.path().join("tiny.gguf"), b"GGUF not really").unwrap();
    let server = TestServer::builder()
        .env("CORTEX_MODELS_DIR", models.path().to_str().unwrap())
        .env("CORTEX_LLAMA_SERVER_BIN", program.to_str().unwrap())
        .start()
        .await;
    (server, models)
}

fn tiny_body(extra: Value) -> Value {
    let mut body = json!({"name": "tiny", "engine": "llamacpp", "runtime": "process",
        "model": "tiny.gguf", "served_model_name": "tiny-chat", "restart": "never",
        "settings": {"ctx_size": 256}});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

async fn call(
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

async fn engine(server: &TestServer, session: &Session, id: &str) -> Value {
    let response = call(
        server,
        session,
        reqwest::Method::GET,
        &format!("/admin/engines/{id}"),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn wait_state(
    server: &TestServer,
    session: &Session,
    id: &str,
    state: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let current = engine(server, session, id).await;
        if current["status"]["state"] == state {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "engine never reached {state}: {current}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(server: &TestServer, session: &Session, body: Value) -> Value {
    let response = call(
        server,
        session,
        reqwest::Method::POST,
        "/admin/engines",
        Some(body),
    )
    .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    response.json().await.unwrap()
}

/// Whether anything accepts connections on `base_url`'s port.
async fn port_open(base_url: &str) -> bool {
    let address = base_url.trim_start_matches("http://");
    tokio::net::TcpStream::connect(address).await.is_ok()
}

#[tokio::test]
async fn an_engine_is_routed_only_while_running_and_leaves_routing_before_it_ends() {
    let (server, _models) = engine_server(&fake_engine()).await;
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    // Loading takes a while: the engine is `starting` and not routed until it answers.
    let created = create(
        &server,
        &admin,
        tiny_body(json!({"hf_token": HF_TOKEN, "env": {"FAKE_ENGINE_READY_DELAY_MS": "1500"}})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"]["state"], "stopped");
    assert_eq!(created["desired_state"], "stopped");
    assert_eq!(created["had_hf_token"], true);
    assert!(!created.to_string().contains(HF_TOKEN));
    assert_eq!(
        post_chat(&server, &key, "tiny-chat", false).await.status(),
        404
    );

    let started = call(
        &server,
        &admin,
        reqwest::Method::POST,
        &format!("/admin/engines/{id}/start"),
        None,
    )
    .await;
    assert_eq!(started.status(), 200);
    let starting = engine(&server, &admin, &id).await;
    assert_eq!(starting["status"]["state"], "starting", "{starting}");
    assert_eq!(
        post_chat(&server, &key, "tiny-chat", false).await.status(),
        404
    );

    let running = wait_state(&server, &admin, &id, "running", Duration::from_secs(20)).await;
    let base_url = running["status"]["base_url"].as_str().unwrap().to_owned();
    assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");

    // A normal Cortex key reaches the engine through the gateway, plain and streamed.
    let plain = post_chat(&server, &key, "tiny-chat", false).await;
    assert_eq!(plain.status(), 200);
    let body: Value = plain.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    let streamed = post_chat(&server, &key, "tiny-chat", true).await;
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.contains("data: ") && text.contains("[DONE]"), "{text}");
    let models: Value = server
        .http()
        .get(server.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(models.to_string().contains("tiny-chat"), "{models}");

    // The engine's own port refuses requests without its key, and with a Cortex key.
    let direct = server
        .http()
        .get(format!("{base_url}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    let direct = server
        .http()
        .get(format!("{base_url}/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);

    // Stop: the model leaves routing while the engine still listens (the drain), then it ends.
    let stopper = {
        let http = server.http().clone();
        let url = server.url(&format!("/admin/engines/{id}/stop"));
        let token = admin.access_token.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if post_chat(&server, &key, "tiny-chat", false).await.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the model never left routing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        port_open(&base_url).await,
        "the engine ended before it left routing"
    );
    assert_eq!(stopper.await.unwrap(), 200);
    let stopped = engine(&server, &admin, &id).await;
    assert_eq!(stopped["status"]["state"], "stopped", "{stopped}");
    assert_eq!(stopped["desired_state"], "stopped");
    assert!(
        !port_open(&base_url).await,
        "the engine still listens after stop"
    );

    // Logs are there and hold no secret; the audit trail names every step without the token.
    let logs: Value = call(
        &server,
        &admin,
        reqwest::Method::GET,
        &format!("/admin/engines/{id}/logs?tail=50"),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(logs["lines"].is_array());
    assert!(!logs.to_string().contains(HF_TOKEN));
    let audit = crate::audit_events(server.state().store(), None, 100).await;
    for action in ["engine.create", "engine.start", "engine.stop"] {
        assert!(audit.iter().any(|e| e.action == action), "{action} missing");
    }
    let create_event = audit.iter().find(|e| e.action == "engine.create").unwrap();
    assert!(
        create_event.details.contains("\"had_hf_token\":true"),
        "{}",
        create_event.details
    );
    assert!(audit.iter().all(|e| !e.details.contains(HF_TOKEN)));

    // Delete: gone from the list.
    let deleted = call(
        &server,
        &admin,
        reqwest::Method::DELETE,
        &format!("/admin/engines/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    let list: Value = call(
        &server,
        &admin,
        reqwest::Method::GET,
        "/admin/engines",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_running_engines_and_auto_start_starts_them_at_boot() {
    let program = fake_engine();
    let master_key = "22".repeat(32);
    let models = tempfile::tempdir().unwrap();
    std::fs::write(models.path().join("tiny.gguf"), b"GGUF not really").unwrap();
    let server = TestServer::builder()
        .env("CORTEX_MASTER_KEY", &master_key)
        .env("CORTEX_MODELS_DIR", models.path().to_str().unwrap())
        .env("CORTEX_LLAMA_SERVER_BIN", program.to_str().unwrap())
        .start()
        .await;
    let admin = admin(&server).await;
    let created = create(&server, &admin, tiny_body(json!({"auto_start": true}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    call(
        &server,
        &admin,
        reqwest::Method::POST,
        &format!("/admin/engines/{id}/start"),
        None,
    )
    .await;
    let running = wait_state(&server, &admin, &id, "running", Duration::from_secs(20)).await;
    let base_url = running["status"]["base_url"].as_str().unwrap().to_owned();
    let database_url = server.database_url().to_owned();
    // Keep the database: a second server on it starts the engine by itself (auto_start).
    let second = TestServer::builder()
        .env("DATABASE_URL", &database_url)
        .env("CORTEX_MASTER_KEY", &master_key)
        .env("CORTEX_MODELS_DIR", models.path().to_str().unwrap())
        .env("CORTEX_LLAMA_SERVER_BIN", program.to_str().unwrap())
        .start()
        .await;
    let second_admin = crate::admin::admin(&second).await;
    let booted = wait_state(
        &second,
        &second_admin,
        &id,
        "running",
        Duration::from_secs(20),
    )
    .await;
    let second_url = booted["status"]["base_url"].as_str().unwrap().to_owned();
    assert_ne!(
        second_url, base_url,
        "each serving process runs its own engine"
    );
    second.stop().await;
    assert!(
        !port_open(&second_url).await,
        "shutdown left the engine running"
    );
    server.stop().await;
    assert!(
        !port_open(&base_url).await,
        "shutdown left the engine running"
    );
}

#[tokio::test]
async fn refused_definitions_create_nothing() {
    let (server, models) = engine_server(&fake_engine()).await;
    let admin = admin(&server).await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.gguf"), b"GGUF").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.gguf"),
        models.path().join("escape.gguf"),
    )
    .unwrap();
    let outside_file = outside.path().join("secret.gguf");
    let cases = [
        (json!({"extra_args": ["--host=0.0.0.0"]}), "--host"),
        (json!({"extra_args": ["--api-key", "mine"]}), "--api-key"),
        (json!({"extra_args": ["--port", "80"]}), "--port"),
        (json!({"env": {"LLAMA_API_KEY": "x"}}), "LLAMA_API_KEY"),
        (json!({"model": "../../etc/passwd"}), "model"),
        (json!({"model": "/etc/passwd"}), "model"),
        (json!({"model": outside_file.to_str().unwrap()}), "model"),
        (json!({"model": "escape.gguf"}), "model"),
        (json!({"unknown_field": 1}), "unknown_field"),
    ];
    for (extra, named) in cases {
        for path in ["/admin/engines", "/admin/engines/dry-run"] {
            let response = call(
                &server,
                &admin,
                reqwest::Method::POST,
                path,
                Some(tiny_body(extra.clone())),
            )
            .await;
            assert_eq!(response.status(), 400, "{path} {extra}");
            let body: Value = response.json().await.unwrap();
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(named), "{path} {extra}: {message}");
            assert!(!message.contains("mine"), "the value was echoed: {message}");
        }
    }
    let list: Value = call(
        &server,
        &admin,
        reqwest::Method::GET,
        "/admin/engines",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    assert!(server
        .state()
        .store()
        .list_engines()
        .await
        .unwrap()
        .is_empty());

    // A good dry run shows the command with the key redacted; the models listing sees tiny.gguf.
    let dry: Value = call(
        &server,
        &admin,
        reqwest::Method::POST,
        "/admin/engines/dry-run",
        Some(tiny_body(json!({"hf_token": HF_TOKEN}))),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(dry["command"].to_string().contains("tiny.gguf"), "{dry}");
    assert!(!dry.to_string().contains(HF_TOKEN), "{dry}");
    let local: Value = call(
        &server,
        &admin,
        reqwest::Method::GET,
        "/admin/models/local",
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(local.to_string().contains("tiny.gguf"), "{local}");

    // A PATCH that would add a denied flag is refused and changes nothing.
    let created = create(&server, &admin, tiny_body(json!({}))).await;
    let id = created["id"].as_str().unwrap();
    let patched = call(
        &server,
        &admin,
        reqwest::Method::PATCH,
        &format!("/admin/engines/{id}"),
        Some(json!({"extra_args": ["--host=0.0.0.0"]})),
    )
    .await;
    assert_eq!(patched.status(), 400);
    let after = engine(&server, &admin, id).await;
    assert_eq!(after["spec"], created["spec"]);
    server.stop().await;
}

#[tokio::test]
async fn viewers_read_engines_and_developers_do_not_see_them() {
    let (server, _models) = engine_server(&fake_engine()).await;
    let admin = admin(&server).await;
    let created = create(&server, &admin, tiny_body(json!({}))).await;
    let id = created["id"].as_str().unwrap();
    let viewer = user_with_role(&server, &admin, "engine-viewer", Role::Viewer).await;
    let developer = user_with_role(&server, &admin, "engine-dev", Role::Developer).await;
    let operator = user_with_role(&server, &admin, "engine-op", Role::Operator).await;
    use reqwest::Method as M;
    assert_eq!(
        call(&server, &viewer, M::GET, "/admin/engines", None)
            .await
            .status(),
        200
    );
    assert_eq!(
        call(
            &server,
            &viewer,
            M::GET,
            &format!("/admin/engines/{id}/logs"),
            None
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        call(
            &server,
            &viewer,
            M::POST,
            &format!("/admin/engines/{id}/start"),
            None
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        call(
            &server,
            &viewer,
            M::POST,
            "/admin/engines",
            Some(tiny_body(json!({"name": "v"})))
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        call(&server, &developer, M::GET, "/admin/engines", None)
            .await
            .status(),
        403
    );
    assert_eq!(
        call(&server, &developer, M::GET, "/admin/models/local", None)
            .await
            .status(),
        403
    );
    assert_eq!(
        call(
            &server,
            &operator,
            M::POST,
            &format!("/admin/engines/{id}/stop"),
            None
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        engine(&server, &admin, id).await["desired_state"],
        "stopped"
    );
    server.stop().await;
}

/// A prerequisite from the environment: under `CI=true` its absence fails the test; elsewhere
/// the test is skipped with the reason printed.
fn prerequisite(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("{variable} is not set; CI must provide it (scripts/engines-prereqs.sh)")
        }
        _ => {
            eprintln!("skipping: {variable} is not set (source scripts/engines-prereqs.sh first)");
            None
        }
    }
}

#[tokio::test]
async fn the_real_llama_server_is_started_routed_and_stopped_through_the_gateway() {
    let Some(llama) = prerequisite("CORTEX_TEST_LLAMA_SERVER") else {
        return;
    };
    let Some(python) = prerequisite("CORTEX_TEST_GGUF_PYTHON") else {
        return;
    };
    let (server, models) = engine_server(std::path::Path::new(&llama)).await;
    let writer = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../cortex-engines/tests/write_tiny_gguf.py");
    let output = std::process::Command::new(python)
        .arg(&writer)
        .arg(models.path().join("tiny-llama.gguf"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    let created = create(
        &server,
        &admin,
        json!({"name": "tiny-llama", "engine": "llamacpp", "runtime": "process",
            "model": "tiny-llama.gguf", "restart": "never",
            "settings": {"ctx_size": 256, "threads": 2, "parallel": 1, "n_gpu_layers": 0}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    call(
        &server,
        &admin,
        reqwest::Method::POST,
        &format!("/admin/engines/{id}/start"),
        None,
    )
    .await;
    let running = wait_state(&server, &admin, id, "running", Duration::from_secs(120)).await;
    let base_url = running["status"]["base_url"].as_str().unwrap().to_owned();
    let mut body = crate::chat_body("tiny-llama", false);
    body["max_tokens"] = json!(4);
    let plain = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200, "{}", plain.text().await.unwrap());
    body["stream"] = json!(true);
    let streamed = server
        .http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    assert!(text.contains("data: ") && text.contains("[DONE]"), "{text}");
    let stop = call(
        &server,
        &admin,
        reqwest::Method::POST,
        &format!("/admin/engines/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(stop.status(), 200);
    assert_eq!(
        post_chat(&server, &key, "tiny-llama", false).await.status(),
        404
    );
    assert!(!port_open(&base_url).await);
    server.stop().await;
}

#[tokio::test]
async fn a_start_and_stop_written_to_the_store_by_the_command_line_are_picked_up() {
    let (server, _models) = engine_server(&fake_engine()).await;
    let admin = admin(&server).await;
    let key = all_scopes_key(&server).await;
    let created = create(&server, &admin, tiny_body(json!({}))).await;
    let id = created["id"].as_str().unwrap();
    let store = server.state().store();
    // What `cortex engines start` does: record the desired state, nothing else.
    cortex_control::engines::command_engine(
        store,
        id,
        cortex_control::engines::EngineCommand::Start,
        "cli",
        "",
        1,
    )
    .await
    .unwrap();
    wait_state(&server, &admin, id, "running", Duration::from_secs(20)).await;
    assert_eq!(
        post_chat(&server, &key, "tiny-chat", false).await.status(),
        200
    );
    cortex_control::engines::command_engine(
        store,
        id,
        cortex_control::engines::EngineCommand::Stop,
        "cli",
        "",
        2,
    )
    .await
    .unwrap();
    wait_state(&server, &admin, id, "stopped", Duration::from_secs(20)).await;
    assert_eq!(
        post_chat(&server, &key, "tiny-chat", false).await.status(),
        404
    );
    // The serving process mirrored the engine's output for `cortex engines logs`.
    let mirror = cortex_server::engines::log_mirror_path(server.data_dir(), id);
    assert!(mirror.exists(), "{}", mirror.display());
    server.stop().await;
}
