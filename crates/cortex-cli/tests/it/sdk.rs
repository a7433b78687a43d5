//! The official OpenAI Python SDK against a running `cortex serve`.
//!
//! The README's test command creates a throwaway venv with `openai` and sets
//! `CORTEX_TEST_PYTHON`; without it this test fails rather than skipping.

use cortex_testkit::FakeUpstream;

use crate::process::run;
use crate::CortexProcess;

const SDK_SCRIPT: &str = r#"
import os, sys
from openai import OpenAI
client = OpenAI(base_url=os.environ["CORTEX_BASE_URL"] + "/v1", api_key=os.environ["CORTEX_KEY"])
models = [m.id for m in client.models.list()]
assert models == ["llama"], models
chat = client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}])
assert chat.choices[0].message.content == "hello from the fake upstream", chat
assert chat.usage.prompt_tokens == 11, chat.usage
parts = []
for chunk in client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "hi"}], stream=True):
    for choice in chunk.choices:
        if choice.delta.content:
            parts.append(choice.delta.content)
assert "".join(parts) == "tok0 tok1 tok2 ", parts
emb = client.embeddings.create(model="llama", input="vector")
assert emb.data[0].embedding == [0.1, 0.2, 0.3], emb
try:
    OpenAI(base_url=os.environ["CORTEX_BASE_URL"] + "/v1", api_key="ctx_wrong").models.list()
    raise SystemExit("a wrong key was accepted")
except Exception as e:
    assert "401" in str(e) or getattr(e, "status_code", None) == 401, e
print("sdk ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_sdk_works_against_cortex() {
    let python = std::env::var("CORTEX_TEST_PYTHON")
        .expect("CORTEX_TEST_PYTHON must point at a python with the openai package (scripts/test.sh sets it)");
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(&config, format!("[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\n", upstream.base_url())).unwrap();
    let config_path = config.display().to_string();
    let env = [("CORTEX_CONFIG", config_path.as_str())];
    let server = CortexProcess::start(&data, &env);
    let created = run(&data, &["keys", "create", "--name", "sdk"], &env);
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let base = format!("http://{}", server.addr);
    // Wait until the running server has picked the key up (it polls once a second).
    let http = reqwest::Client::new();
    assert!(
        cortex_testkit::eventually(std::time::Duration::from_secs(5), || async {
            http.get(format!("{base}/v1/models"))
                .bearer_auth(&key)
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
    );

    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SDK_SCRIPT)
        .env("CORTEX_BASE_URL", &base)
        .env("CORTEX_KEY", &key)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("sdk ok"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    server.terminate();
}
