//! Upstreams that misbehave at the TCP level: one that resets every connection, and one that
//! starts a stream and then resets it mid-way.

use std::net::SocketAddr;
use std::time::Duration;

use cortex_domain::{KeyLimits, Scope};
use cortex_testkit::{eventually, FakeUpstream, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::post_chat;

/// Accepts connections and resets them at once (RST, not a clean close).
async fn resetting_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_zero_linger();
            drop(tcp);
        }
    });
    addr
}

/// Answers 200 with one SSE chunk, then resets the connection mid-stream.
async fn stream_cutting_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and body (small) before answering.
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
                let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"half\"},\"finish_reason\":null}]}\n\n";
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let body = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body.as_bytes()).await;
                let _ = tcp.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tcp.set_zero_linger();
                drop(tcp);
            });
        }
    });
    addr
}

#[tokio::test]
async fn connection_resets_fail_over_and_a_stream_cut_mid_way_is_recorded_and_freed() {
    let resetting = resetting_upstream().await;
    let cutting = stream_cutting_upstream().await;
    let healthy = FakeUpstream::start().await;
    let server = TestServer::builder()
        .provider("resetting", &format!("http://{resetting}/v1"), None)
        .provider("cutting", &format!("http://{cutting}/v1"), None)
        .provider("healthy", &healthy.base_url(), None)
        .model("llama", &["resetting", "healthy"], 0.0, 0.0)
        .model("fragile", &["cutting"], 0.0, 0.0)
        .start()
        .await;
    let key = server
        .create_key(
            &[Scope::Chat],
            None,
            KeyLimits {
                max_concurrent_streams: Some(1),
                ..KeyLimits::default()
            },
        )
        .await;

    // A provider that resets every connection is passed over before the first byte.
    for _ in 0..3 {
        let response = post_chat(&server, &key, "llama", false).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(healthy.received().len(), 3);

    // A stream cut mid-way by its upstream: the client gets what was sent and then a broken
    // body (no [DONE]), so it can tell the answer is incomplete.
    let mut response = post_chat(&server, &key, "fragile", true).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break "clean end",
            Err(_) => break "broken body",
        }
    };
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("half"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(ended, "broken body");

    // Its usage is recorded as an upstream failure, and its stream slot is free again (the key
    // may hold only one).
    let store = server.state().store().clone();
    assert!(
        eventually(Duration::from_secs(5), || async {
            store
                .list_usage(&cortex_store::Tenant::All, &Default::default(), 10)
                .await
                .unwrap()
                .iter()
                .any(|r| r.model == "fragile" && r.status == 502)
        })
        .await,
        "the cut stream's usage was not recorded as 502"
    );
    let next = post_chat(&server, &key, "llama", true).await;
    assert_eq!(next.status(), 200, "the cut stream's slot was not freed");
    let body = next.text().await.unwrap();
    assert!(body.contains("[DONE]"), "{body}");
    server.stop().await;
}
