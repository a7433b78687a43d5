//! OpenTelemetry traces of `/v1` requests, received by a real OTLP/HTTP receiver: a Python
//! server decoding the official protobuf messages (`sdk_scripts/otlp_receiver.py`, with
//! `opentelemetry-proto` from the venv `scripts/test.sh` makes; `CORTEX_TEST_PYTHON`).
//!
//! The span tree and its attributes are checked request by request, no span (nor any byte
//! sent to the receiver) holds the prompt, the answer or a key, and an incoming `traceparent`
//! is honoured from a trusted proxy only.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cortex_testkit::FakeUpstream;
use futures_util::StreamExt;
use serde_json::Value;

use crate::process::run;
use crate::CortexProcess;

const RECEIVER: &str = include_str!("sdk_scripts/otlp_receiver.py");
const MARKER: &str = "PROMPT-MARKER-7c1e9b2f";

struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_receiver(python: &str, dir: &Path) -> Receiver {
    let script = dir.join("otlp_receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let out = dir.join("spans.jsonl");
    let mut child = Command::new(python)
        .arg(&script)
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the receiver prints its port");
    Receiver { child, port, out }
}

fn spans(receiver: &Receiver) -> Vec<Value> {
    std::fs::read_to_string(&receiver.out)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The root span of the request `id` and its descendants, by name.
struct Tree<'a> {
    root: &'a Value,
    children: Vec<&'a Value>,
}

impl<'a> Tree<'a> {
    fn of(spans: &'a [Value], id: &str) -> Option<Tree<'a>> {
        let root = spans
            .iter()
            .find(|s| s["attributes"]["cortex.request_id"] == id && s["kind"] == "SERVER")?;
        let children = spans
            .iter()
            .filter(|s| s["parent_span_id"] == root["span_id"])
            .collect();
        Some(Tree { root, children })
    }

    fn child(&self, name: &str) -> &'a Value {
        self.children
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span under {}", self.root))
    }

    fn names(&self) -> Vec<&str> {
        self.children
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_to_a_real_otlp_receiver_without_content() {
    let python = std::env::var("CORTEX_TEST_PYTHON").expect(
        "CORTEX_TEST_PYTHON must point at a python with opentelemetry-proto (scripts/test.sh sets it)",
    );
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = start_receiver(&python, dir.path());
    let data = dir.path().join("data");
    let config = dir.path().join("cortex.toml");
    std::fs::write(
        &config,
        format!(
            "[[providers]]\nname = \"fake\"\nbase_url = \"{}\"\napi_key = \"provider-secret-for-traces-91f2\"\n\n[[models]]\nname = \"llama\"\nprovider = \"fake\"\nupstream_name = \"llama-upstream\"\n",
            upstream.base_url()
        ),
    )
    .unwrap();
    let config_path = config.display().to_string();
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);
    let env = [
        ("CORTEX_CONFIG", config_path.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "cortex-under-test"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // Requests from 127.0.0.2 come through a trusted proxy; from 127.0.0.1 they do not.
        ("CORTEX_TRUSTED_PROXIES", "127.0.0.2/32"),
    ];
    let server = CortexProcess::start(&data, &env);
    let created = run(&data, &["keys", "create", "--name", "traced"], &env);
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();

    let http = reqwest::Client::new();
    let chat = |stream: bool| {
        http.post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&serde_json::json!({
                "model": "llama", "stream": stream,
                "messages": [{ "role": "user", "content": MARKER }],
            }))
    };
    // The key reaches the server's cache within its next poll.
    let mut plain = chat(false).send().await.unwrap();
    for _ in 0..100 {
        if plain.status() != 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        plain = chat(false).send().await.unwrap();
    }
    assert_eq!(plain.status(), 200);
    let plain_id = request_id(&plain);
    let answer: Value = plain.json().await.unwrap();
    let streamed = chat(true).send().await.unwrap();
    let stream_id = request_id(&streamed);
    let mut body = streamed.bytes_stream();
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    let refused = http
        .post(server.url("/v1/chat/completions"))
        .json(&serde_json::json!({ "model": "llama", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused_id = request_id(&refused);
    // A traceparent from a client is not believed; the same from the trusted proxy is.
    let untrusted_trace = "0af7651916cd43dd8448eb211c80319c";
    let untrusted = chat(false)
        .header(
            "traceparent",
            format!("00-{untrusted_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    let untrusted_id = request_id(&untrusted);
    let proxy = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let trusted_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let trusted = proxy
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header(
            "traceparent",
            format!("00-{trusted_trace}-00f067aa0ba902b7-01"),
        )
        .json(&serde_json::json!({ "model": "llama", "messages": [{ "role": "user", "content": "hi" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(trusted.status(), 200);
    let trusted_id = request_id(&trusted);

    // Every request's spans arrive (the processor exports every 100 ms).
    let ids = [
        &plain_id,
        &stream_id,
        &refused_id,
        &untrusted_id,
        &trusted_id,
    ];
    let complete = |spans: &[Value]| {
        ids.iter().all(|id| Tree::of(spans, id).is_some())
            && Tree::of(spans, &plain_id).is_some_and(|t| t.children.len() >= 8)
            && Tree::of(spans, &stream_id).is_some_and(|t| t.children.len() >= 8)
    };
    let mut received = spans(&receiver);
    for _ in 0..150 {
        if complete(&received) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        received = spans(&receiver);
    }
    assert!(complete(&received), "spans received: {received:#?}");
    for span in &received {
        assert_eq!(span["path"], "/v1/traces");
        assert_eq!(span["content_type"], "application/x-protobuf");
        assert_eq!(span["resource"]["service.name"], "cortex-under-test");
    }

    // The plain request: a server span named by the GenAI conventions, its stages in order,
    // the upstream attempt under the send stage.
    let tree = Tree::of(&received, &plain_id).unwrap();
    let root = tree.root;
    assert_eq!(root["name"], "chat llama");
    let attributes = &root["attributes"];
    assert_eq!(attributes["gen_ai.operation.name"], "chat");
    assert_eq!(attributes["gen_ai.request.model"], "llama");
    assert_eq!(attributes["gen_ai.response.model"], "llama-upstream");
    assert_eq!(attributes["gen_ai.system"], "openai");
    assert_eq!(attributes["cortex.provider"], "fake");
    assert_eq!(
        attributes["gen_ai.usage.input_tokens"],
        answer["usage"]["prompt_tokens"]
    );
    assert_eq!(
        attributes["gen_ai.usage.output_tokens"],
        answer["usage"]["completion_tokens"]
    );
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["url.path"], "/v1/chat/completions");
    assert_eq!(attributes["cortex.stream"], false);
    assert_eq!(
        tree.names(),
        [
            "authenticate",
            "rate_limit",
            "read_body",
            "route",
            "spend_limits",
            "translate",
            "send",
            "meter"
        ]
    );
    for child in &tree.children {
        assert_eq!(child["trace_id"], root["trace_id"]);
        assert_eq!(child["kind"], "INTERNAL");
        assert!(child["start"].as_u64() >= root["start"].as_u64(), "{child}");
        assert!(child["end"].as_u64() <= root["end"].as_u64(), "{child}");
    }
    let send = tree.child("send");
    let attempts: Vec<&Value> = received
        .iter()
        .filter(|s| s["parent_span_id"] == send["span_id"])
        .collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["name"], "upstream attempt");
    assert_eq!(attempts[0]["kind"], "CLIENT");
    assert_eq!(attempts[0]["attributes"]["cortex.provider"], "fake");
    assert_eq!(attempts[0]["attributes"]["http.response.status_code"], 200);
    assert_eq!(attempts[0]["attributes"]["cortex.attempt"], 1);

    // The stream: its last stage is the stream itself, and the root has its time to first token.
    let stream = Tree::of(&received, &stream_id).unwrap();
    assert_eq!(stream.root["attributes"]["cortex.stream"], true);
    assert!(stream.root["attributes"]["cortex.time_to_first_token_ms"].is_i64());
    assert!(stream.root["attributes"]["gen_ai.usage.output_tokens"].as_i64() > Some(0));
    assert_eq!(stream.names().last(), Some(&"stream"));

    // The refusal: one span with the status and the error code, nothing below it.
    let refusal = Tree::of(&received, &refused_id).unwrap();
    assert_eq!(refusal.root["attributes"]["http.response.status_code"], 401);
    assert_eq!(
        refusal.root["attributes"]["error.type"],
        "missing_credentials"
    );
    assert!(refusal.children.is_empty(), "{:?}", refusal.names());

    // traceparent: ignored from a client, followed from the trusted proxy.
    let ignored = Tree::of(&received, &untrusted_id).unwrap();
    assert_ne!(ignored.root["trace_id"], untrusted_trace);
    assert_eq!(ignored.root["parent_span_id"], "");
    let followed = Tree::of(&received, &trusted_id).unwrap();
    assert_eq!(followed.root["trace_id"], trusted_trace);
    assert_eq!(followed.root["parent_span_id"], "00f067aa0ba902b7");

    // No content, key or secret in any span, nor anywhere in what the receiver was sent.
    let raw = std::fs::read(receiver.out.with_extension("jsonl.raw")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let decoded = serde_json::to_string(&received).unwrap();
    for secret in [
        MARKER,
        "hello from the fake upstream",
        key.as_str(),
        &key[..key.len() / 2],
        "provider-secret-for-traces-91f2",
    ] {
        assert!(!decoded.contains(secret), "{secret} in a span");
        assert!(!raw.contains(secret), "{secret} sent to the receiver");
    }
    let counts: HashMap<&str, usize> = received.iter().fold(HashMap::new(), |mut counts, span| {
        *counts.entry(span["name"].as_str().unwrap()).or_default() += 1;
        counts
    });
    assert!(counts["upstream attempt"] >= 4, "{counts:?}");
    let status = server.terminate();
    assert!(status.success(), "{status}");
}
