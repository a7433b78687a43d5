//! The Responses API door (`POST /v1/responses`) in front of a chat-completions provider: the
//! request goes to chat completions, and the chat answer or chunk stream comes back as a
//! Responses `response` object or event stream that the official SDKs parse
//! (`response.output_text`, `function_call` items, `sequence_number` on every event).
//!
//! # Request: Responses → chat
//! | Responses | chat completions |
//! |---|---|
//! | `model` | the provider's name for it |
//! | `instructions` | the first message, `system` |
//! | `input: "text"` | one `user` message |
//! | `input[i]` message (`type: "message"`, or just `role` + `content`) | a message of that role; `developer` becomes `system`, which every chat provider knows |
//! | content parts `input_text` / `output_text` | `text` parts (annotations and logprobs dropped) |
//! | `input_image` with `image_url` (`detail` auto/low/high) | an `image_url` part (user messages only) |
//! | `refusal` part of an assistant message | a `refusal` part |
//! | `function_call {call_id, name, arguments}` | a `tool_calls` entry of an assistant message: consecutive calls share one, joined to an assistant message just before them |
//! | `function_call_output {call_id, output}` | a `tool` message (`output` a string, or `input_text` parts) |
//! | `reasoning` items | dropped: opaque provider state a chat provider cannot read |
//! | `tools[i]` `{type: "function", name, description, parameters, strict}` | `{type: "function", function: {…}}`; `strict` passes only when sent |
//! | `tool_choice` `auto`/`none`/`required`/`{type: "function", name}` | the same in chat's shape |
//! | `parallel_tool_calls`, `temperature`, `top_p`, `user` | the same |
//! | `max_output_tokens` | `max_tokens` |
//! | `stream: true` | `stream: true` and `stream_options.include_usage`, so the stream is metered |
//! | `text.format` `json_object` / `json_schema` | `response_format` (`json_schema` inside chat's wrapper); `text` is the default and sends nothing |
//! | `reasoning.effort` | `reasoning_effort`; `reasoning.summary` is dropped (chat has no summaries) |
//!
//! Dropped because they change nothing in the answer: `include` (optional extras such as
//! logprobs or encrypted reasoning, which a chat provider cannot produce), `metadata`,
//! `safety_identifier`, `prompt_cache_key`, `stream_options.include_obfuscation`,
//! `service_tier` `auto`/`default`, `store: false`, `truncation: "disabled"`,
//! `background: false`, an input message's `id`, `status` and `phase`, a call's `id` and
//! `status`; and `tools: []`, `tool_choice` and `parallel_tool_calls` when there are no
//! tools (chat providers refuse them then). A field set to `null` counts as absent.
//!
//! Refused with [`BodyError::Unsupported`] naming the field (SPEC §15: never silently dropped):
//! `store: true` and `previous_response_id` / `conversation` (Cortex keeps no conversation
//! state), `background: true`, `prompt`, `truncation: "auto"`, `top_logprobs`,
//! `max_tool_calls`, other `service_tier`s, `text.verbosity`, other tool and `tool_choice`
//! types, other input item types (`item_reference`, `web_search_call`, `custom_tool_call`, …),
//! file and audio inputs (`input[3].content[0].type`), and **any field not named here**: the
//! translator fails closed, so a field added to the API later is refused until it is mapped.
//! Absent `input` is [`BodyError::Invalid`].
//!
//! # Answer: chat → Responses
//! A `chat.completion` becomes a `response`: id `resp_…` from the chat id (its `chatcmpl-`
//! prefix dropped), `created_at` from the caller's clock, a `message` item (`msg_…`) holding
//! an `output_text` part when there is text (a `refusal` part for a refusal), then one
//! `function_call` item (`fc_…_N`, `call_id` the chat call's id) per tool call. `finish_reason`
//! `length` makes the response `incomplete` with reason `max_output_tokens`, `content_filter`
//! with reason `content_filter` (its items `incomplete` too); anything else is `completed`.
//! Usage becomes `input_tokens`/`output_tokens`/`total_tokens` with their details.
//!
//! The translator sees only the answer, not the request, so the fields a `response` echoes
//! from its request are defaults: the ones the SDK's `Response` type requires get the API's
//! defaults (`tools: []`, `tool_choice: "auto"`, `parallel_tool_calls: true`), the optional
//! ones are `null`, and `store: false`, `background: false`, `truncation: "disabled"` say
//! what Cortex actually did.
//!
//! # Stream: chat chunks → Responses events
//! `response.created` and `response.in_progress` when the first chunk arrives; then, as text
//! and tool calls appear, `response.output_item.added` (and for text
//! `response.content_part.added`) with their deltas (`response.output_text.delta`,
//! `response.refusal.delta`, `response.function_call_arguments.delta`). Items are numbered
//! in the order they first appear. A message item is finished when the first tool call
//! begins, as the Responses API streams it (text arriving after a tool call opens a new
//! message item). Tool calls stay open until the chunk with `finish_reason`, because chat
//! lets the deltas of several calls interleave by `index` and each delta must reach its own
//! item; that chunk closes every open item in order (`…done`, `response.content_part.done`,
//! `response.output_item.done`). `data: [DONE]` after it ends the stream with
//! `response.completed` (or `response.incomplete`) carrying the whole response and the usage
//! of the chat usage chunk. Every event has an `event:` line, a `type` and a
//! `sequence_number` counted from 0.
//!
//! A chat `{"error": …}` event becomes an `error` event and `response.failed`. A stream that
//! ends without both its `finish_reason` and `[DONE]`, a data line that is not JSON, or an
//! event too large to hold ends with `response.failed` (`error.code` `server_error`), holding
//! the output so far as `incomplete` items: the client never takes a cut answer for a whole
//! one. Nothing is read after the last event. Reasoning text some chat providers stream in
//! non-standard fields (`reasoning_content`) is not carried, as in the whole answer.

use std::borrow::Cow;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::body::BodyError;
use crate::sse::{RawUsage, SseEvent, TokenUsage};

use super::{write_event, write_typed_event, AnswerError, ByEvent, EventState};

/// A Responses request (`/v1/responses` door) to a chat-completions request; a stream asks
/// for `stream_options.include_usage`.
pub fn responses_request_to_chat(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let request: Value = serde_json::from_slice(body).map_err(|_| BodyError::InvalidJson)?;
    let Value::Object(fields) = request else {
        return Err(BodyError::invalid("the request body must be a JSON object"));
    };
    let mut chat = Map::new();
    chat.insert("model".to_owned(), Value::from(upstream_model));
    let mut instructions = None;
    let mut input = None;
    for (key, value) in &fields {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {}
            "input" => input = Some(value),
            "instructions" => instructions = Some(string_field(value, "instructions")?),
            _ => top_level_field(key, value, &mut chat)?,
        }
    }
    drop_tool_settings_without_tools(&mut chat);
    let Some(input) = input else {
        return Err(BodyError::invalid(
            "`input` is required: Cortex keeps no stored prompt or earlier response to take it from",
        ));
    };
    let mut messages = Vec::new();
    if let Some(instructions) = instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    input_to_messages(input, &mut messages)?;
    if messages.is_empty() {
        return Err(BodyError::invalid("`input` must not be empty"));
    }
    chat.insert("messages".to_owned(), Value::Array(messages));
    serde_json::to_vec(&Value::Object(chat)).map_err(|_| BodyError::InvalidJson)
}

/// A `chat.completion` answer to a Responses `response` object.
pub fn chat_answer_to_responses(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|_| AnswerError("the upstream chat answer is not JSON"))?;
    let choice = answer
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or(AnswerError("the upstream chat answer has no choices"))?;
    let message = choice
        .get("message")
        .filter(|message| message.is_object())
        .ok_or(AnswerError("the upstream chat answer has no message"))?;
    let ids = ResponseIds::new(answer.get("id").and_then(Value::as_str), created);
    let finish = Finish::from_chat(choice.get("finish_reason").and_then(Value::as_str));
    let mut items = Vec::new();
    let mut parts = Vec::new();
    match message.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => parts.push(Part::new(PartKind::Text, text.clone())),
        // Some providers answer with content parts, as clients may send them.
        Some(Value::Array(content)) => {
            let text = text_of_parts(content)?;
            if !text.is_empty() {
                parts.push(Part::new(PartKind::Text, text));
            }
        }
        Some(_) => return Err(AnswerError("the upstream chat message content is not text")),
    }
    match message.get("refusal") {
        None | Some(Value::Null) => {}
        Some(Value::String(refusal)) if refusal.is_empty() => {}
        Some(Value::String(refusal)) => parts.push(Part::new(PartKind::Refusal, refusal.clone())),
        Some(_) => return Err(AnswerError("the upstream chat refusal is not text")),
    }
    if !parts.is_empty() {
        items.push(OutputItem::message(
            ids.message(),
            parts,
            finish.item_status(),
        ));
    }
    match message.get("tool_calls") {
        None | Some(Value::Null) => {}
        Some(Value::Array(calls)) => {
            for call in calls {
                items.push(answer_tool_call(
                    &ids,
                    call,
                    items.len(),
                    finish.item_status(),
                )?);
            }
        }
        Some(_) => return Err(AnswerError("the upstream chat tool_calls is not an array")),
    }
    let model = model_of(&answer);
    let response = ResponseParts {
        ids: &ids,
        created,
        model: &model,
        status: finish.status,
        incomplete_reason: finish.incomplete_reason,
        error: &Value::Null,
        output: &items,
        usage: answer.get("usage").map(chat_usage_to_responses),
    };
    serde_json::to_vec(&response)
        .map_err(|_| AnswerError("the translated answer did not serialize"))
}

/// Chat-completion chunks to the Responses stream, `response.created` …
/// `response.completed`.
pub type ChatStreamToResponses = ByEvent<StreamState>;

impl ByEvent<StreamState> {
    pub fn new(created: i64) -> Self {
        Self::with_state(StreamState::new(created))
    }
}

impl EventState for StreamState {
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        StreamState::on_event(self, event, out);
    }

    fn ended(&self) -> bool {
        self.ended
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        StreamState::fail(self, out, None, message);
    }

    fn cut_short(&self) -> &'static str {
        if self.finish.is_some() {
            "the upstream stream ended without its [DONE] line"
        } else {
            "the upstream stream ended before the answer was finished"
        }
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|raw| raw.tokens())
    }
}

// ---------------------------------------------------------------------------------------------
// Request translation
// ---------------------------------------------------------------------------------------------

/// Longest client-written key echoed in an error: enough to name any real field, short
/// enough that a hostile key cannot fill the log.
const MAX_NAMED_KEY: usize = 64;

/// One top-level field other than `model`, `input` and `instructions`, into `chat`.
fn top_level_field(
    key: &str,
    value: &Value,
    chat: &mut Map<String, Value>,
) -> Result<(), BodyError> {
    match key {
        "tools" => {
            chat.insert("tools".to_owned(), tools_to_chat(value)?);
        }
        "tool_choice" => {
            chat.insert("tool_choice".to_owned(), tool_choice_to_chat(value)?);
        }
        "parallel_tool_calls" => {
            check(
                value.is_boolean(),
                "`parallel_tool_calls` must be a boolean",
            )?;
            chat.insert(key.to_owned(), value.clone());
        }
        "max_output_tokens" => {
            check(
                value.is_u64(),
                "`max_output_tokens` must be a positive integer",
            )?;
            chat.insert("max_tokens".to_owned(), value.clone());
        }
        "temperature" | "top_p" => {
            check(
                value.is_number(),
                "`temperature` and `top_p` must be numbers",
            )?;
            chat.insert(key.to_owned(), value.clone());
        }
        "user" => {
            chat.insert("user".to_owned(), Value::from(string_field(value, "user")?));
        }
        "stream" => {
            if value
                .as_bool()
                .ok_or_else(|| BodyError::invalid("`stream` must be a boolean"))?
            {
                chat.insert("stream".to_owned(), Value::Bool(true));
                chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
            }
        }
        "stream_options" => {
            let options = object_field(value, "stream_options")?;
            only_known(options, &["include_obfuscation"], "stream_options")?;
        }
        "text" => {
            if let Some(format) = text_to_response_format(value)? {
                chat.insert("response_format".to_owned(), format);
            }
        }
        "reasoning" => {
            if let Some(effort) = reasoning_effort(value)? {
                chat.insert("reasoning_effort".to_owned(), effort);
            }
        }
        // No effect on the answer: optional extras, labels and cache hints.
        "include" | "metadata" | "safety_identifier" | "prompt_cache_key" => {}
        "service_tier" => match value.as_str() {
            Some("auto" | "default") => {}
            _ => return Err(BodyError::unsupported("service_tier")),
        },
        "store" => match value.as_bool() {
            Some(false) => {}
            Some(true) => return Err(BodyError::unsupported("store")),
            None => return Err(BodyError::invalid("`store` must be a boolean")),
        },
        "background" => match value.as_bool() {
            Some(false) => {}
            Some(true) => return Err(BodyError::unsupported("background")),
            None => return Err(BodyError::invalid("`background` must be a boolean")),
        },
        "truncation" => match value.as_str() {
            Some("disabled") => {}
            _ => return Err(BodyError::unsupported("truncation")),
        },
        // `previous_response_id`, `conversation`, `prompt`, `top_logprobs`, `max_tool_calls`
        // and every field this translator does not know: failing closed.
        _ => return Err(unsupported_key("", key)),
    }
    Ok(())
}

/// Without tools, `tool_choice` and `parallel_tool_calls` can change nothing, and chat
/// providers refuse them (and an empty `tools`) where the Responses API accepts them.
fn drop_tool_settings_without_tools(chat: &mut Map<String, Value>) {
    let has_tools = chat
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty());
    if !has_tools {
        for key in ["tools", "tool_choice", "parallel_tool_calls"] {
            chat.remove(key);
        }
    }
}

/// `input` (a string or an array of items) appended to `messages` as chat messages.
fn input_to_messages(input: &Value, messages: &mut Vec<Value>) -> Result<(), BodyError> {
    match input {
        Value::String(text) => {
            messages.push(json!({"role": "user", "content": text}));
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                item_to_messages(item, &format!("input[{index}]"), messages)?;
            }
            Ok(())
        }
        _ => Err(BodyError::invalid("`input` must be a string or an array")),
    }
}

fn item_to_messages(item: &Value, path: &str, messages: &mut Vec<Value>) -> Result<(), BodyError> {
    let Value::Object(item) = item else {
        return Err(invalid_at(path, "must be an object"));
    };
    let kind = match item.get("type") {
        None | Some(Value::Null) if item.contains_key("role") => "message",
        None | Some(Value::Null) => return Err(unsupported_key(path, "type")),
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(invalid_at(&format!("{path}.type"), "must be a string")),
    };
    match kind {
        "message" => {
            messages.push(message_to_chat(item, path)?);
            Ok(())
        }
        "function_call" => {
            let call = function_call_to_chat(item, path)?;
            join_tool_call(messages, call);
            Ok(())
        }
        "function_call_output" => {
            messages.push(function_call_output_to_chat(item, path)?);
            Ok(())
        }
        // Reasoning items carry the provider's own opaque state (encrypted content, ids); a
        // chat provider can neither read nor continue it, and leaving it out changes only
        // how the model re-derives its reasoning.
        "reasoning" => Ok(()),
        _ => Err(unsupported_key(path, "type")),
    }
}

fn message_to_chat(item: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    only_known(
        item,
        &["type", "role", "content", "id", "status", "phase"],
        path,
    )?;
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        Some("developer") => "system",
        _ => {
            return Err(invalid_at(
                &format!("{path}.role"),
                "must be user, assistant, system or developer",
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::from(text.as_str()),
        Some(Value::Array(parts)) => {
            let mut chat_parts = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                let part_path = format!("{path}.content[{index}]");
                chat_parts.push(content_part_to_chat(part, role, &part_path)?);
            }
            Value::Array(chat_parts)
        }
        _ => {
            return Err(invalid_at(
                &format!("{path}.content"),
                "must be a string or an array",
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn content_part_to_chat(part: &Value, role: &str, path: &str) -> Result<Value, BodyError> {
    let Value::Object(part) = part else {
        return Err(invalid_at(path, "must be an object"));
    };
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => {
            only_known(
                part,
                &[
                    "type",
                    "text",
                    "annotations",
                    "logprobs",
                    "prompt_cache_breakpoint",
                ],
                path,
            )?;
            let text = string_at(part, "text", path)?;
            Ok(json!({"type": "text", "text": text}))
        }
        Some("refusal") if role == "assistant" => {
            only_known(part, &["type", "refusal"], path)?;
            let refusal = string_at(part, "refusal", path)?;
            Ok(json!({"type": "refusal", "refusal": refusal}))
        }
        Some("input_image") if role == "user" => image_to_chat(part, path),
        // `input_file`, `input_audio`, images outside user messages, and anything newer.
        _ => Err(unsupported_key(path, "type")),
    }
}

fn image_to_chat(part: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    only_known(
        part,
        &[
            "type",
            "image_url",
            "file_id",
            "detail",
            "prompt_cache_breakpoint",
        ],
        path,
    )?;
    if !part.get("file_id").is_none_or(Value::is_null) {
        // Files uploaded to the provider's own store have no meaning to another provider.
        return Err(unsupported_key(path, "file_id"));
    }
    let url = string_at(part, "image_url", path)?;
    let mut image = Map::new();
    image.insert("url".to_owned(), Value::from(url));
    match part.get("detail") {
        None | Some(Value::Null) => {}
        Some(Value::String(detail)) if matches!(detail.as_str(), "auto" | "low" | "high") => {
            image.insert("detail".to_owned(), Value::from(detail.as_str()));
        }
        Some(_) => return Err(unsupported_key(path, "detail")),
    }
    Ok(json!({"type": "image_url", "image_url": image}))
}

fn function_call_to_chat(item: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    only_known(
        item,
        &[
            "type",
            "id",
            "status",
            "call_id",
            "name",
            "arguments",
            "caller",
        ],
        path,
    )?;
    direct_caller_only(item, path)?;
    Ok(json!({
        "id": string_at(item, "call_id", path)?,
        "type": "function",
        "function": {
            "name": string_at(item, "name", path)?,
            "arguments": string_at(item, "arguments", path)?,
        },
    }))
}

/// Adds a tool call to the assistant message just before it (text or earlier calls), or
/// starts a new assistant message for it.
fn join_tool_call(messages: &mut Vec<Value>, call: Value) {
    if let Some(Value::Object(last)) = messages.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some("assistant") {
            match last.get_mut("tool_calls") {
                Some(Value::Array(calls)) => calls.push(call),
                _ => {
                    last.insert("tool_calls".to_owned(), Value::Array(vec![call]));
                }
            }
            return;
        }
    }
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
}

fn function_call_output_to_chat(item: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    only_known(
        item,
        &[
            "type", "id", "status", "call_id", "output", "name", "caller",
        ],
        path,
    )?;
    direct_caller_only(item, path)?;
    let call_id = string_at(item, "call_id", path)?;
    let content = match item.get("output") {
        Some(Value::String(text)) => Value::from(text.as_str()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                let part_path = format!("{path}.output[{index}]");
                let Value::Object(part) = part else {
                    return Err(invalid_at(&part_path, "must be an object"));
                };
                if part.get("type").and_then(Value::as_str) != Some("input_text") {
                    // Chat tool messages carry text only.
                    return Err(unsupported_key(&part_path, "type"));
                }
                only_known(
                    part,
                    &["type", "text", "prompt_cache_breakpoint"],
                    &part_path,
                )?;
                let text = string_at(part, "text", &part_path)?;
                texts.push(json!({"type": "text", "text": text}));
            }
            Value::Array(texts)
        }
        _ => {
            return Err(invalid_at(
                &format!("{path}.output"),
                "must be a string or an array",
            ))
        }
    };
    Ok(json!({"role": "tool", "tool_call_id": call_id, "content": content}))
}

/// A call made by the model itself (`caller` absent or `direct`) is a plain chat tool call; one
/// made from inside a hosted program has no chat equivalent.
fn direct_caller_only(item: &Map<String, Value>, path: &str) -> Result<(), BodyError> {
    match item.get("caller") {
        None | Some(Value::Null) => Ok(()),
        Some(caller) if caller.get("type").and_then(Value::as_str) == Some("direct") => Ok(()),
        Some(_) => Err(unsupported_key(path, "caller")),
    }
}

fn tools_to_chat(value: &Value) -> Result<Value, BodyError> {
    let Value::Array(tools) = value else {
        return Err(BodyError::invalid("`tools` must be an array"));
    };
    let mut chat_tools = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        let path = format!("tools[{index}]");
        let Value::Object(tool) = tool else {
            return Err(invalid_at(&path, "must be an object"));
        };
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            // Hosted tools (web search, file search, MCP, …) run inside OpenAI, not the model.
            return Err(unsupported_key(&path, "type"));
        }
        only_known(
            tool,
            &["type", "name", "description", "parameters", "strict"],
            &path,
        )?;
        let mut function = Map::new();
        function.insert(
            "name".to_owned(),
            Value::from(string_at(tool, "name", &path)?),
        );
        for key in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(key).filter(|value| !value.is_null()) {
                function.insert(key.to_owned(), value.clone());
            }
        }
        chat_tools.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(chat_tools))
}

fn tool_choice_to_chat(value: &Value) -> Result<Value, BodyError> {
    match value {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => {
            Ok(value.clone())
        }
        Value::String(_) => Err(BodyError::invalid(
            "`tool_choice` must be auto, none, required or an object",
        )),
        Value::Object(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            only_known(choice, &["type", "name"], "tool_choice")?;
            let name = string_at(choice, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        // Hosted tools, `allowed_tools`, MCP and custom tools.
        Value::Object(_) => Err(BodyError::unsupported("tool_choice")),
        _ => Err(BodyError::invalid(
            "`tool_choice` must be a string or an object",
        )),
    }
}

/// `text.format` as chat's `response_format`; `None` for plain text, chat's default.
fn text_to_response_format(value: &Value) -> Result<Option<Value>, BodyError> {
    let text = object_field(value, "text")?;
    // `verbosity` is not listed: set, it is refused by name.
    only_known(text, &["format"], "text")?;
    let format = match text.get("format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(format)) => format,
        Some(_) => return Err(BodyError::invalid("`text.format` must be an object")),
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {
            only_known(format, &["type"], "text.format")?;
            Ok(None)
        }
        Some("json_object") => {
            only_known(format, &["type"], "text.format")?;
            Ok(Some(json!({"type": "json_object"})))
        }
        Some("json_schema") => {
            only_known(
                format,
                &["type", "name", "schema", "description", "strict"],
                "text.format",
            )?;
            let mut schema = Map::new();
            schema.insert(
                "name".to_owned(),
                Value::from(string_at(format, "name", "text.format")?),
            );
            match format.get("schema") {
                Some(body @ Value::Object(_)) => {
                    schema.insert("schema".to_owned(), body.clone());
                }
                _ => return Err(BodyError::invalid("`text.format.schema` must be an object")),
            }
            for key in ["description", "strict"] {
                if let Some(value) = format.get(key).filter(|value| !value.is_null()) {
                    schema.insert(key.to_owned(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(BodyError::unsupported("text.format.type")),
    }
}

/// `reasoning.effort`, if set. `summary` (and its old name `generate_summary`) ask for a
/// summary of the reasoning in the output, which chat completions never return; the answer
/// itself is the same, so they are dropped.
fn reasoning_effort(value: &Value) -> Result<Option<Value>, BodyError> {
    let reasoning = object_field(value, "reasoning")?;
    only_known(
        reasoning,
        &["effort", "summary", "generate_summary"],
        "reasoning",
    )?;
    match reasoning.get("effort") {
        None | Some(Value::Null) => Ok(None),
        Some(effort @ Value::String(_)) => Ok(Some(effort.clone())),
        Some(_) => Err(BodyError::invalid("`reasoning.effort` must be a string")),
    }
}

/// Refuses the first key of `object` not in `known` whose value is not `null`, naming it
/// under `path`.
fn only_known(object: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), BodyError> {
    match object
        .iter()
        .find(|(key, value)| !value.is_null() && !known.contains(&key.as_str()))
    {
        Some((key, _)) => Err(unsupported_key(path, key)),
        None => Ok(()),
    }
}

/// `Unsupported` naming `path.key` (or `key` at the top), the key cut to [`MAX_NAMED_KEY`].
fn unsupported_key(path: &str, key: &str) -> BodyError {
    let mut end = key.len().min(MAX_NAMED_KEY);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    let key = &key[..end];
    let name = if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    };
    BodyError::Unsupported(Cow::Owned(name))
}

fn invalid_at(path: &str, what: &str) -> BodyError {
    BodyError::Invalid(Cow::Owned(format!("`{path}` {what}")))
}

fn check(ok: bool, message: &'static str) -> Result<(), BodyError> {
    if ok {
        Ok(())
    } else {
        Err(BodyError::invalid(message))
    }
}

fn string_field<'a>(value: &'a Value, name: &str) -> Result<&'a str, BodyError> {
    value
        .as_str()
        .ok_or_else(|| invalid_at(name, "must be a string"))
}

fn object_field<'a>(value: &'a Value, name: &str) -> Result<&'a Map<String, Value>, BodyError> {
    value
        .as_object()
        .ok_or_else(|| invalid_at(name, "must be an object"))
}

/// The string `object[key]`, required.
fn string_at<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, BodyError> {
    object
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_at(&format!("{path}.{key}"), "must be a string"))
}

// ---------------------------------------------------------------------------------------------
// The response object, shared by the whole answer and the stream
// ---------------------------------------------------------------------------------------------

/// The ids of one response and its items, all derived from the chat completion's id so that
/// a response can be matched to the upstream's own logs.
struct ResponseIds {
    suffix: String,
}

impl ResponseIds {
    /// Without a chat id (an upstream that sent none), the time stands in: the ids are then
    /// unique per second only, which is all such an upstream allows.
    fn new(chat_id: Option<&str>, created: i64) -> Self {
        let suffix = chat_id
            .map(|id| id.strip_prefix("chatcmpl-").unwrap_or(id))
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("cortex{created}"), str::to_owned);
        Self { suffix }
    }

    fn response(&self) -> String {
        format!("resp_{}", self.suffix)
    }

    fn message(&self) -> String {
        format!("msg_{}", self.suffix)
    }

    fn call(&self, output_index: usize) -> String {
        format!("fc_{}_{output_index}", self.suffix)
    }

    /// For a tool call whose upstream gave it no id.
    fn call_id(&self, output_index: usize) -> String {
        format!("call_{}_{output_index}", self.suffix)
    }
}

/// How a chat choice finished, in Responses terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Finish {
    status: &'static str,
    incomplete_reason: Option<&'static str>,
}

impl Finish {
    fn from_chat(finish_reason: Option<&str>) -> Self {
        let incomplete_reason = match finish_reason {
            Some("length") => Some("max_output_tokens"),
            Some("content_filter") => Some("content_filter"),
            _ => None,
        };
        Self {
            status: if incomplete_reason.is_some() {
                "incomplete"
            } else {
                "completed"
            },
            incomplete_reason,
        }
    }

    /// An answer cut short leaves its items cut short too.
    fn item_status(self) -> &'static str {
        self.status
    }
}

const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    Text,
    Refusal,
}

struct Part {
    kind: PartKind,
    text: String,
}

impl Part {
    fn new(kind: PartKind, text: String) -> Self {
        Self { kind, text }
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Written straight to JSON (no `Value` tree): the whole answer's object is built on every
/// translated request.
impl Serialize for Part {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        match self.kind {
            PartKind::Text => {
                map.serialize_entry("type", "output_text")?;
                map.serialize_entry("text", &self.text)?;
                map.serialize_entry("annotations", &[(); 0])?;
            }
            PartKind::Refusal => {
                map.serialize_entry("type", "refusal")?;
                map.serialize_entry("refusal", &self.text)?;
            }
        }
        map.end()
    }
}

enum ItemKind {
    Message {
        parts: Vec<Part>,
    },
    Call {
        /// The chat chunk's `tool_calls[].index`, which ties later deltas to this call.
        chat_index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

struct OutputItem {
    id: String,
    kind: ItemKind,
    /// `in_progress` while the stream adds to it, then `completed` or `incomplete`.
    status: &'static str,
}

impl OutputItem {
    fn message(id: String, parts: Vec<Part>, status: &'static str) -> Self {
        Self {
            id,
            kind: ItemKind::Message { parts },
            status,
        }
    }

    fn is_open(&self) -> bool {
        self.status == IN_PROGRESS
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Serialize for OutputItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(6))?;
        match &self.kind {
            ItemKind::Message { parts } => {
                map.serialize_entry("type", "message")?;
                map.serialize_entry("id", &self.id)?;
                map.serialize_entry("status", self.status)?;
                map.serialize_entry("role", "assistant")?;
                map.serialize_entry("content", parts)?;
            }
            ItemKind::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                map.serialize_entry("type", "function_call")?;
                map.serialize_entry("id", &self.id)?;
                map.serialize_entry("call_id", call_id)?;
                map.serialize_entry("name", name)?;
                map.serialize_entry("arguments", arguments)?;
                map.serialize_entry("status", self.status)?;
            }
        }
        map.end()
    }
}

/// The text of chat content parts, joined; any part that is not text is an error.
fn text_of_parts(content: &[Value]) -> Result<String, AnswerError> {
    let mut text = String::new();
    for part in content {
        match (
            part.get("type").and_then(Value::as_str),
            part.get("text").and_then(Value::as_str),
        ) {
            (Some("text"), Some(piece)) => text.push_str(piece),
            _ => {
                return Err(AnswerError(
                    "the upstream chat message has a part that is not text",
                ))
            }
        }
    }
    Ok(text)
}

fn answer_tool_call(
    ids: &ResponseIds,
    call: &Value,
    output_index: usize,
    status: &'static str,
) -> Result<OutputItem, AnswerError> {
    let function = call
        .get("function")
        .ok_or(AnswerError("an upstream chat tool call has no function"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or(AnswerError("an upstream chat tool call has no name"))?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => "",
        Some(Value::String(arguments)) => arguments,
        Some(_) => {
            return Err(AnswerError(
                "an upstream chat tool call's arguments are not text",
            ))
        }
    };
    let call_id = call
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| ids.call_id(output_index), str::to_owned);
    Ok(OutputItem {
        id: ids.call(output_index),
        kind: ItemKind::Call {
            chat_index: output_index as u64,
            call_id,
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        },
        status,
    })
}

/// Everything a `response` object says that is not a default; serialized as the whole
/// `response` object.
struct ResponseParts<'a> {
    ids: &'a ResponseIds,
    created: i64,
    model: &'a Value,
    status: &'static str,
    incomplete_reason: Option<&'static str>,
    error: &'a Value,
    output: &'a [OutputItem],
    usage: Option<Value>,
}

impl Serialize for ResponseParts<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct IncompleteDetails {
            reason: &'static str,
        }
        let none = Value::Null;
        let mut map = serializer.serialize_map(Some(25))?;
        map.serialize_entry("id", &self.ids.response())?;
        map.serialize_entry("object", "response")?;
        map.serialize_entry("created_at", &self.created)?;
        map.serialize_entry("status", self.status)?;
        map.serialize_entry("error", self.error)?;
        map.serialize_entry(
            "incomplete_details",
            &self
                .incomplete_reason
                .map(|reason| IncompleteDetails { reason }),
        )?;
        map.serialize_entry("model", self.model)?;
        map.serialize_entry("output", self.output)?;
        map.serialize_entry("usage", &self.usage)?;
        // Echoes of the request, which this translator does not see: the required ones at the
        // API's defaults, the optional ones unknown.
        for unknown in ["instructions", "max_output_tokens"] {
            map.serialize_entry(unknown, &none)?;
        }
        map.serialize_entry("metadata", &Map::new())?;
        map.serialize_entry("parallel_tool_calls", &true)?;
        for unknown in ["previous_response_id", "reasoning", "temperature", "text"] {
            map.serialize_entry(unknown, &none)?;
        }
        map.serialize_entry("tool_choice", "auto")?;
        map.serialize_entry("tools", &[(); 0])?;
        for unknown in ["top_p", "user"] {
            map.serialize_entry(unknown, &none)?;
        }
        // What Cortex did.
        map.serialize_entry("background", &false)?;
        map.serialize_entry("store", &false)?;
        map.serialize_entry("truncation", "disabled")?;
        map.end()
    }
}

/// A `response.*` event that carries the whole `response` object.
#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    response: &'a ResponseParts<'a>,
}

/// A chat `usage` object as a Responses one; `null` when it is not an object. The counts are
/// read through [`RawUsage`], so a chat usage that came from another dialect still counts.
fn chat_usage_to_responses(usage: &Value) -> Value {
    if !usage.is_object() {
        return Value::Null;
    }
    let tokens = RawUsage::deserialize(usage)
        .map(|raw| raw.tokens())
        .unwrap_or_default();
    let total = usage
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| {
            tokens
                .prompt_tokens
                .saturating_add(tokens.completion_tokens)
        });
    let detail = |outer: &str, inner: &str| {
        usage
            .get(outer)
            .and_then(|details| details.get(inner))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    json!({
        "input_tokens": tokens.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": detail("prompt_tokens_details", "cached_tokens"),
            "cache_write_tokens": detail("prompt_tokens_details", "cache_write_tokens"),
        },
        "output_tokens": tokens.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": detail("completion_tokens_details", "reasoning_tokens"),
        },
        "total_tokens": total,
    })
}

// ---------------------------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------------------------

/// What the stream translator knows between events ([`ByEvent`] owns the [`SseReader`]).
pub struct StreamState {
    created: i64,
    sequence: u64,
    /// `response.created` went out, at the first chunk (or the first failure).
    started: bool,
    /// From the first chunk's id.
    ids: ResponseIds,
    model: Value,
    items: Vec<OutputItem>,
    /// The position of the message item in `items`, once text arrived.
    message: Option<usize>,
    /// The chunk with `finish_reason` went by: the items are closed.
    finish: Option<Finish>,
    /// The last event went out (`response.completed`, `.incomplete` or `.failed`).
    ended: bool,
    usage: Option<RawUsage>,
    /// The chat usage object, as the upstream last reported it.
    chat_usage: Option<Value>,
}

impl StreamState {
    fn new(created: i64) -> Self {
        Self {
            created,
            sequence: 0,
            started: false,
            ids: ResponseIds::new(None, created),
            model: Value::from(""),
            items: Vec::new(),
            message: None,
            finish: None,
            ended: false,
            usage: None,
            chat_usage: None,
        }
    }

    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        if event.data == b"[DONE]" {
            self.on_done(out);
            return;
        }
        let Ok(chunk @ Value::Object(_)) = serde_json::from_slice::<Value>(event.data) else {
            self.fail(
                out,
                None,
                "the upstream sent a stream event that is not a JSON object",
            );
            return;
        };
        if let Some(error) = chunk.get("error").filter(|error| !error.is_null()) {
            self.upstream_error(error, out);
            return;
        }
        self.start(&chunk, out);
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            if let Ok(raw) = RawUsage::deserialize(usage) {
                self.usage.get_or_insert_with(RawUsage::default).merge(raw);
            }
            self.chat_usage = Some(usage.clone());
        }
        if self.finish.is_some() {
            return;
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        // Only the first choice: the translated request never asks for more.
        for choice in choices {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0 {
                self.on_choice(choice, out);
            }
        }
    }

    fn on_choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.part_delta(PartKind::Text, text, out);
        }
        if let Some(refusal) = delta.get("refusal").and_then(Value::as_str) {
            self.part_delta(PartKind::Refusal, refusal, out);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                self.call_delta(call, position, out);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            let finish = Finish::from_chat(Some(reason));
            self.close_items(finish.item_status(), out);
            self.finish = Some(finish);
        }
    }

    /// Emits `response.created` and `response.in_progress` once, taking the ids and model
    /// from the first chunk.
    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        self.ids = ResponseIds::new(chunk.get("id").and_then(Value::as_str), self.created);
        self.model = model_of(chunk);
        for kind in ["response.created", "response.in_progress"] {
            self.emit_response(out, kind, IN_PROGRESS, None, &Value::Null);
        }
    }

    fn part_delta(&mut self, kind: PartKind, delta: &str, out: &mut Vec<u8>) {
        if delta.is_empty() {
            return;
        }
        let output_index = self.open_message(out);
        let Some(item) = self.items.get_mut(output_index) else {
            return;
        };
        let ItemKind::Message { parts } = &mut item.kind else {
            return;
        };
        let item_id = item.id.clone();
        let (content_index, added) = match parts.iter().position(|part| part.kind == kind) {
            Some(index) => (index, None),
            None => {
                let part = Part::new(kind, String::new());
                let json = part.to_json();
                parts.push(part);
                (parts.len() - 1, Some(json))
            }
        };
        if let Some(part) = parts.get_mut(content_index) {
            part.text.push_str(delta);
        }
        if let Some(part) = added {
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": item_id, "output_index": output_index, "content_index": content_index, "part": part}),
            );
        }
        let mut data = json!({"item_id": item_id, "output_index": output_index, "content_index": content_index, "delta": delta});
        let kind_name = match kind {
            PartKind::Text => {
                merge(&mut data, json!({"logprobs": []}));
                "response.output_text.delta"
            }
            PartKind::Refusal => "response.refusal.delta",
        };
        self.emit(out, kind_name, data);
    }

    /// The message item's position, adding the item first if this is the first text.
    fn open_message(&mut self, out: &mut Vec<u8>) -> usize {
        if let Some(index) = self.message {
            return index;
        }
        // The first message takes the plain id; one after a tool call needs its own.
        let id = if self
            .items
            .iter()
            .any(|item| matches!(item.kind, ItemKind::Message { .. }))
        {
            format!("{}_{}", self.ids.message(), self.items.len())
        } else {
            self.ids.message()
        };
        let item = OutputItem::message(id, Vec::new(), IN_PROGRESS);
        let index = self.add_item(item, out);
        self.message = Some(index);
        index
    }

    fn call_delta(&mut self, call: &Value, position: usize, out: &mut Vec<u8>) {
        let chat_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = function.get("name").and_then(Value::as_str).unwrap_or("");
        let found = self.items.iter().position(|item| {
            matches!(item.kind, ItemKind::Call { chat_index: index, .. } if index == chat_index)
        });
        let output_index = match found {
            Some(index) => {
                if let Some(ItemKind::Call { name: known, .. }) =
                    self.items.get_mut(index).map(|item| &mut item.kind)
                {
                    // The name comes with the call's first delta; one sent later still counts.
                    if known.is_empty() {
                        name.clone_into(known);
                    }
                }
                index
            }
            None => {
                // Text before a tool call is finished, as the Responses API itself streams
                // it; text after one starts a new message item.
                if let Some(message) = self.message.take() {
                    self.close_item(message, COMPLETED, out);
                }
                let output_index = self.items.len();
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| self.ids.call_id(output_index), str::to_owned);
                let item = OutputItem {
                    id: self.ids.call(output_index),
                    kind: ItemKind::Call {
                        chat_index,
                        call_id,
                        name: name.to_owned(),
                        arguments: String::new(),
                    },
                    status: IN_PROGRESS,
                };
                self.add_item(item, out)
            }
        };
        let Some(arguments) = function.get("arguments").and_then(Value::as_str) else {
            return;
        };
        if arguments.is_empty() {
            return;
        }
        let Some(item) = self.items.get_mut(output_index) else {
            return;
        };
        if let ItemKind::Call { arguments: all, .. } = &mut item.kind {
            all.push_str(arguments);
        }
        let item_id = item.id.clone();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": item_id, "output_index": output_index, "delta": arguments}),
        );
    }

    fn add_item(&mut self, item: OutputItem, out: &mut Vec<u8>) -> usize {
        let output_index = self.items.len();
        let json = item.to_json();
        self.items.push(item);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": output_index, "item": json}),
        );
        output_index
    }

    /// The `…done` events of every open item, in output order.
    fn close_items(&mut self, status: &'static str, out: &mut Vec<u8>) {
        for output_index in 0..self.items.len() {
            self.close_item(output_index, status, out);
        }
    }

    /// The `…done` events of one item, if it is open.
    fn close_item(&mut self, output_index: usize, status: &'static str, out: &mut Vec<u8>) {
        let Some(item) = self
            .items
            .get_mut(output_index)
            .filter(|item| item.is_open())
        else {
            return;
        };
        item.status = status;
        let mut events = Vec::new();
        match &item.kind {
            ItemKind::Message { parts } => {
                for (content_index, part) in parts.iter().enumerate() {
                    let mut done = json!({"item_id": item.id, "output_index": output_index, "content_index": content_index});
                    let kind = match part.kind {
                        PartKind::Text => {
                            merge(&mut done, json!({"text": part.text, "logprobs": []}));
                            "response.output_text.done"
                        }
                        PartKind::Refusal => {
                            merge(&mut done, json!({"refusal": part.text}));
                            "response.refusal.done"
                        }
                    };
                    events.push((kind, done));
                    events.push((
                        "response.content_part.done",
                        json!({"item_id": item.id, "output_index": output_index, "content_index": content_index, "part": part.to_json()}),
                    ));
                }
            }
            ItemKind::Call {
                name, arguments, ..
            } => events.push((
                "response.function_call_arguments.done",
                json!({"item_id": item.id, "output_index": output_index, "name": name, "arguments": arguments}),
            )),
        }
        events.push((
            "response.output_item.done",
            json!({"output_index": output_index, "item": item.to_json()}),
        ));
        for (kind, data) in events {
            self.emit(out, kind, data);
        }
    }

    /// `data: [DONE]`: the clean end, if a `finish_reason` came before it.
    fn on_done(&mut self, out: &mut Vec<u8>) {
        let Some(finish) = self.finish else {
            self.fail(
                out,
                None,
                "the upstream stream ended before the answer was finished",
            );
            return;
        };
        let kind = if finish.incomplete_reason.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit_response(
            out,
            kind,
            finish.status,
            finish.incomplete_reason,
            &Value::Null,
        );
        self.ended = true;
    }

    /// The upstream reported an error in its stream: an `error` event with its code and
    /// message, then `response.failed`.
    fn upstream_error(&mut self, error: &Value, out: &mut Vec<u8>) {
        let field = |name: &str| error.get(name).and_then(Value::as_str);
        let message = field("message").unwrap_or("the upstream reported an error");
        let code = field("code").or_else(|| field("type"));
        self.fail(out, Some((code, field("param"))), message);
    }

    /// Ends the stream with `response.failed` (preceded by an `error` event when the upstream
    /// reported one), keeping the output so far as `incomplete` items.
    fn fail(
        &mut self,
        out: &mut Vec<u8>,
        upstream: Option<(Option<&str>, Option<&str>)>,
        message: &str,
    ) {
        if self.ended {
            return;
        }
        self.start(&Value::Null, out);
        if let Some((code, param)) = upstream {
            self.emit(
                out,
                "error",
                json!({"code": code, "message": message, "param": param}),
            );
        }
        let error = json!({"code": "server_error", "message": message});
        // What was still being written is cut short; the client sees it as such.
        for item in &mut self.items {
            if item.is_open() {
                item.status = "incomplete";
            }
        }
        self.emit_response(out, "response.failed", "failed", None, &error);
        self.ended = true;
    }

    /// Writes an event that carries the whole `response` object (`response.created`, …), with
    /// the next `sequence_number`.
    fn emit_response(
        &mut self,
        out: &mut Vec<u8>,
        kind: &str,
        status: &'static str,
        incomplete_reason: Option<&'static str>,
        error: &Value,
    ) {
        let usage = if status == IN_PROGRESS {
            None
        } else {
            self.chat_usage.as_ref().map(chat_usage_to_responses)
        };
        let response = ResponseParts {
            ids: &self.ids,
            created: self.created,
            model: &self.model,
            status,
            incomplete_reason,
            error,
            output: &self.items,
            usage,
        };
        let event = ResponseEvent {
            kind,
            sequence_number: self.sequence,
            response: &response,
        };
        self.sequence += 1;
        write_typed_event(out, kind, &event);
    }

    /// Writes one event: its `event:` line, and its data with `type` and the next
    /// `sequence_number` added.
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        if let Value::Object(fields) = &mut data {
            fields.insert("type".to_owned(), Value::from(kind));
            fields.insert("sequence_number".to_owned(), Value::from(self.sequence));
        }
        self.sequence += 1;
        write_event(out, kind, &data);
    }
}

/// The upstream's model name; empty when it sent none (the SDK's `Response.model` is a
/// string).
fn model_of(chat: &Value) -> Value {
    Value::from(chat.get("model").and_then(Value::as_str).unwrap_or(""))
}

/// `extra`'s fields into `data` (both objects).
fn merge(data: &mut Value, extra: Value) {
    if let (Value::Object(data), Value::Object(extra)) = (data, extra) {
        data.extend(extra);
    }
}
