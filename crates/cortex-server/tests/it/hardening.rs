//! HTTP hardening: security headers everywhere, HSTS only over TLS, CORS allow-list, CSRF.

use cortex_testkit::TestServer;
use serde_json::json;

use crate::{all_scopes_key, chat_body, gateway_with_upstream};

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
    assert!(
        headers["permissions-policy"]
            .to_str()
            .unwrap()
            .contains("camera=()"),
        "{what}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_no_hsts_over_plain_http() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let http = server.http();
    let ok = http
        .get(server.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_security_headers(&ok, "200");
    assert!(
        ok.headers().get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    let unauthorized = http.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_security_headers(&unauthorized, "401");
    let missing = http.get(server.url("/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing, "404");
    let too_big = http
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(vec![b' '; 11 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    assert_security_headers(&too_big, "413");
    // The unread body makes the connection unusable; the client is told not to reuse it.
    assert_eq!(too_big.headers()["connection"], "close");
    let console = http.get(server.url("/ui/login")).send().await.unwrap();
    assert_security_headers(&console, "console");
    assert!(console.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    server.stop().await;
}

#[tokio::test]
async fn hsts_is_sent_behind_a_tls_proxy() {
    let server = TestServer::builder()
        .env("CORTEX_BEHIND_TLS", "true")
        .start()
        .await;
    let response = server
        .http()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let server = TestServer::builder()
        .env("CORS_ALLOW_ORIGINS", "https://console.example")
        .start()
        .await;
    let http = server.http();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, server.url("/v1/models"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://console.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    assert!(
        allowed
            .headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "credentials are off by default"
    );
    let evil = preflight("https://evil.example").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let simple = http
        .get(server.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(simple
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    server.stop().await;
}

#[tokio::test]
async fn csrf_refuses_cookie_changes_from_other_origins() {
    let server = TestServer::builder().start().await;
    let admin = crate::admin::admin(&server).await;
    let http = server.http();
    let body = json!({ "name": "csrf", "scopes": ["chat"] });
    let post = |origin: Option<String>, referer: Option<String>| {
        let mut request = http
            .post(server.url("/admin/keys"))
            .header("cookie", &admin.cookie)
            .json(&body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(referer) = referer {
            request = request.header("referer", referer);
        }
        request.send()
    };
    let own = format!("http://{}", server.addr);
    crate::assert_error(post(None, None).await.unwrap(), 403, "csrf_origin_mismatch").await;
    crate::assert_error(
        post(Some("https://evil.example".into()), None)
            .await
            .unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    crate::assert_error(
        post(Some("null".into()), None).await.unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    crate::assert_error(
        post(None, Some("https://evil.example/page".into()))
            .await
            .unwrap(),
        403,
        "csrf_origin_mismatch",
    )
    .await;
    assert_eq!(post(Some(own.clone()), None).await.unwrap().status(), 201);
    assert_eq!(
        post(None, Some(format!("{own}/ui/")))
            .await
            .unwrap()
            .status(),
        201
    );
    // Bearer-authenticated requests are exempt: browsers never add bearer tokens themselves.
    let bearer = http
        .post(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);
    // Nothing was created by the refused attempts.
    let keys: serde_json::Value = http
        .get(server.url("/admin/keys"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["data"].as_array().unwrap().len(), 3);
    server.stop().await;
}

/// Connects with `CORTEX_HEADER_READ_TIMEOUT_SEC=1`, sends `first` (maybe nothing) and never
/// the rest, and asserts the server closes the connection after about a second.
async fn assert_cut_off_at_the_header_deadline(first: &[u8], what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::builder()
        .env("CORTEX_HEADER_READ_TIMEOUT_SEC", "1")
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(first).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408) once the deadline passes.
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the {what} client was not disconnected");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(4),
        "{what}: {waited:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    assert_cut_off_at_the_header_deadline(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", "slow")
        .await;
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_cut_off() {
    assert_cut_off_at_the_header_deadline(b"", "silent").await;
}

/// Plain HTTP/2 (h2c, prior knowledge) and HTTP/1.1 on the same port, proxied requests included.
#[tokio::test]
async fn http2_with_prior_knowledge_and_http1_share_the_plain_port() {
    let (server, _upstream) = gateway_with_upstream().await;
    let key = all_scopes_key(&server).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    for (client, version) in [
        (&h2, reqwest::Version::HTTP_2),
        (&h1, reqwest::Version::HTTP_11),
    ] {
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(health.version(), version);
        let chat = client
            .post(server.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&chat_body("llama", false))
            .send()
            .await
            .unwrap();
        assert_eq!(chat.version(), version);
        assert_eq!(chat.status(), 200, "{version:?}");
        let body: serde_json::Value = chat.json().await.unwrap();
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "{body}"
        );
    }
    server.stop().await;
}

mod tls {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::TestServer;

    struct Fixture {
        server: TestServer,
        cert: CertificateDer<'static>,
        _dir: tempfile::TempDir,
    }

    /// A throwaway self-signed certificate made at test time (never committed).
    async fn start() -> Fixture {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, generated.cert.pem()).unwrap();
        std::fs::write(&key_path, generated.key_pair.serialize_pem()).unwrap();
        let server = TestServer::builder()
            .env("CORTEX_TLS_CERT", cert_path.to_str().unwrap())
            .env("CORTEX_TLS_KEY", key_path.to_str().unwrap())
            .start()
            .await;
        Fixture {
            server,
            cert: generated.cert.der().clone(),
            _dir: dir,
        }
    }

    async fn handshake(
        fixture: &Fixture,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(fixture.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(fixture.server.addr)
            .await
            .unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.ok();
        Ok(answer)
    }

    /// Sends a ClientHello with the given legacy version and no supported_versions extension
    /// (so it offers that version only), with AEAD suites and the extensions a TLS 1.2 server
    /// needs, and returns the first bytes answered.
    async fn raw_client_hello(addr: std::net::SocketAddr, version: [u8; 2]) -> Vec<u8> {
        let mut hello = Vec::new();
        hello.extend(version);
        hello.extend([0x2a; 32]); // client random
        hello.push(0); // no session id
                       // ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256.
        hello.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
        hello.extend([0x01, 0x00]); // compression: null only
        let extensions: Vec<u8> = [
            &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17][..], // groups
            &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..],                         // point formats
            &[
                0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
            ][..], // sigalgs
            &[0x00, 0x17, 0x00, 0x00][..], // extended master secret
        ]
        .concat();
        hello.extend((extensions.len() as u16).to_be_bytes());
        hello.extend(extensions);
        let len = hello.len();
        let mut handshake = vec![0x01, 0x00, (len >> 8) as u8, len as u8];
        handshake.extend(hello);
        let len = handshake.len();
        let mut record = vec![0x16, 0x03, 0x01, (len >> 8) as u8, len as u8];
        record.extend(handshake);

        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&record).await.unwrap();
        let mut reply = vec![0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut reply))
            .await
            .expect("the server answers a ClientHello at once")
            .unwrap_or(0);
        reply.truncate(n);
        reply
    }

    /// ALPN picks the protocol: HTTP/2 for a client that offers it, HTTP/1.1 for one that
    /// does not.
    #[tokio::test]
    async fn alpn_chooses_http2_or_http1() {
        let fixture = start().await;
        let url = format!("https://localhost:{}/healthz", fixture.server.addr.port());
        for (http1_only, version) in [
            (false, reqwest::Version::HTTP_2),
            (true, reqwest::Version::HTTP_11),
        ] {
            let mut builder = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_der(&fixture.cert).unwrap())
                .resolve("localhost", fixture.server.addr);
            if http1_only {
                builder = builder.http1_only();
            }
            let answer = builder.build().unwrap().get(&url).send().await.unwrap();
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.version(), version);
        }
        fixture.server.stop().await;
    }

    #[tokio::test]
    async fn tls_1_3_and_1_2_work_with_hsts_and_plaintext_fails() {
        let fixture = start().await;
        let v13 = handshake(&fixture, &[&rustls::version::TLS13])
            .await
            .unwrap();
        assert!(v13.starts_with("HTTP/1.1 200"), "{v13}");
        assert!(
            v13.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=63072000"),
            "HSTS over TLS: {v13}"
        );
        let v12 = handshake(&fixture, &[&rustls::version::TLS12])
            .await
            .unwrap();
        assert!(v12.starts_with("HTTP/1.1 200"), "{v12}");

        // Plain HTTP to the TLS port gets no HTTP answer.
        let mut tcp = tokio::net::TcpStream::connect(fixture.server.addr)
            .await
            .unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf))
            .await;
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

        // TLS 1.1 and 1.0 are refused. No client library here will even offer them, so send
        // hand-made ClientHellos that differ only in their version. The TLS 1.2 one gets a
        // ServerHello (so the hello itself is acceptable); the older ones get a fatal alert.
        let modern = raw_client_hello(fixture.server.addr, [0x03, 0x03]).await;
        assert_eq!(&modern[..1], &[0x16], "TLS 1.2 hello answered {modern:?}");
        assert_eq!(modern[5], 0x02, "a ServerHello: {modern:?}");
        for legacy_version in [[0x03, 0x02], [0x03, 0x01]] {
            let reply = raw_client_hello(fixture.server.addr, legacy_version).await;
            assert!(reply.len() >= 7, "short reply {reply:?}");
            assert_eq!(reply[0], 0x15, "expected an alert record, got {reply:?}");
            assert_eq!(reply[5], 0x02, "the alert is fatal: {reply:?}");
        }
        fixture.server.stop().await;
    }
}
