//! SIEM forwarding against real loopback sinks that are down for a while and then come back:
//! every event arrives, in order, none lost (at least once: a resent batch may repeat). Syslog
//! over TLS reaches a receiver behind a private CA and nothing reaches one it does not trust.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_control::ops::audit;
use cortex_crypto::envelope::MasterKey;
use cortex_crypto::signing::AuditSigner;
use cortex_domain::audit::checkpoint_message;
use cortex_testkit::{eventually, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::admin;
use crate::create_keys;
use crate::upstream_tls::{private_pki, tls_acceptor, tls_front};

const PATIENCE: Duration = Duration::from_secs(30);

fn flags_file(dir: &tempfile::TempDir, on: bool) -> String {
    let path = dir.path().join("flags.json");
    std::fs::write(&path, json!({ "audit_forwarding": on }).to_string()).unwrap();
    path.display().to_string()
}

/// A port that was free a moment ago (nothing listens on it now).
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether every event 1..=upto is among `events` (copies and order aside).
fn has_every_event(events: &[Value], upto: i64) -> bool {
    let seen: HashSet<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    (1..=upto).all(|s| seen.contains(&s))
}

/// Every event 1..=head arrived, first arrivals in order, and the received copies form the
/// hash chain (each event's prev_hash is its predecessor's hash).
fn assert_complete_and_ordered(received: &[Value], head: i64) {
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for event in received {
        let seq = event["seq"].as_i64().unwrap();
        if seen.insert(seq) {
            firsts.push(event.clone());
        }
    }
    let seqs: Vec<i64> = firsts.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "missing or out of order"
    );
    for pair in firsts.windows(2) {
        assert_eq!(
            pair[1]["prev_hash"], pair[0]["hash"],
            "chain broken in transit"
        );
    }
}

async fn head(server: &TestServer) -> i64 {
    server.state().store().audit_head().await.unwrap().0
}

#[derive(Default)]
struct HttpSinkLog {
    events: Vec<Value>,
    /// Lines of kind `audit.checkpoint`.
    checkpoints: Vec<Value>,
    authorizations: Vec<String>,
    content_types: Vec<String>,
    refused: usize,
}

/// A loopback HTTP sink that refuses its first `refuse_first` requests with 503.
async fn start_http_sink(
    port: u16,
    log: Arc<Mutex<HttpSinkLog>>,
    refuse_first: usize,
) -> JoinHandle<()> {
    use axum::http::{HeaderMap, StatusCode};
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                log.authorizations.push(header("authorization"));
                log.content_types.push(header("content-type"));
                if log.refused < refuse_first {
                    log.refused += 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                for line in body.lines() {
                    let value: Value = serde_json::from_str(line).unwrap();
                    if value["kind"] == "audit.checkpoint" {
                        log.checkpoints.push(value);
                    } else {
                        log.events.push(value);
                    }
                }
                StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_down_then_refusing_then_up_receives_every_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let server = TestServer::builder()
        .env(
            "CORTEX_AUDIT_FORWARD_URL",
            &format!("http://127.0.0.1:{port}/ingest"),
        )
        .env("CORTEX_AUDIT_FORWARD_TOKEN", "siem-token-0123456789")
        .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
        .start()
        .await;
    let admin = admin(&server).await;
    // Answering proves `serve` has started its tasks, the forwarder among them.
    assert!(server.state().audit_forward_status().running());
    create_keys(&server, &admin.access_token, 5, "while-down").await;
    // Nothing listens yet: the forwarder fails and keeps its place.
    let status = server.state().audit_forward_status();
    assert!(eventually(PATIENCE, || async { status.failures() >= 2 }).await);
    assert_eq!(status.forwarded_seq(), 0);

    let log = Arc::new(Mutex::new(HttpSinkLog::default()));
    let sink = start_http_sink(port, log.clone(), 1).await;
    let expected = head(&server).await;
    assert!(
        eventually(PATIENCE, || async {
            has_every_event(&log.lock().unwrap().events, expected)
        })
        .await,
        "not every event arrived"
    );
    // Events written while the sink is up follow.
    create_keys(&server, &admin.access_token, 3, "while-up").await;
    let expected = head(&server).await;
    assert!(
        eventually(PATIENCE, || async {
            log.lock()
                .unwrap()
                .events
                .iter()
                .any(|e| e["seq"].as_i64() == Some(expected))
        })
        .await
    );
    {
        let log = log.lock().unwrap();
        assert_complete_and_ordered(&log.events, expected);
        assert_eq!(log.refused, 1, "the 503 answer was not retried");
        assert!(log
            .authorizations
            .iter()
            .all(|a| a == "Bearer siem-token-0123456789"));
        assert!(log
            .content_types
            .iter()
            .all(|c| c == "application/x-ndjson"));
        assert!(log.events.iter().any(|e| e["action"] == "key.create"));
    }
    let sink_name = format!("http://127.0.0.1:{port}/ingest");
    assert!(
        eventually(PATIENCE, || async {
            server
                .state()
                .store()
                .forward_cursor(&sink_name)
                .await
                .unwrap()
                == expected
        })
        .await
    );
    // A signed checkpoint follows the events it covers: a copy outside the database that
    // verifies with the public key alone, chained to the checkpoint before it.
    let state = server.state();
    let key = master_key(&server);
    // (The server's own 30-second checkpoint may have been quicker: then it is up to date.)
    let outcome = audit::write_checkpoint(state.store(), &key, state.now_millis())
        .await
        .unwrap();
    assert!(
        matches!(outcome, audit::CheckpointOutcome::Written(seq) if seq == expected)
            || outcome == audit::CheckpointOutcome::UpToDate,
        "{outcome:?}"
    );
    let signed = state.store().latest_checkpoint_seq().await.unwrap();
    assert_eq!(signed, expected);
    assert!(
        eventually(PATIENCE, || async {
            log.lock()
                .unwrap()
                .checkpoints
                .iter()
                .any(|c| c["seq"].as_i64() == Some(signed))
        })
        .await,
        "the checkpoint was not forwarded"
    );
    let checkpoints = log.lock().unwrap().checkpoints.clone();
    assert_checkpoints_verify(&checkpoints, &audit::signer(&key).verifying_key_hex());
    let line = checkpoints
        .iter()
        .find(|c| c["seq"].as_i64() == Some(signed))
        .unwrap();
    let stored = state.store().checkpoint_at(signed).await.unwrap().unwrap();
    assert_eq!(line["hash"], stored.hash.as_str());
    assert_eq!(line["signature"], stored.signature.as_str());
    assert_eq!(line["prev_seq"], stored.prev_seq);
    sink.abort();
    server.stop().await;
}

/// A loopback syslog receiver: parses octet-counted frames (RFC 6587) from every connection.
struct SyslogReceiver {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SyslogReceiver {
    async fn start(port: u16, messages: Arc<Mutex<Vec<String>>>) -> SyslogReceiver {
        Self::start_with(port, messages, None).await
    }

    /// With `tls`, connections are TLS with that certificate (RFC 5425); a client that refuses
    /// the certificate is counted in `handshakes_failed`, if given.
    async fn start_with(
        port: u16,
        messages: Arc<Mutex<Vec<String>>>,
        tls: Option<(TlsAcceptor, Arc<Mutex<usize>>)>,
    ) -> SyslogReceiver {
        // A receiver stopped a moment ago may not have let go of the port yet: its tasks end
        // at their next poll.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("port {port} stayed in use: {e}"),
            }
        };
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tasks = connections.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let messages = messages.clone();
                let tls = tls.clone();
                tasks.lock().unwrap().push(tokio::spawn(async move {
                    let mut stream: Box<dyn AsyncRead + Unpin + Send> = match tls {
                        None => Box::new(tcp),
                        Some((acceptor, handshakes_failed)) => match acceptor.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => {
                                *handshakes_failed.lock().unwrap() += 1;
                                return;
                            }
                        },
                    };
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buffer.extend_from_slice(&chunk[..n]);
                        // Frames: "<length> <message>", back to back.
                        while let Some(space) = buffer.iter().position(|b| *b == b' ') {
                            let length: usize = std::str::from_utf8(&buffer[..space])
                                .unwrap()
                                .parse()
                                .unwrap();
                            if buffer.len() < space + 1 + length {
                                break;
                            }
                            let message =
                                String::from_utf8(buffer[space + 1..space + 1 + length].to_vec())
                                    .unwrap();
                            messages.lock().unwrap().push(message);
                            buffer.drain(..space + 1 + length);
                        }
                    }
                }));
            }
        });
        SyslogReceiver {
            accept,
            connections,
        }
    }

    /// Goes down: stops accepting and closes every open connection.
    fn stop(self) {
        self.accept.abort();
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

fn master_key(server: &TestServer) -> MasterKey {
    let text = std::fs::read_to_string(server.data_dir().join("master.key")).unwrap();
    MasterKey::parse(&text).unwrap()
}

/// Every forwarded checkpoint's signature verifies with the public key, over its seq and hash
/// chained to the previous checkpoint it names (the genesis for the first).
fn assert_checkpoints_verify(checkpoints: &[Value], public_key: &str) {
    assert!(!checkpoints.is_empty());
    for checkpoint in checkpoints {
        let message = checkpoint_message(
            checkpoint["seq"].as_i64().unwrap(),
            checkpoint["hash"].as_str().unwrap(),
            checkpoint["prev_seq"].as_i64().unwrap(),
            checkpoint["prev_signature"].as_str().unwrap(),
        );
        assert!(
            AuditSigner::verify(
                public_key,
                &message,
                checkpoint["signature"].as_str().unwrap()
            ),
            "{checkpoint}"
        );
    }
}

/// The checkpoint messages (MSGID `audit.checkpoint`) among syslog messages, as JSON.
fn syslog_checkpoints(messages: &[String]) -> Vec<Value> {
    messages
        .iter()
        .filter_map(|message| {
            let parts: Vec<&str> = message.splitn(8, ' ').collect();
            (parts[5] == "audit.checkpoint").then(|| {
                let checkpoint: Value = serde_json::from_str(parts[7]).unwrap();
                assert_eq!(checkpoint["kind"], "audit.checkpoint");
                checkpoint
            })
        })
        .collect()
}

/// The audit events among syslog messages (checkpoints left out), as JSON.
fn parse_syslog(messages: &[String]) -> Vec<Value> {
    messages
        .iter()
        .filter(|message| message.split(' ').nth(5) != Some("audit.checkpoint"))
        .map(|message| {
            // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
            let parts: Vec<&str> = message.splitn(8, ' ').collect();
            assert_eq!(parts[0], "<109>1", "{message}");
            assert!(parts[1].ends_with('Z'), "{message}");
            assert_eq!(parts[3], "cortex");
            assert_eq!(parts[6], "-");
            let event: Value = serde_json::from_str(parts[7]).unwrap();
            assert_eq!(parts[5], event["action"].as_str().unwrap());
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_receiver_that_goes_down_and_comes_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = free_port().await;
    let receiver = SyslogReceiver::start(port, messages.clone()).await;
    let server = TestServer::builder()
        .env(
            "CORTEX_AUDIT_FORWARD_URL",
            &format!("syslog+tcp://127.0.0.1:{port}"),
        )
        .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
        .start()
        .await;
    let admin = admin(&server).await;
    create_keys(&server, &admin.access_token, 4, "before").await;
    let arrived = |upto: i64| {
        let messages = messages.clone();
        async move { has_every_event(&parse_syslog(&messages.lock().unwrap()), upto) }
    };
    let first = head(&server).await;
    assert!(eventually(PATIENCE, || arrived(first)).await, "phase 1");

    // The receiver goes down; events keep coming; the forwarder notices and retries.
    receiver.stop();
    let status = server.state().audit_forward_status();
    let failures_before = status.failures();
    create_keys(&server, &admin.access_token, 6, "during").await;
    assert!(
        eventually(PATIENCE, || async {
            status.failures() >= failures_before + 2
        })
        .await,
        "the outage was not noticed"
    );

    // Back on the same port: everything written during the outage arrives.
    let receiver = SyslogReceiver::start(port, messages.clone()).await;
    create_keys(&server, &admin.access_token, 2, "after").await;
    let last = head(&server).await;
    assert!(
        eventually(PATIENCE, || arrived(last)).await,
        "events were lost"
    );
    assert_complete_and_ordered(&parse_syslog(&messages.lock().unwrap()), last);
    // Signed checkpoints reach the receiver too, each after the events it covers.
    let state = server.state();
    let key = master_key(&server);
    let outcome = audit::write_checkpoint(state.store(), &key, state.now_millis())
        .await
        .unwrap();
    assert!(
        matches!(outcome, audit::CheckpointOutcome::Written(seq) if seq == last)
            || outcome == audit::CheckpointOutcome::UpToDate,
        "{outcome:?}"
    );
    assert_eq!(state.store().latest_checkpoint_seq().await.unwrap(), last);
    assert!(
        eventually(PATIENCE, || async {
            syslog_checkpoints(&messages.lock().unwrap())
                .iter()
                .any(|c| c["seq"].as_i64() == Some(last))
        })
        .await,
        "the checkpoint was not forwarded"
    );
    let received = messages.lock().unwrap().clone();
    assert_checkpoints_verify(
        &syslog_checkpoints(&received),
        &audit::signer(&key).verifying_key_hex(),
    );
    let position = |kind: &str, seq: i64| {
        received
            .iter()
            .position(|m| m.contains(kind) && m.contains(&format!("\"seq\":{seq},")))
            .unwrap()
    };
    assert!(position("audit.checkpoint", last) > position("key.create", last));
    receiver.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_reaches_the_trusted_receiver_and_never_an_impostor() {
    let dir = tempfile::tempdir().unwrap();
    let pki = private_pki();
    let ca_file = dir.path().join("siem-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // An impostor on the receiver's address, with a certificate from a CA nobody configured.
    let port = free_port().await;
    let stolen: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let impostor = SyslogReceiver::start_with(
        port,
        stolen.clone(),
        Some((tls_acceptor(&private_pki()), refused.clone())),
    )
    .await;
    let server = TestServer::builder()
        .env(
            "CORTEX_AUDIT_FORWARD_URL",
            &format!("syslog+tls://127.0.0.1:{port}"),
        )
        .env(
            "CORTEX_AUDIT_FORWARD_CA_FILE",
            &ca_file.display().to_string(),
        )
        .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
        .start()
        .await;
    let admin = admin(&server).await;
    create_keys(&server, &admin.access_token, 3, "impostor").await;
    let status = server.state().audit_forward_status();
    assert!(
        eventually(PATIENCE, || async {
            status.failures() >= 2 && *refused.lock().unwrap() >= 2
        })
        .await,
        "the forwarder did not try the impostor and refuse its certificate"
    );
    impostor.stop();
    assert!(
        stolen.lock().unwrap().is_empty(),
        "an event reached the impostor"
    );
    assert_eq!(status.forwarded_seq(), 0);

    // The real receiver on the same address: every event arrives, over TLS.
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let receiver = SyslogReceiver::start_with(
        port,
        messages.clone(),
        Some((tls_acceptor(&pki), Arc::default())),
    )
    .await;
    create_keys(&server, &admin.access_token, 2, "trusted").await;
    let last = head(&server).await;
    assert!(
        eventually(PATIENCE, || async {
            has_every_event(&parse_syslog(&messages.lock().unwrap()), last)
        })
        .await,
        "events did not arrive over TLS"
    );
    assert_complete_and_ordered(&parse_syslog(&messages.lock().unwrap()), last);
    receiver.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sink_behind_a_private_ca_needs_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = private_pki();
    let ca_file = dir.path().join("siem-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let port = free_port().await;
    let log = Arc::new(Mutex::new(HttpSinkLog::default()));
    let sink = start_http_sink(port, log.clone(), 0).await;
    let front = tls_front(&pki, ([127, 0, 0, 1], port).into()).await;
    let url = format!("https://127.0.0.1:{}/ingest", front.port());

    // Without the CA file the sink's certificate does not verify: nothing is sent.
    let server = TestServer::builder()
        .env("CORTEX_AUDIT_FORWARD_URL", &url)
        .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
        .start()
        .await;
    let admin_session = admin(&server).await;
    create_keys(&server, &admin_session.access_token, 2, "untrusted").await;
    let status = server.state().audit_forward_status();
    assert!(eventually(PATIENCE, || async { status.failures() >= 2 }).await);
    assert_eq!(status.forwarded_seq(), 0);
    assert!(log.lock().unwrap().events.is_empty());
    server.stop().await;

    // With it, every event arrives.
    let server = TestServer::builder()
        .env("CORTEX_AUDIT_FORWARD_URL", &url)
        .env(
            "CORTEX_AUDIT_FORWARD_CA_FILE",
            &ca_file.display().to_string(),
        )
        .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
        .start()
        .await;
    let admin_session = admin(&server).await;
    create_keys(&server, &admin_session.access_token, 2, "trusted").await;
    let expected = head(&server).await;
    assert!(
        eventually(PATIENCE, || async {
            has_every_event(&log.lock().unwrap().events, expected)
        })
        .await,
        "events did not arrive over https"
    );
    assert_complete_and_ordered(&log.lock().unwrap().events, expected);
    sink.abort();
    server.stop().await;
}

#[tokio::test]
async fn an_unusable_audit_forward_ca_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (path, expected) in [
        (empty.display().to_string(), "holds no certificate"),
        (
            dir.path().join("missing.pem").display().to_string(),
            "cannot read",
        ),
    ] {
        let error = TestServer::builder()
            .env("CORTEX_AUDIT_FORWARD_URL", "syslog+tls://127.0.0.1:6514")
            .env("CORTEX_AUDIT_FORWARD_CA_FILE", &path)
            .env("CORTEX_FEATURE_FLAGS_FILE", &flags_file(&dir, true))
            .try_start()
            .await
            .err()
            .expect("the gateway started with an unusable CA file")
            .to_string();
        assert!(error.contains("CORTEX_AUDIT_FORWARD_CA_FILE"), "{error}");
        assert!(error.contains(expected), "{error}");
    }
}

#[tokio::test]
async fn forwarding_needs_its_flag_and_a_sink() {
    // A sink without the flag: configured but not running; the flags are listed off.
    let server = TestServer::builder()
        .env("CORTEX_AUDIT_FORWARD_URL", "http://127.0.0.1:9/ingest")
        .start()
        .await;
    let admin = admin(&server).await;
    let features: Value = server
        .http()
        .get(server.url("/admin/features"))
        .bearer_auth(&admin.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(features["object"], "list");
    let flag = features["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "audit_forwarding")
        .unwrap();
    assert_eq!(flag["enabled"], false);
    // Answering proves `serve` has started its tasks: the forwarder is not among them.
    assert!(!server.state().audit_forward_status().running());
    server.stop().await;

    // The flag without a sink stops start-up, naming the setting.
    let dir = tempfile::tempdir().unwrap();
    let flags = flags_file(&dir, true);
    let env = |name: &str| (name == "CORTEX_FEATURE_FLAGS_FILE").then(|| flags.clone());
    let error = cortex_config::Config::resolve(cortex_config::FileConfig::default(), None, &env)
        .err()
        .unwrap();
    assert_eq!(error.setting, "CORTEX_AUDIT_FORWARD_URL");
    assert_eq!(error.to_string().lines().count(), 1);
}
