//! The Responses door in front of a chat provider (`translate::responses`): every request
//! mapping and refusal, whole answers, streams event by event at every byte split, and
//! property tests that a random request keeps each field and that no input panics or
//! produces an event that is not JSON.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use cortex_wire::translate::responses::{
    chat_answer_to_responses, responses_request_to_chat, ChatStreamToResponses,
};
use cortex_wire::translate::StreamTranslator;
use cortex_wire::{BodyError, TokenUsage};
use serde_json::{json, Value};

const NOW: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn to_chat(request: &Value) -> Result<Value, BodyError> {
    let body = serde_json::to_vec(request).unwrap();
    responses_request_to_chat(&body, "upstream-model")
        .map(|chat| serde_json::from_slice(&chat).expect("the chat request is JSON"))
}

fn unsupported(request: &Value) -> String {
    match to_chat(request) {
        Err(BodyError::Unsupported(field)) => field.into_owned(),
        other => panic!("expected Unsupported for {request}, got {other:?}"),
    }
}

fn is_invalid(request: &Value) -> bool {
    matches!(to_chat(request), Err(BodyError::Invalid(_)))
}

fn answer(chat: &Value) -> Value {
    let body = serde_json::to_vec(chat).unwrap();
    serde_json::from_slice(&chat_answer_to_responses(&body, NOW).unwrap()).unwrap()
}

/// Parses translator output into its events, checking the frame of every one: an `event:`
/// line naming the data's `type`, one `data:` line of JSON, a blank line, and
/// `sequence_number`s counting up from `first_sequence`.
fn events_from(out: &[u8], first_sequence: u64) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("the output is UTF-8");
    let mut events = Vec::new();
    for block in text.split_terminator("\n\n") {
        let mut lines = block.split('\n');
        let name = lines
            .next()
            .and_then(|line| line.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("no event line in {block:?}"));
        let data = lines
            .next()
            .and_then(|line| line.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data line in {block:?}"));
        assert_eq!(lines.next(), None, "one data line per event: {block:?}");
        let data: Value = serde_json::from_str(data).expect("event data is JSON");
        assert_eq!(data["type"], name, "{block}");
        assert_eq!(
            data["sequence_number"],
            first_sequence + events.len() as u64,
            "{block}"
        );
        events.push(data);
    }
    assert!(text.is_empty() || text.ends_with("\n\n"));
    events
}

fn events(out: &[u8]) -> Vec<Value> {
    events_from(out, 0)
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn translate_stream(input: &str) -> (Vec<u8>, Option<TokenUsage>) {
    let mut translator = ChatStreamToResponses::new(NOW);
    let mut out = Vec::new();
    translator.feed(input.as_bytes(), &mut out);
    translator.finish(&mut out);
    (out, translator.usage())
}

fn chunk(delta: &Value, finish_reason: Option<&str>) -> String {
    let data = json!({
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": null,
    });
    format!("data: {data}\n\n")
}

fn usage_chunk() -> String {
    let data = json!({
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 3},
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    });
    format!("data: {data}\n\n")
}

fn call_delta(index: u64, id: Option<&str>, name: Option<&str>, arguments: &str) -> Value {
    let mut function = json!({"arguments": arguments});
    let mut call = json!({"index": index});
    if let Some(name) = name {
        function["name"] = json!(name);
    }
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    call["function"] = function;
    json!({"tool_calls": [call]})
}

/// Text, then a tool call in two argument pieces, the finish, the usage chunk and `[DONE]`.
fn text_and_tool_stream() -> String {
    [
        chunk(
            &json!({"role": "assistant", "content": "", "refusal": null}),
            None,
        ),
        chunk(&json!({"content": "Hel"}), None),
        chunk(&json!({"content": "lo"}), None),
        chunk(
            &call_delta(0, Some("call_A"), Some("get_weather"), ""),
            None,
        ),
        chunk(&call_delta(0, None, None, "{\"city\":"), None),
        chunk(&call_delta(0, None, None, "\"Paris\"}"), None),
        chunk(&json!({}), Some("tool_calls")),
        usage_chunk(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

#[test]
fn a_string_input_becomes_one_user_message_after_the_instructions() {
    let chat = to_chat(&json!({
        "model": "alias", "instructions": "Be brief.", "input": "Hi there"
    }))
    .unwrap();
    assert_eq!(
        chat,
        json!({
            "model": "upstream-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there"},
            ],
        })
    );
}

#[test]
fn input_messages_keep_their_roles_and_parts() {
    let chat = to_chat(&json!({
        "model": "m",
        "input": [
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More rules."}]},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Look:"},
                {"type": "input_image", "image_url": "https://example.test/cat.png", "detail": "low"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            ]},
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "A cat.", "annotations": [], "logprobs": []},
                         {"type": "refusal", "refusal": "No more."}]},
            {"role": "assistant", "content": "Plain.", "phase": "final_answer"},
        ],
    }))
    .unwrap();
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Rules."},
            {"role": "system", "content": [{"type": "text", "text": "More rules."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "https://example.test/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "A cat."},
                {"type": "refusal", "refusal": "No more."},
            ]},
            {"role": "assistant", "content": "Plain."},
        ])
    );
}

#[test]
fn function_calls_join_the_assistant_message_before_them_and_outputs_become_tool_messages() {
    let chat = to_chat(&json!({
        "model": "m",
        "input": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking."},
            {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_1",
             "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather",
             "arguments": "{\"city\":\"Rome\"}", "caller": {"type": "direct"}},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "21C"}]},
            {"type": "function_call", "call_id": "call_3", "name": "get_time", "arguments": "{}"},
        ],
    }))
    .unwrap();
    let call = |id: &str, name: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                call("call_1", "get_weather", "{\"city\":\"Paris\"}"),
                call("call_2", "get_weather", "{\"city\":\"Rome\"}"),
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "assistant", "content": null, "tool_calls": [call("call_3", "get_time", "{}")]},
        ])
    );
}

#[test]
fn generation_settings_map_to_their_chat_names() {
    let chat = to_chat(&json!({
        "model": "m",
        "input": "x",
        "tools": [
            {"type": "function", "name": "get_weather", "description": "Weather now",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
             "strict": true},
            {"type": "function", "name": "ping"},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_output_tokens": 300,
        "temperature": 0.25,
        "top_p": 0.5,
        "stream": true,
        "stream_options": {"include_obfuscation": false},
        "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "high", "summary": "auto"},
        "user": "user-7",
    }))
    .unwrap();
    assert_eq!(
        chat,
        json!({
            "model": "upstream-model",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"type": "function", "function": {
                    "name": "get_weather", "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": true}},
                {"type": "function", "function": {"name": "ping"}},
            ],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "max_tokens": 300,
            "temperature": 0.25,
            "top_p": 0.5,
            "stream": true,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
            "reasoning_effort": "high",
            "user": "user-7",
        })
    );
}

#[test]
fn tool_choice_and_text_format_variants() {
    let with = |extra: Value| {
        let mut request =
            json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f"}]});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        to_chat(&request).unwrap()
    };
    for mode in ["auto", "none", "required"] {
        assert_eq!(with(json!({"tool_choice": mode}))["tool_choice"], mode);
    }
    assert_eq!(
        with(json!({"tool_choice": {"type": "function", "name": "f"}}))["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert_eq!(
        with(
            json!({"text": {"format": {"type": "json_schema", "name": "out",
            "description": "the result", "schema": schema, "strict": true}}})
        )["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "out", "description": "the result", "schema": schema, "strict": true}})
    );
    let plain = with(json!({"text": {"format": {"type": "text"}}}));
    assert!(plain.get("response_format").is_none());
    let no_effort = with(json!({"reasoning": {"summary": "detailed"}}));
    assert!(no_effort.get("reasoning_effort").is_none());
    assert!(with(json!({"stream": false})).get("stream").is_none());
}

#[test]
fn fields_without_an_effect_are_dropped_and_null_is_absent() {
    let chat = to_chat(&json!({
        "model": "m",
        "input": "x",
        "include": ["message.output_text.logprobs"],
        "metadata": {"team": "a"},
        "safety_identifier": "h1",
        "prompt_cache_key": "k",
        "service_tier": "auto",
        "store": false,
        "truncation": "disabled",
        "background": false,
        "previous_response_id": null,
        "conversation": null,
        "instructions": null,
        "temperature": null,
        "text": null,
    }))
    .unwrap();
    assert_eq!(
        chat,
        json!({"model": "upstream-model", "messages": [{"role": "user", "content": "x"}]})
    );
    assert!(to_chat(&json!({"model": "m", "input": "x", "service_tier": "default"})).is_ok());
    // Tool settings without tools change nothing, and chat providers refuse them.
    let no_tools = to_chat(&json!({
        "model": "m", "input": "x", "tools": [], "tool_choice": "none", "parallel_tool_calls": false
    }))
    .unwrap();
    assert_eq!(
        no_tools,
        json!({"model": "upstream-model", "messages": [{"role": "user", "content": "x"}]})
    );
}

#[test]
fn fields_that_cannot_be_carried_are_refused_by_name() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"store": true}), "store"),
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"conversation": "conv_1"}), "conversation"),
        (json!({"background": true}), "background"),
        (json!({"prompt": {"id": "pmpt_1"}}), "prompt"),
        (json!({"truncation": "auto"}), "truncation"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"max_tool_calls": 2}), "max_tool_calls"),
        (json!({"service_tier": "flex"}), "service_tier"),
        (json!({"frobnicate": 1}), "frobnicate"),
        (json!({"text": {"verbosity": "low"}}), "text.verbosity"),
        (
            json!({"text": {"format": {"type": "grammar"}}}),
            "text.format.type",
        ),
        (
            json!({"reasoning": {"effort": "low", "mode": "pro"}}),
            "reasoning.mode",
        ),
        (
            json!({"stream_options": {"chunk_size": 3}}),
            "stream_options.chunk_size",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
            "tools[1].type",
        ),
        (
            json!({"tools": [{"type": "function", "name": "f", "defer_loading": true}]}),
            "tools[0].defer_loading",
        ),
        (
            json!({"tool_choice": {"type": "file_search"}}),
            "tool_choice",
        ),
        (
            json!({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}),
            "tool_choice",
        ),
    ];
    for (extra, field) in cases {
        let mut request = json!({"model": "m", "input": "x"});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        assert_eq!(unsupported(&request), field, "{extra}");
    }
}

#[test]
fn input_items_that_cannot_be_carried_are_refused_by_path() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"type": "item_reference", "id": "msg_1"}),
            "input[1].type",
        ),
        (json!({"id": "msg_1"}), "input[1].type"),
        (
            json!({"type": "web_search_call", "id": "ws_1", "status": "completed"}),
            "input[1].type",
        ),
        (
            json!({"type": "custom_tool_call", "call_id": "c", "name": "n", "input": "i"}),
            "input[1].type",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_text", "text": "a"},
                {"type": "input_file", "file_id": "file_1"}]}),
            "input[1].content[1].type",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_audio",
                "input_audio": {"data": "AAAA", "format": "wav"}}]}),
            "input[1].content[0].type",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}]}),
            "input[1].content[0].file_id",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png", "detail": "original"}]}),
            "input[1].content[0].detail",
        ),
        (
            json!({"role": "system", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}),
            "input[1].content[0].type",
        ),
        (
            json!({"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}),
            "input[1].content[0].type",
        ),
        (
            json!({"type": "function_call_output", "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x/y.png"}]}),
            "input[1].output[0].type",
        ),
        (
            json!({"type": "function_call", "call_id": "c", "name": "n", "arguments": "{}",
                "namespace": "tools"}),
            "input[1].namespace",
        ),
        (
            json!({"type": "function_call", "call_id": "c", "name": "n", "arguments": "{}",
                "caller": {"type": "program", "caller_id": "p"}}),
            "input[1].caller",
        ),
        (
            json!({"role": "user", "content": "x", "cache_hint": true}),
            "input[1].cache_hint",
        ),
    ];
    for (item, field) in cases {
        let request = json!({"model": "m", "input": [{"role": "user", "content": "first"}, item]});
        assert_eq!(unsupported(&request), field, "{request}");
    }
}

#[test]
fn a_hostile_key_is_named_only_in_part() {
    let key = "k".repeat(10_000);
    let mut request = json!({"model": "m", "input": "x"});
    request[&key] = json!(1);
    assert_eq!(unsupported(&request), "k".repeat(64));
}

#[test]
fn malformed_requests_are_invalid() {
    assert_eq!(
        responses_request_to_chat(b"not json", "m"),
        Err(BodyError::InvalidJson)
    );
    assert!(matches!(
        responses_request_to_chat(b"[1]", "m"),
        Err(BodyError::Invalid(_))
    ));
    for request in [
        json!({"model": "m"}),
        json!({"model": "m", "input": null}),
        json!({"model": "m", "input": 5}),
        json!({"model": "m", "input": []}),
        json!({"model": "m", "input": ["text"]}),
        json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
        json!({"model": "m", "input": [{"role": "user", "content": 3}]}),
        json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
        json!({"model": "m", "input": [{"type": "function_call", "name": "n", "arguments": "{}"}]}),
        json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}),
        json!({"model": "m", "input": [{"type": 7}]}),
        json!({"model": "m", "input": "x", "instructions": ["a"]}),
        json!({"model": "m", "input": "x", "tools": {}}),
        json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
        json!({"model": "m", "input": "x", "tool_choice": "sometimes"}),
        json!({"model": "m", "input": "x", "tool_choice": 1}),
        json!({"model": "m", "input": "x", "temperature": "hot"}),
        json!({"model": "m", "input": "x", "max_output_tokens": -1}),
        json!({"model": "m", "input": "x", "parallel_tool_calls": "yes"}),
        json!({"model": "m", "input": "x", "stream": "yes"}),
        json!({"model": "m", "input": "x", "store": "no"}),
        json!({"model": "m", "input": "x", "text": "json"}),
        json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
        json!({"model": "m", "input": "x", "reasoning": {"effort": 3}}),
    ] {
        assert!(is_invalid(&request), "{request}");
    }
    // Instructions alone are a conversation a provider can answer.
    assert!(to_chat(&json!({"model": "m", "input": [], "instructions": "Say hi."})).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Whole answers
// ---------------------------------------------------------------------------------------------

#[test]
fn a_text_answer_becomes_a_completed_response() {
    let response = answer(&json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 5,
        "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": null},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 1}},
    }));
    assert_eq!(response["id"], "resp_abc123");
    assert_eq!(response["object"], "response");
    assert_eq!(response["created_at"], NOW);
    assert_eq!(response["status"], "completed");
    assert_eq!(response["model"], "up-model");
    assert_eq!(response["error"], Value::Null);
    assert_eq!(response["incomplete_details"], Value::Null);
    assert_eq!(
        response["output"],
        json!([{"type": "message", "id": "msg_abc123", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}])
    );
    assert_eq!(
        response["usage"],
        json!({"input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
               "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
               "output_tokens_details": {"reasoning_tokens": 1}})
    );
    // The fields the SDK's `Response` type requires are all there.
    for field in [
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "metadata",
        "instructions",
        "temperature",
        "top_p",
        "text",
    ] {
        assert!(response.get(field).is_some(), "{field}");
    }
    assert_eq!(response["tools"], json!([]));
    assert_eq!(response["store"], false);
}

#[test]
fn tool_calls_become_function_call_items() {
    let response = answer(&json!({
        "id": "chatcmpl-t",
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}},
                {"type": "function", "function": {"name": "b"}},
            ]}}],
    }));
    assert_eq!(response["status"], "completed");
    assert_eq!(response["usage"], Value::Null);
    let output = response["output"].as_array().unwrap();
    assert_eq!(output.len(), 3);
    assert_eq!(output[0]["type"], "message");
    assert_eq!(
        output[1],
        json!({"type": "function_call", "id": "fc_t_1", "call_id": "call_1", "name": "a",
               "arguments": "{\"x\":1}", "status": "completed"})
    );
    assert_eq!(
        output[2],
        json!({"type": "function_call", "id": "fc_t_2", "call_id": "call_t_2", "name": "b",
               "arguments": "", "status": "completed"})
    );
    let only_calls = answer(&json!({
        "id": "chatcmpl-u", "model": "m",
        "choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c", "function": {"name": "a", "arguments": "{}"}}]}}],
    }));
    assert_eq!(only_calls["output"].as_array().unwrap().len(), 1);
    assert_eq!(only_calls["output"][0]["id"], "fc_u_0");
}

#[test]
fn cut_and_filtered_answers_are_incomplete_and_refusals_stay_refusals() {
    let cut = answer(&json!({
        "id": "chatcmpl-l", "model": "m",
        "choices": [{"finish_reason": "length", "message": {"role": "assistant", "content": "Once upon"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }));
    assert_eq!(cut["status"], "incomplete");
    assert_eq!(
        cut["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(cut["output"][0]["status"], "incomplete");
    assert_eq!(cut["usage"]["total_tokens"], 3);

    let filtered = answer(&json!({
        "model": "m",
        "choices": [{"finish_reason": "content_filter", "message": {"role": "assistant",
            "content": null, "refusal": "I can't help with that."}}],
    }));
    assert_eq!(filtered["status"], "incomplete");
    assert_eq!(
        filtered["incomplete_details"],
        json!({"reason": "content_filter"})
    );
    assert_eq!(filtered["id"], format!("resp_cortex{NOW}"));
    assert_eq!(
        filtered["output"][0]["content"],
        json!([{"type": "refusal", "refusal": "I can't help with that."}])
    );
}

#[test]
fn an_answer_in_content_parts_joins_their_text() {
    let response = answer(&json!({
        "id": "chatcmpl-p", "model": "m",
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant",
            "content": [{"type": "text", "text": "One, "}, {"type": "text", "text": "two."}]}}],
    }));
    assert_eq!(response["output"][0]["content"][0]["text"], "One, two.");
    let empty = answer(&json!({
        "model": "m",
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": []}}],
    }));
    assert_eq!(empty["output"], json!([]));
}

#[test]
fn malformed_answers_are_errors() {
    for body in [
        &b"not json"[..],
        b"[]",
        b"{}",
        br#"{"choices":[]}"#,
        br#"{"choices":{}}"#,
        br#"{"choices":[{"finish_reason":"stop"}]}"#,
        br#"{"choices":[{"message":"hi"}]}"#,
        br#"{"choices":[{"message":{"content":5}}]}"#,
        br#"{"choices":[{"message":{"content":[{"type":"image_url","image_url":{"url":"u"}}]}}]}"#,
        br#"{"choices":[{"message":{"content":"a","refusal":[]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":{}}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"id":"c"}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
        br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"a","arguments":{}}}]}}]}"#,
        br#"{"error":{"message":"overloaded"}}"#,
    ] {
        assert!(
            chat_answer_to_responses(body, NOW).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[test]
fn a_text_and_tool_stream_becomes_the_responses_event_sequence() {
    let (out, usage) = translate_stream(&text_and_tool_stream());
    let events = events(&out);
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let created = &events[0]["response"];
    assert_eq!(created["id"], "resp_s1");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], json!([]));
    assert_eq!(created["created_at"], NOW);
    assert_eq!(created["model"], "up-model");
    assert_eq!(
        events[2]["item"],
        json!({"type": "message", "id": "msg_s1", "status": "in_progress", "role": "assistant", "content": []})
    );
    assert_eq!(
        events[3]["part"],
        json!({"type": "output_text", "text": "", "annotations": []})
    );
    assert_eq!(events[4]["delta"], "Hel");
    assert_eq!(events[4]["item_id"], "msg_s1");
    assert_eq!(events[4]["output_index"], 0);
    assert_eq!(events[4]["content_index"], 0);
    assert_eq!(events[6]["text"], "Hello");
    assert_eq!(events[8]["item"]["status"], "completed");
    assert_eq!(
        events[9]["item"],
        json!({"type": "function_call", "id": "fc_s1_1", "call_id": "call_A", "name": "get_weather",
               "arguments": "", "status": "in_progress"})
    );
    assert_eq!(events[9]["output_index"], 1);
    assert_eq!(events[10]["delta"], "{\"city\":");
    assert_eq!(events[12]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(events[12]["name"], "get_weather");
    assert_eq!(events[13]["item"]["arguments"], "{\"city\":\"Paris\"}");
    let done = &events[14]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["output"][1]["call_id"], "call_A");
    assert_eq!(done["output"][1]["status"], "completed");
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
               "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 0},
               "output_tokens_details": {"reasoning_tokens": 2}})
    );
    assert_eq!(
        usage,
        Some(TokenUsage {
            prompt_tokens: 11,
            completion_tokens: 7
        })
    );
}

#[test]
fn every_byte_split_gives_the_same_output() {
    let lf = text_and_tool_stream();
    let crlf = lf.replace('\n', "\r\n");
    for stream in [lf, crlf] {
        let (whole, _) = translate_stream(&stream);
        let bytes = stream.as_bytes();
        for split in 0..=bytes.len() {
            let mut translator = ChatStreamToResponses::new(NOW);
            let mut out = Vec::new();
            translator.feed(&bytes[..split], &mut out);
            translator.feed(&bytes[split..], &mut out);
            translator.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
        // And one byte at a time.
        let mut translator = ChatStreamToResponses::new(NOW);
        let mut out = Vec::new();
        for byte in bytes.chunks(1) {
            translator.feed(byte, &mut out);
        }
        translator.finish(&mut out);
        assert_eq!(out, whole);
    }
}

#[test]
fn interleaved_tool_calls_each_keep_their_own_arguments() {
    let stream = [
        chunk(
            &call_delta(0, Some("call_a"), Some("first"), "{\"a\""),
            None,
        ),
        chunk(
            &call_delta(1, Some("call_b"), Some("second"), "{\"b\""),
            None,
        ),
        chunk(&call_delta(0, None, None, ":1}"), None),
        chunk(&call_delta(1, None, None, ":2}"), None),
        chunk(&json!({"content": "Done."}), None),
        chunk(&json!({}), Some("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (out, usage) = translate_stream(&stream);
    assert_eq!(usage, None);
    let events = events(&out);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.completed");
    let output = last["response"]["output"].as_array().unwrap();
    assert_eq!(output.len(), 3);
    assert_eq!(output[0]["arguments"], "{\"a\":1}");
    assert_eq!(output[0]["call_id"], "call_a");
    assert_eq!(output[1]["arguments"], "{\"b\":2}");
    assert_eq!(output[2]["type"], "message");
    assert_eq!(output[2]["content"][0]["text"], "Done.");
    let argument_deltas: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| {
            (
                e["output_index"].as_u64().unwrap(),
                e["delta"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        argument_deltas,
        [(0, "{\"a\""), (1, "{\"b\""), (0, ":1}"), (1, ":2}")]
    );
    // Every item is added once and done once, and ids are unique.
    let added: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .map(|e| &e["item"]["id"])
        .collect();
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .map(|e| &e["item"]["id"])
        .collect();
    assert_eq!(added, done);
    assert_eq!(added.len(), 3);
    assert_ne!(added[0], added[1]);
}

#[test]
fn text_after_a_tool_call_opens_a_second_message() {
    let stream = [
        chunk(&json!({"content": "Before."}), None),
        chunk(&call_delta(0, Some("c"), Some("f"), "{}"), None),
        chunk(&json!({"content": "After."}), None),
        chunk(&json!({}), Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (out, _) = translate_stream(&stream);
    let events = events(&out);
    let output = &events.last().unwrap()["response"]["output"];
    assert_eq!(output[0]["content"][0]["text"], "Before.");
    assert_eq!(output[1]["type"], "function_call");
    assert_eq!(output[2]["content"][0]["text"], "After.");
    assert_ne!(output[0]["id"], output[2]["id"]);
}

#[test]
fn a_stream_cut_by_the_token_limit_ends_incomplete() {
    let stream = [
        chunk(&json!({"content": "Once upon"}), None),
        chunk(&json!({}), Some("length")),
        usage_chunk(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (out, _) = translate_stream(&stream);
    let events = events(&out);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(
        last["response"]["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    assert_eq!(last["response"]["usage"]["output_tokens"], 7);
}

#[test]
fn a_refusal_streams_as_refusal_events() {
    let stream = [
        chunk(&json!({"role": "assistant", "refusal": "I can't"}), None),
        chunk(&json!({"refusal": " do that."}), None),
        chunk(&json!({}), Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (out, _) = translate_stream(&stream);
    let events = events(&out);
    assert_eq!(
        types(&events)[2..],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.refusal.delta",
            "response.refusal.delta",
            "response.refusal.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(events[3]["part"], json!({"type": "refusal", "refusal": ""}));
    assert_eq!(events[6]["refusal"], "I can't do that.");
}

#[test]
fn an_upstream_error_becomes_an_error_event_then_response_failed() {
    let stream = [
        chunk(&json!({"content": "Hal"}), None),
        "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"code\":\"busy\"}}\n\n"
            .to_owned(),
    ]
    .concat();
    let mut translator = ChatStreamToResponses::new(NOW);
    let mut out = Vec::new();
    translator.feed(stream.as_bytes(), &mut out);
    let events = events(&out);
    assert_eq!(
        types(&events)[4..],
        ["response.output_text.delta", "error", "response.failed"]
    );
    assert_eq!(events[5]["code"], "busy");
    assert_eq!(events[5]["message"], "overloaded");
    let failed = &events[6]["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"code": "server_error", "message": "overloaded"})
    );
    assert_eq!(failed["output"][0]["status"], "incomplete");
    assert_eq!(failed["output"][0]["content"][0]["text"], "Hal");
    // Nothing follows the end, whatever the upstream still sends.
    let mut more = Vec::new();
    translator.feed(
        chunk(&json!({"content": "more"}), None).as_bytes(),
        &mut more,
    );
    translator.feed(b"data: [DONE]\n\n", &mut more);
    translator.finish(&mut more);
    assert!(more.is_empty());
}

#[test]
fn a_stream_without_its_end_fails_instead_of_completing() {
    let text = chunk(&json!({"content": "partial"}), None);
    let finish = chunk(&json!({}), Some("stop"));
    for (stream, reason) in [
        (text.clone(), "no finish_reason, no [DONE]"),
        (format!("{text}data: [DONE]\n\n"), "no finish_reason"),
        (format!("{text}{finish}"), "no [DONE]"),
        (String::new(), "nothing at all"),
    ] {
        let (out, _) = translate_stream(&stream);
        let events = events(&out);
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed", "{reason}");
        assert_eq!(
            last["response"]["error"]["code"], "server_error",
            "{reason}"
        );
        assert_eq!(
            types(&events)[..2],
            ["response.created", "response.in_progress"]
        );
        assert!(!types(&events).contains(&"response.completed"));
    }
    // The finish and [DONE] in one last event without its blank line still end cleanly.
    let (out, _) = translate_stream(&format!("{text}{finish}data: [DONE]"));
    assert_eq!(events(&out).last().unwrap()["type"], "response.completed");
}

#[test]
fn a_data_line_that_is_not_json_fails_the_stream() {
    let stream = format!(
        "{}data: {{\"choices\": [tru\n\n{}",
        chunk(&json!({"content": "a"}), None),
        chunk(&json!({"content": "b"}), None)
    );
    let (out, _) = translate_stream(&stream);
    let events = events(&out);
    assert_eq!(events.last().unwrap()["type"], "response.failed");
    assert!(!out.windows(3).any(|w| w == b"\"b\""));
}

#[test]
fn an_oversized_event_fails_the_stream() {
    let mut translator = ChatStreamToResponses::new(NOW);
    let mut out = Vec::new();
    translator.feed(chunk(&json!({"content": "a"}), None).as_bytes(), &mut out);
    translator.feed(b"data: \"", &mut out);
    let filler = vec![b'x'; 64 * 1024];
    for _ in 0..20 {
        translator.feed(&filler, &mut out);
    }
    translator.feed(b"\"\n\n", &mut out);
    let events = events(&out);
    assert_eq!(events.last().unwrap()["type"], "response.failed");
}

#[test]
fn comments_and_keepalives_are_ignored() {
    let stream = format!(
        ": keepalive\n\n{}: ping\n{}data: [DONE]\n\n",
        chunk(&json!({"content": "hi"}), Some("stop")),
        usage_chunk()
    );
    let (out, usage) = translate_stream(&stream);
    assert_eq!(events(&out).last().unwrap()["type"], "response.completed");
    assert_eq!(usage.map(|u| u.prompt_tokens), Some(11));
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use proptest::sample::select;

    #[derive(Debug, Clone)]
    enum Item {
        Message {
            role: &'static str,
            texts: Vec<String>,
            as_parts: bool,
            typed: bool,
        },
        Call {
            call_id: String,
            name: String,
            arguments: String,
        },
        Output {
            call_id: String,
            output: String,
        },
        Reasoning,
    }

    #[derive(Debug, Clone)]
    struct Tool {
        name: String,
        description: Option<String>,
        strict: Option<bool>,
    }

    #[derive(Debug, Clone)]
    struct Request {
        instructions: Option<String>,
        items: Vec<Item>,
        tools: Vec<Tool>,
        tool_choice: Option<Value>,
        max_output_tokens: Option<u32>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        stream: bool,
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (
                select(&["user", "assistant", "system", "developer"][..]),
                vec(text(), 1..4),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(role, texts, as_parts, typed)| {
                    // A string content carries one text.
                    let texts = if as_parts { texts } else { texts[..1].to_vec() };
                    Item::Message {
                        role,
                        texts,
                        as_parts,
                        typed,
                    }
                }),
            ("call_[a-z0-9]{1,6}", "[a-z_]{1,10}", text()).prop_map(
                |(call_id, name, arguments)| Item::Call {
                    call_id,
                    name,
                    arguments
                }
            ),
            ("call_[a-z0-9]{1,6}", text())
                .prop_map(|(call_id, output)| Item::Output { call_id, output }),
            Just(Item::Reasoning),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        let tool = (
            "[a-z_]{1,10}",
            proptest::option::of(text()),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(name, description, strict)| Tool {
                name,
                description,
                strict,
            });
        let tool_choice = proptest::option::of(prop_oneof![
            Just(json!("auto")),
            Just(json!("none")),
            Just(json!("required")),
            "[a-z_]{1,10}".prop_map(|name| json!({"type": "function", "name": name})),
        ]);
        (
            proptest::option::of(text()),
            vec(item(), 1..8),
            vec(tool, 0..4),
            tool_choice,
            proptest::option::of(1..100_000u32),
            proptest::option::of((0..=200u32).prop_map(|t| f64::from(t) / 100.0)),
            proptest::option::of((0..=100u32).prop_map(|t| f64::from(t) / 100.0)),
            any::<bool>(),
        )
            .prop_map(
                |(
                    instructions,
                    items,
                    tools,
                    tool_choice,
                    max_output_tokens,
                    temperature,
                    top_p,
                    stream,
                )| {
                    Request {
                        instructions,
                        items,
                        tools,
                        tool_choice,
                        max_output_tokens,
                        temperature,
                        top_p,
                        stream,
                    }
                },
            )
    }

    fn render(request: &Request) -> Value {
        let items: Vec<Value> = request
            .items
            .iter()
            .map(|item| match item {
                Item::Message {
                    role,
                    texts,
                    as_parts,
                    typed,
                } => {
                    let part_type = if *role == "assistant" {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    let content = if *as_parts {
                        json!(texts
                            .iter()
                            .map(|t| json!({"type": part_type, "text": t}))
                            .collect::<Vec<_>>())
                    } else {
                        json!(texts[0])
                    };
                    let mut message = json!({"role": role, "content": content});
                    if *typed {
                        message["type"] = json!("message");
                    }
                    message
                }
                Item::Call {
                    call_id,
                    name,
                    arguments,
                } => json!({"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}),
                Item::Output { call_id, output } => {
                    json!({"type": "function_call_output", "call_id": call_id, "output": output})
                }
                Item::Reasoning => json!({"type": "reasoning", "id": "rs_1", "summary": []}),
            })
            .collect();
        let mut body = json!({"model": "alias", "input": items, "stream": request.stream});
        if let Some(instructions) = &request.instructions {
            body["instructions"] = json!(instructions);
        }
        if !request.tools.is_empty() {
            body["tools"] = json!(request
                .tools
                .iter()
                .map(|tool| {
                    let mut value = json!({"type": "function", "name": tool.name,
                        "parameters": {"type": "object"}});
                    if let Some(description) = &tool.description {
                        value["description"] = json!(description);
                    }
                    if let Some(strict) = tool.strict {
                        value["strict"] = json!(strict);
                    }
                    value
                })
                .collect::<Vec<_>>());
        }
        if let Some(choice) = &request.tool_choice {
            body["tool_choice"] = choice.clone();
        }
        if let Some(max) = request.max_output_tokens {
            body["max_output_tokens"] = json!(max);
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(top_p) = request.top_p {
            body["top_p"] = json!(top_p);
        }
        body
    }

    /// What a chat conversation says, item by item, read back from the chat messages: the
    /// inverse of the translation.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(String, Vec<String>),
        Call(String, String, String),
        Output(String, String),
    }

    fn texts_of(content: &Value) -> Vec<String> {
        match content {
            Value::String(text) => vec![text.clone()],
            Value::Array(parts) => parts
                .iter()
                .map(|part| {
                    assert_eq!(part["type"], "text");
                    part["text"].as_str().unwrap().to_owned()
                })
                .collect(),
            other => panic!("unexpected content {other}"),
        }
    }

    fn read_back(messages: &[Value]) -> Vec<Seen> {
        let mut seen = Vec::new();
        for message in messages {
            let role = message["role"].as_str().unwrap();
            match role {
                "tool" => seen.push(Seen::Output(
                    message["tool_call_id"].as_str().unwrap().to_owned(),
                    message["content"].as_str().unwrap().to_owned(),
                )),
                "assistant" => {
                    if !message["content"].is_null() {
                        seen.push(Seen::Text(role.to_owned(), texts_of(&message["content"])));
                    }
                    for call in message["tool_calls"].as_array().into_iter().flatten() {
                        assert_eq!(call["type"], "function");
                        seen.push(Seen::Call(
                            call["id"].as_str().unwrap().to_owned(),
                            call["function"]["name"].as_str().unwrap().to_owned(),
                            call["function"]["arguments"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
                _ => seen.push(Seen::Text(role.to_owned(), texts_of(&message["content"]))),
            }
        }
        seen
    }

    fn expected(request: &Request) -> (Vec<Seen>, Vec<&'static str>) {
        let mut seen = Vec::new();
        // The chat roles in order, by the merging rule: a call joins an assistant message
        // just before it.
        let mut roles = Vec::new();
        if let Some(instructions) = &request.instructions {
            seen.push(Seen::Text("system".to_owned(), vec![instructions.clone()]));
            roles.push("system");
        }
        for item in &request.items {
            match item {
                Item::Message { role, texts, .. } => {
                    let role = if *role == "developer" { "system" } else { role };
                    seen.push(Seen::Text(role.to_owned(), texts.clone()));
                    roles.push(role);
                }
                Item::Call {
                    call_id,
                    name,
                    arguments,
                } => {
                    seen.push(Seen::Call(call_id.clone(), name.clone(), arguments.clone()));
                    if roles.last() != Some(&"assistant") {
                        roles.push("assistant");
                    }
                }
                Item::Output { call_id, output } => {
                    seen.push(Seen::Output(call_id.clone(), output.clone()));
                    roles.push("tool");
                }
                Item::Reasoning => {}
            }
        }
        (seen, roles)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            select(
                &[
                    "model",
                    "input",
                    "instructions",
                    "tools",
                    "tool_choice",
                    "type",
                    "role",
                    "content",
                    "text",
                    "name",
                    "arguments",
                    "call_id",
                    "output",
                    "function",
                    "format",
                    "schema",
                    "image_url",
                    "detail",
                    "choices",
                    "message",
                    "delta",
                    "tool_calls",
                    "index",
                    "id",
                    "finish_reason",
                    "usage",
                    "error",
                    "refusal",
                    "prompt_tokens",
                    "completion_tokens",
                    "stream",
                    "store",
                    "effort",
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z_]{1,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            select(
                &[
                    "message",
                    "function_call",
                    "function_call_output",
                    "reasoning",
                    "user",
                    "assistant",
                    "function",
                    "input_text",
                    "input_image",
                    "output_text",
                    "json_schema",
                    "stop",
                    "length",
                    "auto",
                    "",
                ][..]
            )
            .prop_map(Value::from),
            "\\PC{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                btree_map(key.clone(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A chat stream event: well-formed chunks, errors, garbage, comments, the end.
    fn chat_event() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => text().prop_map(|t| chunk(&json!({"content": t}), None)),
            1 => text().prop_map(|t| chunk(&json!({"refusal": t}), None)),
            4 => (0..3u64, proptest::option::of("call_[a-z]{1,3}"), proptest::option::of("[a-z]{1,5}"), text())
                .prop_map(|(index, id, name, arguments)| {
                    chunk(&call_delta(index, id.as_deref(), name.as_deref(), &arguments), None)
                }),
            1 => select(&["stop", "length", "tool_calls", "content_filter"][..])
                .prop_map(|reason| chunk(&json!({}), Some(reason))),
            1 => Just(usage_chunk()),
            1 => Just("data: [DONE]\n\n".to_owned()),
            1 => Just("data: {\"error\":{\"message\":\"m\"}}\n\n".to_owned()),
            1 => "\\PC{0,10}".prop_map(|t| format!("data: {t}\n\n")),
            1 => Just(": keepalive\n\n".to_owned()),
            1 => json_value().prop_map(|v| format!("data: {v}\n\n")),
        ]
    }

    fn feed_in_pieces(bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut translator = ChatStreamToResponses::new(NOW);
        let mut out = Vec::new();
        let mut start = 0;
        for cut in cuts {
            translator.feed(&bytes[start..cut], &mut out);
            start = cut;
        }
        translator.feed(&bytes[start..], &mut out);
        translator.finish(&mut out);
        out
    }

    /// The stream's output is well framed, starts with `response.created` and ends with
    /// exactly one final event.
    fn check_stream_output(out: &[u8]) {
        let events = events(out);
        let types = types(&events);
        assert_eq!(types[..2], ["response.created", "response.in_progress"]);
        let finals = types
            .iter()
            .filter(|t| {
                matches!(
                    **t,
                    "response.completed" | "response.incomplete" | "response.failed"
                )
            })
            .count();
        assert_eq!(finals, 1);
        assert!(matches!(
            *types.last().unwrap(),
            "response.completed" | "response.incomplete" | "response.failed"
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every field of a random request is where the mapping says, read back from the
        /// chat request.
        #[test]
        fn a_random_request_keeps_every_field(request in request()) {
            let (seen, roles) = expected(&request);
            if seen.is_empty() {
                // Only reasoning items: nothing for a provider to answer.
                prop_assert!(is_invalid(&render(&request)));
                return Ok(());
            }
            let chat = to_chat(&render(&request)).unwrap();
            let messages = chat["messages"].as_array().unwrap();
            prop_assert_eq!(read_back(messages), seen);
            let chat_roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
            prop_assert_eq!(chat_roles, roles);
            prop_assert_eq!(&chat["model"], "upstream-model");

            let tools = chat.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
            prop_assert_eq!(tools.len(), request.tools.len());
            for (chat_tool, tool) in tools.iter().zip(&request.tools) {
                prop_assert_eq!(&chat_tool["type"], "function");
                prop_assert_eq!(&chat_tool["function"]["name"], &json!(tool.name));
                prop_assert_eq!(&chat_tool["function"]["parameters"], &json!({"type": "object"}));
                prop_assert_eq!(chat_tool["function"].get("description").cloned(), tool.description.as_ref().map(|d| json!(d)));
                prop_assert_eq!(chat_tool["function"].get("strict").cloned(), tool.strict.map(Value::from));
            }
            let choice = request.tool_choice.as_ref().filter(|_| !request.tools.is_empty()).map(|choice| match choice {
                Value::String(_) => choice.clone(),
                _ => json!({"type": "function", "function": {"name": choice["name"]}}),
            });
            prop_assert_eq!(chat.get("tool_choice"), choice.as_ref());
            prop_assert_eq!(chat.get("max_tokens").cloned(), request.max_output_tokens.map(Value::from));
            prop_assert!(chat.get("max_output_tokens").is_none());
            prop_assert_eq!(chat.get("temperature").and_then(Value::as_f64), request.temperature);
            prop_assert_eq!(chat.get("top_p").and_then(Value::as_f64), request.top_p);
            prop_assert_eq!(chat.get("stream").is_some(), request.stream);
            prop_assert_eq!(chat["stream_options"]["include_usage"].as_bool(), request.stream.then_some(true));
            prop_assert!(chat.get("input").is_none() && chat.get("instructions").is_none());
        }

        /// Any bytes: never a panic; what is accepted is a JSON object naming the upstream
        /// model.
        #[test]
        fn arbitrary_request_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
            if let Ok(chat) = responses_request_to_chat(&bytes, "up") {
                let chat: Value = serde_json::from_slice(&chat).unwrap();
                prop_assert_eq!(&chat["model"], "up");
            }
        }

        /// Any JSON under Responses-like keys: never a panic; an accepted request has
        /// messages, and only chat's names.
        #[test]
        fn arbitrary_request_json_never_panics(fields in btree_map(
            select(&["input", "instructions", "tools", "tool_choice", "text", "reasoning",
                     "stream", "stream_options", "temperature", "max_output_tokens", "store",
                     "include", "truncation"][..]),
            json_value(), 0..6)) {
            let mut request = json!({"model": "m"});
            for (key, value) in fields {
                request[key] = value;
            }
            if let Ok(chat) = to_chat(&request) {
                prop_assert!(!chat["messages"].as_array().unwrap().is_empty());
                for key in chat.as_object().unwrap().keys() {
                    prop_assert!(matches!(key.as_str(),
                        "model" | "messages" | "tools" | "tool_choice" | "response_format"
                        | "reasoning_effort" | "stream" | "stream_options" | "temperature"
                        | "max_tokens"), "{}", key);
                }
            }
        }

        /// Any answer bytes or JSON: never a panic; a translated answer is a response.
        #[test]
        fn arbitrary_answers_never_panic(bytes in vec(any::<u8>(), 0..256), value in json_value()) {
            for body in [bytes, serde_json::to_vec(&value).unwrap(),
                         serde_json::to_vec(&json!({"choices": [value]})).unwrap()] {
                if let Ok(response) = chat_answer_to_responses(&body, NOW) {
                    let response: Value = serde_json::from_slice(&response).unwrap();
                    prop_assert_eq!(&response["object"], "response");
                    prop_assert!(response["output"].is_array());
                }
            }
        }

        /// Any bytes in any split: never a panic, every event well framed JSON, one end, and the
        /// split changes nothing.
        #[test]
        fn arbitrary_stream_bytes_in_any_split(bytes in vec(any::<u8>(), 0..512),
                                               cuts in vec(any::<usize>(), 0..6)) {
            let whole = feed_in_pieces(&bytes, &[]);
            check_stream_output(&whole);
            prop_assert_eq!(feed_in_pieces(&bytes, &cuts), whole);
        }

        /// Random chat streams: the split changes nothing, and the output is always well
        /// formed with one end.
        #[test]
        fn random_chat_streams_split_anywhere(events in vec(chat_event(), 0..12),
                                              cuts in vec(any::<usize>(), 0..6),
                                              crlf in any::<bool>()) {
            let mut stream = events.concat();
            if crlf {
                stream = stream.replace('\n', "\r\n");
            }
            let whole = feed_in_pieces(stream.as_bytes(), &[]);
            check_stream_output(&whole);
            prop_assert_eq!(feed_in_pieces(stream.as_bytes(), &cuts), whole);
        }
    }
}
