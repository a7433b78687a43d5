//! `/mcp`: a Model Context Protocol server (streamable HTTP transport, JSON responses) that lets
//! AI agents use a small, least-privilege tool set: list the models, chat through the gateway,
//! read the key's own usage. Nothing here executes code, reads files, or reaches any address
//! but the configured providers (chat goes through the normal `/v1` path).
//!
//! Off unless `MCP_TOKEN` is set (the route is not mounted, so `/mcp` is 404). Every request:
//! counted against `CORTEX_MCP_REQUESTS_PER_MINUTE` per client IP (429), `Origin` checked
//! against the allow-list (MCP's DNS-rebinding advice; 403), `Authorization: Bearer
//! <MCP_TOKEN>` compared in constant time (401), the JSON-RPC message validated (400). Every
//! tool call checks `MCP_API_KEY` as `/v1` checks a key (revoked, owner disabled, expired).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cortex_crypto::token::ct_eq;
use cortex_domain::audit::NewAuditEvent;
use cortex_limits::Quota;
use cortex_store::usage::{UsageFilter, UsageGrouping};
use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use crate::state::AppState;
use cortex_gateway::authenticate::{bearer_token, check_key};
use cortex_gateway::error::ApiError;
use cortex_gateway::key_cache::CachedKey;
use cortex_gateway::request_meta::ClientIp;

const SUPPORTED_VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

fn envelope(id: Value, key: &str, payload: Value) -> Value {
    let mut message = Map::with_capacity(3);
    message.insert("jsonrpc".to_owned(), Value::String("2.0".to_owned()));
    message.insert("id".to_owned(), id);
    message.insert(key.to_owned(), payload);
    Value::Object(message)
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (
        status,
        Json(envelope(
            id,
            "error",
            json!({ "code": code, "message": message }),
        )),
    )
        .into_response()
}

fn rpc_result(id: Value, result: Value) -> Response {
    Json(envelope(id, "result", result)).into_response()
}

/// The request's own origin (scheme from TLS settings, host from `Host`).
fn own_origin(app: &AppState, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if app.config.serves_tls() {
        "https"
    } else {
        "http"
    };
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

fn origin_allowed(app: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    own_origin(app, headers).is_some_and(|own| own == origin)
        || app.config.cors.allow_origins.iter().any(|o| o == &origin)
}

pub async fn handle(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = authorize(&app, ip, &headers).await {
        return refusal.into_response();
    }
    match parse(&body) {
        Ok(Message::Request(request)) => dispatch(&app, ip, request).await,
        Ok(Message::NoAnswer) => StatusCode::ACCEPTED.into_response(),
        Err(invalid) => rpc_error(
            StatusCode::BAD_REQUEST,
            invalid.id,
            invalid.code,
            invalid.message,
        ),
    }
}

/// The transport checks, before the body is parsed: rate per client IP, `Origin`, and the bearer
/// token. Each refusal is a plain API error, not JSON-RPC (the caller is not yet trusted).
async fn authorize(app: &AppState, ip: IpAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let per_minute = f64::from(app.config.mcp_requests_per_minute);
    let quota = Quota {
        rate_per_second: per_minute / 60.0,
        burst: app.config.mcp_requests_per_minute,
    };
    cortex_gateway::quota::check_rate(
        &app.data,
        &format!("mcp-ip:{}", ClientIp(ip).bucket()),
        quota,
    )
    .await?;
    if !origin_allowed(app, headers) {
        return Err(ApiError::Forbidden);
    }
    let Some(token) = &app.config.mcp_token else {
        return Err(ApiError::NotFound);
    };
    let presented = bearer_token(headers).unwrap_or("");
    if !ct_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
        return Err(ApiError::MissingCredentials);
    }
    Ok(())
}

/// One validated JSON-RPC message.
enum Message {
    /// A request with an `id`, to be answered.
    Request(RpcRequest),
    /// A notification, or the client's response to a server request: acknowledged with 202.
    NoAnswer,
}

struct RpcRequest {
    id: Value,
    method: String,
    params: Map<String, Value>,
}

/// Why a body is not a valid JSON-RPC message: answered as a JSON-RPC error in a 400.
struct InvalidMessage {
    /// The message's `id` when it was read before the fault, else null.
    id: Value,
    code: i64,
    message: &'static str,
}

fn bad_request(id: Option<Value>, code: i64, message: &'static str) -> InvalidMessage {
    InvalidMessage {
        id: id.unwrap_or(Value::Null),
        code,
        message,
    }
}

/// Validates the body as one JSON-RPC 2.0 message. The checks run in a fixed order, so a
/// message with several faults always gets the same error.
fn parse(body: &[u8]) -> Result<Message, InvalidMessage> {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return Err(bad_request(
            None,
            PARSE_ERROR,
            "parse error: the body is not JSON",
        ));
    };
    let Value::Object(message) = message else {
        return Err(bad_request(
            None,
            INVALID_REQUEST,
            "send one JSON-RPC message object (batches are not supported)",
        ));
    };
    if message.get("jsonrpc") != Some(&Value::String("2.0".to_owned())) {
        return Err(bad_request(
            None,
            INVALID_REQUEST,
            "`jsonrpc` must be \"2.0\"",
        ));
    }
    let id = match message.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n.clone())),
        Some(_) => {
            return Err(bad_request(
                None,
                INVALID_REQUEST,
                "`id` must be a string or an integer",
            ))
        }
    };
    let Some(method) = message.get("method") else {
        // A response or error from the client to a server request: nothing to answer.
        return if message.contains_key("result") || message.contains_key("error") {
            Ok(Message::NoAnswer)
        } else {
            Err(bad_request(id, INVALID_REQUEST, "`method` is required"))
        };
    };
    let Some(method) = method.as_str() else {
        return Err(bad_request(
            id,
            INVALID_REQUEST,
            "`method` must be a string",
        ));
    };
    let params = match message.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => {
            return Err(bad_request(
                id,
                INVALID_REQUEST,
                "`params` must be an object",
            ))
        }
    };
    let Some(id) = id else {
        // Notifications (e.g. notifications/initialized) are acknowledged without a body.
        return Ok(Message::NoAnswer);
    };
    Ok(Message::Request(RpcRequest {
        id,
        method: method.to_owned(),
        params,
    }))
}

/// Answers one request. Method-level errors are JSON-RPC errors in a 200.
async fn dispatch(app: &AppState, ip: IpAddr, request: RpcRequest) -> Response {
    let RpcRequest { id, method, params } = request;
    match method.as_str() {
        "initialize" => rpc_result(id, initialize(&params)),
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({ "tools": tool_definitions() })),
        "tools/call" => call_tool(app, ip, id, &params).await,
        _ => rpc_error(StatusCode::OK, id, METHOD_NOT_FOUND, "method not found"),
    }
}

fn initialize(params: &Map<String, Value>) -> Value {
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(SUPPORTED_VERSIONS[0]);
    let version = SUPPORTED_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .copied()
        .unwrap_or(SUPPORTED_VERSIONS[0]);
    let names: Vec<&str> = TOOLS.iter().map(|tool| tool.name).collect();
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "cortex", "version": env!("CARGO_PKG_VERSION") },
        "instructions": format!("Cortex AI gateway tools: {}.", names.join(", ")),
    })
}

/// `tools/call`: validates the call, audits it, checks the agent key, and runs the tool. A
/// tool's own failure is a result with `isError`, not a JSON-RPC error (MCP's convention).
async fn call_tool(app: &AppState, ip: IpAddr, id: Value, params: &Map<String, Value>) -> Response {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return rpc_error(StatusCode::OK, id, INVALID_PARAMS, "`name` is required");
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(arguments)) => arguments.clone(),
        Some(_) => {
            return rpc_error(
                StatusCode::OK,
                id,
                INVALID_PARAMS,
                "`arguments` must be an object",
            )
        }
    };
    let Some(tool) = TOOLS.iter().find(|tool| tool.name == name) else {
        return rpc_error(StatusCode::OK, id, INVALID_PARAMS, "unknown tool");
    };
    let event = NewAuditEvent::new("mcp", "mcp.tool_call", tool.name).with_ip(ip.to_string());
    if let Err(err) = app.store.append_audit(&event, app.now_millis()).await {
        tracing::warn!(error = %err, "auditing an MCP tool call failed");
        return rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            id,
            INTERNAL_ERROR,
            "temporarily unavailable",
        );
    }
    // The agent key gets the checks a `/v1` request gets, on every call.
    let outcome = match agent_key(app) {
        Err(refusal) => Err(refusal),
        Ok(key) => {
            (tool.run)(ToolCall {
                app,
                key: &key,
                arguments: &arguments,
                ip,
            })
            .await
        }
    };
    let (text, is_error) = match outcome {
        Ok(text) => (text, false),
        Err(text) => (text, true),
    };
    rpc_result(
        id,
        json!({ "content": [{ "type": "text", "text": text }], "isError": is_error }),
    )
}

/// Any other method on `/mcp`: this server streams nothing unprompted (no GET stream).
pub async fn method_not_allowed() -> Response {
    let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// What a tool gets: the checked agent key and the call's arguments.
#[derive(Clone, Copy)]
struct ToolCall<'a> {
    app: &'a AppState,
    key: &'a CachedKey,
    arguments: &'a Map<String, Value>,
    ip: IpAddr,
}

/// A tool's answer text, or the error text the agent sees.
type ToolOutcome = Result<String, String>;

struct Tool {
    name: &'static str,
    description: &'static str,
    input_schema: fn() -> Value,
    run: for<'a> fn(ToolCall<'a>) -> BoxFuture<'a, ToolOutcome>,
}

/// Every tool, in the order `tools/list` shows them. `tools/list`, `tools/call` and the
/// `initialize` instructions all read this table, so a tool is added in one place.
const TOOLS: &[Tool] = &[
    Tool {
        name: "list_models",
        description: "List the models this gateway offers to the agent's key.",
        input_schema: || json!({ "type": "object", "properties": {}, "additionalProperties": false }),
        run: |call| Box::pin(async move { list_models(call) }),
    },
    Tool {
        name: "chat",
        description:
            "Send a chat completion through the gateway (non-streamed) and return the answer text.",
        input_schema: || {
            json!({
                "type": "object",
                "properties": {
                    "model": { "type": "string", "maxLength": 256 },
                    "messages": {
                        "type": "array", "minItems": 1, "maxItems": 100,
                        "items": {
                            "type": "object",
                            "properties": { "role": { "enum": ["system", "user", "assistant"] }, "content": { "type": "string" } },
                            "required": ["role", "content"], "additionalProperties": false,
                        },
                    },
                    "max_tokens": { "type": "integer", "minimum": 1, "maximum": 8192 },
                },
                "required": ["model", "messages"],
                "additionalProperties": false,
            })
        },
        run: |call| Box::pin(chat(call)),
    },
    Tool {
        name: "usage",
        description: "Requests, tokens and cost of the agent's key per day.",
        input_schema: || {
            json!({
                "type": "object",
                "properties": { "days": { "type": "integer", "minimum": 1, "maximum": 90 } },
                "additionalProperties": false,
            })
        },
        run: |call| Box::pin(usage(call)),
    },
];

fn tool_definitions() -> Value {
    TOOLS
        .iter()
        .map(|tool| {
            json!({
                "name": tool.name,
                "description": tool.description,
                "inputSchema": (tool.input_schema)(),
            })
        })
        .collect()
}

fn no_extra(arguments: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(extra) => Err(format!(
            "unknown argument `{}`",
            extra.chars().take(64).collect::<String>()
        )),
        None => Ok(()),
    }
}

/// The key the tools act as, if `/v1` would accept it now: the same [`check_key`] (known,
/// secret, not revoked, owner not disabled, not expired). An error text for the agent otherwise.
fn agent_key(app: &AppState) -> Result<Arc<CachedKey>, String> {
    let key = app
        .config
        .mcp_api_key
        .as_ref()
        .ok_or("the gateway has no MCP_API_KEY configured")?;
    check_key(&app.data, key.expose_secret()).map_err(|(_, refusal)| {
        match refusal {
            ApiError::KeyRevoked => "MCP_API_KEY has been revoked",
            ApiError::KeyExpired => "MCP_API_KEY has expired",
            ApiError::KeyOwnerDisabled => "the owner of MCP_API_KEY is disabled",
            _ => "MCP_API_KEY is not a valid key",
        }
        .to_owned()
    })
}

fn list_models(
    ToolCall {
        app,
        key,
        arguments,
        ..
    }: ToolCall<'_>,
) -> ToolOutcome {
    no_extra(arguments, &[])?;
    let table = app.data.catalog.current();
    let names: Vec<&str> = table
        .model_names()
        .into_iter()
        .filter(|m| key.allows_model(m))
        .collect();
    Ok(serde_json::to_string(&names).unwrap_or_default())
}

/// Chat sends the configured key itself through `/v1`, which repeats the key checks.
async fn chat(
    ToolCall {
        app, arguments, ip, ..
    }: ToolCall<'_>,
) -> ToolOutcome {
    no_extra(arguments, &["model", "messages", "max_tokens"])?;
    let key = app
        .config
        .mcp_api_key
        .as_ref()
        .ok_or("the gateway has no MCP_API_KEY configured")?;
    let model = arguments
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 256)
        .ok_or("`model` must be a model name")?;
    let messages = arguments
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty() && m.len() <= 100)
        .ok_or("`messages` must be 1 to 100 messages")?;
    for message in messages {
        let role = message.get("role").and_then(Value::as_str);
        let valid = message.as_object().is_some_and(|m| m.len() == 2)
            && matches!(role, Some("system" | "user" | "assistant"))
            && message.get("content").is_some_and(Value::is_string);
        if !valid {
            return Err(
                "every message needs `role` (system, user or assistant) and string `content`"
                    .to_owned(),
            );
        }
    }
    let mut body = json!({ "model": model, "messages": messages, "stream": false });
    if let Some(max) = arguments.get("max_tokens") {
        let max = max
            .as_u64()
            .filter(|m| (1..=8192).contains(m))
            .ok_or("`max_tokens` must be 1 to 8192")?;
        body["max_tokens"] = json!(max);
    }
    // Through the whole /v1 stack, in process: key check, limits, usage record, metrics.
    let mut request = Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", key.expose_secret()),
        )
        .body(Body::from(body.to_string()))
        .map_err(|_| "internal error".to_owned())?;
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip, 0)));
    let response = crate::app::router(app)
        .oneshot(request)
        .await
        .map_err(|_| "internal error".to_owned())?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|_| "the answer was too large".to_owned())?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("the gateway refused the request");
        return Err(format!("{} ({})", message, status.as_u16()));
    }
    Ok(answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

async fn usage(
    ToolCall {
        app,
        key,
        arguments,
        ..
    }: ToolCall<'_>,
) -> ToolOutcome {
    no_extra(arguments, &["days"])?;
    let days = match arguments.get("days") {
        None => 7,
        Some(d) => d
            .as_i64()
            .filter(|d| (1..=90).contains(d))
            .ok_or("`days` must be 1 to 90")?,
    };
    let filter = UsageFilter {
        from: Some(app.now_millis() - days * 86_400_000),
        key_id: Some(key.id.clone()),
        ..UsageFilter::default()
    };
    let buckets = app
        .store
        .usage_summary(
            &cortex_domain::Tenant::Org(key.org_id.clone()),
            &filter,
            UsageGrouping::Day,
        )
        .await
        .map_err(|_| "usage is unavailable right now".to_owned())?;
    let rows: Vec<Value> = buckets
        .iter()
        .map(|b| json!({ "day": b.group, "requests": b.requests, "prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens, "cost_usd": b.cost_usd }))
        .collect();
    Ok(Value::Array(rows).to_string())
}
