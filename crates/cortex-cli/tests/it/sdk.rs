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

const MCP_SCRIPT: &str = r#"
import asyncio, json, os
from mcp import ClientSession
from mcp.client import streamable_http as transport

def failed(result):
    # SDK 1.x calls it isError, 2.x is_error.
    return getattr(result, "is_error", getattr(result, "isError", None))

async def main():
    url = os.environ["CORTEX_BASE_URL"] + "/mcp"
    headers = {"Authorization": "Bearer " + os.environ["MCP_TOKEN"]}
    if hasattr(transport, "streamable_http_client"):
        from mcp.shared._httpx_utils import create_mcp_http_client
        client = create_mcp_http_client(headers=headers)
        connect = transport.streamable_http_client(url, http_client=client)
    else:
        connect = transport.streamablehttp_client(url, headers=headers)
    async with connect as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            tools = sorted(t.name for t in (await session.list_tools()).tools)
            assert tools == ["chat", "list_models", "usage"], tools
            models = await session.call_tool("list_models", {})
            assert failed(models) is False, models.content[0].text
            assert json.loads(models.content[0].text) == ["llama"], models
            chat = await session.call_tool("chat", {"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
            assert failed(chat) is False and chat.content[0].text == "hello from the fake upstream", chat
            usage = await session.call_tool("usage", {"days": 1})
            assert failed(usage) is False, usage
    print("mcp ok")

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_mcp_python_sdk_lists_and_calls_every_tool() {
    let python = std::env::var("CORTEX_TEST_PYTHON").expect(
        "CORTEX_TEST_PYTHON must point at a python with the mcp package (scripts/test.sh sets it)",
    );
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(&config, format!("[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\n", upstream.base_url())).unwrap();
    let config_path = config.display().to_string();
    let token = "mcp-token-for-the-python-sdk-0123456789";
    let migrated = run(
        &data,
        &["migrate"],
        &[("CORTEX_CONFIG", config_path.as_str())],
    );
    assert!(migrated.status.success());
    let created = run(
        &data,
        &["keys", "create", "--name", "agent", "--scopes", "chat"],
        &[("CORTEX_CONFIG", config_path.as_str())],
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let env = [
        ("CORTEX_CONFIG", config_path.as_str()),
        ("MCP_TOKEN", token),
        ("MCP_API_KEY", key.as_str()),
    ];
    let server = CortexProcess::start(&data, &env);
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(MCP_SCRIPT)
        .env("CORTEX_BASE_URL", format!("http://{}", server.addr))
        .env("MCP_TOKEN", token)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("mcp ok"),
        "stdout: {stdout}\nstderr: {stderr}\nserver: {}",
        server.log_text()
    );
    server.terminate();
}
