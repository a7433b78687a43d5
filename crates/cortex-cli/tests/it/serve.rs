use std::time::Duration;

use cortex_testkit::FakeUpstream;

use crate::process::run;
use crate::CortexProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_on_defaults_with_sqlite_and_a_private_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = CortexProcess::start(&data, &[]);
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(data.join("cortex.db").is_file());
    let key_file = data.join("master.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn malformed_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["serve"], &[("RATE_LIMIT_RPS", "abc")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("RATE_LIMIT_RPS"), "{stderr}");

    let output = run(
        dir.path(),
        &["serve"],
        &[
            ("CORS_ALLOW_ORIGINS", "*"),
            ("CORS_ALLOW_CREDENTIALS", "true"),
        ],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .contains("CORS_ALLOW_ORIGINS"));

    // Feature flags: an unknown flag or a malformed file stops start-up the same way.
    for contents in [r#"{"warp_drive": true}"#, r#"{"audit_forwarding": "#] {
        let flags = dir.path().join("flags.json");
        std::fs::write(&flags, contents).unwrap();
        let output = run(
            dir.path(),
            &["serve"],
            &[("CORTEX_FEATURE_FLAGS_FILE", flags.to_str().unwrap())],
        );
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("CORTEX_FEATURE_FLAGS_FILE"), "{stderr}");
    }
}

#[test]
fn bootstrap_prints_a_generated_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = crate::process::base_env(&data);
    env.retain(|(k, _)| k != "CORTEX_ADMIN_PASSWORD");
    // The first command on an empty database creates the admin and shows the password once.
    let output = crate::process::cortex()
        .arg("migrate")
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(output.status.success());
    let first = String::from_utf8_lossy(&output.stderr);
    assert!(
        first.contains("username: admin") && first.contains("password:"),
        "{first}"
    );
    let again = crate::process::cortex()
        .arg("migrate")
        .env_clear()
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&again.stderr).contains("password:"));
    // `serve` on the bootstrapped database does not print it either.
    let server = {
        let mut command = crate::process::cortex();
        command
            .arg("serve")
            .env_clear()
            .envs(env)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        command.spawn().unwrap()
    };
    let output = wait_for_stderr(server, "cortex listening");
    assert!(!output.contains("password:"), "{output}");
}

/// Reads a child's stderr until `marker` appears, then kills it and returns what it said.
fn wait_for_stderr(mut child: std::process::Child, marker: &str) -> String {
    use std::io::{BufRead, BufReader};
    // If the marker never comes, the child is killed after a while so the read below ends.
    let pid = child.id().to_string();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(30));
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(&pid)
            .status();
    });
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_cli_work_and_prompts_are_never_stored_or_logged() {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(
        &config,
        format!("[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\napi_key = {{ env = \"FAKE_PROVIDER_KEY\" }}\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\n", upstream.base_url()),
    )
    .unwrap();
    let config_path = config.display().to_string();
    let env = [
        ("CORTEX_CONFIG", config_path.as_str()),
        ("FAKE_PROVIDER_KEY", "planted-provider-secret-7Q2"),
        ("RUST_LOG", "debug"),
    ];
    let server = CortexProcess::start(&data, &env);

    let created = run(
        &data,
        &["keys", "create", "--name", "cli key", "--scopes", "chat"],
        &env,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("ctx_"), "{key}");

    let marker = "MARKER-5f1d8c7e-do-not-store";
    let http = reqwest::Client::new();
    let mut status = 0;
    for _ in 0..100 {
        let response = http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "model": "llama", "messages": [{ "role": "user", "content": marker }] }))
            .send()
            .await
            .unwrap();
        status = response.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the CLI-created key was not picked up");
    assert_eq!(
        upstream.received()[0].headers["authorization"],
        "Bearer planted-provider-secret-7Q2"
    );

    let listed = run(&data, &["keys", "list"], &env);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listing.contains("cli key") && listing.contains("active"),
        "{listing}"
    );
    assert!(
        !listing.contains(&key[17..]),
        "the secret must never be listed"
    );

    // Every way a secret could leave through an answer: listings, the export, the audit log,
    // usage, the check, the OpenAPI document, a provider update and a refused create.
    let planted_via_api = "planted-api-secret-9Zq";
    let login: serde_json::Value = http
        .post(server.url("/admin/auth/login"))
        .json(
            &serde_json::json!({ "username": "admin", "password": crate::process::ADMIN_PASSWORD }),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let mut answers = Vec::new();
    let providers: serde_json::Value = http
        .get(server.url("/admin/providers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let provider_id = providers["data"][0]["id"].as_str().unwrap().to_owned();
    let updated = http
        .patch(server.url(&format!("/admin/providers/{provider_id}")))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "api_key": planted_via_api }))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    answers.push(updated.text().await.unwrap());
    let refused = http
        .post(server.url("/admin/providers"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "bad", "base_url": "not a url", "api_key": planted_via_api }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    answers.push(refused.text().await.unwrap());
    for path in [
        "/admin/providers",
        "/admin/models",
        "/admin/keys",
        "/admin/config/export",
        "/admin/audit?limit=1000",
        "/admin/audit/verify",
        "/admin/usage",
        "/admin/check",
        "/admin/features",
        "/openapi.json",
    ] {
        let response = http
            .get(server.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        answers.push(response.text().await.unwrap());
    }
    assert!(
        answers.iter().any(|a| a.contains("[REDACTED]")),
        "the export was not read"
    );
    // The command-line exports, and a backup (written into the data dir's storage root).
    answers.push(String::from_utf8(run(&data, &["config", "export"], &env).stdout).unwrap());
    answers.push(String::from_utf8(run(&data, &["audit", "export"], &env).stdout).unwrap());
    assert!(
        run(&data, &["backup", "--output", "redaction-check.db"], &env)
            .status
            .success()
    );
    for answer in &answers {
        for secret in ["planted-provider-secret-7Q2", planted_via_api] {
            assert!(
                !answer.contains(secret),
                "a secret reached an answer or export: {answer}"
            );
        }
    }

    let log = server.log.clone();
    let status = server.terminate();
    assert!(status.success());
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.contains("cortex listening"),
        "the log capture is empty: {log}"
    );
    assert!(!log.contains(marker), "the prompt reached the log");
    assert!(
        !log.contains("planted-provider-secret-7Q2"),
        "the provider secret reached the log"
    );
    assert!(!log.contains(&key[17..]), "the client key reached the log");
    // Nothing Cortex wrote holds the prompt or the provider secret in plaintext.
    let mut written = Vec::new();
    for entry in walk(&data) {
        written.extend(std::fs::read(entry).unwrap());
    }
    let written = String::from_utf8_lossy(&written);
    assert!(!written.contains(marker), "the prompt reached the data dir");
    assert!(
        !written.contains("planted-provider-secret-7Q2"),
        "the provider secret is stored in plaintext"
    );
    assert!(
        !written.contains(planted_via_api) && !log.contains(planted_via_api),
        "the secret set through the API is stored or logged in plaintext"
    );
    assert!(
        data.join("storage/redaction-check.db").is_file(),
        "the backup was not among the files checked"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
