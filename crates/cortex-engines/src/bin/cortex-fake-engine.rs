//! A fake inference engine for the supervisor tests: speaks enough OpenAI (`GET /v1/models`,
//! `POST /v1/chat/completions`, plain and streamed) and accepts both engines' command lines —
//! vLLM's `[serve] <model> --host H --port P --served-model-name S` and llama.cpp's
//! `-m/--model M --host H --port P --alias S` — with the key from `--api-key`, `VLLM_API_KEY`
//! or `LLAMA_API_KEY`. Without the right `Authorization: Bearer <key>` it answers 401; it
//! refuses to start without a key.
//!
//! Behaviour for tests, from the environment:
//! - `FAKE_ENGINE_EXIT_LINES=a|b|c`: print those lines to stderr and exit 1 at once;
//! - `FAKE_ENGINE_CRASH_AFTER_MS=N`: print a fatal line and exit 3 after N ms;
//! - `FAKE_ENGINE_READY_DELAY_MS=N`: `/v1/models` answers 503 (loading) for N ms;
//! - `FAKE_ENGINE_IGNORE_SIGTERM=1`: SIGTERM is ignored (only SIGKILL ends it);
//! - `FAKE_ENGINE_SPAWN_CHILD=1`: start a sleeping child in the same process group and print
//!   `fake-engine: child pid N`;
//! - `FAKE_ENGINE_PRINT_SECRETS=1`: print the API key and `HF_TOKEN` (to test redaction);
//! - `FAKE_ENGINE_NO_AUTH=1`: answer without checking the key (an engine that ignores it).
//!
//! Why a plain `[[bin]]` of cortex-engines: cargo builds a package's binaries for its
//! integration tests and hands them over as `CARGO_BIN_EXE_cortex-fake-engine`, with no feature
//! to remember (a `required-features` binary would make `cargo test -p cortex-engines` skip
//! the tests that need it, silently). It uses only crates the library already depends on, and
//! the release image builds `-p cortex-cli` only, so it never ships.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

struct Config {
    model: String,
    served: String,
    host: String,
    port: u16,
    key: String,
    ready_at: Instant,
}

fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn complain(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn env_ms(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut iter = args.iter().peekable();
    if iter.peek().is_some_and(|a| a.as_str() == "serve") {
        iter.next();
    }
    let (mut model, mut served, mut host, mut port, mut key) = (None, None, None, None, None);
    while let Some(arg) = iter.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with('-') => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| iter.next().cloned());
        match name {
            "--host" => host = value(),
            "--port" => port = value(),
            "--api-key" => key = value(),
            "--served-model-name" | "--alias" | "-a" => served = value(),
            "--model" | "-m" => model = value(),
            flag if flag.starts_with('-') => {
                // Another engine option: take its value when one follows.
                if inline.is_none() && iter.peek().is_some_and(|next| !next.starts_with("--")) {
                    iter.next();
                }
            }
            positional => {
                if model.is_none() {
                    model = Some(positional.to_owned());
                }
            }
        }
    }
    let key = key
        .or_else(|| std::env::var("VLLM_API_KEY").ok())
        .or_else(|| std::env::var("LLAMA_API_KEY").ok())
        .filter(|k| !k.is_empty())
        .ok_or("refusing to serve without an API key")?;
    let model = model.ok_or("no model given")?;
    let port = port.ok_or("no --port")?.parse().map_err(|_| "bad --port")?;
    Ok(Config {
        served: served.unwrap_or_else(|| model.clone()),
        model,
        host: host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        port,
        key,
        ready_at: Instant::now()
            + Duration::from_millis(env_ms("FAKE_ENGINE_READY_DELAY_MS").unwrap_or(0)),
    })
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"message": message, "type": "fake_engine_error"}}),
    )
}

async fn handle(
    config: Arc<Config>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    if path == "/health" {
        return Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})));
    }
    let expected = format!("Bearer {}", config.key);
    let authorized = flag("FAKE_ENGINE_NO_AUTH")
        || request
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authorized {
        return Ok(error(StatusCode::UNAUTHORIZED, "invalid api key"));
    }
    match (request.method().clone(), path.as_str()) {
        (Method::GET, "/v1/models") => {
            if Instant::now() < config.ready_at {
                return Ok(error(StatusCode::SERVICE_UNAVAILABLE, "loading model"));
            }
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({"object": "list", "data": [
                    {"id": config.served, "object": "model", "created": 0, "owned_by": "cortex-fake-engine"}
                ]}),
            ))
        }
        (Method::POST, "/v1/chat/completions") => {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let stream = parsed
                .get("stream")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let content = format!("Hello from {}", config.served);
            if !stream {
                return Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": config.served,
                        "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
                    }),
                ));
            }
            let mut events: Vec<String> = content
                .split_inclusive(' ')
                .map(|piece| {
                    let chunk = serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "created": 0, "model": config.served,
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                    format!("data: {chunk}\n\n")
                })
                .collect();
            events.push("data: [DONE]\n\n".to_owned());
            let frames = futures_util::stream::iter(
                events
                    .into_iter()
                    .map(|event| Ok::<_, Infallible>(Frame::data(Bytes::from(event)))),
            );
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            Ok(response)
        }
        _ => Ok(error(StatusCode::NOT_FOUND, "no such route")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--fake-engine-sleeper") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    say(&format!("fake-engine: argv {}", args.join(" ")));
    if let Ok(lines) = std::env::var("FAKE_ENGINE_EXIT_LINES") {
        for line in lines.split('|') {
            complain(line);
        }
        std::process::exit(1);
    }
    let config = match parse_args(&args) {
        Ok(config) => Arc::new(config),
        Err(message) => {
            complain(&format!("fake-engine: {message}"));
            std::process::exit(2);
        }
    };
    if flag("FAKE_ENGINE_PRINT_SECRETS") {
        say(&format!("fake-engine: api key {}", config.key));
        say(&format!(
            "fake-engine: hf token {}",
            std::env::var("HF_TOKEN").unwrap_or_default()
        ));
    }
    say(&format!(
        "fake-engine: model {} served as {} offline={}",
        config.model,
        config.served,
        std::env::var("HF_HUB_OFFLINE").unwrap_or_default()
    ));
    if flag("FAKE_ENGINE_SPAWN_CHILD") {
        let exe = std::env::current_exe().unwrap_or_default();
        match std::process::Command::new(exe)
            .arg("--fake-engine-sleeper")
            .spawn()
        {
            Ok(child) => say(&format!("fake-engine: child pid {}", child.id())),
            Err(error) => complain(&format!("fake-engine: cannot spawn child: {error}")),
        }
    }
    let listener = match tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            complain(&format!(
                "fake-engine: cannot bind {}:{}: {error}",
                config.host, config.port
            ));
            std::process::exit(2);
        }
    };
    say(&format!(
        "fake-engine: listening on {}:{}",
        config.host, config.port
    ));

    if let Some(ms) = env_ms("FAKE_ENGINE_CRASH_AFTER_MS") {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            complain("fake-engine: fatal: simulated crash");
            std::process::exit(3);
        });
    }
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        std::process::exit(2);
    };
    let ignore_sigterm = flag("FAKE_ENGINE_IGNORE_SIGTERM");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(Arc::clone(&config), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = terminate.recv() => {
                if ignore_sigterm {
                    say("fake-engine: ignoring SIGTERM");
                } else {
                    say("fake-engine: SIGTERM, shutting down");
                    std::process::exit(0);
                }
            }
        }
    }
}
