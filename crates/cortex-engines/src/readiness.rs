//! Readiness: an engine is `running` only once `GET /v1/models` with its key answers 200 (vLLM
//! listens only after loading; llama.cpp answers 503 while it loads) — and the same request
//! *without* the key is refused, so an engine (or an image) that ignores the key it was given
//! is never routed to. One plain HTTP/1.1 request over a fresh loopback connection, bounded in
//! time; the key is sent, never logged.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};

/// Outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Ready,
    /// Answered, but not 200 (loading, or the key was refused).
    NotReady(u16),
    /// Nothing listening yet, or no answer in time.
    Unreachable,
}

/// `GET http://127.0.0.1:{port}/v1/models` with `Authorization: Bearer {key}`, or without any
/// credential when `api_key` is `None` (to check that the engine refuses such requests).
pub async fn probe(port: u16, api_key: Option<&SecretString>, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, probe_once(port, api_key)).await {
        Ok(Some(200)) => Probe::Ready,
        Ok(Some(status)) => Probe::NotReady(status),
        Ok(None) | Err(_) => Probe::Unreachable,
    }
}

async fn probe_once(port: u16, api_key: Option<&SecretString>) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let driver = tokio::spawn(connection);
    let mut request =
        http::Request::get("/v1/models").header(http::header::HOST, format!("127.0.0.1:{port}"));
    if let Some(key) = api_key {
        let mut authorization =
            http::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).ok()?;
        authorization.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    let request = request.body(Empty::<Bytes>::new()).ok()?;
    let status = sender
        .send_request(request)
        .await
        .ok()
        .map(|r| r.status().as_u16());
    driver.abort();
    status
}
