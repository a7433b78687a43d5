//! The upstream client against a hand-driven HTTP/1.1 server on loopback: the body's idle
//! timeout (a stall ends the body, a stream that keeps talking does not), the size limit of a
//! collected body, and timeouts versus refusals before the first byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cortex_upstream::{
    BodyError, ModelRoute, ProviderTarget, UpstreamClient, UpstreamError, UpstreamRequest,
    UpstreamResponse, UpstreamTimeouts,
};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of what the fake server does after reading the request.
#[derive(Clone)]
enum Step {
    Send(&'static str),
    Wait(Duration),
}

/// Serves every connection with `steps` (the response head must be among them) and returns
/// the base URL.
async fn server(steps: Vec<Step>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, steps.clone()));
        }
    });
    format!("http://{addr}/v1")
}

async fn serve(mut socket: TcpStream, steps: Vec<Step>) {
    // Read until the end of the request head and its (small, fixed) body.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    for step in steps {
        match step {
            Step::Send(text) => {
                if socket.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
            Step::Wait(pause) => tokio::time::sleep(pause).await,
        }
    }
    // Hold the connection open a while, as a stalled server would.
    tokio::time::sleep(Duration::from_secs(5)).await;
}

const STREAM_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn client(first_byte: Duration, idle: Duration) -> UpstreamClient {
    UpstreamClient::new(
        UpstreamTimeouts {
            connect: Duration::from_secs(2),
            first_byte,
            idle,
        },
        1,
    )
    .unwrap()
}

async fn send(client: &UpstreamClient, base_url: &str) -> Result<UpstreamResponse, UpstreamError> {
    let route = ModelRoute::new(
        "m".into(),
        None,
        vec![Arc::new(ProviderTarget::new(
            "p".into(),
            "p".into(),
            base_url,
            None,
        ))],
        0.0,
        0.0,
    );
    let request = UpstreamRequest {
        path: "chat/completions",
        model: "m",
        body: Bytes::from_static(b"{}"),
        request_id: "req-test",
        streaming: true,
    };
    client.send(&route, &request, 0, &mut 0).await
}

#[tokio::test]
async fn a_stream_that_stalls_ends_with_an_idle_error() {
    let url = server(vec![
        Step::Send(STREAM_HEAD),
        Step::Send("9\r\ndata: 1\n\n\r\n"),
    ])
    .await;
    let client = client(Duration::from_secs(2), Duration::from_millis(300));
    let mut body = send(&client, &url).await.unwrap().body;
    assert_eq!(
        body.next().await.unwrap().unwrap(),
        Bytes::from_static(b"data: 1\n\n")
    );
    let started = Instant::now();
    assert_eq!(body.next().await.unwrap(), Err(BodyError::Idle));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "gave up after {waited:?}"
    );
}

#[tokio::test]
async fn a_stream_that_keeps_talking_outlives_the_idle_timeout() {
    // Six chunks 150 ms apart: 900 ms in all, three times the idle timeout, never silent for
    // longer than half of it.
    let mut steps = vec![Step::Send(STREAM_HEAD)];
    for _ in 0..6 {
        steps.push(Step::Wait(Duration::from_millis(150)));
        steps.push(Step::Send("9\r\ndata: x\n\n\r\n"));
    }
    steps.push(Step::Send("0\r\n\r\n"));
    let url = server(steps).await;
    let client = client(Duration::from_secs(2), Duration::from_millis(300));
    let body = send(&client, &url).await.unwrap().body;
    let chunks: Vec<_> = body.collect().await;
    assert_eq!(chunks.len(), 6, "{chunks:?}");
    assert!(chunks
        .iter()
        .all(|c| c.as_deref() == Ok(&b"data: x\n\n"[..])));
}

#[tokio::test]
async fn collected_bodies_are_limited_and_whole() {
    let url = server(vec![
        // One answer per connection: the server says so, and the client does not pool it.
        Step::Send("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"),
        Step::Send("5\r\nhello\r\n"),
        Step::Wait(Duration::from_millis(50)),
        Step::Send("6\r\n world\r\n0\r\n\r\n"),
    ])
    .await;
    let client = client(Duration::from_secs(2), Duration::from_secs(2));
    let whole = send(&client, &url).await.unwrap().body.read_all(11).await;
    assert_eq!(whole, Ok(Bytes::from_static(b"hello world")));
    let cut = send(&client, &url).await.unwrap().body.read_all(10).await;
    assert_eq!(cut, Err(BodyError::TooLarge));
}

#[tokio::test]
async fn no_answer_is_a_timeout_and_a_closed_port_is_unreachable() {
    let silent = server(vec![Step::Wait(Duration::from_secs(5))]).await;
    let client = client(Duration::from_millis(300), Duration::from_secs(2));
    assert_eq!(
        send(&client, &silent).await.err(),
        Some(UpstreamError::Timeout)
    );

    // A port that was just free: nothing listens there.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    assert_eq!(
        send(&client, &format!("http://{closed}/v1")).await.err(),
        Some(UpstreamError::Unreachable)
    );
}
