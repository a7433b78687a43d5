//! What every dialect of the fake upstream shares: its state, the recording of each request
//! (with the failures and delays a test asked for), and the usage object.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) record: bool,
    pub(crate) chunk_delay: Duration,
    pub(crate) received: Mutex<Vec<ReceivedRequest>>,
    /// When non-zero, every request is answered with this status.
    pub(crate) fail_status: AtomicU16,
    /// Streams stop after their first chunk until released.
    pub(crate) hold_streams: AtomicBool,
    pub(crate) release: Notify,
    /// Streams whose client went away before the end.
    pub(crate) cancelled_streams: AtomicUsize,
    pub(crate) finished_streams: AtomicUsize,
    /// Delay before the response head, in ms.
    pub(crate) head_delay_ms: AtomicU64,
    pub(crate) chunks: AtomicUsize,
    /// TCP connections accepted, whatever came on them.
    pub(crate) connections: AtomicUsize,
    /// The next this many requests are answered with `fail_next_status` (and its
    /// `Retry-After`, when non-zero), whatever `fail_status` says.
    pub(crate) fail_next: AtomicUsize,
    pub(crate) fail_next_status: AtomicU16,
    pub(crate) fail_next_retry_after: AtomicU64,
    /// `GET /v1/models` requests (health checks), which `received` does not list.
    pub(crate) model_lists: AtomicUsize,
    /// When set, the text every dialect answers with instead of its own: joined for a whole
    /// answer, one piece per text event when streamed (so a test can split a word across
    /// events).
    pub(crate) scripted: Mutex<Option<Vec<String>>>,
}

impl Shared {
    /// The scripted answer's pieces, if a test set one.
    pub(crate) fn scripted(&self) -> Option<Vec<String>> {
        self.scripted.lock().unwrap().clone()
    }
}

pub(crate) async fn record(
    shared: &Shared,
    path: &str,
    headers: HeaderMap,
    body: &Bytes,
) -> Result<Value, Response> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if shared.record {
        shared.received.lock().unwrap().push(ReceivedRequest {
            path: path.to_owned(),
            headers,
            body: body.clone(),
        });
    }
    let delay = shared.head_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let scheduled = shared
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if scheduled {
        let code = StatusCode::from_u16(shared.fail_next_status.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let answer = json!({ "error": { "message": format!("fake upstream scheduled failure {code}"), "type": "server_error" } });
        let mut response = (code, axum::Json(answer)).into_response();
        let retry_after = shared.fail_next_retry_after.load(Ordering::SeqCst);
        if retry_after > 0 {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(retry_after));
        }
        return Err(response);
    }
    let status = shared.fail_status.load(Ordering::SeqCst);
    if status != 0 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let answer = json!({ "error": { "message": format!("fake upstream failure {status} at /srv/secret/path.py line 3"), "type": "server_error", "internal_host": "gpu-node-7.internal" } });
        return Err((code, axum::Json(answer)).into_response());
    }
    Ok(body)
}

pub(crate) fn usage(prompt: u64, completion: u64) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// `GET /v1/models`: the list a health check asks for, failing like the other routes when the
/// test set `fail_status`.
pub(crate) async fn models(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<Shared>>,
) -> Response {
    shared.model_lists.fetch_add(1, Ordering::SeqCst);
    let status = shared.fail_status.load(Ordering::SeqCst);
    if status != 0 {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (
            code,
            axum::Json(json!({ "error": { "message": "fake upstream failure" } })),
        )
            .into_response();
    }
    axum::Json(json!({ "object": "list", "data": [{ "id": "fake-model", "object": "model" }] }))
        .into_response()
}
