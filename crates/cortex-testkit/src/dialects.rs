//! The fake upstream's other dialects: an Anthropic-style `POST /v1/messages` and a
//! Responses-speaking `POST /v1/responses`, plain and streamed, and tool calls in every
//! dialect (chat included).
//!
//! Every dialect answers the same way, so a test can tell what reached the provider from what
//! comes back: a request with tools gets a call of the first tool with `{"city":"Paris"}`; a
//! request whose last turn is a tool's result gets `the tool said: <result>`; anything else
//! gets `hello from the fake upstream` (streams: `tok0 tok1 …`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::fake_state::{record, usage, Shared};

/// What the fake model answers.
pub(crate) enum Reply {
    Text(String),
    Call { name: String, arguments: String },
}

const ARGUMENTS: &str = r#"{"city":"Paris"}"#;
const HELLO: &str = "hello from the fake upstream";

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str().or(p["content"].as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn call_or_hello(first_tool: Option<&str>) -> Reply {
    match first_tool {
        Some(name) => Reply::Call {
            name: name.to_owned(),
            arguments: ARGUMENTS.to_owned(),
        },
        None => Reply::Text(HELLO.to_owned()),
    }
}

/// `reply`, unless a test scripted the text: then that text (tool calls stay as they are).
pub(crate) fn scripted_or(shared: &Shared, reply: Reply) -> Reply {
    match (reply, shared.scripted()) {
        (Reply::Text(_), Some(pieces)) => Reply::Text(pieces.concat()),
        (reply, _) => reply,
    }
}

/// A chat-completions request's reply.
pub(crate) fn chat_reply(request: &Value) -> Reply {
    let last = request["messages"].as_array().and_then(|m| m.last());
    if let Some(last) = last.filter(|m| m["role"] == "tool") {
        return Reply::Text(format!("the tool said: {}", text_of(&last["content"])));
    }
    call_or_hello(request["tools"][0]["function"]["name"].as_str())
}

fn messages_reply(request: &Value) -> Reply {
    let last = request["messages"].as_array().and_then(|m| m.last());
    let result = last
        .and_then(|m| m["content"].as_array())
        .and_then(|blocks| {
            blocks
                .iter()
                .find(|b| b["type"] == "tool_result")
                .map(|b| text_of(&b["content"]))
        });
    if let Some(result) = result {
        return Reply::Text(format!("the tool said: {result}"));
    }
    call_or_hello(request["tools"][0]["name"].as_str())
}

fn responses_reply(request: &Value) -> Reply {
    let last = request["input"].as_array().and_then(|i| i.last());
    if let Some(last) = last.filter(|i| i["type"] == "function_call_output") {
        return Reply::Text(format!("the tool said: {}", text_of(&last["output"])));
    }
    call_or_hello(request["tools"][0]["name"].as_str())
}

fn sse(events: Vec<String>) -> Response {
    let chunks = events
        .into_iter()
        .map(|e| Ok::<_, std::io::Error>(Bytes::from(e)));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap()
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A streamed text answer's pieces: the scripted ones, else `tok0 `, `tok1 `, ….
pub(crate) fn stream_texts(shared: &Shared) -> Vec<String> {
    if let Some(pieces) = shared.scripted() {
        return pieces;
    }
    (0..shared.chunks.load(Ordering::SeqCst))
        .map(|i| format!("tok{i} "))
        .collect()
}

/// A streamed chat tool call: the call's id and name, its arguments in two pieces, the finish
/// reason, the usage (when asked) and `[DONE]`.
pub(crate) fn stream_chat_tool_call(
    name: &str,
    arguments: &str,
    model: &str,
    include_usage: bool,
) -> Response {
    let chunk = |delta: Value, finish: Value| {
        let data = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
        format!("data: {data}\n\n")
    };
    let (head, tail) = arguments.split_at(arguments.len() / 2);
    let mut events = vec![
        chunk(
            json!({ "role": "assistant", "tool_calls": [{ "index": 0, "id": "call_fake", "type": "function", "function": { "name": name, "arguments": "" } }] }),
            Value::Null,
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": head } }] }),
            Value::Null,
        ),
        chunk(
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": tail } }] }),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ];
    if include_usage {
        let data = json!({ "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage(13, 5) });
        events.push(format!("data: {data}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(events)
}

/// `POST /v1/messages`, as Anthropic's API answers it.
pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match record(&shared, "/v1/messages", headers, &body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let model = request["model"].clone();
    let reply = scripted_or(&shared, messages_reply(&request));
    if request["stream"].as_bool() == Some(true) {
        return stream_messages(&shared, &model, reply);
    }
    let (content, stop) = match reply {
        Reply::Text(text) => (json!([{ "type": "text", "text": text }]), "end_turn"),
        Reply::Call { name, arguments } => {
            let input: Value = serde_json::from_str(&arguments).unwrap();
            (
                json!([{ "type": "text", "text": "let me look" }, { "type": "tool_use", "id": "toolu_fake", "name": name, "input": input }]),
                "tool_use",
            )
        }
    };
    axum::Json(json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": { "input_tokens": 11, "output_tokens": 7 },
    }))
    .into_response()
}

fn stream_messages(shared: &Shared, model: &Value, reply: Reply) -> Response {
    let mut events = vec![event(
        "message_start",
        &json!({ "type": "message_start", "message": { "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 13, "output_tokens": 1 } } }),
    )];
    events.push(event("ping", &json!({ "type": "ping" })));
    let (stop, output_tokens) = match reply {
        Reply::Text(_) => {
            let texts = stream_texts(shared);
            events.push(event("content_block_start", &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } })));
            for text in &texts {
                events.push(event("content_block_delta", &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } })));
            }
            events.push(event(
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": 0 }),
            ));
            ("end_turn", texts.len())
        }
        Reply::Call { name, arguments } => {
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            events.push(event("content_block_start", &json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "tool_use", "id": "toolu_fake", "name": name, "input": {} } })));
            for part in [head, tail] {
                events.push(event("content_block_delta", &json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "input_json_delta", "partial_json": part } })));
            }
            events.push(event(
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": 0 }),
            ));
            ("tool_use", 5)
        }
    };
    events.push(event("message_delta", &json!({ "type": "message_delta", "delta": { "stop_reason": stop, "stop_sequence": null }, "usage": { "output_tokens": output_tokens } })));
    events.push(event("message_stop", &json!({ "type": "message_stop" })));
    sse(events)
}

/// `POST /v1/responses`, as OpenAI's Responses API answers it.
pub(crate) async fn responses(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match record(&shared, "/v1/responses", headers, &body).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let model = request["model"].clone();
    let reply = scripted_or(&shared, responses_reply(&request));
    if request["stream"].as_bool() == Some(true) {
        return stream_responses(&shared, &model, reply);
    }
    let item = match reply {
        Reply::Text(text) => message_item(&text, "completed"),
        Reply::Call { name, arguments } => call_item(&name, &arguments, "completed"),
    };
    axum::Json(response_object(&model, "completed", &[item], Some((11, 7)))).into_response()
}

fn message_item(text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{ "type": "output_text", "text": text, "annotations": [] }])
    } else {
        json!([])
    };
    json!({ "type": "message", "id": "msg_fake", "status": status, "role": "assistant", "content": content })
}

fn call_item(name: &str, arguments: &str, status: &str) -> Value {
    json!({ "type": "function_call", "id": "fc_fake", "call_id": "call_fake", "name": name, "arguments": arguments, "status": status })
}

fn response_object(
    model: &Value,
    status: &str,
    output: &[Value],
    tokens: Option<(u64, u64)>,
) -> Value {
    let usage = tokens.map(|(input, output)| json!({ "input_tokens": input, "output_tokens": output, "total_tokens": input + output,
        "input_tokens_details": { "cached_tokens": 0 }, "output_tokens_details": { "reasoning_tokens": 0 } }));
    json!({ "id": "resp_fake", "object": "response", "created_at": 1, "status": status, "model": model,
        "output": output, "usage": usage, "error": null, "incomplete_details": null, "instructions": null,
        "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [] })
}

fn stream_responses(shared: &Shared, model: &Value, reply: Reply) -> Response {
    let mut sequence = 0u64;
    let mut events = Vec::new();
    let mut push = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(sequence);
        sequence += 1;
        events.push(event(name, &data));
    };
    push(
        "response.created",
        json!({ "response": response_object(model, "in_progress", &[], None) }),
    );
    push(
        "response.in_progress",
        json!({ "response": response_object(model, "in_progress", &[], None) }),
    );
    let (item, output_tokens) = match reply {
        Reply::Text(_) => {
            let texts = stream_texts(shared);
            let full: String = texts.concat();
            push(
                "response.output_item.added",
                json!({ "output_index": 0, "item": message_item("", "in_progress") }),
            );
            push(
                "response.content_part.added",
                json!({ "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": "", "annotations": [] } }),
            );
            for text in &texts {
                push(
                    "response.output_text.delta",
                    json!({ "item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": text, "logprobs": [] }),
                );
            }
            push(
                "response.output_text.done",
                json!({ "item_id": "msg_fake", "output_index": 0, "content_index": 0, "text": full, "logprobs": [] }),
            );
            push(
                "response.content_part.done",
                json!({ "item_id": "msg_fake", "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": full, "annotations": [] } }),
            );
            (message_item(&full, "completed"), texts.len() as u64)
        }
        Reply::Call { name, arguments } => {
            push(
                "response.output_item.added",
                json!({ "output_index": 0, "item": call_item(&name, "", "in_progress") }),
            );
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            for part in [head, tail] {
                push(
                    "response.function_call_arguments.delta",
                    json!({ "item_id": "fc_fake", "output_index": 0, "delta": part }),
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({ "item_id": "fc_fake", "output_index": 0, "arguments": arguments }),
            );
            (call_item(&name, &arguments, "completed"), 5)
        }
    };
    push(
        "response.output_item.done",
        json!({ "output_index": 0, "item": item }),
    );
    push(
        "response.completed",
        json!({ "response": response_object(model, "completed", &[item], Some((13, output_tokens))) }),
    );
    sse(events)
}
