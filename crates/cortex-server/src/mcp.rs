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

use std::net::SocketAddr;
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
    let per_minute = f64::from(app.config.mcp_requests_per_minute);
    let quota = Quota {
        rate_per_second: per_minute / 60.0,
        burst: app.config.mcp_requests_per_minute,
    };
    match cortex_gateway::quota::check_rate(
        &app.data,
        &format!("mcp-ip:{}", ClientIp(ip).bucket()),
        quota,
    )
    .await
    {
        Ok(_) => {}
        Err(error) => return error.into_response(),
    }
    if !origin_allowed(&app, &headers) {
        return ApiError::Forbidden.into_response();
    }
    let Some(token) = &app.config.mcp_token else {
        return ApiError::NotFound.into_response();
    };
    let presented = bearer_token(&headers).unwrap_or("");
    if !ct_eq(presented.as_bytes(), token.expose_secret().as_bytes()) {
        return ApiError::MissingCredentials.into_response();
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                PARSE_ERROR,
                "parse error: the body is not JSON",
            )
        }
    };
    let Value::Object(message) = message else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "send one JSON-RPC message object (batches are not supported)",
        );
    };
    if message.get("jsonrpc") != Some(&Value::String("2.0".to_owned())) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            INVALID_REQUEST,
            "`jsonrpc` must be \"2.0\"",
        );
    }
    let id = match message.get("id") {
        None => None,
        Some(id @ Value::String(_)) => Some(id.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n.clone())),
        Some(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                INVALID_REQUEST,
                "`id` must be a string or an integer",
            )
        }
    };
    let Some(method) = message.get("method") else {
        // A response or error from the client to a server request: nothing to answer.
        return if message.contains_key("result") || message.contains_key("error") {
            StatusCode::ACCEPTED.into_response()
        } else {
            rpc_error(
                StatusCode::BAD_REQUEST,
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "`method` is required",
            )
        };
    };
    let Some(method) = method.as_str() else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "`method` must be a string",
        );
    };
    let params = match message.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "`params` must be an object",
            )
        }
    };
    let Some(id) = id else {
        // Notifications (e.g. notifications/initialized) are acknowledged without a body.
        return StatusCode::ACCEPTED.into_response();
    };
    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(SUPPORTED_VERSIONS[0]);
            let version = SUPPORTED_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .copied()
                .unwrap_or(SUPPORTED_VERSIONS[0]);
            rpc_result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": { "tools": { "listChanged": false } },
                    "serverInfo": { "name": "cortex", "version": env!("CARGO_PKG_VERSION") },
                    "instructions": "Cortex AI gateway tools: list_models, chat, usage.",
                }),
            )
        }
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({ "tools": tool_definitions() })),
        "tools/call" => {
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
            if !["list_models", "chat", "usage"].contains(&name) {
                return rpc_error(StatusCode::OK, id, INVALID_PARAMS, "unknown tool");
            }
            let event = NewAuditEvent::new("mcp", "mcp.tool_call", name).with_ip(ip.to_string());
            if let Err(err) = app.store.append_audit(&event, app.now_millis()).await {
                tracing::warn!(error = %err, "auditing an MCP tool call failed");
                return rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    id,
                    -32603,
                    "temporarily unavailable",
                );
            }
            // The agent key gets the checks a `/v1` request gets, on every call.
            let outcome = match agent_key(&app) {
                Err(refusal) => Err(refusal),
                Ok(key) => match name {
                    "list_models" => list_models(&app, &key, &arguments),
                    "chat" => chat(&app, &arguments, ip).await,
                    _ => usage(&app, &key, &arguments).await,
                },
            };
            let result = match outcome {
                Ok(text) => {
                    json!({ "content": [{ "type": "text", "text": text }], "isError": false })
                }
                Err(text) => {
                    json!({ "content": [{ "type": "text", "text": text }], "isError": true })
                }
            };
            rpc_result(id, result)
        }
        _ => rpc_error(StatusCode::OK, id, METHOD_NOT_FOUND, "method not found"),
    }
}

/// Any other method on `/mcp`: this server streams nothing unprompted (no GET stream).
pub async fn method_not_allowed() -> Response {
    let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

fn tool_definitions() -> Value {
    json!([
        {
            "name": "list_models",
            "description": "List the models this gateway offers to the agent's key.",
            "inputSchema": { "type": "object", "properties": {}, "additionalProperties": false },
        },
        {
            "name": "chat",
            "description": "Send a chat completion through the gateway (non-streamed) and return the answer text.",
            "inputSchema": {
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
            },
        },
        {
            "name": "usage",
            "description": "Requests, tokens and cost of the agent's key per day.",
            "inputSchema": {
                "type": "object",
                "properties": { "days": { "type": "integer", "minimum": 1, "maximum": 90 } },
                "additionalProperties": false,
            },
        },
    ])
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
    app: &AppState,
    key: &CachedKey,
    arguments: &Map<String, Value>,
) -> Result<String, String> {
    no_extra(arguments, &[])?;
    let table = app.data.catalog.current();
    let names: Vec<&str> = table
        .model_names()
        .into_iter()
        .filter(|m| key.allows_model(m))
        .collect();
    Ok(serde_json::to_string(&names).unwrap_or_default())
}

async fn chat(
    app: &AppState,
    arguments: &Map<String, Value>,
    ip: std::net::IpAddr,
) -> Result<String, String> {
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
    app: &AppState,
    key: &CachedKey,
    arguments: &Map<String, Value>,
) -> Result<String, String> {
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
        .usage_summary(&filter, UsageGrouping::Day)
        .await
        .map_err(|_| "usage is unavailable right now".to_owned())?;
    let rows: Vec<Value> = buckets
        .iter()
        .map(|b| json!({ "day": b.group, "requests": b.requests, "prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens, "cost_usd": b.cost_usd }))
        .collect();
    Ok(Value::Array(rows).to_string())
}
