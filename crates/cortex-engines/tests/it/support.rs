//! Shared test kit: the fake engine's path, recorded routing events, polling helpers, fixtures.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_engines::{
    Backoff, EngineEvents, EngineId, EngineSpec, EngineState, EngineStatus, ModelsDir, Programs,
    RunningEngine, Supervisor, SupervisorOptions, WithdrawReason,
};
use secrecy::ExposeSecret;

pub const FAKE_ENGINE: &str = env!("CARGO_BIN_EXE_cortex-fake-engine");

/// A prerequisite from the environment: under `CI=true` its absence fails the test; elsewhere
/// the test is skipped with the reason printed.
pub fn prerequisite(variable: &str) -> Option<String> {
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

#[derive(Debug, Clone)]
pub enum Event {
    Running {
        id: EngineId,
        base_url: String,
        api_key: String,
        served: String,
    },
    /// `port_open`: the engine still accepted connections when it was withdrawn.
    Withdrawn {
        id: EngineId,
        reason: WithdrawReason,
        port_open: bool,
    },
}

/// Records routing events; on withdrawal it checks that the engine is still up, which proves
/// the withdrawal came before the signal.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
    ports: Mutex<Vec<(EngineId, u16)>>,
    pub running_count: AtomicU32,
}

impl EngineEvents for Recorder {
    fn running(&self, engine: &RunningEngine) {
        let port = engine
            .base_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        self.ports.lock().unwrap().push((engine.id.clone(), port));
        self.events.lock().unwrap().push(Event::Running {
            id: engine.id.clone(),
            base_url: engine.base_url.clone(),
            api_key: engine.api_key.expose_secret().to_owned(),
            served: engine.served_model_name.clone(),
        });
        self.running_count.fetch_add(1, Ordering::SeqCst);
    }

    fn withdrawn(&self, id: &EngineId, reason: WithdrawReason) {
        let port = self
            .ports
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(i, _)| i == id)
            .map(|(_, p)| *p);
        let port_open = port.is_some_and(|port| {
            std::net::TcpStream::connect_timeout(
                &([127, 0, 0, 1], port).into(),
                Duration::from_secs(1),
            )
            .is_ok()
        });
        self.events.lock().unwrap().push(Event::Withdrawn {
            id: id.clone(),
            reason,
            port_open,
        });
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// The latest `running` event of `id`: (base_url, key, served name).
    pub fn running(&self, id: &EngineId) -> (String, String, String) {
        self.all()
            .into_iter()
            .rev()
            .find_map(|event| match event {
                Event::Running {
                    id: i,
                    base_url,
                    api_key,
                    served,
                } if &i == id => Some((base_url, api_key, served)),
                _ => None,
            })
            .expect("no running event")
    }

    pub fn withdrawals(&self, id: &EngineId) -> Vec<(WithdrawReason, bool)> {
        self.all()
            .into_iter()
            .filter_map(|event| match event {
                Event::Withdrawn {
                    id: i,
                    reason,
                    port_open,
                } if &i == id => Some((reason, port_open)),
                _ => None,
            })
            .collect()
    }
}

/// Options with short times for tests.
pub fn fast_options(models_dir: &Path) -> SupervisorOptions {
    SupervisorOptions {
        models_dir: Some(ModelsDir::new(models_dir).unwrap()),
        programs: Programs {
            vllm: PathBuf::from(FAKE_ENGINE),
            llama_server: PathBuf::from(FAKE_ENGINE),
        },
        ready_timeout: Duration::from_secs(20),
        ready_poll: Duration::from_millis(50),
        probe_timeout: Duration::from_secs(2),
        stop_grace: Duration::from_secs(5),
        drain: Duration::ZERO,
        backoff: Backoff {
            base: Duration::from_millis(300),
            max: Duration::from_secs(5),
            reset_after: Duration::from_secs(60),
        },
        log_lines: 500,
        failed_log_lines: 10,
    }
}

/// A models directory with a (fake) GGUF file and a Hugging Face-layout folder.
pub fn models_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.gguf"), b"GGUF not really").unwrap();
    std::fs::create_dir_all(dir.path().join("org/tiny-hf")).unwrap();
    std::fs::write(dir.path().join("org/tiny-hf/config.json"), b"{}").unwrap();
    dir
}

pub fn spec(value: serde_json::Value) -> EngineSpec {
    serde_json::from_value(value).unwrap()
}

/// Polls `supervisor` until `id`'s status satisfies `done`, or panics after `limit` with the
/// last status and logs.
pub async fn wait_for(
    supervisor: &Supervisor,
    id: &EngineId,
    limit: Duration,
    what: &str,
    done: impl Fn(&EngineStatus) -> bool,
) -> EngineStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = supervisor.status(id).expect("engine exists");
        if done(&status) {
            return status;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {status:?}\nlogs: {:#?}",
                supervisor.logs(id, 50)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn is_running(status: &EngineStatus) -> bool {
    status.state == EngineState::Running
}

/// Whether a process with this id exists (zombies excluded: they are gone for our purpose).
pub fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Polls until `pid` is gone.
pub async fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder::default())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Checks the OpenAI surface of an engine at `base_url`: 401 without or with a wrong key,
/// `/v1/models` lists `served`, a chat request and a stream go through.
pub async fn check_openai_surface(base_url: &str, key: &str, served: &str) {
    let client = http();
    let models = format!("{base_url}/v1/models");
    let no_key = client.get(&models).send().await.unwrap();
    assert_eq!(no_key.status(), 401, "the engine answered without its key");
    let wrong = client
        .get(&models)
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "the engine answered a wrong key");
    let listed: serde_json::Value = client
        .get(&models)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&served), "{listed}");

    let chat = format!("{base_url}/v1/chat/completions");
    let body = serde_json::json!({"model": served, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let refused = client.post(&chat).json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer = client
        .post(&chat)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = serde_json::json!(true);
    let stream = client
        .post(&chat)
        .bearer_auth(key)
        .json(&stream_body)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = stream.text().await.unwrap();
    let chunks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("data: ") && *l != "data: [DONE]")
        .collect();
    assert!(!chunks.is_empty(), "{text}");
    for chunk in &chunks {
        let value: serde_json::Value =
            serde_json::from_str(chunk.trim_start_matches("data: ")).unwrap();
        assert_eq!(value["object"], "chat.completion.chunk", "{chunk}");
    }
    assert!(text.contains("data: [DONE]"), "{text}");
}
