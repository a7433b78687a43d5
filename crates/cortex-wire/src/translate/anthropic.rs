//! Chat completions ↔ Anthropic Messages (SPEC §15): requests both ways, whole answers both
//! ways, and streams event by event. The shapes are those of the official SDKs
//! (`anthropic-sdk-python` `types/`, `openai-python` `types/chat/`), which must parse what we
//! write.
//!
//! These run only for translated requests, so they work on `serde_json::Value` trees: clarity
//! over speed. Every request field is either mapped, left out because it has no effect on the
//! answer, or refused with [`BodyError::Unsupported`] naming it; a field nobody listed is
//! refused too (fail closed). A field sent as `null` counts as left out.
//!
//! # Chat request → Messages request (chat door, Anthropic provider)
//! - `model` → the provider's name; `max_completion_tokens` (else `max_tokens`) →
//!   `max_tokens`, [`DEFAULT_MAX_TOKENS`] when neither is sent (Anthropic requires one);
//!   `stop` (string or array) → `stop_sequences`; `temperature`, `top_p`, `top_k` pass
//!   unchanged (a temperature above Anthropic's 1.0 is the provider's to refuse); `stream`
//!   passes; `user` (else `safety_identifier`) → `metadata.user_id`.
//! - `system` and `developer` messages → the top-level `system`, in order, wherever they stood
//!   (Anthropic has no system turn): one text becomes a string, several become text blocks.
//! - User content: strings and `text` parts (their `cache_control` passes, as some clients
//!   send it for Anthropic); `image_url` parts → `image` blocks, a `data:…;base64,` URL as a
//!   `base64` source, any other URL as a `url` source. `detail` is a processing hint Anthropic
//!   has no counterpart for and is left out. Any other part type is refused
//!   (`messages[2].content[0].type`).
//! - Assistant text → `text` blocks (empty text is left out: Anthropic refuses empty blocks);
//!   `tool_calls` → `tool_use` blocks, whose `arguments` must be a JSON object (`""` counts as
//!   `{}`); a `refusal` string is kept as text. `reasoning_content`/`reasoning` from an earlier
//!   answer are left out, as Anthropic itself drops earlier turns' thinking.
//! - `tool` messages → `tool_result` blocks in a user turn. Consecutive turns of one role are
//!   merged, as Anthropic needs alternating roles; a turn that is one plain text is a string.
//! - `tools` (`function` type only) → `{name, description, input_schema, strict}`, an absent
//!   `parameters` being an empty object schema; `tool_choice` `auto`/`none`/`required`/named →
//!   `auto`/`none`/`any`/`tool`; `parallel_tool_calls: false` →
//!   `disable_parallel_tool_use`. Without tools, tool choice has no effect and is left out.
//! - Left out, having no effect on the answer: `stream_options` (Anthropic streams always
//!   carry usage, and the chat stream we write always ends with the usage chunk, as Cortex's
//!   own chat streams do), `metadata`, `store: false`, `service_tier` `auto`/`default`,
//!   `prompt_cache_key`, `prompt_cache_retention`, and neutral values (`n: 1`,
//!   `logprobs: false`, `top_logprobs: 0`, zero penalties, empty `logit_bias`,
//!   `response_format` text, `modalities: ["text"]`). Anything else with an effect is refused:
//!   `n` > 1, logprobs, `seed`, penalties, `logit_bias`, other response formats, audio,
//!   `prediction`, `reasoning_effort`, `functions`, `name` on a message, …
//!
//! # Messages request → chat request (Messages door, OpenAI-style provider)
//! - The inverse of the above. `system` (string or text blocks) → a first system message;
//!   `max_tokens` (required, as Anthropic requires it) → `max_tokens`, the field every
//!   OpenAI-style server takes; `stop_sequences` → `stop`; `top_k` passes as `top_k`, which
//!   vLLM and most OpenAI-style servers accept (OpenAI itself refuses it, which is the honest
//!   answer); `metadata.user_id` → `user`; `stream` → `stream` with
//!   `stream_options.include_usage`, so the stream is metered.
//! - `tool_use` blocks → assistant `tool_calls` (`arguments` is the input as JSON text);
//!   assistant text blocks are joined into one string. `tool_result` blocks → `tool` messages,
//!   in block order around the user's other content; their content is text only, and
//!   `is_error: true` prefixes it with `Error: ` (chat has no error flag, and the model must
//!   still learn that the tool failed). `thinking`/`redacted_thinking` blocks in earlier
//!   turns are left out (Anthropic ignores earlier turns' thinking too). `cache_control` is
//!   left out everywhere (it changes cost, not the answer), as are `service_tier` and
//!   `thinking: {type: disabled}`.
//! - Refused: `thinking` enabled, documents, citations, search results, server tools
//!   (`web_search_…`, `bash_…`, …), mid-conversation system turns, and unknown fields.
//!
//! # Answers
//! - Messages → chat: text blocks joined → `message.content` (`null` when none); `tool_use`
//!   → `tool_calls`; `thinking` → `reasoning_content` (the field vLLM and DeepSeek use); other
//!   blocks are left out. `end_turn`/`stop_sequence`/`pause_turn` → `stop`,
//!   `max_tokens`/`model_context_window_exceeded` → `length`, `tool_use` → `tool_calls`,
//!   `refusal` → `content_filter`. Usage: prompt = input + cache tokens (cache reads also as
//!   `prompt_tokens_details.cached_tokens`), completion = output.
//! - Chat → Messages: `id` gets the `msg_` prefix; content is a text block (from `content`,
//!   and from `refusal`, which also makes the stop reason `refusal`) and `tool_use` blocks.
//!   Tool-call `arguments` that are not a JSON object (a model cut off by its token limit
//!   writes half an object) become the input `{}`: an Anthropic client needs an object, and a
//!   502 would throw the rest of the answer away. `reasoning_content` is left out: the
//!   Messages client did not ask for thinking (it cannot, see above). `stop` → `end_turn`,
//!   `length` → `max_tokens`, `tool_calls` → `tool_use`, `content_filter` → `refusal`;
//!   `stop_sequence` is `null` (chat does not say which one matched).
//!
//! # Streams
//! - Anthropic → chat chunks: a first chunk with `role: assistant`, then one chunk per text,
//!   thinking (`reasoning_content`) or tool-call fragment (a tool call's `id`, `type` and
//!   `name` first, with `arguments: ""`, then the argument fragments; a call that streamed no
//!   arguments gets `{}`), the finish chunk at `message_stop`, the usage chunk
//!   (`choices: []`), then `data: [DONE]`. `ping` and unknown events are skipped.
//! - Chat chunks → Anthropic: `message_start` (usage zeros: chat reports usage only at the
//!   end) and a `ping` at the first chunk, one `content_block_start`/`_delta`/`_stop` run per
//!   text and per tool call (a tool block opens once its name is known), and at `[DONE]`
//!   `message_delta` with the stop reason and the usage, then `message_stop`. Tool-call
//!   fragments come one call after another in practice; a fragment for a call whose block was
//!   already closed is still sent under that block's index, which the SDKs accumulate by.
//! - An upstream error event becomes an error in the client's dialect and ends the stream. A
//!   stream that ends without its end (`message_stop`; a finish reason and `[DONE]`) is closed
//!   with an error in the client's dialect, never a clean end.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::body::BodyError;
use crate::error_shape::openai_error;
use crate::sse::{RawUsage, SseEvent, TokenUsage};

use super::{write_event, AnswerError, ByEvent, EventState};

/// `max_tokens` sent to Anthropic when a chat request gives no limit: Anthropic requires one,
/// and 4096 fits every current Claude model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Longest upstream error message passed on to the client, in bytes.
const MAX_ERROR_MESSAGE: usize = 1000;

/// What a client is told when the upstream stream stopped before its end.
const CUT_SHORT: &str = "the upstream stream ended before it was complete";

// ------------------------------------------------------------------------------------------
// Chat request → Messages request
// ------------------------------------------------------------------------------------------

/// A chat-completions request (chat door) to a Messages request (Anthropic provider).
pub fn chat_request_to_messages(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let request = request_object(body)?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::from(upstream_model));
    let mut settings = ChatSettings::default();
    for (key, value) in present(&request) {
        chat_field(key, value, &mut out, &mut settings)?;
    }
    let messages = settings
        .messages
        .ok_or_else(|| BodyError::invalid("`messages` is required"))?;
    let (system, messages) = chat_messages_to_anthropic(messages)?;
    if let Some(system) = compact_system(system) {
        out.insert("system".to_owned(), system);
    }
    out.insert("messages".to_owned(), Value::Array(messages));
    let max_tokens = settings
        .max_completion_tokens
        .or(settings.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".to_owned(), Value::from(max_tokens));
    if settings.has_tools {
        if let Some(choice) =
            chat_tool_choice_to_anthropic(settings.tool_choice, settings.parallel_tool_calls)?
        {
            out.insert("tool_choice".to_owned(), choice);
        }
    }
    if let Some(user) = settings.user.or(settings.safety_identifier) {
        out.insert("metadata".to_owned(), json!({ "user_id": user }));
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// Chat request fields read before the Messages body can be written.
struct ChatSettings<'a> {
    messages: Option<&'a Value>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    tool_choice: Option<&'a Value>,
    parallel_tool_calls: bool,
    has_tools: bool,
    user: Option<&'a str>,
    safety_identifier: Option<&'a str>,
}

impl Default for ChatSettings<'_> {
    fn default() -> Self {
        Self {
            messages: None,
            max_tokens: None,
            max_completion_tokens: None,
            tool_choice: None,
            parallel_tool_calls: true,
            has_tools: false,
            user: None,
            safety_identifier: None,
        }
    }
}

/// One top-level chat field: written to `out`, kept in `settings`, left out or refused.
fn chat_field<'a>(
    key: &str,
    value: &'a Value,
    out: &mut Map<String, Value>,
    settings: &mut ChatSettings<'a>,
) -> Result<(), BodyError> {
    match key {
        "model" | "stream_options" | "metadata" | "prompt_cache_key" | "prompt_cache_retention" => {
        }
        "messages" => settings.messages = Some(value),
        "max_tokens" => settings.max_tokens = Some(positive_integer(value, key)?),
        "max_completion_tokens" => {
            settings.max_completion_tokens = Some(positive_integer(value, key)?);
        }
        "stop" => {
            let stops = chat_stop(value)?;
            if !stops.is_empty() {
                out.insert("stop_sequences".to_owned(), Value::Array(stops));
            }
        }
        "temperature" | "top_p" | "top_k" => {
            out.insert(key.to_owned(), number(value, key)?);
        }
        "stream" => {
            out.insert(key.to_owned(), Value::Bool(boolean(value, key)?));
        }
        "tools" => {
            let tools = chat_tools_to_anthropic(value)?;
            settings.has_tools = !tools.is_empty();
            if settings.has_tools {
                out.insert(key.to_owned(), Value::Array(tools));
            }
        }
        "tool_choice" => settings.tool_choice = Some(value),
        "parallel_tool_calls" => settings.parallel_tool_calls = boolean(value, key)?,
        "user" => settings.user = Some(string(value, key)?),
        "safety_identifier" => settings.safety_identifier = Some(string(value, key)?),
        "store" => refuse_unless(!boolean(value, key)?, key)?,
        "n" => refuse_unless(value.as_u64() == Some(1), key)?,
        "logprobs" => refuse_unless(value.as_bool() == Some(false), key)?,
        "top_logprobs" => refuse_unless(value.as_u64() == Some(0), key)?,
        "frequency_penalty" | "presence_penalty" => refuse_unless(is_zero(value), key)?,
        "logit_bias" => refuse_unless(value.as_object().is_some_and(Map::is_empty), key)?,
        "response_format" => refuse_unless(type_of(value) == Some("text"), key)?,
        "modalities" => refuse_unless(*value == json!(["text"]), key)?,
        "service_tier" => refuse_unless(matches!(value.as_str(), Some("auto" | "default")), key)?,
        _ => return Err(BodyError::unsupported(key.to_owned())),
    }
    Ok(())
}

/// `stop` as a list of strings.
fn chat_stop(value: &Value) -> Result<Vec<Value>, BodyError> {
    match value {
        Value::String(stop) => Ok(vec![Value::from(stop.as_str())]),
        Value::Array(stops) if stops.iter().all(Value::is_string) => Ok(stops.clone()),
        _ => Err(BodyError::invalid(
            "`stop` must be a string or an array of strings",
        )),
    }
}

/// Chat `tools` to Anthropic tool definitions.
fn chat_tools_to_anthropic(value: &Value) -> Result<Vec<Value>, BodyError> {
    let tools = array(value, "tools")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        let tool = object(tool, &path)?;
        if type_of_map(tool) != Some("function") {
            return Err(BodyError::unsupported(format!("{path}.type")));
        }
        check_keys(tool, &path, &["type", "function"])?;
        let function_path = format!("{path}.function");
        let function = object(field(tool, "function"), &function_path)?;
        check_keys(
            function,
            &function_path,
            &["name", "description", "parameters", "strict"],
        )?;
        let mut anthropic = Map::new();
        let name = string(field(function, "name"), &format!("{function_path}.name"))?;
        anthropic.insert("name".to_owned(), Value::from(name));
        if let Some(description) = present_field(function, "description") {
            let description = string(description, &format!("{function_path}.description"))?;
            anthropic.insert("description".to_owned(), Value::from(description));
        }
        let schema = match present_field(function, "parameters") {
            Some(parameters) => {
                object(parameters, &format!("{function_path}.parameters"))?;
                parameters.clone()
            }
            None => json!({ "type": "object", "properties": {} }),
        };
        anthropic.insert("input_schema".to_owned(), schema);
        if let Some(strict) = present_field(function, "strict") {
            let strict = boolean(strict, &format!("{function_path}.strict"))?;
            anthropic.insert("strict".to_owned(), Value::Bool(strict));
        }
        out.push(Value::Object(anthropic));
    }
    Ok(out)
}

/// Chat `tool_choice` and `parallel_tool_calls` to Anthropic's `tool_choice` (tools present).
fn chat_tool_choice_to_anthropic(
    choice: Option<&Value>,
    parallel: bool,
) -> Result<Option<Value>, BodyError> {
    let mut anthropic = match choice {
        None if parallel => return Ok(None),
        None => Map::new(),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => Map::new(),
            // Anthropic's `none` takes no other field.
            "none" => return Ok(Some(json!({ "type": "none" }))),
            "required" => {
                let mut any = Map::new();
                any.insert("type".to_owned(), Value::from("any"));
                any
            }
            _ => {
                return Err(BodyError::invalid(
                    "`tool_choice` must be auto, none, required or a named function",
                ))
            }
        },
        Some(Value::Object(named)) => {
            if type_of_map(named) != Some("function") {
                return Err(BodyError::unsupported("tool_choice.type"));
            }
            let name = named
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    BodyError::invalid("`tool_choice.function.name` must be a string")
                })?;
            let mut tool = Map::new();
            tool.insert("type".to_owned(), Value::from("tool"));
            tool.insert("name".to_owned(), Value::from(name));
            tool
        }
        Some(_) => {
            return Err(BodyError::invalid(
                "`tool_choice` must be a string or an object",
            ))
        }
    };
    anthropic
        .entry("type")
        .or_insert_with(|| Value::from("auto"));
    if !parallel {
        anthropic.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
    }
    Ok(Some(Value::Object(anthropic)))
}

/// Chat messages to Anthropic's `system` blocks and alternating turns.
fn chat_messages_to_anthropic(messages: &Value) -> Result<(Vec<Value>, Vec<Value>), BodyError> {
    let messages = array(messages, "messages")?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = object(message, &path)?;
        let role = string(field(message, "role"), &format!("{path}.role"))?;
        match role {
            "system" | "developer" => system.extend(chat_system_blocks(message, &path)?),
            "user" => push_turn(&mut turns, "user", chat_user_blocks(message, &path)?),
            "assistant" => {
                push_turn(
                    &mut turns,
                    "assistant",
                    chat_assistant_blocks(message, &path)?,
                );
            }
            "tool" => push_turn(&mut turns, "user", vec![chat_tool_result(message, &path)?]),
            _ => return Err(BodyError::unsupported(format!("{path}.role"))),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, blocks)| json!({ "role": role, "content": compact_content(blocks) }))
        .collect();
    Ok((system, turns))
}

/// Appends blocks to the conversation, merging them into the last turn when it has the same
/// role. An assistant message with nothing to say is left out.
fn push_turn(turns: &mut Vec<(&'static str, Vec<Value>)>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() && role == "assistant" {
        return;
    }
    match turns.last_mut() {
        Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

fn chat_system_blocks(message: &Map<String, Value>, path: &str) -> Result<Vec<Value>, BodyError> {
    check_keys(message, path, &["role", "content"])?;
    let blocks = chat_content_blocks(message, path, false)?;
    // Anthropic refuses empty text blocks, and an empty instruction says nothing.
    Ok(blocks.into_iter().filter(|b| !is_empty_text(b)).collect())
}

fn chat_user_blocks(message: &Map<String, Value>, path: &str) -> Result<Vec<Value>, BodyError> {
    check_keys(message, path, &["role", "content"])?;
    chat_content_blocks(message, path, true)
}

/// `content` as a string or an array of parts, as Anthropic blocks.
fn chat_content_blocks(
    message: &Map<String, Value>,
    path: &str,
    images: bool,
) -> Result<Vec<Value>, BodyError> {
    match field(message, "content") {
        Value::String(text) => Ok(vec![text_block(text)]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| chat_part_to_block(part, &format!("{path}.content[{j}]"), images))
            .collect(),
        _ => Err(BodyError::invalid(format!(
            "`{path}.content` must be a string or an array"
        ))),
    }
}

/// One content part: `text` (and `image_url` where images are allowed) to its block.
fn chat_part_to_block(part: &Value, path: &str, images: bool) -> Result<Value, BodyError> {
    let part = object(part, path)?;
    let kind = string(field(part, "type"), &format!("{path}.type"))?;
    match kind {
        "text" => {
            check_keys(part, path, &["type", "text", "cache_control"])?;
            let text = string(field(part, "text"), &format!("{path}.text"))?;
            let mut block = text_block(text);
            if let (Some(cache_control), Some(map)) =
                (present_field(part, "cache_control"), block.as_object_mut())
            {
                map.insert("cache_control".to_owned(), cache_control.clone());
            }
            Ok(block)
        }
        "image_url" if images => {
            check_keys(part, path, &["type", "image_url"])?;
            let image_path = format!("{path}.image_url");
            let image = object(field(part, "image_url"), &image_path)?;
            check_keys(image, &image_path, &["url", "detail"])?;
            let url = string(field(image, "url"), &format!("{image_path}.url"))?;
            Ok(json!({ "type": "image", "source": image_source(url, &image_path)? }))
        }
        _ => Err(BodyError::unsupported(format!("{path}.type"))),
    }
}

/// An image URL as an Anthropic image source: `data:` URLs inline, others by URL.
fn image_source(url: &str, path: &str) -> Result<Value, BodyError> {
    if let Some(inline) = url.strip_prefix("data:") {
        let parsed = inline.split_once(',').and_then(|(meta, data)| {
            let media_type = meta.strip_suffix(";base64")?;
            let media_type = media_type.split(';').next().unwrap_or(media_type);
            (!media_type.is_empty()).then_some((media_type, data))
        });
        let (media_type, data) = parsed.ok_or_else(|| {
            BodyError::invalid(format!(
                "`{path}.url` must be a base64 `data:` URL or an http(s) URL"
            ))
        })?;
        return Ok(json!({ "type": "base64", "media_type": media_type, "data": data }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "url", "url": url }));
    }
    Err(BodyError::invalid(format!(
        "`{path}.url` must be a base64 `data:` URL or an http(s) URL"
    )))
}

fn chat_assistant_blocks(
    message: &Map<String, Value>,
    path: &str,
) -> Result<Vec<Value>, BodyError> {
    // SDKs echo an answer's message back with these fields empty.
    if present_field(message, "annotations")
        .is_some_and(|a| a.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(BodyError::unsupported(format!("{path}.annotations")));
    }
    check_keys(
        message,
        path,
        &[
            "role",
            "content",
            "tool_calls",
            "refusal",
            "annotations",
            "reasoning_content",
            "reasoning",
        ],
    )?;
    let mut blocks = match present_field(message, "content") {
        None => Vec::new(),
        Some(_) => chat_content_blocks(message, path, false)?,
    };
    blocks.retain(|block| !is_empty_text(block));
    if let Some(refusal) = present_field(message, "refusal") {
        let refusal = string(refusal, &format!("{path}.refusal"))?;
        if !refusal.is_empty() {
            blocks.push(text_block(refusal));
        }
    }
    if let Some(calls) = present_field(message, "tool_calls") {
        let calls = array(calls, &format!("{path}.tool_calls"))?;
        for (k, call) in calls.iter().enumerate() {
            blocks.push(chat_tool_call_to_block(
                call,
                &format!("{path}.tool_calls[{k}]"),
            )?);
        }
    }
    Ok(blocks)
}

fn chat_tool_call_to_block(call: &Value, path: &str) -> Result<Value, BodyError> {
    let call = object(call, path)?;
    if present_field(call, "type").is_some() && type_of_map(call) != Some("function") {
        return Err(BodyError::unsupported(format!("{path}.type")));
    }
    check_keys(call, path, &["id", "type", "function"])?;
    let id = string(field(call, "id"), &format!("{path}.id"))?;
    let function_path = format!("{path}.function");
    let function = object(field(call, "function"), &function_path)?;
    check_keys(function, &function_path, &["name", "arguments"])?;
    let name = string(field(function, "name"), &format!("{function_path}.name"))?;
    let arguments_path = format!("{function_path}.arguments");
    let arguments = string(field(function, "arguments"), &arguments_path)?;
    let input = arguments_object(arguments)
        .ok_or_else(|| BodyError::invalid(format!("`{arguments_path}` must be a JSON object")))?;
    Ok(json!({ "type": "tool_use", "id": id, "name": name, "input": input }))
}

/// Tool-call arguments as a JSON object; empty arguments are the empty object.
fn arguments_object(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(input @ Value::Object(_)) => Some(input),
        _ => None,
    }
}

fn chat_tool_result(message: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    check_keys(message, path, &["role", "content", "tool_call_id"])?;
    let id = string(
        field(message, "tool_call_id"),
        &format!("{path}.tool_call_id"),
    )?;
    let content = match field(message, "content") {
        Value::String(text) => Value::from(text.as_str()),
        Value::Array(_) => Value::Array(chat_content_blocks(message, path, false)?),
        _ => {
            return Err(BodyError::invalid(format!(
                "`{path}.content` must be a string or an array"
            )))
        }
    };
    Ok(json!({ "type": "tool_result", "tool_use_id": id, "content": content }))
}

/// Anthropic `system`: a string when it is one plain text, else its blocks.
fn compact_system(blocks: Vec<Value>) -> Option<Value> {
    if blocks.is_empty() {
        None
    } else {
        Some(compact_content(blocks))
    }
}

/// A turn's or message's content: a string when it is one plain text block (or part), else
/// the blocks. Anthropic blocks and chat parts share the `{type: text, text}` shape.
fn compact_content(blocks: Vec<Value>) -> Value {
    if let [only] = blocks.as_slice() {
        if let Some(text) = plain_text(only) {
            return Value::from(text);
        }
    }
    Value::Array(blocks)
}

/// The text of a block that is `{type: text, text}` and nothing more.
fn plain_text(block: &Value) -> Option<&str> {
    let block = block.as_object()?;
    if block.len() != 2 || type_of_map(block) != Some("text") {
        return None;
    }
    block.get("text").and_then(Value::as_str)
}

fn is_empty_text(block: &Value) -> bool {
    type_of(block) == Some("text") && block.get("text").and_then(Value::as_str) == Some("")
}

fn text_block(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

// ------------------------------------------------------------------------------------------
// Messages request → chat request
// ------------------------------------------------------------------------------------------

/// A Messages request (`/v1/messages` door) to a chat-completions request (OpenAI-style
/// provider); a stream asks for `stream_options.include_usage`.
pub fn messages_request_to_chat(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let request = request_object(body)?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::from(upstream_model));
    let mut system = None;
    let mut messages = None;
    let mut stream = false;
    let mut tool_choice = None;
    for (key, value) in present(&request) {
        let key = key.as_str();
        match key {
            "model" | "service_tier" | "cache_control" => {}
            "messages" => messages = Some(value),
            "system" => system = anthropic_system_to_chat(value)?,
            "max_tokens" => {
                out.insert(key.to_owned(), Value::from(positive_integer(value, key)?));
            }
            "stop_sequences" => {
                let stops = array(value, key)?;
                if !stops.iter().all(Value::is_string) {
                    return Err(BodyError::invalid(
                        "`stop_sequences` must be an array of strings",
                    ));
                }
                if !stops.is_empty() {
                    out.insert("stop".to_owned(), Value::Array(stops.clone()));
                }
            }
            "temperature" | "top_p" | "top_k" => {
                out.insert(key.to_owned(), number(value, key)?);
            }
            "stream" => stream = boolean(value, key)?,
            "tools" => {
                let tools = anthropic_tools_to_chat(value)?;
                if !tools.is_empty() {
                    out.insert(key.to_owned(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice = Some(anthropic_tool_choice_to_chat(value)?),
            "metadata" => {
                if let Some(user) = metadata_user(value)? {
                    out.insert("user".to_owned(), Value::from(user));
                }
            }
            "thinking" => refuse_unless(type_of(value) == Some("disabled"), key)?,
            _ => return Err(BodyError::unsupported(key.to_owned())),
        }
    }
    if !out.contains_key("max_tokens") {
        return Err(BodyError::invalid("`max_tokens` is required"));
    }
    let messages = messages.ok_or_else(|| BodyError::invalid("`messages` is required"))?;
    let mut chat_messages: Vec<Value> = system.into_iter().collect();
    chat_messages.extend(anthropic_messages_to_chat(messages)?);
    out.insert("messages".to_owned(), Value::Array(chat_messages));
    // OpenAI-style servers refuse tool choice without tools; without tools it has no effect.
    if let (Some((choice, parallel)), true) = (tool_choice, out.contains_key("tools")) {
        out.insert("tool_choice".to_owned(), choice);
        if !parallel {
            out.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
        }
    }
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
        out.insert(
            "stream_options".to_owned(),
            json!({ "include_usage": true }),
        );
    }
    Ok(to_bytes(&Value::Object(out)))
}

/// Anthropic `system` (a string or text blocks) as a chat system message.
fn anthropic_system_to_chat(value: &Value) -> Result<Option<Value>, BodyError> {
    let content = match value {
        Value::String(text) if text.is_empty() => return Ok(None),
        Value::String(text) => Value::from(text.as_str()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                let path = format!("system[{j}]");
                let block = object(block, &path)?;
                if type_of_map(block) != Some("text") {
                    return Err(BodyError::unsupported(format!("{path}.type")));
                }
                parts.push(text_part(anthropic_text(block, &path)?));
            }
            if parts.is_empty() {
                return Ok(None);
            }
            compact_content(parts)
        }
        _ => {
            return Err(BodyError::invalid(
                "`system` must be a string or an array of text blocks",
            ))
        }
    };
    Ok(Some(json!({ "role": "system", "content": content })))
}

/// `metadata.user_id`, the only field Anthropic's metadata has.
fn metadata_user(value: &Value) -> Result<Option<&str>, BodyError> {
    let metadata = object(value, "metadata")?;
    check_keys(metadata, "metadata", &["user_id"])?;
    present_field(metadata, "user_id")
        .map(|user| string(user, "metadata.user_id"))
        .transpose()
}

fn anthropic_tools_to_chat(value: &Value) -> Result<Vec<Value>, BodyError> {
    let tools = array(value, "tools")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        let tool = object(tool, &path)?;
        // Server tools (web search, code execution, …) run at Anthropic; chat has none.
        if present_field(tool, "type").is_some() && type_of_map(tool) != Some("custom") {
            return Err(BodyError::unsupported(format!("{path}.type")));
        }
        check_keys(
            tool,
            &path,
            &[
                "type",
                "name",
                "description",
                "input_schema",
                "cache_control",
                "strict",
            ],
        )?;
        let mut function = Map::new();
        let name = string(field(tool, "name"), &format!("{path}.name"))?;
        function.insert("name".to_owned(), Value::from(name));
        if let Some(description) = present_field(tool, "description") {
            let description = string(description, &format!("{path}.description"))?;
            function.insert("description".to_owned(), Value::from(description));
        }
        let schema = field(tool, "input_schema");
        object(schema, &format!("{path}.input_schema"))?;
        function.insert("parameters".to_owned(), schema.clone());
        if let Some(strict) = present_field(tool, "strict") {
            let strict = boolean(strict, &format!("{path}.strict"))?;
            function.insert("strict".to_owned(), Value::Bool(strict));
        }
        out.push(json!({ "type": "function", "function": function }));
    }
    Ok(out)
}

/// Anthropic `tool_choice` as chat's `tool_choice`, and whether parallel calls stay allowed.
fn anthropic_tool_choice_to_chat(value: &Value) -> Result<(Value, bool), BodyError> {
    let choice = object(value, "tool_choice")?;
    check_keys(
        choice,
        "tool_choice",
        &["type", "name", "disable_parallel_tool_use"],
    )?;
    let parallel = match present_field(choice, "disable_parallel_tool_use") {
        Some(disable) => !boolean(disable, "tool_choice.disable_parallel_tool_use")?,
        None => true,
    };
    let chat = match type_of_map(choice) {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = string(field(choice, "name"), "tool_choice.name")?;
            json!({ "type": "function", "function": { "name": name } })
        }
        _ => {
            return Err(BodyError::invalid(
                "`tool_choice.type` must be auto, any, tool or none",
            ))
        }
    };
    Ok((chat, parallel))
}

/// Anthropic turns as chat messages.
fn anthropic_messages_to_chat(messages: &Value) -> Result<Vec<Value>, BodyError> {
    let messages = array(messages, "messages")?;
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let message = object(message, &path)?;
        check_keys(message, &path, &["role", "content"])?;
        let role = string(field(message, "role"), &format!("{path}.role"))?;
        let content = field(message, "content");
        match role {
            "user" => anthropic_user_to_chat(content, &path, &mut out)?,
            "assistant" => out.extend(anthropic_assistant_to_chat(content, &path)?),
            _ => return Err(BodyError::unsupported(format!("{path}.role"))),
        }
    }
    Ok(out)
}

/// A user turn: its text and images as user messages, its tool results as `tool` messages,
/// in block order.
fn anthropic_user_to_chat(
    content: &Value,
    path: &str,
    out: &mut Vec<Value>,
) -> Result<(), BodyError> {
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({ "role": "user", "content": text }));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(BodyError::invalid(format!(
                "`{path}.content` must be a string or an array"
            )))
        }
    };
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}.content[{j}]");
        let block = object(block, &block_path)?;
        match type_of_map(block) {
            Some("text") => parts.push(text_part(anthropic_text(block, &block_path)?)),
            Some("image") => parts.push(anthropic_image_to_part(block, &block_path)?),
            Some("tool_result") => {
                flush_user_parts(&mut parts, out);
                out.push(anthropic_tool_result_to_chat(block, &block_path)?);
            }
            _ => return Err(BodyError::unsupported(format!("{block_path}.type"))),
        }
    }
    flush_user_parts(&mut parts, out);
    Ok(())
}

fn flush_user_parts(parts: &mut Vec<Value>, out: &mut Vec<Value>) {
    if !parts.is_empty() {
        let content = compact_content(std::mem::take(parts));
        out.push(json!({ "role": "user", "content": content }));
    }
}

fn text_part(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

/// A text block's text; its `cache_control` is dropped, citations are refused.
fn anthropic_text<'a>(block: &'a Map<String, Value>, path: &str) -> Result<&'a str, BodyError> {
    check_keys(block, path, &["type", "text", "cache_control", "citations"])?;
    if present_field(block, "citations").is_some_and(|c| c.as_array().is_none_or(|c| !c.is_empty()))
    {
        return Err(BodyError::unsupported(format!("{path}.citations")));
    }
    string(field(block, "text"), &format!("{path}.text"))
}

fn anthropic_image_to_part(block: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    check_keys(block, path, &["type", "source", "cache_control"])?;
    let source_path = format!("{path}.source");
    let source = object(field(block, "source"), &source_path)?;
    let url = match type_of_map(source) {
        Some("base64") => {
            check_keys(source, &source_path, &["type", "media_type", "data"])?;
            let media_type = string(
                field(source, "media_type"),
                &format!("{source_path}.media_type"),
            )?;
            let data = string(field(source, "data"), &format!("{source_path}.data"))?;
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => {
            check_keys(source, &source_path, &["type", "url"])?;
            string(field(source, "url"), &format!("{source_path}.url"))?.to_owned()
        }
        _ => return Err(BodyError::unsupported(format!("{source_path}.type"))),
    };
    Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
}

fn anthropic_tool_result_to_chat(
    block: &Map<String, Value>,
    path: &str,
) -> Result<Value, BodyError> {
    check_keys(
        block,
        path,
        &[
            "type",
            "tool_use_id",
            "content",
            "is_error",
            "cache_control",
        ],
    )?;
    let id = string(field(block, "tool_use_id"), &format!("{path}.tool_use_id"))?;
    let mut pieces: Vec<&str> = Vec::new();
    match field(block, "content") {
        Value::Null => {}
        Value::String(text) => pieces.push(text),
        Value::Array(blocks) => {
            for (k, inner) in blocks.iter().enumerate() {
                let inner_path = format!("{path}.content[{k}]");
                let inner = object(inner, &inner_path)?;
                if type_of_map(inner) != Some("text") {
                    return Err(BodyError::unsupported(format!("{inner_path}.type")));
                }
                pieces.push(anthropic_text(inner, &inner_path)?);
            }
        }
        _ => {
            return Err(BodyError::invalid(format!(
                "`{path}.content` must be a string or an array"
            )))
        }
    }
    let is_error = match present_field(block, "is_error") {
        Some(flag) => boolean(flag, &format!("{path}.is_error"))?,
        None => false,
    };
    let mut texts: Vec<String> = pieces.into_iter().map(str::to_owned).collect();
    if is_error {
        match texts.first_mut() {
            Some(first) => first.insert_str(0, "Error: "),
            None => texts.push("Error".to_owned()),
        }
    }
    let content = match texts.len() {
        0 => Value::from(""),
        1 => Value::from(texts.remove(0)),
        _ => Value::Array(texts.iter().map(|t| text_part(t)).collect()),
    };
    Ok(json!({ "role": "tool", "tool_call_id": id, "content": content }))
}

/// An assistant turn as one chat message (`None` when it only held thinking).
fn anthropic_assistant_to_chat(content: &Value, path: &str) -> Result<Option<Value>, BodyError> {
    let blocks = match content {
        Value::String(text) => {
            return Ok(Some(json!({ "role": "assistant", "content": text })));
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(BodyError::invalid(format!(
                "`{path}.content` must be a string or an array"
            )))
        }
    };
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let block_path = format!("{path}.content[{j}]");
        let block = object(block, &block_path)?;
        match type_of_map(block) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(anthropic_text(block, &block_path)?),
            Some("tool_use") => calls.push(anthropic_tool_use_to_call(block, &block_path)?),
            Some("thinking" | "redacted_thinking") => {}
            _ => return Err(BodyError::unsupported(format!("{block_path}.type"))),
        }
    }
    if text.is_none() && calls.is_empty() {
        return Ok(None);
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), Value::from("assistant"));
    message.insert("content".to_owned(), text.map_or(Value::Null, Value::from));
    if !calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    Ok(Some(Value::Object(message)))
}

fn anthropic_tool_use_to_call(block: &Map<String, Value>, path: &str) -> Result<Value, BodyError> {
    check_keys(
        block,
        path,
        &["type", "id", "name", "input", "cache_control"],
    )?;
    let id = string(field(block, "id"), &format!("{path}.id"))?;
    let name = string(field(block, "name"), &format!("{path}.name"))?;
    let input = field(block, "input");
    object(input, &format!("{path}.input"))?;
    Ok(json!({
        "id": id,
        "type": "function",
        "function": { "name": name, "arguments": input.to_string() },
    }))
}

// ------------------------------------------------------------------------------------------
// Whole answers
// ------------------------------------------------------------------------------------------

/// An Anthropic `message` answer to a `chat.completion`.
pub fn messages_answer_to_chat(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let answer = answer_object(body)?;
    if present_field(&answer, "type").is_some() && type_of_map(&answer) != Some("message") {
        return Err(AnswerError("the Anthropic answer is not a message"));
    }
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or(AnswerError("the Anthropic answer has no content array"))?;
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for block in blocks {
        match type_of(block) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(str_field(block, "text")),
            Some("thinking") => reasoning
                .get_or_insert_with(String::new)
                .push_str(str_field(block, "thinking")),
            Some("tool_use") => calls.push(json!({
                "id": str_field(block, "id"),
                "type": "function",
                "function": {
                    "name": str_field(block, "name"),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            Some(_) => {}
            None => return Err(AnswerError("an Anthropic content block has no type")),
        }
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), Value::from("assistant"));
    message.insert("content".to_owned(), text.map_or(Value::Null, Value::from));
    message.insert("refusal".to_owned(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    if let Some(reasoning) = reasoning {
        message.insert("reasoning_content".to_owned(), Value::from(reasoning));
    }
    let finish_reason = answer
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", chat_finish_reason);
    let usage = answer.get("usage").and_then(raw_usage).unwrap_or_default();
    let chat = json!({
        "id": str_field_of(&answer, "id"),
        "object": "chat.completion",
        "created": created,
        "model": str_field_of(&answer, "model"),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": null,
        }],
        "usage": chat_usage(&usage),
    });
    Ok(to_bytes(&chat))
}

/// A `chat.completion` answer to an Anthropic `message`. Anthropic's message has no creation
/// time, so `created` is not used.
pub fn chat_answer_to_messages(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let _ = created;
    let answer = answer_object(body)?;
    let choice = answer
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or(AnswerError("the chat answer has no choices"))?;
    let message = choice
        .get("message")
        .and_then(Value::as_object)
        .ok_or(AnswerError("the chat answer's choice has no message"))?;
    let mut content = Vec::new();
    let text = chat_message_text(message.get("content"))?;
    if !text.is_empty() {
        content.push(text_block(&text));
    }
    let refusal = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty());
    if let Some(refusal) = refusal {
        content.push(text_block(refusal));
    }
    if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
        let calls = calls
            .as_array()
            .ok_or(AnswerError("the chat answer's tool_calls is not an array"))?;
        for call in calls {
            content.push(chat_answer_call_to_block(call)?);
        }
    }
    let mut stop_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map_or("end_turn", anthropic_stop_reason);
    if refusal.is_some() && stop_reason == "end_turn" {
        stop_reason = "refusal";
    }
    let tokens = answer
        .get("usage")
        .and_then(raw_usage)
        .unwrap_or_default()
        .tokens();
    let message = json!({
        "id": message_id(str_field_of(&answer, "id")),
        "type": "message",
        "role": "assistant",
        "model": str_field_of(&answer, "model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": { "input_tokens": tokens.prompt_tokens, "output_tokens": tokens.completion_tokens },
    });
    Ok(to_bytes(&message))
}

/// A chat message's `content`: a string, `null`, or text parts (some servers send those).
fn chat_message_text(content: Option<&Value>) -> Result<String, AnswerError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect()),
        Some(_) => Err(AnswerError("the chat answer's content is not text")),
    }
}

fn chat_answer_call_to_block(call: &Value) -> Result<Value, AnswerError> {
    let function = call
        .get("function")
        .and_then(Value::as_object)
        .ok_or(AnswerError("a chat tool call has no function"))?;
    let input = match function.get("arguments") {
        Some(Value::String(arguments)) => arguments_object(arguments),
        Some(input @ Value::Object(_)) => Some(input.clone()),
        _ => None,
    };
    Ok(json!({
        "type": "tool_use",
        "id": str_field(call, "id"),
        "name": function.get("name").and_then(Value::as_str).unwrap_or_default(),
        "input": input.unwrap_or_else(|| Value::Object(Map::new())),
    }))
}

/// Anthropic's `stop_reason` as chat's `finish_reason`.
fn chat_finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Chat's `finish_reason` as Anthropic's `stop_reason`.
fn anthropic_stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Usage in chat's fields, from usage in any dialect.
fn chat_usage(raw: &RawUsage) -> Value {
    let tokens = raw.tokens();
    let mut usage = json!({
        "prompt_tokens": tokens.prompt_tokens,
        "completion_tokens": tokens.completion_tokens,
        "total_tokens": tokens.prompt_tokens.saturating_add(tokens.completion_tokens),
    });
    if let (Some(cached), Some(map)) = (raw.cache_read_input_tokens, usage.as_object_mut()) {
        map.insert(
            "prompt_tokens_details".to_owned(),
            json!({ "cached_tokens": cached }),
        );
    }
    usage
}

fn raw_usage(value: &Value) -> Option<RawUsage> {
    if !value.is_object() {
        return None;
    }
    serde_json::from_value(value.clone()).ok()
}

/// An id in Anthropic's `msg_` form.
fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{id}")
    }
}

// ------------------------------------------------------------------------------------------
// Anthropic stream → chat chunks
// ------------------------------------------------------------------------------------------

/// Anthropic's stream (`message_start` … `message_stop`) to chat-completion chunks, the
/// usage chunk and `data: [DONE]`.
pub type MessagesStreamToChat = ByEvent<MessagesToChat>;

impl ByEvent<MessagesToChat> {
    pub fn new(created: i64) -> Self {
        Self::with_state(MessagesToChat {
            created,
            id: String::new(),
            model: String::new(),
            started: false,
            blocks: HashMap::new(),
            tool_calls: 0,
            finish_reason: None,
            usage: None,
            end: StreamEnd::Open,
        })
    }
}

impl EventState for MessagesToChat {
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        MessagesToChat::on_event(self, event, out);
    }

    fn ended(&self) -> bool {
        self.end != StreamEnd::Open
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        MessagesToChat::fail(self, message, "api_error", out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|raw| raw.tokens())
    }
}

/// Where a translated stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Open,
    /// The upstream's own end went by and the client's end was written.
    Complete,
    /// An error was written; nothing more is.
    Failed,
}

/// An upstream content block, by its index.
enum UpstreamBlock {
    Text,
    Thinking,
    Tool {
        call: usize,
        sent_arguments: bool,
        start_input: Value,
    },
    Skipped,
}

pub struct MessagesToChat {
    created: i64,
    id: String,
    model: String,
    started: bool,
    blocks: HashMap<u64, UpstreamBlock>,
    tool_calls: usize,
    finish_reason: Option<&'static str>,
    usage: Option<RawUsage>,
    end: StreamEnd,
}

impl MessagesToChat {
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        if self.end != StreamEnd::Open {
            return;
        }
        let Ok(data) = serde_json::from_slice::<Value>(event.data) else {
            return;
        };
        match type_of(&data).unwrap_or(event.event) {
            "message_start" => self.message_start(&data, out),
            "content_block_start" => self.block_start(&data, out),
            "content_block_delta" => self.block_delta(&data, out),
            "content_block_stop" => self.block_stop(&data, out),
            "message_delta" => {
                if let Some(reason) = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.finish_reason = Some(chat_finish_reason(reason));
                }
                self.merge_usage(data.get("usage"));
            }
            "message_stop" => self.message_stop(out),
            "error" => {
                let error = data.get("error");
                let kind = error
                    .and_then(|e| e.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                self.fail(&error_message(error), kind, out);
            }
            _ => {}
        }
    }

    fn message_start(&mut self, data: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        if let Some(message) = data.get("message") {
            self.id = str_field(message, "id").to_owned();
            self.model = str_field(message, "model").to_owned();
            self.merge_usage(message.get("usage"));
        }
        self.start(out);
    }

    /// The first chunk, with the role, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.emit(&json!({ "role": "assistant", "content": "" }), out);
        }
    }

    fn block_start(&mut self, data: &Value, out: &mut Vec<u8>) {
        let Some(index) = data.get("index").and_then(Value::as_u64) else {
            return;
        };
        let Some(block) = data.get("content_block") else {
            return;
        };
        self.start(out);
        let upstream = match type_of(block) {
            Some("text") => {
                self.emit_text("content", str_field(block, "text"), out);
                UpstreamBlock::Text
            }
            Some("thinking") => {
                self.emit_text("reasoning_content", str_field(block, "thinking"), out);
                UpstreamBlock::Thinking
            }
            Some("tool_use") => {
                let call = self.tool_calls;
                self.tool_calls += 1;
                let delta = json!({ "tool_calls": [{
                    "index": call,
                    "id": str_field(block, "id"),
                    "type": "function",
                    "function": { "name": str_field(block, "name"), "arguments": "" },
                }] });
                self.emit(&delta, out);
                UpstreamBlock::Tool {
                    call,
                    sent_arguments: false,
                    start_input: block.get("input").cloned().unwrap_or(Value::Null),
                }
            }
            _ => UpstreamBlock::Skipped,
        };
        self.blocks.insert(index, upstream);
    }

    fn block_delta(&mut self, data: &Value, out: &mut Vec<u8>) {
        let (Some(index), Some(delta)) =
            (data.get("index").and_then(Value::as_u64), data.get("delta"))
        else {
            return;
        };
        match (self.blocks.get_mut(&index), type_of(delta)) {
            (Some(UpstreamBlock::Text), Some("text_delta")) => {
                self.emit_text("content", str_field(delta, "text"), out);
            }
            (Some(UpstreamBlock::Thinking), Some("thinking_delta")) => {
                self.emit_text("reasoning_content", str_field(delta, "thinking"), out);
            }
            (
                Some(UpstreamBlock::Tool {
                    call,
                    sent_arguments,
                    ..
                }),
                Some("input_json_delta"),
            ) => {
                let fragment = str_field(delta, "partial_json");
                if !fragment.is_empty() {
                    *sent_arguments = true;
                    let call = *call;
                    self.emit_arguments(call, fragment, out);
                }
            }
            _ => {}
        }
    }

    /// A tool call that streamed no arguments gets its start's input, or `{}`, so that the
    /// client's arguments are always a JSON object.
    fn block_stop(&mut self, data: &Value, out: &mut Vec<u8>) {
        let Some(index) = data.get("index").and_then(Value::as_u64) else {
            return;
        };
        if let Some(UpstreamBlock::Tool {
            call,
            sent_arguments: false,
            start_input,
        }) = self.blocks.remove(&index)
        {
            let arguments = match start_input {
                Value::Object(input) => Value::Object(input).to_string(),
                _ => "{}".to_owned(),
            };
            self.emit_arguments(call, &arguments, out);
        }
    }

    fn message_stop(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        let finish_reason = self.finish_reason.unwrap_or("stop");
        let mut last = self.chunk(&json!({}));
        if let Some(choice) = last.pointer_mut("/choices/0/finish_reason") {
            *choice = Value::from(finish_reason);
        }
        write_event(out, "", &last);
        let mut usage = self.chunk(&Value::Null);
        if let Some(chunk) = usage.as_object_mut() {
            chunk.insert("choices".to_owned(), json!([]));
            chunk.insert(
                "usage".to_owned(),
                chat_usage(&self.usage.unwrap_or_default()),
            );
        }
        write_event(out, "", &usage);
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.end = StreamEnd::Complete;
    }

    fn fail(&mut self, message: &str, kind: &str, out: &mut Vec<u8>) {
        write_event(out, "", &openai_error(message, kind, "upstream_error"));
        self.end = StreamEnd::Failed;
    }

    fn merge_usage(&mut self, usage: Option<&Value>) {
        if let Some(report) = usage.and_then(raw_usage) {
            self.usage
                .get_or_insert_with(RawUsage::default)
                .merge(report);
        }
    }

    fn emit_text(&self, field_name: &str, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() {
            let mut delta = Map::new();
            delta.insert(field_name.to_owned(), Value::from(text));
            self.emit(&Value::Object(delta), out);
        }
    }

    fn emit_arguments(&self, call: usize, arguments: &str, out: &mut Vec<u8>) {
        let delta =
            json!({ "tool_calls": [{ "index": call, "function": { "arguments": arguments } }] });
        self.emit(&delta, out);
    }

    fn emit(&self, delta: &Value, out: &mut Vec<u8>) {
        write_event(out, "", &self.chunk(delta));
    }

    fn chunk(&self, delta: &Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": null, "logprobs": null }],
        })
    }
}

// ------------------------------------------------------------------------------------------
// Chat chunks → Anthropic stream
// ------------------------------------------------------------------------------------------

/// Chat-completion chunks to Anthropic's stream, `message_start` … `message_stop`.
pub type ChatStreamToMessages = ByEvent<ChatToMessages>;

impl ByEvent<ChatToMessages> {
    /// Anthropic's events carry no creation time, so `created` is not used.
    pub fn new(created: i64) -> Self {
        let _ = created;
        Self::with_state(ChatToMessages {
            started: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            tool_positions: HashMap::new(),
            stop_reason: None,
            refused: false,
            usage: None,
            end: StreamEnd::Open,
        })
    }
}

impl EventState for ChatToMessages {
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        ChatToMessages::on_event(self, event, out);
    }

    fn ended(&self) -> bool {
        self.end != StreamEnd::Open
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        ChatToMessages::fail(self, message, out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|raw| raw.tokens())
    }
}

/// The Anthropic content block being written.
#[derive(Clone, Copy)]
enum OpenBlock {
    Text(usize),
    /// Position in `tools`.
    Tool(usize),
}

/// A streamed chat tool call: its block opens once its name is known.
struct ToolProgress {
    id: Option<String>,
    name: String,
    block: Option<usize>,
    pending_arguments: String,
}

pub struct ChatToMessages {
    started: bool,
    open: Option<OpenBlock>,
    next_block: usize,
    tools: Vec<ToolProgress>,
    /// Chat's tool-call `index` → position in `tools`.
    tool_positions: HashMap<u64, usize>,
    stop_reason: Option<&'static str>,
    refused: bool,
    usage: Option<RawUsage>,
    end: StreamEnd,
}

impl ChatToMessages {
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        if self.end != StreamEnd::Open {
            return;
        }
        if event.data == b"[DONE]" {
            self.done(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(event.data) else {
            return;
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            self.fail(&error_message(Some(error)), out);
            return;
        }
        if !chunk.is_object() {
            return;
        }
        self.start(&chunk, out);
        if let Some(report) = chunk.get("usage").and_then(raw_usage) {
            self.usage
                .get_or_insert_with(RawUsage::default)
                .merge(report);
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) == 0 {
                self.choice(choice, out);
            }
        }
    }

    /// `message_start` and a `ping`, at the first chunk.
    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "type": "message_start",
            "message": {
                "id": message_id(str_field(chunk, "id")),
                "type": "message",
                "role": "assistant",
                "model": str_field(chunk, "model"),
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": 0, "output_tokens": 0 },
            },
        });
        write_event(out, "message_start", &message);
        write_event(out, "ping", &json!({ "type": "ping" }));
    }

    fn choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        if let Some(delta) = choice.get("delta") {
            let text = str_field(delta, "content");
            if !text.is_empty() {
                self.text(text, out);
            }
            let refusal = str_field(delta, "refusal");
            if !refusal.is_empty() {
                self.refused = true;
                self.text(refusal, out);
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array);
            for (position, call) in calls.into_iter().flatten().enumerate() {
                self.tool_fragment(position, call, out);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(anthropic_stop_reason(reason));
            self.open_waiting_tools(out);
            self.close_open(out);
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some(OpenBlock::Text(index)) => index,
            _ => {
                self.close_open(out);
                let index = self.take_block_index();
                write_event(
                    out,
                    "content_block_start",
                    &json!({
                        "type": "content_block_start",
                        "index": index,
                        "content_block": { "type": "text", "text": "" },
                    }),
                );
                self.open = Some(OpenBlock::Text(index));
                index
            }
        };
        block_delta(out, index, &json!({ "type": "text_delta", "text": text }));
    }

    fn tool_fragment(&mut self, position_in_chunk: usize, call: &Value, out: &mut Vec<u8>) {
        let chat_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position_in_chunk as u64);
        let position = match self.tool_positions.get(&chat_index) {
            Some(position) => *position,
            None => {
                self.tools.push(ToolProgress {
                    id: None,
                    name: String::new(),
                    block: None,
                    pending_arguments: String::new(),
                });
                let position = self.tools.len() - 1;
                self.tool_positions.insert(chat_index, position);
                position
            }
        };
        let function = call.get("function");
        let arguments = function.map_or("", |f| str_field(f, "arguments"));
        let Some(tool) = self.tools.get_mut(position) else {
            return;
        };
        if let Some(block) = tool.block {
            if !arguments.is_empty() {
                block_delta(
                    out,
                    block,
                    &json!({ "type": "input_json_delta", "partial_json": arguments }),
                );
            }
            return;
        }
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            tool.id.get_or_insert_with(|| id.to_owned());
        }
        tool.name
            .push_str(function.map_or("", |f| str_field(f, "name")));
        tool.pending_arguments.push_str(arguments);
        if !tool.name.is_empty() {
            self.open_tool(position, out);
        }
    }

    /// Starts the `tool_use` block of `tools[position]` and sends the arguments it holds.
    fn open_tool(&mut self, position: usize, out: &mut Vec<u8>) {
        self.close_open(out);
        let index = self.take_block_index();
        let Some(tool) = self.tools.get_mut(position) else {
            return;
        };
        tool.block = Some(index);
        let id = tool
            .id
            .clone()
            .unwrap_or_else(|| format!("toolu_cortex_{index}"));
        write_event(
            out,
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": index,
                "content_block": { "type": "tool_use", "id": id, "name": tool.name, "input": {} },
            }),
        );
        let pending = std::mem::take(&mut tool.pending_arguments);
        if !pending.is_empty() {
            block_delta(
                out,
                index,
                &json!({ "type": "input_json_delta", "partial_json": pending }),
            );
        }
        self.open = Some(OpenBlock::Tool(position));
    }

    /// Tool calls whose name never came are still opened at the end, so no call is lost.
    fn open_waiting_tools(&mut self, out: &mut Vec<u8>) {
        for position in 0..self.tools.len() {
            if self.tools.get(position).is_some_and(|t| t.block.is_none()) {
                self.open_tool(position, out);
            }
        }
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        let index = match self.open.take() {
            None => return,
            Some(OpenBlock::Text(index)) => Some(index),
            Some(OpenBlock::Tool(position)) => self.tools.get(position).and_then(|t| t.block),
        };
        if let Some(index) = index {
            write_event(
                out,
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": index }),
            );
        }
    }

    fn take_block_index(&mut self) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        index
    }

    /// `[DONE]`: the end, if a finish reason came before it.
    fn done(&mut self, out: &mut Vec<u8>) {
        let Some(mut stop_reason) = self.stop_reason else {
            self.fail(CUT_SHORT, out);
            return;
        };
        if self.refused && stop_reason == "end_turn" {
            stop_reason = "refusal";
        }
        self.open_waiting_tools(out);
        self.close_open(out);
        let tokens = self.usage.unwrap_or_default().tokens();
        write_event(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                "usage": {
                    "input_tokens": tokens.prompt_tokens,
                    "output_tokens": tokens.completion_tokens,
                },
            }),
        );
        write_event(out, "message_stop", &json!({ "type": "message_stop" }));
        self.end = StreamEnd::Complete;
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        write_event(
            out,
            "error",
            &json!({ "type": "error", "error": { "type": "api_error", "message": message } }),
        );
        self.end = StreamEnd::Failed;
    }
}

fn block_delta(out: &mut Vec<u8>, index: usize, delta: &Value) {
    write_event(
        out,
        "content_block_delta",
        &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
    );
}

/// An upstream error's message, bounded; a generic one when it has none.
fn error_message(error: Option<&Value>) -> String {
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("the upstream reported an error");
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

// ------------------------------------------------------------------------------------------
// Small readers shared by the translators
// ------------------------------------------------------------------------------------------

fn request_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError::invalid("the request body must be a JSON object")),
        Err(_) => Err(BodyError::InvalidJson),
    }
}

fn answer_object(body: &[u8]) -> Result<Map<String, Value>, AnswerError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AnswerError("the upstream answer is not a JSON object")),
        Err(_) => Err(AnswerError("the upstream answer is not JSON")),
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    // Writing a `Value` to memory cannot fail: its keys are strings.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The fields of an object that are not `null` (a `null` field counts as left out).
fn present(map: &Map<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    map.iter().filter(|(_, value)| !value.is_null())
}

fn present_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|value| !value.is_null())
}

/// A field, `null` when absent, so that the type checks below name it.
fn field<'a>(map: &'a Map<String, Value>, key: &str) -> &'a Value {
    map.get(key).unwrap_or(&Value::Null)
}

/// Refuses a field of `map` not in `allowed` (fail closed), naming it under `path`.
fn check_keys(map: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), BodyError> {
    match present(map).find(|(key, _)| !allowed.contains(&key.as_str())) {
        Some((key, _)) => Err(BodyError::unsupported(format!("{path}.{key}"))),
        None => Ok(()),
    }
}

fn refuse_unless(neutral: bool, key: &str) -> Result<(), BodyError> {
    if neutral {
        Ok(())
    } else {
        Err(BodyError::unsupported(key.to_owned()))
    }
}

fn is_zero(value: &Value) -> bool {
    value.as_f64().is_some_and(|number| number == 0.0)
}

fn type_of(value: &Value) -> Option<&str> {
    value.get("type").and_then(Value::as_str)
}

fn type_of_map(map: &Map<String, Value>) -> Option<&str> {
    map.get("type").and_then(Value::as_str)
}

/// A string field of an answer or event, empty when absent or not a string.
fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn str_field_of<'a>(map: &'a Map<String, Value>, key: &str) -> &'a str {
    map.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn positive_integer(value: &Value, path: &str) -> Result<u64, BodyError> {
    value
        .as_u64()
        .filter(|number| *number > 0)
        .ok_or_else(|| BodyError::invalid(format!("`{path}` must be a positive integer")))
}

fn number(value: &Value, path: &str) -> Result<Value, BodyError> {
    if value.is_number() {
        Ok(value.clone())
    } else {
        Err(BodyError::invalid(format!("`{path}` must be a number")))
    }
}

fn boolean(value: &Value, path: &str) -> Result<bool, BodyError> {
    value
        .as_bool()
        .ok_or_else(|| BodyError::invalid(format!("`{path}` must be a boolean")))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, BodyError> {
    value
        .as_str()
        .ok_or_else(|| BodyError::invalid(format!("`{path}` must be a string")))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, BodyError> {
    value
        .as_object()
        .ok_or_else(|| BodyError::invalid(format!("`{path}` must be an object")))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, BodyError> {
    value
        .as_array()
        .ok_or_else(|| BodyError::invalid(format!("`{path}` must be an array")))
}
