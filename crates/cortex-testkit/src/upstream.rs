//! A fake model server, started by tests on a loopback port: OpenAI-style here, Anthropic
//! Messages and the Responses API in `dialects.rs`, their shared state in `fake_state.rs`.
//!
//! It records every request it receives (headers and body), answers chat, completions and
//! embeddings with usage, streams chat when asked (with `stream_options.include_usage`
//! honoured), counts the connections it accepts, and can be told to fail (any status, 401
//! included), to hold a stream open, or to answer slowly. The
//! benchmark runs it as a standalone process ([`FakeUpstreamOptions`]: no recording, a chosen
//! number of chunks and pace).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::json;

pub use crate::fake_state::ReceivedRequest;
use crate::fake_state::{record, usage, Shared};

/// How a fake upstream behaves from the start.
#[derive(Debug, Clone)]
pub struct FakeUpstreamOptions {
    /// Keep every request for [`FakeUpstream::received`]. Off for benchmarks: a long run would
    /// grow without bound and serialize every request on the recording lock.
    pub record: bool,
    /// Content chunks per streamed answer (before the usage chunk and `[DONE]`).
    pub chunks: usize,
    /// Pause between two content chunks, so each reaches the client as its own read.
    pub chunk_delay: Duration,
}

impl Default for FakeUpstreamOptions {
    fn default() -> Self {
        Self {
            record: true,
            chunks: 3,
            chunk_delay: Duration::from_millis(5),
        }
    }
}

/// A running fake upstream; stops when dropped (the task is aborted).
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        FakeUpstream::start_on("127.0.0.1:0").await
    }

    /// Starts on a chosen loopback address with the test defaults.
    pub async fn start_on(addr: &str) -> FakeUpstream {
        FakeUpstream::start_with(addr, FakeUpstreamOptions::default()).await
    }

    /// Starts on a chosen loopback address (for the benchmark's standalone binary).
    pub async fn start_with(addr: &str, options: FakeUpstreamOptions) -> FakeUpstream {
        let shared = Arc::new(Shared {
            record: options.record,
            chunk_delay: options.chunk_delay,
            chunks: AtomicUsize::new(options.chunks),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", axum::routing::get(crate::fake_state::models))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/messages", post(crate::dialects::messages))
            .route("/v1/responses", post(crate::dialects::responses))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(chat),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Like a real model server, each chunk leaves at once: with Nagle's algorithm on, a
        // chunk waits for the client's delayed ACK of the previous write (about 40 ms).
        let counted = shared.clone();
        let listener = listener.tap_io(move |tcp| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeUpstream { addr, shared, task }
    }

    /// The base URL a provider should be configured with (version prefix included).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The base URL as Azure OpenAI takes it: the resource's root, without a version prefix.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.received.lock().unwrap().clone()
    }

    /// TCP connections accepted so far (a refused connect never reaches here).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Answers the next `count` requests with `status` (and `Retry-After: retry_after_secs`
    /// when given), then serves again.
    pub fn fail_next(&self, count: usize, status: u16, retry_after_secs: Option<u64>) {
        self.shared.fail_next_status.store(status, Ordering::SeqCst);
        self.shared
            .fail_next_retry_after
            .store(retry_after_secs.unwrap_or(0), Ordering::SeqCst);
        self.shared.fail_next.store(count, Ordering::SeqCst);
    }

    /// How many `GET /v1/models` (health checks) arrived.
    pub fn model_lists(&self) -> usize {
        self.shared.model_lists.load(Ordering::SeqCst)
    }

    /// Answers every later text reply with `pieces` (joined when whole, one piece per event
    /// when streamed) instead of the usual text; `None` goes back to it. Tool calls are
    /// unchanged.
    pub fn set_reply(&self, pieces: Option<&[&str]>) {
        *self.shared.scripted.lock().unwrap() =
            pieces.map(|p| p.iter().map(|s| (*s).to_owned()).collect());
    }

    pub fn set_fail_status(&self, status: u16) {
        self.shared.fail_status.store(status, Ordering::SeqCst);
    }

    pub fn set_head_delay(&self, delay: Duration) {
        self.shared
            .head_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn hold_streams(&self, hold: bool) {
        self.shared.hold_streams.store(hold, Ordering::SeqCst);
        if !hold {
            self.shared.release.notify_waiters();
        }
    }

    pub fn cancelled_streams(&self) -> usize {
        self.shared.cancelled_streams.load(Ordering::SeqCst)
    }

    pub fn finished_streams(&self) -> usize {
        self.shared.finished_streams.load(Ordering::SeqCst)
    }
}

async fn chat(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = match record(&shared, path, headers, &body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let reply = crate::dialects::scripted_or(&shared, crate::dialects::chat_reply(&request));
    if request["stream"].as_bool() == Some(true) {
        let include_usage = request["stream_options"]["include_usage"].as_bool() == Some(true);
        if let crate::dialects::Reply::Call { name, arguments } = reply {
            return crate::dialects::stream_chat_tool_call(
                &name,
                &arguments,
                &model,
                include_usage,
            );
        }
        return stream_chat(shared, model, include_usage);
    }
    let message = match reply {
        crate::dialects::Reply::Text(text) => {
            json!({ "role": "assistant", "content": text })
        }
        crate::dialects::Reply::Call { name, arguments } => json!({
            "role": "assistant", "content": null,
            "tool_calls": [{ "id": "call_fake", "type": "function", "function": { "name": name, "arguments": arguments } }],
        }),
    };
    let finish = if message["tool_calls"].is_array() {
        "tool_calls"
    } else {
        "stop"
    };
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
        "usage": usage(11, 7),
    }))
    .into_response()
}

/// Counts a stream as cancelled if it is dropped before its last chunk.
pub(crate) struct StreamWatch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) finished: bool,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        if self.finished {
            self.shared.finished_streams.fetch_add(1, Ordering::SeqCst);
        } else {
            self.shared.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn stream_chat(shared: Arc<Shared>, model: String, include_usage: bool) -> Response {
    let texts = crate::dialects::stream_texts(&shared);
    let stream = async_stream(shared, model, include_usage, texts);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

pub(crate) fn async_stream(
    shared: Arc<Shared>,
    model: String,
    include_usage: bool,
    texts: Vec<String>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut watch = StreamWatch {
            shared: shared.clone(),
            finished: false,
        };
        let chunks = texts.len();
        for (i, text) in texts.into_iter().enumerate() {
            let chunk = json!({
                "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }]
            });
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                return;
            }
            if i == 0 {
                // Register for the release before looking at the flag, so a release that lands
                // between the two is not missed.
                let released = shared.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if shared.hold_streams.load(Ordering::SeqCst) {
                    // Wait for release, or for the client to go away (the send side closes).
                    tokio::select! {
                        () = released => {}
                        () = tx.closed() => return,
                    }
                }
            }
            if !shared.chunk_delay.is_zero() {
                tokio::time::sleep(shared.chunk_delay).await;
            }
        }
        // The last content chunk is followed by one that only says why the answer ended, as
        // every OpenAI-compatible server sends it.
        let finish = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }]
        });
        if tx
            .send(Bytes::from(format!("data: {finish}\n\n")))
            .await
            .is_err()
        {
            return;
        }
        if include_usage {
            let last = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage(13, chunks as u64) });
            if tx
                .send(Bytes::from(format!("data: {last}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
        if tx
            .send(Bytes::from_static(b"data: [DONE]\n\n"))
            .await
            .is_ok()
        {
            watch.finished = true;
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match record(&shared, "/v1/completions", headers, &body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    axum::Json(json!({
        "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": request["model"],
        "choices": [{ "index": 0, "text": "completed", "finish_reason": "stop" }],
        "usage": usage(5, 2),
    }))
    .into_response()
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match record(&shared, "/v1/embeddings", headers, &body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    axum::Json(json!({
        "object": "list", "model": request["model"],
        "data": [{ "object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3] }],
        "usage": { "prompt_tokens": 3, "total_tokens": 3 },
    }))
    .into_response()
}
