//! One real engine: llama.cpp's `llama-server` (`CORTEX_TEST_LLAMA_SERVER`, built from source by
//! scripts/engines-prereqs.sh) serving a tiny GGUF written here with the `gguf` package
//! (`CORTEX_TEST_GGUF_PYTHON`; random weights, a small vocabulary, nothing downloaded).

use std::path::PathBuf;
use std::time::Duration;

use cortex_engines::{list_local, EngineId, ModelsDir, Runtimes, Supervisor, WithdrawReason};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn llama_server_serves_a_tiny_model_through_the_supervisor() {
    let Some(server) = prerequisite("CORTEX_TEST_LLAMA_SERVER") else {
        return;
    };
    let Some(python) = prerequisite("CORTEX_TEST_GGUF_PYTHON") else {
        return;
    };
    let models = tempfile::tempdir().unwrap();
    let gguf = models.path().join("tiny-llama.gguf");
    let writer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/write_tiny_gguf.py");
    let output = std::process::Command::new(python)
        .arg(&writer)
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The header reader agrees with what was written.
    let listed = list_local(&ModelsDir::new(models.path()).unwrap()).unwrap();
    let header = listed
        .first()
        .and_then(|m| m.gguf.clone())
        .expect("the GGUF is listed with its header");
    assert_eq!(header.architecture.as_deref(), Some("llama"));
    assert_eq!(header.quantization.as_deref(), Some("F32"));
    assert_eq!(header.context_length, Some(256));
    assert!(header.parameter_count.unwrap() > 10_000);

    let events = recorder();
    let mut options = fast_options(models.path());
    options.programs.llama_server = PathBuf::from(server);
    options.ready_timeout = Duration::from_secs(120);
    options.ready_poll = Duration::from_millis(200);
    options.stop_grace = Duration::from_secs(10);
    let sup = Supervisor::new(options, events.clone(), Runtimes::default());
    let id = EngineId::from("llama");
    sup.upsert(
        id.clone(),
        spec(
            json!({"name": "tiny-llama", "engine": "llamacpp", "runtime": "process",
            "model": "tiny-llama.gguf", "restart": "never",
            "settings": {"ctx_size": 256, "threads": 2, "parallel": 1, "n_gpu_layers": 0}}),
        ),
    )
    .unwrap();
    sup.start(&id).unwrap();
    let status = wait_for(
        &sup,
        &id,
        Duration::from_secs(120),
        "llama-server running",
        is_running,
    )
    .await;
    let (base_url, key, served) = events.running(&id);
    assert_eq!(served, "tiny-llama");
    check_openai_surface(&base_url, &key, "tiny-llama").await;

    sup.stop(&id).await.unwrap();
    assert_eq!(events.withdrawals(&id), [(WithdrawReason::Stop, true)]);
    wait_gone(status.pid.unwrap()).await;
    let logs = sup.logs(&id, 500).unwrap().join("\n");
    assert!(!logs.contains(&key), "the key leaked into the logs");
    sup.shutdown().await;
}
