//! The official `anthropic` and `openai` Python SDKs against a running `cortex serve`, on the
//! Messages and Responses doors, each against a provider that speaks the door's dialect and one
//! that does not (SPEC §15). The scripts are in `sdk_scripts/`; the README's test command
//! installs both SDKs and sets `CORTEX_TEST_PYTHON` (without it these tests fail, not skip).

use cortex_testkit::FakeUpstream;

use crate::process::run;
use crate::CortexProcess;

const ANTHROPIC_SCRIPT: &str = include_str!("sdk_scripts/anthropic_messages.py");
const RESPONSES_SCRIPT: &str = include_str!("sdk_scripts/openai_responses.py");

/// A gateway with three providers — chat-only, Responses-speaking and Anthropic — and a key.
struct Gateway {
    server: CortexProcess,
    key: String,
    _upstreams: [FakeUpstream; 3],
    _dir: tempfile::TempDir,
}

async fn gateway() -> Gateway {
    let plain = FakeUpstream::start().await;
    let native = FakeUpstream::start().await;
    let anthropic = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[providers]]
name = "plain"
base_url = "{}"

[[providers]]
name = "native"
base_url = "{}"
responses_api = true

[[providers]]
name = "anthro"
kind = "anthropic"
base_url = "{}"
api_key = "sk-ant-fake"

[[models]]
name = "gpt-fake"
provider = "plain"

[[models]]
name = "gpt-native"
provider = "native"

[[models]]
name = "claude-fake"
provider = "anthro"
"#,
            plain.base_url(),
            native.base_url(),
            anthropic.base_url()
        ),
    )
    .unwrap();
    let config_path = config.display().to_string();
    let env = [("CORTEX_CONFIG", config_path.as_str())];
    let migrated = run(&data, &["migrate"], &env);
    assert!(migrated.status.success());
    let created = run(&data, &["keys", "create", "--name", "sdk"], &env);
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let server = CortexProcess::start(&data, &env);
    Gateway {
        server,
        key,
        _upstreams: [plain, native, anthropic],
        _dir: dir,
    }
}

async fn run_script(gateway: &Gateway, script: &str, model: &str, ok: &str) {
    let python = std::env::var("CORTEX_TEST_PYTHON").expect(
        "CORTEX_TEST_PYTHON must point at a python with the anthropic and openai packages (scripts/test.sh sets it)",
    );
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .env("CORTEX_BASE_URL", format!("http://{}", gateway.server.addr))
        .env("CORTEX_KEY", &gateway.key)
        .env("MODEL", model)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(ok),
        "{model}\nstdout: {stdout}\nstderr: {stderr}\nserver: {}",
        gateway.server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_anthropic_sdk_works_against_the_messages_door() {
    let gateway = gateway().await;
    for model in ["gpt-fake", "claude-fake"] {
        run_script(&gateway, ANTHROPIC_SCRIPT, model, "anthropic ok").await;
    }
    gateway.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_sdk_responses_work_against_the_responses_door() {
    let gateway = gateway().await;
    for model in ["gpt-fake", "gpt-native", "claude-fake"] {
        run_script(&gateway, RESPONSES_SCRIPT, model, "responses ok").await;
    }
    gateway.server.terminate();
}
