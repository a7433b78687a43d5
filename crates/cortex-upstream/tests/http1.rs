//! The HTTP/1.1 client against a scripted provider on loopback that records every request and
//! every connection: what goes on the wire, when a connection is reused and when it must not
//! be, a connection the provider closed while it sat idle, bodies dropped early or cut short,
//! and answers that are not HTTP/1.1 we accept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cortex_domain::ProviderKind;
use cortex_upstream::{
    BodyError, ModelRoute, ProviderTarget, UpstreamClient, UpstreamError, UpstreamRequest,
    UpstreamResponse, UpstreamTimeouts,
};
use futures_util::StreamExt;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the provider does with one request.
struct Reply {
    /// Written as it is; empty writes nothing.
    bytes: String,
    /// Close the connection after writing (or instead of answering, when `bytes` is empty).
    close: bool,
    /// Keep the connection open this long after writing (noting a close by the client),
    /// then close it. With `close`, only the provider's side is closed at once: the client's
    /// side stays open, as it does when the provider's idle timeout fires.
    hold: Option<Duration>,
}

fn reply(bytes: &str) -> Reply {
    Reply {
        bytes: bytes.to_owned(),
        close: false,
        hold: None,
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\nok";

/// What the provider saw: each request with the connection it came on, and each connection
/// the client closed.
#[derive(Default)]
struct Seen {
    requests: Vec<(usize, String)>,
    closed_by_client: Vec<usize>,
}

type Script = Arc<dyn Fn(usize, usize) -> Reply + Send + Sync>;

/// A provider answering request `n` of connection `c` with `script(c, n)`.
async fn provider(
    script: impl Fn(usize, usize) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script: Script = Arc::new(script);
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut connection = 0;
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(
                socket,
                connection,
                Arc::clone(&script),
                Arc::clone(&log),
            ));
            connection += 1;
        }
    });
    (format!("http://{addr}/v1"), seen)
}

async fn serve(mut socket: TcpStream, connection: usize, script: Script, seen: Arc<Mutex<Seen>>) {
    let mut pending = Vec::new();
    for n in 0.. {
        let Some(request) = read_request(&mut socket, &mut pending).await else {
            seen.lock().unwrap().closed_by_client.push(connection);
            return;
        };
        seen.lock().unwrap().requests.push((connection, request));
        let reply = script(connection, n);
        if !reply.bytes.is_empty() && socket.write_all(reply.bytes.as_bytes()).await.is_err() {
            return;
        }
        if let Some(hold) = reply.hold {
            if reply.close {
                socket.shutdown().await.unwrap();
            }
            // Keep the connection open, noticing when the client closes it.
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(hold, socket.read(&mut byte)).await {
                seen.lock().unwrap().closed_by_client.push(connection);
            }
            return;
        }
        if reply.close {
            return;
        }
    }
}

/// One request (head and content-length body), or `None` when the client closed.
async fn read_request(socket: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end + 4].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if pending.len() >= end + 4 + length {
                let whole: Vec<u8> = pending.drain(..end + 4 + length).collect();
                return Some(String::from_utf8(whole).unwrap());
            }
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn client() -> UpstreamClient {
    UpstreamClient::new(
        UpstreamTimeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(2),
            idle: Duration::from_secs(2),
        },
        1,
    )
    .unwrap()
}

fn target(name: &str, base_url: &str) -> Arc<ProviderTarget> {
    Arc::new(ProviderTarget::new(
        name.into(),
        name.into(),
        base_url,
        Some(SecretString::from("sk-provider-secret")),
    ))
}

fn route(targets: Vec<Arc<ProviderTarget>>) -> ModelRoute {
    ModelRoute::new("m".into(), None, targets, 0.0, 0.0)
}

async fn send_with_id(
    client: &UpstreamClient,
    route: &ModelRoute,
    request_id: &str,
) -> Result<UpstreamResponse, UpstreamError> {
    let request = UpstreamRequest {
        path: "chat/completions",
        model: "m",
        body: Bytes::from_static(b"{\"model\":\"m\"}"),
        request_id,
        streaming: false,
    };
    client.send(route, &request, 0, &mut 0).await
}

async fn body_of(client: &UpstreamClient, route: &ModelRoute) -> Result<Bytes, BodyError> {
    send_with_id(client, route, "req-1")
        .await
        .unwrap()
        .body
        .read_all(1 << 20)
        .await
}

fn connections(seen: &Mutex<Seen>) -> Vec<usize> {
    seen.lock()
        .unwrap()
        .requests
        .iter()
        .map(|(c, _)| *c)
        .collect()
}

#[tokio::test]
async fn the_request_carries_exactly_the_headers_built_for_it() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    let request = seen.lock().unwrap().requests[0].1.clone();
    let authority = url.trim_start_matches("http://").trim_end_matches("/v1");
    assert_eq!(
        request,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\naccept: application/json\r\nauthorization: Bearer sk-provider-secret\r\nx-request-id: req-1\r\ncontent-length: 13\r\n\r\n{{\"model\":\"m\"}}"
        )
    );
}

#[tokio::test]
async fn user_information_in_the_base_url_is_not_sent() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let client = client();
    let with_user = url.replace("http://", "http://user:hunter2@");
    let route = route(vec![target("p", &with_user)]);
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    let request = seen.lock().unwrap().requests[0].1.clone();
    let authority = url.trim_start_matches("http://").trim_end_matches("/v1");
    assert!(
        request.contains(&format!("\r\nhost: {authority}\r\n")),
        "{request}"
    );
    assert!(
        !request.contains("hunter2") && !request.contains("user"),
        "{request}"
    );
}

#[tokio::test]
async fn a_request_id_that_would_split_the_request_is_left_out() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    let response = send_with_id(&client, &route, "id\r\nx-injected: 1")
        .await
        .unwrap();
    assert_eq!(response.body.read_all(100).await.unwrap(), "ok");
    let request = seen.lock().unwrap().requests[0].1.clone();
    assert!(!request.contains("x-injected"), "{request}");
    assert!(!request.contains("x-request-id"), "{request}");
    assert!(request.contains("authorization: Bearer sk-provider-secret\r\n"));
}

/// A target of `kind` at `base_url`, holding the test secret.
fn target_of(kind: ProviderKind, base_url: &str, api_version: Option<&str>) -> Arc<ProviderTarget> {
    Arc::new(
        ProviderTarget::new(
            "p".into(),
            "p".into(),
            base_url,
            Some(SecretString::from("sk-provider-secret")),
        )
        .with_kind(kind, api_version.map(str::to_owned), false),
    )
}

/// What the provider saw for one request to `path` for upstream model `model`, or the error.
async fn sent_as(
    target: Arc<ProviderTarget>,
    seen: &Mutex<Seen>,
    path: &str,
    model: &str,
) -> Result<String, UpstreamError> {
    let client = client();
    let route = route(vec![target]);
    let request = UpstreamRequest {
        path,
        model,
        body: Bytes::from_static(b"{}"),
        request_id: "req-1",
        streaming: false,
    };
    let answer = client.send(&route, &request, 0, &mut 0).await?;
    assert_eq!(answer.body.read_all(100).await.unwrap(), "ok");
    Ok(seen.lock().unwrap().requests.last().unwrap().1.clone())
}

#[tokio::test]
async fn anthropic_takes_the_key_as_x_api_key_with_its_version_at_messages() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let authority = url.trim_start_matches("http://").trim_end_matches("/v1");
    let request = sent_as(
        target_of(ProviderKind::Anthropic, &url, None),
        &seen,
        "messages",
        "claude-sonnet",
    )
    .await
    .unwrap();
    assert_eq!(
        request,
        format!(
            "POST /v1/messages HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\naccept: application/json\r\nx-api-key: sk-provider-secret\r\nanthropic-version: 2023-06-01\r\nx-request-id: req-1\r\ncontent-length: 2\r\n\r\n{{}}"
        )
    );
    let pinned = sent_as(
        target_of(ProviderKind::Anthropic, &url, Some("2024-01-01")),
        &seen,
        "messages",
        "claude-sonnet",
    )
    .await
    .unwrap();
    assert!(
        pinned.contains("\r\nanthropic-version: 2024-01-01\r\n"),
        "{pinned}"
    );
    assert!(!pinned.contains("2023-06-01"), "{pinned}");
}

#[tokio::test]
async fn azure_takes_the_key_as_api_key_at_the_deployments_url() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let authority = url.trim_start_matches("http://").trim_end_matches("/v1");
    let base = format!("http://{authority}");
    let request = sent_as(
        target_of(ProviderKind::Azure, &base, None),
        &seen,
        "chat/completions",
        "gpt-4o",
    )
    .await
    .unwrap();
    assert_eq!(
        request,
        format!(
            "POST /openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21 HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\naccept: application/json\r\napi-key: sk-provider-secret\r\nx-request-id: req-1\r\ncontent-length: 2\r\n\r\n{{}}"
        )
    );
    let pinned = sent_as(
        target_of(ProviderKind::Azure, &base, Some("2024-12-01-preview")),
        &seen,
        "embeddings",
        "text-embedding-3-small",
    )
    .await
    .unwrap();
    assert!(
        pinned.starts_with("POST /openai/deployments/text-embedding-3-small/embeddings?api-version=2024-12-01-preview HTTP/1.1\r\n"),
        "{pinned}"
    );
}

#[tokio::test]
async fn openai_keeps_the_bearer_header_and_no_other_kinds_headers() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let request = sent_as(
        target_of(ProviderKind::OpenAi, &url, None),
        &seen,
        "chat/completions",
        "gpt-4o",
    )
    .await
    .unwrap();
    assert!(
        request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nauthorization: Bearer sk-provider-secret\r\n"));
    for other in ["x-api-key", "api-key", "anthropic-version", "api-version"] {
        assert!(
            !request.contains(&format!("\r\n{other}:")),
            "{other}: {request}"
        );
    }
}

#[tokio::test]
async fn an_azure_deployment_name_cannot_change_the_path_query_or_headers() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let base = url.trim_end_matches("/v1").to_owned();
    for (name, segment) in [
        ("../../admin/keys", "..%2F..%2Fadmin%2Fkeys"),
        (
            "gpt?x=1&api-version=evil",
            "gpt%3Fx%3D1%26api-version%3Devil",
        ),
        ("gpt\r\nx-injected: 1", "gpt%0D%0Ax-injected%3A%201"),
        ("gpt#frag", "gpt%23frag"),
        ("%2e%2e", "%252e%252e"),
    ] {
        let request = sent_as(
            target_of(ProviderKind::Azure, &base, None),
            &seen,
            "chat/completions",
            name,
        )
        .await
        .unwrap();
        let line = request.lines().next().unwrap();
        assert_eq!(
            line,
            format!(
                "POST /openai/deployments/{segment}/chat/completions?api-version=2024-10-21 HTTP/1.1"
            ),
            "{name:?}"
        );
        assert!(
            !request.lines().any(|l| l.starts_with("x-injected")),
            "{request}"
        );
        // Exactly the headers built for it: host, content type, accept, key, id, length.
        let head = request.split("\r\n\r\n").next().unwrap();
        assert_eq!(head.lines().count(), 7, "{request}");
    }
    // A name that is only dots would climb out of the deployments: nothing is sent.
    let before = seen.lock().unwrap().requests.len();
    for dots in ["..", "."] {
        let refused = sent_as(
            target_of(ProviderKind::Azure, &base, None),
            &seen,
            "chat/completions",
            dots,
        )
        .await;
        assert_eq!(refused.unwrap_err(), UpstreamError::Unreachable, "{dots:?}");
    }
    assert_eq!(seen.lock().unwrap().requests.len(), before);
}

#[tokio::test]
async fn a_connection_is_reused_once_its_body_has_been_read() {
    let (url, seen) = provider(|_, _| reply(OK)).await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    for _ in 0..3 {
        assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    }
    assert_eq!(connections(&seen), [0, 0, 0]);
}

#[tokio::test]
async fn connections_the_answer_forbids_or_taints_are_not_reused() {
    let (url, seen) = provider(|c, _| match c {
        // The provider says so.
        0 => reply("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
        // Bytes nobody asked for follow the body.
        1 => reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"),
        // Both a length and a coding: the coding wins, the connection is not trusted again.
        2 => reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        _ => reply(OK),
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    for _ in 0..5 {
        assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    }
    assert_eq!(connections(&seen), [0, 1, 2, 3, 3]);
}

#[tokio::test]
async fn a_connection_the_provider_closed_while_idle_is_replaced() {
    // Connection 0 answers, then closes as soon as it has answered; connection 1 answers
    // once and then reads the next request but closes without a word, as a provider whose
    // idle timeout fires just as the request arrives would.
    let (url, seen) = provider(|c, n| match (c, n) {
        (0, _) => Reply {
            close: true,
            ..reply(OK)
        },
        (1, 1) => Reply {
            bytes: String::new(),
            close: true,
            hold: None,
        },
        _ => reply(OK),
    })
    .await;
    let client = client();
    let provider = target("p", &url);
    let route = route(vec![Arc::clone(&provider)]);

    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    // Let the close arrive: the pooled connection is seen to be closed before it is used.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    // The close comes only once the request is on its way: the request is sent again on a
    // new connection.
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    assert_eq!(connections(&seen), [0, 1, 1, 2]);
    assert!(
        provider.is_healthy(0),
        "a closed idle connection is not a provider failure"
    );
}

#[tokio::test]
async fn an_idle_connection_the_provider_closed_is_let_go_without_another_request() {
    // The provider answers, closes its side as its idle timeout would, and waits up to 10 s
    // for the client to close its own. The pool is never drawn from again: only its sweep can
    // notice, and without it the socket would sit half-closed until the next request.
    let (url, seen) = provider(|_, _| Reply {
        close: true,
        hold: Some(Duration::from_secs(10)),
        ..reply(OK)
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    for _ in 0..80 {
        if !seen.lock().unwrap().closed_by_client.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.lock().unwrap().closed_by_client, [0]);
    assert_eq!(connections(&seen), [0]);
}

#[tokio::test]
async fn a_body_dropped_early_closes_its_connection() {
    let (url, seen) = provider(|c, _| match c {
        0 => Reply {
            hold: Some(Duration::from_secs(5)),
            ..reply("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
        },
        _ => reply(OK),
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    let mut body = send_with_id(&client, &route, "r").await.unwrap().body;
    assert_eq!(body.next().await.unwrap().unwrap(), "data: 1\n\n");
    drop(body);
    for _ in 0..50 {
        if seen.lock().unwrap().closed_by_client.contains(&0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.lock().unwrap().closed_by_client.contains(&0),
        "the provider never saw the connection close"
    );
    assert_eq!(body_of(&client, &route).await.unwrap(), "ok");
    assert_eq!(connections(&seen), [0, 1]);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (url, _) = provider(|_, _| {
        reply("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    let response = send_with_id(&client, &route, "r").await.unwrap();
    assert_eq!(response.status, 201);
    assert_eq!(response.body.read_all(100).await.unwrap(), "done");
}

#[tokio::test]
async fn bodies_end_where_their_framing_says() {
    let (url, _) = provider(|c, _| match c {
        // No length and no coding: the body runs to the close.
        0 => Reply {
            close: true,
            ..reply("HTTP/1.1 200 OK\r\n\r\nto the end")
        },
        // Ten bytes promised, five sent.
        _ => Reply {
            close: true,
            ..reply("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
        },
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    assert_eq!(body_of(&client, &route).await.unwrap(), "to the end");
    assert_eq!(body_of(&client, &route).await, Err(BodyError::Broken));
}

#[tokio::test]
async fn a_malformed_answer_fails_over_and_is_reported_as_such() {
    let (bad, _) = provider(|_, _| reply("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n")).await;
    let (garbage, _) = provider(|_, _| reply("SSH-2.0-OpenSSH_9.2\r\n\r\n")).await;
    let (good, _) = provider(|_, _| reply(OK)).await;
    let client = client();

    for url in [&bad, &garbage] {
        let alone = route(vec![target("bad", url)]);
        assert_eq!(
            send_with_id(&client, &alone, "r").await.err(),
            Some(UpstreamError::BadResponse)
        );
    }

    let first_bad = target("bad", &bad);
    let both = route(vec![Arc::clone(&first_bad), target("good", &good)]);
    let response = send_with_id(&client, &both, "r").await.unwrap();
    assert_eq!(response.provider.name, "good");
    assert_eq!(response.body.read_all(100).await.unwrap(), "ok");
    assert!(
        !first_bad.is_healthy(0),
        "the provider that answered garbage is passed over"
    );
}

#[tokio::test]
async fn an_endless_answer_head_is_refused() {
    let filler = "x-filler: ".to_owned() + &"a".repeat(1000) + "\r\n";
    let (url, _) = provider(move |_, _| Reply {
        hold: Some(Duration::from_secs(2)),
        ..reply(&("HTTP/1.1 200 OK\r\n".to_owned() + &filler.repeat(80)))
    })
    .await;
    let client = client();
    let route = route(vec![target("p", &url)]);
    assert_eq!(
        send_with_id(&client, &route, "r").await.err(),
        Some(UpstreamError::BadResponse)
    );
}

#[tokio::test]
async fn an_answer_sent_before_the_request_was_read_is_passed_on() {
    // The provider reads only the head, refuses the (large) body and closes: the client's
    // write fails part way, but the refusal is what the gateway reports.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let refusal = "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 21\r\nconnection: close\r\n\r\n{\"error\":\"too large\"}";
            let _ = socket.write_all(refusal.as_bytes()).await;
            // Dropped with the body unread: the kernel answers the rest with a reset.
        }
    });
    let client = client();
    let provider = target("p", &format!("http://{addr}/v1"));
    let route = route(vec![Arc::clone(&provider)]);
    let request = UpstreamRequest {
        path: "chat/completions",
        model: "m",
        body: Bytes::from(vec![b'x'; 64 << 20]),
        request_id: "r",
        streaming: false,
    };
    let response = client.send(&route, &request, 0, &mut 0).await.unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(
        response.body.read_all(100).await.unwrap(),
        "{\"error\":\"too large\"}"
    );
    assert!(
        provider.is_healthy(0),
        "a refusal is not a provider failure"
    );
}

/// A listener on loopback that counts the connections it accepts and answers each with `OK`.
async fn counting_provider() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while read_request(&mut socket, &mut pending).await.is_some() {
                    if socket.write_all(OK.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn client_allowing(entries: &[&str]) -> UpstreamClient {
    UpstreamClient::with_egress(
        UpstreamTimeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(2),
            idle: Duration::from_secs(2),
        },
        1,
        cortex_domain::egress::EgressPolicy::allow_list(entries.iter().copied()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_egress_policy_is_checked_on_the_resolved_address_before_connecting() {
    let (addr, accepted) = counting_provider().await;
    let port = addr.port();
    // An allow-list without loopback: neither the address nor a name resolving to it (as a
    // name rebound to a refused address would) gets a connection, so no credential leaves.
    let strict = client_allowing(&["10.0.0.0/8"]);
    for url in [
        format!("http://127.0.0.1:{port}/v1"),
        format!("http://localhost:{port}/v1"),
    ] {
        let refused = send_with_id(&strict, &route(vec![target("p", &url)]), "r").await;
        assert_eq!(refused.err(), Some(UpstreamError::EgressDenied), "{url}");
        // The active health check goes through the same door: no connection, a failed check.
        let checked = strict
            .check(&target("p", &url), Duration::from_secs(2), 0)
            .await;
        assert_eq!(checked, None, "{url}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A refused provider is passed over like an unreachable one: the next one is tried.
    let (allowed_url, _) = provider(|_, _| reply(OK)).await;
    let failover = route(vec![
        target("refused", &format!("http://localhost:{port}/v1")),
        target("allowed", &allowed_url),
    ]);
    let by_range = client_allowing(&["127.0.0.0/8", "::1"]);
    assert_eq!(body_of(&by_range, &failover).await.unwrap(), "ok");
    // Allowed by range or by the host name in the URL, the same provider is reached.
    let by_name = client_allowing(&["localhost"]);
    for client in [&by_range, &by_name] {
        let url = format!("http://localhost:{port}/v1");
        assert_eq!(
            body_of(client, &route(vec![target("p", &url)]))
                .await
                .unwrap(),
            "ok"
        );
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}
