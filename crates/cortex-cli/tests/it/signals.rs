//! SIGHUP: with native TLS it swaps the certificate without dropping open connections; without
//! it, it is logged and changes nothing (its default action would kill the process undrained).
//! SIGTERM and SIGINT drain and stop, even when sent the moment readiness is logged.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use crate::CortexProcess;

/// A throwaway self-signed certificate for 127.0.0.1, written as PEM files (never committed).
fn write_certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

/// Opens a TLS connection that trusts only `root`.
async fn connect(
    addr: &str,
    root: &CertificateDer<'static>,
) -> Result<TlsStream<tokio::net::TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// One keep-alive `GET /healthz` on an open connection; returns the status line.
async fn healthz(stream: &mut TlsStream<tokio::net::TcpStream>) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if received.len() >= end + 4 + length {
                return text.lines().next().unwrap().to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path());
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let server = CortexProcess::start(
        &dir.path().join("data"),
        &[("CORTEX_TLS_CERT", &cert), ("CORTEX_TLS_KEY", &key)],
    );
    let mut open = connect(&server.addr, &first).await.unwrap();
    assert_eq!(healthz(&mut open).await, "HTTP/1.1 200 OK");

    // A new certificate on disk, then SIGHUP.
    let second = write_certificate(dir.path());
    server.send_signal("HUP");
    let reloaded = cortex_testkit::eventually(Duration::from_secs(5), || async {
        connect(&server.addr, &second).await.is_ok()
    })
    .await;
    assert!(reloaded, "new connections never got the new certificate");
    assert!(
        connect(&server.addr, &first).await.is_err(),
        "the old certificate is still served to new connections"
    );
    // The connection opened before the reload carries on.
    assert_eq!(healthz(&mut open).await, "HTTP/1.1 200 OK");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_native_tls_is_logged_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = CortexProcess::start(dir.path(), &[]);
    server.send_signal("HUP");
    let logged = cortex_testkit::eventually(Duration::from_secs(5), || async {
        server.log_text().contains("nothing to reload")
    })
    .await;
    assert!(logged, "{}", server.log_text());
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        server.terminate().success(),
        "SIGHUP must not end the process"
    );
}

/// SIGTERM and SIGINT sent the moment readiness is logged both drain and exit cleanly: the
/// handlers are in place before the "listening" line, not installed later by the serve loop.
#[test]
fn stop_signals_at_readiness_drain_and_exit_cleanly() {
    for name in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let server = CortexProcess::start(dir.path(), &[]);
        server.send_signal(name);
        let log = server.log.clone();
        let status = server.wait_exit(Duration::from_secs(30));
        let log = log.lock().unwrap().join("\n");
        assert!(status.success(), "SIG{name} at readiness: {status}\n{log}");
        assert!(
            log.contains("cortex stopped"),
            "SIG{name} at readiness did not drain:\n{log}"
        );
    }
}
