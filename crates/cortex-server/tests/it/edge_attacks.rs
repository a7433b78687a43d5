//! Attacks on the edge (issue 24, items 7, 12, 14 and 15): slow bodies and idle HTTP/2
//! connections that hold every slot, two `Authorization` headers, metrics reachable through a
//! same-host proxy, foreign host names, and per-address buckets that an IPv6 client multiplies.
//! Each test performs the attack against a real gateway on loopback and asserts it fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cortex_testkit::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{all_scopes_key, assert_error, chat_body, gateway_with_upstream, post_chat};

/// A TCP connection to `server` from `source` (any 127/8 address is this machine's loopback,
/// so tests can stand in for several client addresses).
async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes the connection (or resets it); returns what arrived, or
/// `None` if it was still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// A login request head announcing a body of `length` bytes, and the first few of them.
fn slow_login_head(server: SocketAddr, length: usize) -> Vec<u8> {
    format!(
        "POST /admin/auth/login HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{{\"user"
    )
    .into_bytes()
}

#[tokio::test]
async fn one_address_trickling_bodies_cannot_take_every_connection() {
    let server = TestServer::builder()
        .env("CORTEX_MAX_CONNECTIONS", "40")
        .env("CORTEX_MAX_CONNECTIONS_PER_IP", "8")
        .env("CORTEX_BODY_READ_TIMEOUT_SEC", "2")
        .start()
        .await;
    // The attacker, at 127.0.0.2, opens 40 connections and trickles a login body on each.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut stream = connect_from([127, 0, 0, 2], server.addr).await;
        stream
            .write_all(&slow_login_head(server.addr, 200))
            .await
            .unwrap();
        held.push(stream);
    }
    // Everyone else still gets in while those are held.
    let mut other = connect_from([127, 0, 0, 1], server.addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut other, Duration::from_secs(5))
        .await
        .expect("another client's request is answered while one address trickles bodies");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Past its 8, the attacker's connections were closed without an answer; the 8 it kept get
    // 408 once the body deadline passes, and are closed too.
    let mut timed_out = 0;
    let mut refused = 0;
    for stream in &mut held {
        let answer = read_until_closed(stream, Duration::from_secs(10))
            .await
            .expect("every trickling connection ends within the body deadline");
        if answer.is_empty() {
            refused += 1;
        } else {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("request_timeout"), "{text}");
            timed_out += 1;
        }
    }
    assert_eq!((timed_out, refused), (8, 32));
    server.stop().await;
}

#[tokio::test]
async fn a_trickled_v1_body_gets_408_and_a_prompt_body_is_served() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let body = serde_json::to_vec(&chat_body("llama", false)).unwrap();
    // A body sent whole is served (the deadline costs nothing there).
    let ok = post_chat(&server, &key, "llama", false).await;
    assert_eq!(ok.status(), 200);
    server.stop().await;

    let upstream = cortex_testkit::FakeUpstream::start().await;
    let server = TestServer::builder()
        .env("CORTEX_BODY_READ_TIMEOUT_SEC", "1")
        .provider("fake", &upstream.base_url(), None)
        .model("llama", &["fake"], 0.0, 0.0)
        .start()
        .await;
    let key = all_scopes_key(&server).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..5]).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the connection is closed after the body deadline");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(upstream.received().len(), 0, "nothing went upstream");
    server.stop().await;
}

#[tokio::test]
async fn an_http2_connection_that_carries_nothing_is_closed() {
    let server = TestServer::builder()
        .env("CORTEX_HTTP2_IDLE_TIMEOUT_SEC", "1")
        .start()
        .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing: before the idle timeout this held
    // a connection slot for ever (hyper answers PINGs, so keep-alive never ended it).
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let seen = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("an idle HTTP/2 connection is closed");
    // The server spoke HTTP/2 (its SETTINGS frame) before closing.
    assert!(seen.len() >= 9 && seen[3] == 0x04, "{seen:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.stop().await;
}

#[tokio::test]
async fn http2_requests_are_served_and_keep_their_connection() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let response = http
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("llama", true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let text = response.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let (server, upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.append("authorization", format!("Bearer {key}").parse().unwrap());
    headers.append("authorization", "Bearer ctx_someone_else".parse().unwrap());
    for path in ["/v1/chat/completions", "/v1/models"] {
        let request = if path == "/v1/models" {
            server.http().get(server.url(path))
        } else {
            server
                .http()
                .post(server.url(path))
                .json(&chat_body("llama", false))
        };
        let response = request.headers(headers.clone()).send().await.unwrap();
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("one Authorization header"),
            "{body}"
        );
    }
    assert_eq!(upstream.received().len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn metrics_without_a_token_are_not_on_the_main_listener_even_for_loopback() {
    let server = TestServer::builder()
        .env("CORTEX_METRICS_LISTEN", "127.0.0.1:0")
        .start()
        .await;
    // A reverse proxy on the same host makes every client a loopback peer: no metrics here.
    assert_error(
        server
            .http()
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let metrics = server.metrics_addr.expect("the metrics listener is bound");
    let text = server
        .http()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200);
    assert!(text.text().await.unwrap().contains("gateway_"));
    // The metrics listener serves metrics and nothing else.
    let other = server
        .http()
        .get(format!("http://{metrics}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    server.stop().await;

    // No listener and no token: no metrics anywhere.
    let server = TestServer::builder().start().await;
    assert!(server.metrics_addr.is_none());
    let response = server
        .http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn the_metrics_listener_needs_the_token_when_one_is_set() {
    let server = TestServer::builder()
        .env("CORTEX_METRICS_LISTEN", "127.0.0.1:0")
        .env("CORTEX_METRICS_TOKEN", "metrics-token-0123456789")
        .start()
        .await;
    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let without = server.http().get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let with = server
        .http()
        .get(&url)
        .bearer_auth("metrics-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn foreign_host_names_are_refused_when_allowed_hosts_is_set() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    // Without the setting every host is answered (the default).
    let open = server
        .http()
        .get(server.url("/v1/models"))
        .header("host", "rebound.attacker.example")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    server.stop().await;

    let server = TestServer::builder()
        .env("CORTEX_ALLOWED_HOSTS", "gateway.example")
        .start()
        .await;
    // A DNS-rebound page: the attacker's name, the gateway's address.
    for path in ["/healthz", "/admin/auth/login", "/v1/models", "/ui/"] {
        let refused = server
            .http()
            .get(server.url(path))
            .header("host", "rebound.attacker.example:8084")
            .send()
            .await
            .unwrap();
        assert_error(refused, 421, "host_not_allowed").await;
    }
    let allowed = server
        .http()
        .get(server.url("/healthz"))
        .header("host", "gateway.example:8084")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_ipv6_client_cannot_multiply_its_failed_key_allowance() {
    // Behind a trusted proxy, each request from a different address of one /64.
    let server = TestServer::builder()
        .env("CORTEX_TRUSTED_PROXIES", "127.0.0.1")
        .env("RATE_LIMIT_RPS", "0.1")
        .env("RATE_LIMIT_BURST", "5")
        .start()
        .await;
    let mut statuses = Vec::new();
    for n in 1..=12 {
        let response = server
            .http()
            .get(server.url("/v1/models"))
            .header("x-forwarded-for", format!("2001:db8:7:7::{n:x}"))
            .bearer_auth("ctx_guessed_key_that_does_not_exist")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    // Per /128 every guess had a fresh bucket (twelve 401s); per /64 the sixth is refused.
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // Another /64 has its own allowance.
    let other = server
        .http()
        .get(server.url("/v1/models"))
        .header("x-forwarded-for", "2001:db8:7:8::1")
        .bearer_auth("ctx_guessed_key_that_does_not_exist")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
    server.stop().await;
}
