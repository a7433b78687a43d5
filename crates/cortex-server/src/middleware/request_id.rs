//! A request id for every request, generated here (a client-sent `x-request-id` is replaced,
//! so ids in logs are always ours and unique), echoed on the response.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::http::HeaderValue;
use http::{Request, Response};

use crate::middleware::inline::Inline;

pub const HEADER: &str = "x-request-id";

/// The id of the current request, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// A random per-process prefix plus a counter: unique across instances, no syscall per request.
fn next_id() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("req_{prefix}{n:010x}"))
        .unwrap_or(HeaderValue::from_static("req_unknown"))
}

/// Replaces any client-sent id with a fresh one and echoes it on the response.
#[derive(Clone, Copy, Default)]
pub struct AssignRequestId;

impl<ResBody> Inline<ResBody> for AssignRequestId {
    type Carry = HeaderValue;

    fn before<B>(&self, request: &mut Request<B>) -> Result<HeaderValue, Response<ResBody>> {
        let id = next_id();
        request.headers_mut().insert(HEADER, id.clone());
        request.extensions_mut().insert(RequestId(id.clone()));
        Ok(id)
    }

    fn after(id: HeaderValue, mut response: Response<ResBody>) -> Response<ResBody> {
        response.headers_mut().insert(HEADER, id);
        response
    }
}
