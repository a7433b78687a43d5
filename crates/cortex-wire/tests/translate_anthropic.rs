//! Chat completions ↔ Anthropic Messages: every mapping, every refusal, malformed input, and
//! streams at every split; then property tests (round trips, and no input makes a translator
//! panic or write anything but valid JSON events).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

use cortex_wire::sse::{SseReader, TokenUsage};
use cortex_wire::translate::anthropic::{
    chat_answer_to_messages, chat_request_to_messages, messages_answer_to_chat,
    messages_request_to_chat, ChatStreamToMessages, MessagesStreamToChat, DEFAULT_MAX_TOKENS,
};
use cortex_wire::translate::{Chain, StreamTranslator};
use cortex_wire::BodyError;
use serde_json::{json, Value};

const CREATED: i64 = 1_700_000_000;

fn chat_to_messages(body: &Value) -> Result<Value, BodyError> {
    chat_request_to_messages(body.to_string().as_bytes(), "claude-up")
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

fn messages_to_chat(body: &Value) -> Result<Value, BodyError> {
    messages_request_to_chat(body.to_string().as_bytes(), "gpt-up")
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

fn unsupported(field: &str) -> Result<Value, BodyError> {
    Err(BodyError::unsupported(field.to_owned()))
}

fn is_invalid(result: &Result<Value, BodyError>) -> bool {
    matches!(result, Err(BodyError::Invalid(_)))
}

/// A chat request with `extra` fields merged in.
fn chat_with(extra: &Value) -> Value {
    let mut body = json!({ "model": "alias", "messages": [{ "role": "user", "content": "hi" }] });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// A Messages request with `extra` fields merged in.
fn messages_with(extra: &Value) -> Value {
    let mut body = json!({
        "model": "alias",
        "max_tokens": 100,
        "messages": [{ "role": "user", "content": "hi" }],
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

// ------------------------------------------------------------------------------------------
// Chat request → Messages request
// ------------------------------------------------------------------------------------------

#[test]
fn a_chat_request_becomes_a_messages_request() {
    let chat = json!({
        "model": "alias",
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Hello" },
            { "role": "developer", "content": [{ "type": "text", "text": "Use French." }] },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop": "END",
        "stream": true,
        "stream_options": { "include_usage": true },
        "user": "u-1",
        "store": false,
        "n": 1,
        "metadata": { "k": "v" },
        "service_tier": "auto",
        "seed": null,
    });
    let messages = chat_to_messages(&chat).unwrap();
    assert_eq!(
        messages,
        json!({
            "model": "claude-up",
            "system": [{ "type": "text", "text": "Be brief." }, { "type": "text", "text": "Use French." }],
            "messages": [{ "role": "user", "content": "Hello" }],
            "max_tokens": DEFAULT_MAX_TOKENS,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": { "user_id": "u-1" },
        })
    );
}

#[test]
fn sampling_numbers_pass_exactly_as_clients_write_them() {
    for text in ["0.7", "0.95", "1", "0", "0.123456", "1.5", "40"] {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"temperature":{text},"top_p":{text},"top_k":{text}}}"#
        );
        let messages =
            String::from_utf8(chat_request_to_messages(body.as_bytes(), "m").unwrap()).unwrap();
        for key in ["temperature", "top_p", "top_k"] {
            assert!(
                messages.contains(&format!(r#""{key}":{text}"#)),
                "{messages}"
            );
        }
        let back =
            String::from_utf8(messages_request_to_chat(messages.as_bytes(), "m").unwrap()).unwrap();
        assert!(back.contains(&format!(r#""temperature":{text}"#)), "{back}");
    }
}

#[test]
fn one_system_text_is_a_string_and_token_limits_carry() {
    let messages = chat_to_messages(&chat_with(&json!({
        "messages": [{ "role": "system", "content": "S" }, { "role": "user", "content": "U" }],
        "max_tokens": 50,
        "stop": ["a", "b"],
        "safety_identifier": "safe-1",
    })))
    .unwrap();
    assert_eq!(messages["system"], "S");
    assert_eq!(messages["max_tokens"], 50);
    assert_eq!(messages["stop_sequences"], json!(["a", "b"]));
    assert_eq!(messages["metadata"]["user_id"], "safe-1");
    // `max_completion_tokens` is the newer name and wins.
    let both = chat_to_messages(&chat_with(
        &json!({ "max_tokens": 50, "max_completion_tokens": 70 }),
    ))
    .unwrap();
    assert_eq!(both["max_tokens"], 70);
    assert!(is_invalid(&chat_to_messages(&chat_with(
        &json!({ "max_tokens": 0 })
    ))));
    assert!(is_invalid(&chat_to_messages(&chat_with(
        &json!({ "max_tokens": "many" })
    ))));
    assert!(is_invalid(&chat_to_messages(&chat_with(
        &json!({ "stop": 5 })
    ))));
}

#[test]
fn user_images_become_image_blocks() {
    let chat = chat_with(&json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "What is this?", "cache_control": { "type": "ephemeral" } },
        { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high" } },
        { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } },
    ] }] }));
    let messages = chat_to_messages(&chat).unwrap();
    assert_eq!(
        messages["messages"][0]["content"],
        json!([
            { "type": "text", "text": "What is this?", "cache_control": { "type": "ephemeral" } },
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
            { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } },
        ])
    );
    for url in [
        "ftp://example.com/x.png",
        "data:image/png,raw",
        "data:;base64,AAAA",
    ] {
        let bad = chat_with(&json!({ "messages": [{ "role": "user", "content": [
            { "type": "image_url", "image_url": { "url": url } },
        ] }] }));
        assert!(is_invalid(&chat_to_messages(&bad)), "{url}");
    }
    let audio = chat_with(&json!({ "messages": [
        { "role": "user", "content": "a" },
        { "role": "assistant", "content": "b" },
        { "role": "user", "content": [
            { "type": "text", "text": "listen" },
            { "type": "input_audio", "input_audio": { "data": "", "format": "wav" } },
        ] },
    ] }));
    assert_eq!(
        chat_to_messages(&audio),
        unsupported("messages[2].content[1].type")
    );
    // Images belong to users: not to system or assistant turns.
    let system_image = chat_with(&json!({ "messages": [{ "role": "system", "content": [
        { "type": "image_url", "image_url": { "url": "https://example.com/x.png" } },
    ] }] }));
    assert_eq!(
        chat_to_messages(&system_image),
        unsupported("messages[0].content[0].type")
    );
}

#[test]
fn tool_calls_and_results_become_tool_use_and_tool_result_blocks() {
    let chat = chat_with(&json!({ "messages": [
        { "role": "user", "content": "Weather in Paris and Rome?" },
        { "role": "assistant", "content": "", "refusal": null, "annotations": [], "tool_calls": [
            { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
            { "id": "call_2", "type": "function", "function": { "name": "weather", "arguments": "" } },
        ] },
        { "role": "tool", "tool_call_id": "call_1", "content": "18C" },
        { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "21C" }] },
        { "role": "user", "content": "Thanks" },
        { "role": "assistant", "content": "You're welcome.", "reasoning_content": "polite" },
    ] }));
    let messages = chat_to_messages(&chat).unwrap();
    assert_eq!(
        messages["messages"],
        json!([
            { "role": "user", "content": "Weather in Paris and Rome?" },
            { "role": "assistant", "content": [
                { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Paris" } },
                { "type": "tool_use", "id": "call_2", "name": "weather", "input": {} },
            ] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "18C" },
                { "type": "tool_result", "tool_use_id": "call_2", "content": [{ "type": "text", "text": "21C" }] },
                { "type": "text", "text": "Thanks" },
            ] },
            { "role": "assistant", "content": "You're welcome." },
        ])
    );
}

#[test]
fn tool_call_arguments_must_be_a_json_object() {
    for arguments in ["[1,2]", "{\"city\":", "3", "\"x\""] {
        let chat = chat_with(&json!({ "messages": [
            { "role": "user", "content": "go" },
            { "role": "assistant", "content": null, "tool_calls": [
                { "id": "c", "type": "function", "function": { "name": "f", "arguments": arguments } },
            ] },
        ] }));
        assert_eq!(
            chat_to_messages(&chat),
            Err(BodyError::invalid(
                "`messages[1].tool_calls[0].function.arguments` must be a JSON object"
            )),
            "{arguments}"
        );
    }
}

#[test]
fn consecutive_turns_of_one_role_are_merged() {
    let chat = chat_with(&json!({ "messages": [
        { "role": "user", "content": "one" },
        { "role": "user", "content": [{ "type": "text", "text": "two" }] },
        { "role": "assistant", "content": "three" },
        { "role": "assistant", "content": "four" },
        { "role": "assistant", "content": null },
    ] }));
    let messages = chat_to_messages(&chat).unwrap();
    assert_eq!(
        messages["messages"],
        json!([
            { "role": "user", "content": [{ "type": "text", "text": "one" }, { "type": "text", "text": "two" }] },
            { "role": "assistant", "content": [{ "type": "text", "text": "three" }, { "type": "text", "text": "four" }] },
        ])
    );
}

#[test]
fn tools_and_tool_choice_map_to_anthropic_shapes() {
    let tools = json!([
        { "type": "function", "function": {
            "name": "weather", "description": "Weather now",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } } },
            "strict": true,
        } },
        { "type": "function", "function": { "name": "now" } },
    ]);
    let messages = chat_to_messages(&chat_with(&json!({ "tools": tools }))).unwrap();
    assert_eq!(
        messages["tools"],
        json!([
            { "name": "weather", "description": "Weather now",
              "input_schema": { "type": "object", "properties": { "city": { "type": "string" } } },
              "strict": true },
            { "name": "now", "input_schema": { "type": "object", "properties": {} } },
        ])
    );
    assert!(messages.get("tool_choice").is_none());
    let cases = [
        (json!("auto"), json!(null), json!({ "type": "auto" })),
        (json!("none"), json!(false), json!({ "type": "none" })),
        (json!("required"), json!(null), json!({ "type": "any" })),
        (
            json!({ "type": "function", "function": { "name": "now" } }),
            json!(null),
            json!({ "type": "tool", "name": "now" }),
        ),
        (
            json!("required"),
            json!(false),
            json!({ "type": "any", "disable_parallel_tool_use": true }),
        ),
        (
            json!(null),
            json!(false),
            json!({ "type": "auto", "disable_parallel_tool_use": true }),
        ),
    ];
    for (choice, parallel, expected) in cases {
        let body = chat_with(
            &json!({ "tools": tools, "tool_choice": choice, "parallel_tool_calls": parallel }),
        );
        assert_eq!(
            chat_to_messages(&body).unwrap()["tool_choice"],
            expected,
            "{choice} {parallel}"
        );
    }
    // Without tools, tool choice has no effect.
    let no_tools = chat_to_messages(&chat_with(
        &json!({ "tool_choice": "required", "parallel_tool_calls": false }),
    ))
    .unwrap();
    assert!(no_tools.get("tool_choice").is_none());
    assert_eq!(
        chat_to_messages(&chat_with(&json!({ "tools": [
            { "type": "function", "function": { "name": "a" } },
            { "type": "custom", "custom": { "name": "b" } },
        ] }))),
        unsupported("tools[1].type")
    );
    assert_eq!(
        chat_to_messages(&chat_with(&json!({
            "tools": tools,
            "tool_choice": { "type": "allowed_tools", "allowed_tools": { "mode": "auto", "tools": [] } },
        }))),
        unsupported("tool_choice.type")
    );
    assert!(is_invalid(&chat_to_messages(&chat_with(
        &json!({ "tools": tools, "tool_choice": "sometimes" })
    ))));
}

#[test]
fn chat_fields_with_an_effect_anthropic_cannot_carry_are_refused() {
    let refused = [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("response_format", json!({ "type": "json_object" })),
        ("seed", json!(7)),
        ("frequency_penalty", json!(0.5)),
        ("presence_penalty", json!(-1)),
        ("logit_bias", json!({ "50256": -100 })),
        ("audio", json!({ "voice": "alloy", "format": "wav" })),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({ "type": "content", "content": "x" })),
        ("store", json!(true)),
        ("service_tier", json!("flex")),
        ("reasoning_effort", json!("high")),
        ("functions", json!([{ "name": "f" }])),
        ("web_search_options", json!({})),
        ("something_new", json!(1)),
    ];
    for (field, value) in refused {
        assert_eq!(
            chat_to_messages(&chat_with(&json!({ field: value }))),
            unsupported(field),
            "{field}"
        );
    }
    let neutral = json!({
        "n": 1, "logprobs": false, "top_logprobs": 0, "response_format": { "type": "text" },
        "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "modalities": ["text"],
        "store": false, "service_tier": "default", "prompt_cache_key": "k", "seed": null,
        "audio": null, "prediction": null,
    });
    assert!(chat_to_messages(&chat_with(&neutral)).is_ok());
}

#[test]
fn message_fields_anthropic_cannot_carry_are_refused() {
    let cases = [
        (
            json!({ "role": "user", "content": "hi", "name": "bob" }),
            "messages[0].name",
        ),
        (
            json!({ "role": "function", "name": "f", "content": "x" }),
            "messages[0].role",
        ),
        (
            json!({ "role": "assistant", "content": "x", "audio": { "id": "a" } }),
            "messages[0].audio",
        ),
        (
            json!({ "role": "assistant", "content": "x", "function_call": { "name": "f", "arguments": "{}" } }),
            "messages[0].function_call",
        ),
        (
            json!({ "role": "assistant", "content": "x", "annotations": [{ "type": "url_citation" }] }),
            "messages[0].annotations",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "text", "text": "x", "extra": 1 }] }),
            "messages[0].content[0].extra",
        ),
        (
            json!({ "role": "assistant", "tool_calls": [{ "id": "c", "type": "custom", "custom": {} }] }),
            "messages[0].tool_calls[0].type",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "file", "file": { "file_id": "f" } }] }),
            "messages[0].content[0].type",
        ),
    ];
    for (message, field) in cases {
        let body = chat_with(&json!({ "messages": [message] }));
        assert_eq!(chat_to_messages(&body), unsupported(field), "{field}");
    }
}

#[test]
fn malformed_chat_requests_are_refused_not_panicked_on() {
    assert_eq!(
        chat_request_to_messages(b"not json", "m"),
        Err(BodyError::InvalidJson)
    );
    assert!(matches!(
        chat_request_to_messages(b"[1]", "m"),
        Err(BodyError::Invalid(_))
    ));
    let bad = [
        json!({ "model": "m" }),
        json!({ "model": "m", "messages": {} }),
        json!({ "model": "m", "messages": ["hi"] }),
        json!({ "model": "m", "messages": [{ "content": "no role" }] }),
        json!({ "model": "m", "messages": [{ "role": "user", "content": 5 }] }),
        json!({ "model": "m", "messages": [{ "role": "user" }] }),
        json!({ "model": "m", "messages": [{ "role": "tool", "content": "x" }] }),
        json!({ "model": "m", "messages": [{ "role": "assistant", "tool_calls": [{ "id": 1 }] }] }),
        json!({ "model": "m", "messages": [{ "role": "user", "content": [{ "text": "no type" }] }] }),
        json!({ "model": "m", "messages": [], "temperature": "hot" }),
        json!({ "model": "m", "messages": [], "stream": "yes" }),
        json!({ "model": "m", "messages": [], "tools": [{ "type": "function" }] }),
    ];
    for body in bad {
        assert!(is_invalid(&chat_to_messages(&body)), "{body}");
    }
}

// ------------------------------------------------------------------------------------------
// Messages request → chat request
// ------------------------------------------------------------------------------------------

#[test]
fn a_messages_request_becomes_a_chat_request() {
    let messages = json!({
        "model": "alias",
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{ "role": "user", "content": "Hello" }],
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 20,
        "stream": true,
        "metadata": { "user_id": "u-9" },
        "service_tier": "auto",
        "thinking": { "type": "disabled" },
    });
    assert_eq!(
        messages_to_chat(&messages).unwrap(),
        json!({
            "model": "gpt-up",
            "max_tokens": 256,
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": "Hello" },
            ],
            "stop": ["END"],
            "temperature": 0.2,
            "top_p": 0.8,
            "top_k": 20,
            "stream": true,
            "stream_options": { "include_usage": true },
            "user": "u-9",
        })
    );
    let blocks = messages_to_chat(&messages_with(&json!({ "system": [
        { "type": "text", "text": "A", "cache_control": { "type": "ephemeral" } },
        { "type": "text", "text": "B" },
    ] })))
    .unwrap();
    assert_eq!(
        blocks["messages"][0],
        json!({ "role": "system", "content": [{ "type": "text", "text": "A" }, { "type": "text", "text": "B" }] })
    );
    assert!(
        messages_to_chat(&messages_with(&json!({ "stream": false })))
            .unwrap()
            .get("stream_options")
            .is_none()
    );
}

#[test]
fn tool_use_and_tool_results_become_tool_calls_and_tool_messages() {
    let body = messages_with(&json!({ "messages": [
        { "role": "user", "content": "Weather?" },
        { "role": "assistant", "content": [
            { "type": "thinking", "thinking": "hmm", "signature": "sig" },
            { "type": "text", "text": "Let me " },
            { "type": "text", "text": "check." },
            { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" }, "cache_control": { "type": "ephemeral" } },
        ] },
        { "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "toolu_1", "content": "18C" },
            { "type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": [{ "type": "text", "text": "timeout" }] },
            { "type": "tool_result", "tool_use_id": "toolu_3", "is_error": true },
            { "type": "tool_result", "tool_use_id": "toolu_4", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] },
            { "type": "text", "text": "And Rome?" },
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "AAAA" } },
            { "type": "image", "source": { "type": "url", "url": "https://example.com/x.png" } },
        ] },
        { "role": "assistant", "content": [{ "type": "redacted_thinking", "data": "xx" }] },
    ] }));
    let chat = messages_to_chat(&body).unwrap();
    assert_eq!(
        chat["messages"],
        json!([
            { "role": "user", "content": "Weather?" },
            { "role": "assistant", "content": "Let me check.", "tool_calls": [
                { "id": "toolu_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
            ] },
            { "role": "tool", "tool_call_id": "toolu_1", "content": "18C" },
            { "role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout" },
            { "role": "tool", "tool_call_id": "toolu_3", "content": "Error" },
            { "role": "tool", "tool_call_id": "toolu_4", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] },
            { "role": "user", "content": [
                { "type": "text", "text": "And Rome?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,AAAA" } },
                { "type": "image_url", "image_url": { "url": "https://example.com/x.png" } },
            ] },
        ])
    );
    let only_tools = messages_to_chat(&messages_with(&json!({ "messages": [
        { "role": "user", "content": "go" },
        { "role": "assistant", "content": [{ "type": "tool_use", "id": "t", "name": "f", "input": {} }] },
    ] })))
    .unwrap();
    assert_eq!(only_tools["messages"][1]["content"], Value::Null);
    assert_eq!(
        only_tools["messages"][1]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

#[test]
fn anthropic_tools_and_tool_choice_map_to_chat_shapes() {
    let tools = json!([
        { "name": "weather", "description": "Weather now", "strict": true, "cache_control": { "type": "ephemeral" },
          "input_schema": { "type": "object", "properties": { "city": { "type": "string" } } } },
        { "type": "custom", "name": "now", "input_schema": { "type": "object" } },
    ]);
    let chat = messages_to_chat(&messages_with(&json!({ "tools": tools }))).unwrap();
    assert_eq!(
        chat["tools"],
        json!([
            { "type": "function", "function": { "name": "weather", "description": "Weather now", "strict": true,
              "parameters": { "type": "object", "properties": { "city": { "type": "string" } } } } },
            { "type": "function", "function": { "name": "now", "parameters": { "type": "object" } } },
        ])
    );
    let cases = [
        (json!({ "type": "auto" }), json!("auto"), None),
        (json!({ "type": "any" }), json!("required"), None),
        (json!({ "type": "none" }), json!("none"), None),
        (
            json!({ "type": "tool", "name": "now" }),
            json!({ "type": "function", "function": { "name": "now" } }),
            None,
        ),
        (
            json!({ "type": "auto", "disable_parallel_tool_use": true }),
            json!("auto"),
            Some(false),
        ),
        (
            json!({ "type": "any", "disable_parallel_tool_use": false }),
            json!("required"),
            None,
        ),
    ];
    for (choice, expected, parallel) in cases {
        let chat = messages_to_chat(&messages_with(
            &json!({ "tools": tools, "tool_choice": choice }),
        ))
        .unwrap();
        assert_eq!(chat["tool_choice"], expected, "{choice}");
        assert_eq!(
            chat.get("parallel_tool_calls").and_then(Value::as_bool),
            parallel,
            "{choice}"
        );
    }
    let no_tools =
        messages_to_chat(&messages_with(&json!({ "tool_choice": { "type": "any" } }))).unwrap();
    assert!(no_tools.get("tool_choice").is_none());
    assert_eq!(
        messages_to_chat(&messages_with(&json!({ "tools": [
            { "type": "web_search_20250305", "name": "web_search", "max_uses": 3 },
        ] }))),
        unsupported("tools[0].type")
    );
    assert_eq!(
        messages_to_chat(&messages_with(&json!({ "tools": [
            { "name": "f", "input_schema": { "type": "object" }, "input_examples": [{}] },
        ] }))),
        unsupported("tools[0].input_examples")
    );
}

#[test]
fn messages_fields_chat_cannot_carry_are_refused() {
    let top_level = [
        (
            "thinking",
            json!({ "type": "enabled", "budget_tokens": 2000 }),
        ),
        ("container", json!("c-1")),
        ("output_config", json!({ "effort": "low" })),
        ("mcp_servers", json!([])),
        ("something_new", json!(true)),
    ];
    for (field, value) in top_level {
        assert_eq!(
            messages_to_chat(&messages_with(&json!({ field: value }))),
            unsupported(field),
            "{field}"
        );
    }
    let in_messages = [
        (
            json!({ "role": "user", "content": [{ "type": "document", "source": { "type": "text", "data": "x", "media_type": "text/plain" } }] }),
            "messages[0].content[0].type",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "text", "text": "x", "citations": [{ "type": "char_location" }] }] }),
            "messages[0].content[0].citations",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "t", "content": [{ "type": "image", "source": { "type": "url", "url": "https://x" } }] }] }),
            "messages[0].content[0].content[0].type",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "image", "source": { "type": "file", "file_id": "f" } }] }),
            "messages[0].content[0].source.type",
        ),
        (
            json!({ "role": "assistant", "content": [{ "type": "server_tool_use", "id": "s", "name": "web_search", "input": {} }] }),
            "messages[0].content[0].type",
        ),
        (
            json!({ "role": "system", "content": [{ "type": "text", "text": "x" }] }),
            "messages[0].role",
        ),
        (
            json!({ "role": "user", "content": [{ "type": "mid_conv_system", "content": [] }] }),
            "messages[0].content[0].type",
        ),
    ];
    for (message, field) in in_messages {
        assert_eq!(
            messages_to_chat(&messages_with(&json!({ "messages": [message] }))),
            unsupported(field),
            "{field}"
        );
    }
    assert_eq!(
        messages_to_chat(&messages_with(
            &json!({ "metadata": { "user_id": "u", "team": "t" } })
        )),
        unsupported("metadata.team")
    );
    // `cache_control` changes cost, never the answer: it is left out.
    let cached = messages_to_chat(&messages_with(&json!({
        "cache_control": { "type": "ephemeral" },
        "messages": [{ "role": "user", "content": [
            { "type": "text", "text": "x", "cache_control": { "type": "ephemeral" }, "citations": [] },
        ] }],
    })))
    .unwrap();
    assert_eq!(
        cached["messages"],
        json!([{ "role": "user", "content": "x" }])
    );
}

#[test]
fn malformed_messages_requests_are_refused_not_panicked_on() {
    assert_eq!(
        messages_request_to_chat(b"{", "m"),
        Err(BodyError::InvalidJson)
    );
    assert!(matches!(
        messages_request_to_chat(b"\"text\"", "m"),
        Err(BodyError::Invalid(_))
    ));
    let bad = [
        json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }] }),
        json!({ "model": "m", "max_tokens": 10 }),
        json!({ "model": "m", "max_tokens": -1, "messages": [] }),
        json!({ "model": "m", "max_tokens": 10, "messages": [{ "role": "user", "content": 1 }] }),
        json!({ "model": "m", "max_tokens": 10, "messages": [{ "role": "user", "content": [{ "type": "text" }] }] }),
        json!({ "model": "m", "max_tokens": 10, "messages": [{ "role": "assistant", "content": [{ "type": "tool_use", "id": "t", "name": "f", "input": [] }] }] }),
        json!({ "model": "m", "max_tokens": 10, "messages": [], "stop_sequences": [1] }),
        json!({ "model": "m", "max_tokens": 10, "messages": [], "system": 3 }),
        json!({ "model": "m", "max_tokens": 10, "messages": [], "tool_choice": { "type": "sometimes" } }),
        json!({ "model": "m", "max_tokens": 10, "messages": [], "tools": [{ "name": "f" }] }),
    ];
    for body in bad {
        assert!(is_invalid(&messages_to_chat(&body)), "{body}");
    }
}

// ------------------------------------------------------------------------------------------
// Whole answers
// ------------------------------------------------------------------------------------------

fn anthropic_answer(stop_reason: &str) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            { "type": "thinking", "thinking": "Paris first.", "signature": "sig" },
            { "type": "text", "text": "Checking " },
            { "type": "text", "text": "now." },
            { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" } },
        ],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": { "input_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 7, "output_tokens": 11 },
    })
}

fn to_chat_answer(answer: &Value) -> Value {
    serde_json::from_slice(
        &messages_answer_to_chat(answer.to_string().as_bytes(), CREATED).unwrap(),
    )
    .unwrap()
}

fn to_messages_answer(answer: &Value) -> Value {
    serde_json::from_slice(
        &chat_answer_to_messages(answer.to_string().as_bytes(), CREATED).unwrap(),
    )
    .unwrap()
}

#[test]
fn an_anthropic_answer_becomes_a_chat_completion() {
    assert_eq!(
        to_chat_answer(&anthropic_answer("tool_use")),
        json!({
            "id": "msg_01",
            "object": "chat.completion",
            "created": CREATED,
            "model": "claude-x",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking now.",
                    "refusal": null,
                    "reasoning_content": "Paris first.",
                    "tool_calls": [{ "id": "toolu_1", "type": "function",
                        "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } }],
                },
                "finish_reason": "tool_calls",
                "logprobs": null,
            }],
            "usage": { "prompt_tokens": 30, "completion_tokens": 11, "total_tokens": 41,
                       "prompt_tokens_details": { "cached_tokens": 7 } },
        })
    );
    for (stop_reason, finish_reason) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let chat = to_chat_answer(&anthropic_answer(stop_reason));
        assert_eq!(
            chat["choices"][0]["finish_reason"], finish_reason,
            "{stop_reason}"
        );
    }
    let empty = to_chat_answer(
        &json!({ "type": "message", "content": [], "stop_reason": "end_turn",
        "usage": { "input_tokens": 1, "output_tokens": 0 } }),
    );
    assert_eq!(empty["choices"][0]["message"]["content"], Value::Null);
    assert!(empty["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn a_chat_completion_becomes_an_anthropic_message() {
    let chat = json!({
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "reasoning_content": "hidden",
                "tool_calls": [
                    { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Rome\"}" } },
                    { "id": "call_2", "type": "function", "function": { "name": "cut", "arguments": "{\"city\":\"Ro" } },
                ],
            },
            "finish_reason": "tool_calls",
        }],
        "usage": { "prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17 },
    });
    assert_eq!(
        to_messages_answer(&chat),
        json!({
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [
                { "type": "text", "text": "Checking." },
                { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Rome" } },
                { "type": "tool_use", "id": "call_2", "name": "cut", "input": {} },
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": { "input_tokens": 12, "output_tokens": 5 },
        })
    );
    for (finish_reason, stop_reason) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        let answer = json!({ "id": "msg_x", "choices": [{ "message": { "role": "assistant", "content": "a" }, "finish_reason": finish_reason }] });
        let message = to_messages_answer(&answer);
        assert_eq!(message["stop_reason"], stop_reason, "{finish_reason}");
        assert_eq!(message["id"], "msg_x");
    }
    let refusal = to_messages_answer(&json!({ "choices": [{
        "message": { "role": "assistant", "content": null, "refusal": "I can't help with that." },
        "finish_reason": "stop",
    }] }));
    assert_eq!(
        refusal["content"],
        json!([{ "type": "text", "text": "I can't help with that." }])
    );
    assert_eq!(refusal["stop_reason"], "refusal");
    assert_eq!(
        refusal["usage"],
        json!({ "input_tokens": 0, "output_tokens": 0 })
    );
}

#[test]
fn malformed_answers_are_answer_errors() {
    for body in [
        &b"not json"[..],
        b"[]",
        br#"{"type":"message"}"#,
        br#"{"type":"error","content":[]}"#,
        br#"{"content":[{"text":"no type"}]}"#,
    ] {
        assert!(messages_answer_to_chat(body, CREATED).is_err());
    }
    for body in [
        &b"{"[..],
        b"7",
        br#"{"choices":[]}"#,
        br#"{"choices":[{"finish_reason":"stop"}]}"#,
        br#"{"choices":[{"message":{"content":5}}]}"#,
        br#"{"choices":[{"message":{"content":"x","tool_calls":{}}}]}"#,
        br#"{"choices":[{"message":{"content":"x","tool_calls":[{"id":"c"}]}}]}"#,
    ] {
        assert!(chat_answer_to_messages(body, CREATED).is_err());
    }
}

// ------------------------------------------------------------------------------------------
// Streams
// ------------------------------------------------------------------------------------------

/// One translated event: its `event:` name and its data (`None` for `[DONE]`).
type Event = (String, Option<Value>);

/// Checks that `out` is well-formed SSE whose every data line is JSON or `[DONE]`, and
/// returns its events.
fn events_of(out: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(out).expect("the output is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "events end with a blank line: {text:?}"
    );
    let mut events = Vec::new();
    for block in text.split_terminator("\n\n") {
        let mut name = String::new();
        let mut data = None;
        for line in block.split('\n') {
            if let Some(value) = line.strip_prefix("event: ") {
                name = value.to_owned();
            } else if let Some(value) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event: {block:?}");
                data = Some(if value == "[DONE]" {
                    None
                } else {
                    Some(
                        serde_json::from_str::<Value>(value)
                            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {value:?}")),
                    )
                });
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        events.push((name, data.expect("every event has data")));
    }
    events
}

fn run(mut translator: impl StreamTranslator, chunks: &[&[u8]]) -> (Vec<u8>, Option<TokenUsage>) {
    let mut out = Vec::new();
    for chunk in chunks {
        translator.feed(chunk, &mut out);
    }
    translator.finish(&mut out);
    (out, translator.usage())
}

/// Feeds `input` whole, split at every byte, and byte by byte: the output must not change.
fn same_at_every_split<T: StreamTranslator>(
    make: impl Fn() -> T,
    input: &[u8],
) -> (Vec<Event>, Option<TokenUsage>) {
    let (whole, usage) = run(make(), &[input]);
    for split in 1..input.len() {
        let (a, b) = input.split_at(split);
        let (out, split_usage) = run(make(), &[a, b]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole),
            "split at {split}"
        );
        assert_eq!(split_usage, usage);
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(make(), &bytes).0, whole);
    (events_of(&whole), usage)
}

fn sse(events: &[(&str, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

fn anthropic_stream() -> String {
    sse(&[
        (
            "message_start",
            json!({ "type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x",
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1 } } }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0,
            "content_block": { "type": "thinking", "thinking": "", "signature": "" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0,
            "delta": { "type": "thinking_delta", "thinking": "Let me think" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0,
            "delta": { "type": "signature_delta", "signature": "sig" } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        ("ping", json!({ "type": "ping" })),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 1,
            "content_block": { "type": "text", "text": "" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 1,
            "delta": { "type": "text_delta", "text": "Hello" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 1,
            "delta": { "type": "text_delta", "text": " wörld" } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 1 }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 2,
            "content_block": { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": {} } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 2,
            "delta": { "type": "input_json_delta", "partial_json": "" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 2,
            "delta": { "type": "input_json_delta", "partial_json": "{\"city\": " } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 2,
            "delta": { "type": "input_json_delta", "partial_json": "\"Paris\"}" } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 2 }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 3,
            "content_block": { "type": "tool_use", "id": "toolu_2", "name": "now", "input": {} } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 3 }),
        ),
        (
            "message_delta",
            json!({ "type": "message_delta",
            "delta": { "stop_reason": "tool_use", "stop_sequence": null }, "usage": { "output_tokens": 42 } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ])
}

/// The `delta` of each chunk, the finish reasons, and the usage chunk's usage.
fn chat_deltas(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .map(|(name, data)| {
            assert_eq!(name, "", "chat chunks have no event name");
            match data {
                None => json!("[DONE]"),
                Some(chunk) if chunk.get("error").is_some() => {
                    json!({ "error": chunk["error"]["type"] })
                }
                Some(chunk) => {
                    assert_eq!(chunk["object"], "chat.completion.chunk");
                    assert_eq!(chunk["created"], CREATED);
                    match chunk["choices"].as_array().unwrap().as_slice() {
                        [] => json!({ "usage": chunk["usage"] }),
                        [choice] if !choice["finish_reason"].is_null() => {
                            assert_eq!(choice["delta"], json!({}));
                            json!({ "finish_reason": choice["finish_reason"] })
                        }
                        [choice] => choice["delta"].clone(),
                        _ => panic!("one choice per chunk"),
                    }
                }
            }
        })
        .collect()
}

#[test]
fn an_anthropic_stream_becomes_chat_chunks_at_every_split() {
    let stream = anthropic_stream();
    let (events, usage) =
        same_at_every_split(|| MessagesStreamToChat::new(CREATED), stream.as_bytes());
    assert_eq!(
        chat_deltas(&events),
        [
            json!({ "role": "assistant", "content": "" }),
            json!({ "reasoning_content": "Let me think" }),
            json!({ "content": "Hello" }),
            json!({ "content": " wörld" }),
            json!({ "tool_calls": [{ "index": 0, "id": "toolu_1", "type": "function",
                "function": { "name": "weather", "arguments": "" } }] }),
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\": " } }] }),
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "\"Paris\"}" } }] }),
            json!({ "tool_calls": [{ "index": 1, "id": "toolu_2", "type": "function",
                "function": { "name": "now", "arguments": "" } }] }),
            json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "{}" } }] }),
            json!({ "finish_reason": "tool_calls" }),
            json!({ "usage": { "prompt_tokens": 30, "completion_tokens": 42, "total_tokens": 72,
                "prompt_tokens_details": { "cached_tokens": 5 } } }),
            json!("[DONE]"),
        ]
    );
    let first = events[0].1.as_ref().unwrap();
    assert_eq!(first["id"], "msg_1");
    assert_eq!(first["model"], "claude-x");
    assert_eq!(
        usage,
        Some(TokenUsage {
            prompt_tokens: 30,
            completion_tokens: 42
        })
    );
}

#[test]
fn an_anthropic_stream_cut_short_ends_in_a_chat_error() {
    let stream = anthropic_stream();
    let cut = &stream[..stream.find("event: message_delta").unwrap()];
    let (events, usage) =
        same_at_every_split(|| MessagesStreamToChat::new(CREATED), cut.as_bytes());
    let deltas = chat_deltas(&events);
    assert_eq!(deltas.last(), Some(&json!({ "error": "api_error" })));
    assert!(!deltas.contains(&json!("[DONE]")));
    assert_eq!(usage.map(|u| u.prompt_tokens), Some(30));
    // Nothing at all from upstream is an error too.
    let (events, usage) = same_at_every_split(|| MessagesStreamToChat::new(CREATED), b"");
    assert_eq!(chat_deltas(&events), [json!({ "error": "api_error" })]);
    assert_eq!(usage, None);
}

#[test]
fn an_anthropic_error_event_becomes_a_chat_error_and_ends_the_stream() {
    let stream = sse(&[
        (
            "message_start",
            json!({ "type": "message_start", "message": { "id": "m", "model": "c",
            "usage": { "input_tokens": 3, "output_tokens": 0 } } }),
        ),
        (
            "error",
            json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ]);
    let (events, _) = same_at_every_split(|| MessagesStreamToChat::new(CREATED), stream.as_bytes());
    assert_eq!(events.len(), 2);
    let error = events[1].1.as_ref().unwrap();
    assert_eq!(error["error"]["message"], "Overloaded");
    assert_eq!(error["error"]["type"], "overloaded_error");
}

fn chat_chunk(delta: &Value, finish_reason: &Value) -> Value {
    json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }] })
}

fn chat_stream(with_done: bool) -> String {
    let chunks = [
        chat_chunk(&json!({ "role": "assistant", "content": "" }), &Value::Null),
        chat_chunk(&json!({ "content": "Hi " }), &Value::Null),
        chat_chunk(&json!({ "content": "there." }), &Value::Null),
        chat_chunk(
            &json!({ "tool_calls": [{ "index": 0, "id": "call_1", "type": "function",
            "function": { "name": "weather", "arguments": "" } }] }),
            &Value::Null,
        ),
        chat_chunk(
            &json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\":" } }] }),
            &Value::Null,
        ),
        chat_chunk(
            &json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "\"Oslo\"}" } }] }),
            &Value::Null,
        ),
        // A server that sends the id first and the name later.
        chat_chunk(
            &json!({ "tool_calls": [{ "index": 1, "id": "call_2", "function": { "arguments": "{" } }] }),
            &Value::Null,
        ),
        chat_chunk(
            &json!({ "tool_calls": [{ "index": 1, "function": { "name": "now", "arguments": "}" } }] }),
            &Value::Null,
        ),
        chat_chunk(&json!({}), &json!("tool_calls")),
        json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
            "choices": [], "usage": { "prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23 } }),
    ];
    let mut out: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    if with_done {
        out.push_str("data: [DONE]\n\n");
    }
    out
}

#[test]
fn chat_chunks_become_an_anthropic_stream_at_every_split() {
    let stream = chat_stream(true);
    let (events, usage) =
        same_at_every_split(|| ChatStreamToMessages::new(CREATED), stream.as_bytes());
    let expected = [
        (
            "message_start",
            json!({ "type": "message_start", "message": {
            "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 0, "output_tokens": 0 } } }),
        ),
        ("ping", json!({ "type": "ping" })),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0,
            "content_block": { "type": "text", "text": "" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0,
            "delta": { "type": "text_delta", "text": "Hi " } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0,
            "delta": { "type": "text_delta", "text": "there." } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 1,
            "content_block": { "type": "tool_use", "id": "call_1", "name": "weather", "input": {} } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 1,
            "delta": { "type": "input_json_delta", "partial_json": "{\"city\":" } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 1,
            "delta": { "type": "input_json_delta", "partial_json": "\"Oslo\"}" } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 1 }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 2,
            "content_block": { "type": "tool_use", "id": "call_2", "name": "now", "input": {} } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 2,
            "delta": { "type": "input_json_delta", "partial_json": "{}" } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 2 }),
        ),
        (
            "message_delta",
            json!({ "type": "message_delta",
            "delta": { "stop_reason": "tool_use", "stop_sequence": null },
            "usage": { "input_tokens": 9, "output_tokens": 14 } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ];
    let expected: Vec<Event> = expected
        .into_iter()
        .map(|(name, data)| (name.to_owned(), Some(data)))
        .collect();
    assert_eq!(events, expected);
    assert_eq!(
        usage,
        Some(TokenUsage {
            prompt_tokens: 9,
            completion_tokens: 14
        })
    );
}

#[test]
fn a_chat_stream_without_its_end_ends_in_an_anthropic_error() {
    let error = |events: &[Event]| {
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(data.as_ref().unwrap()["type"], "error");
        assert_eq!(data.as_ref().unwrap()["error"]["type"], "api_error");
        assert!(!events.iter().any(|(name, _)| name == "message_stop"));
    };
    let (events, usage) = same_at_every_split(
        || ChatStreamToMessages::new(CREATED),
        chat_stream(false).as_bytes(),
    );
    error(&events);
    assert_eq!(usage.map(|u| u.completion_tokens), Some(14));
    // `[DONE]` without a finish reason is not a complete answer either.
    let no_finish = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        chat_chunk(&json!({ "content": "partial" }), &Value::Null)
    );
    let (events, _) =
        same_at_every_split(|| ChatStreamToMessages::new(CREATED), no_finish.as_bytes());
    error(&events);
    let (events, _) = same_at_every_split(|| ChatStreamToMessages::new(CREATED), b"");
    error(&events);
    let upstream_error = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chat_chunk(&json!({ "content": "x" }), &Value::Null),
        json!({ "error": { "message": "server fell over", "type": "server_error" } })
    );
    let (events, _) = same_at_every_split(
        || ChatStreamToMessages::new(CREATED),
        upstream_error.as_bytes(),
    );
    error(&events);
    assert_eq!(
        events.last().unwrap().1.as_ref().unwrap()["error"]["message"],
        "server fell over"
    );
}

#[test]
fn a_chat_refusal_streams_as_text_with_stop_reason_refusal() {
    let stream = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chat_chunk(&json!({ "refusal": "No." }), &Value::Null),
        chat_chunk(&json!({}), &json!("stop"))
    );
    let (events, usage) =
        same_at_every_split(|| ChatStreamToMessages::new(CREATED), stream.as_bytes());
    assert!(events
        .iter()
        .any(|(_, d)| d.as_ref().unwrap()["delta"]["text"] == "No."));
    let delta = events
        .iter()
        .find(|(name, _)| name == "message_delta")
        .unwrap();
    assert_eq!(delta.1.as_ref().unwrap()["delta"]["stop_reason"], "refusal");
    assert_eq!(usage, None);
}

#[test]
fn chained_both_ways_a_chat_stream_keeps_its_text_and_tool_calls() {
    let stream = chat_stream(true);
    let make = || {
        Chain::new(
            ChatStreamToMessages::new(CREATED),
            MessagesStreamToChat::new(CREATED),
        )
    };
    let (events, _) = same_at_every_split(make, stream.as_bytes());
    let deltas = chat_deltas(&events);
    let text: String = deltas
        .iter()
        .filter_map(|d| d["content"].as_str())
        .collect();
    assert_eq!(text, "Hi there.");
    let mut arguments = [String::new(), String::new()];
    let mut names = Vec::new();
    for delta in &deltas {
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
            arguments[index].push_str(call["function"]["arguments"].as_str().unwrap());
            if let Some(name) = call["function"]["name"].as_str() {
                names.push(name.to_owned());
            }
        }
    }
    assert_eq!(names, ["weather", "now"]);
    assert_eq!(arguments, ["{\"city\":\"Oslo\"}", "{}"]);
    assert!(deltas.contains(&json!({ "finish_reason": "tool_calls" })));
    assert!(deltas.contains(
        &json!({ "usage": { "prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23 } })
    ));
    assert_eq!(deltas.last(), Some(&json!("[DONE]")));
}

#[test]
fn the_sse_reader_agrees_with_the_test_parser() {
    // The test parser above is stricter than the reader; both must see the same events.
    let (out, _) = run(
        MessagesStreamToChat::new(CREATED),
        &[anthropic_stream().as_bytes()],
    );
    let mut reader = SseReader::new();
    let mut count = 0;
    reader.feed(&out, |_| count += 1);
    reader.finish(|_| count += 1);
    assert_eq!(count, events_of(&out).len());
}

// ------------------------------------------------------------------------------------------
// Property tests
// ------------------------------------------------------------------------------------------

mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    fn text() -> impl Strategy<Value = String> {
        "\\PC{1,12}"
    }

    fn arguments() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                text().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ],
            0..4,
        )
        .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    #[derive(Debug, Clone)]
    struct Exchange {
        /// One or two user messages, each a string or text parts.
        user: Vec<(Vec<String>, bool)>,
        assistant_text: Option<String>,
        /// Tool name, arguments and result text of each call.
        calls: Vec<(usize, Value, String)>,
    }

    fn exchange() -> impl Strategy<Value = Exchange> {
        (
            prop::collection::vec((prop::collection::vec(text(), 1..3), any::<bool>()), 1..3),
            prop::option::of(text()),
            prop::collection::vec((0..3usize, arguments(), text()), 0..3),
        )
            .prop_map(|(user, assistant_text, calls)| Exchange {
                user,
                assistant_text,
                calls,
            })
    }

    #[derive(Debug, Clone)]
    struct ChatRequest {
        system: Vec<String>,
        exchanges: Vec<Exchange>,
        tools: Vec<(String, Option<String>, Value)>,
        tool_choice: Option<usize>,
        parallel: Option<bool>,
        max_tokens: Option<(bool, u64)>,
        stop: Option<Result<String, Vec<String>>>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        stream: Option<bool>,
    }

    fn chat_request() -> impl Strategy<Value = ChatRequest> {
        (
            prop::collection::vec(text(), 0..3),
            prop::collection::vec(exchange(), 1..4),
            prop::collection::vec(
                ("[a-z_]{1,10}", prop::option::of(text()), arguments()),
                0..3,
            ),
            prop::option::of(0..6usize),
            prop::option::of(any::<bool>()),
            prop::option::of((any::<bool>(), 1..100_000u64)),
            prop::option::of(prop_oneof![
                text().prop_map(Ok),
                prop::collection::vec(text(), 0..4).prop_map(Err),
            ]),
            prop::option::of(0.0..1.0f64),
            prop::option::of(0.0..1.0f64),
            prop::option::of(any::<bool>()),
        )
            .prop_map(
                |(
                    system,
                    exchanges,
                    tools,
                    tool_choice,
                    parallel,
                    max_tokens,
                    stop,
                    temperature,
                    top_p,
                    stream,
                )| {
                    ChatRequest {
                        system,
                        exchanges,
                        tools: tools
                            .into_iter()
                            .map(|(name, description, properties)| {
                                (
                                    name,
                                    description,
                                    json!({ "type": "object", "properties": properties }),
                                )
                            })
                            .collect(),
                        tool_choice,
                        parallel,
                        max_tokens,
                        stop,
                        temperature,
                        top_p,
                        stream,
                    }
                },
            )
    }

    const CHOICES: [&str; 3] = ["auto", "none", "required"];

    impl ChatRequest {
        fn tool_choice_value(&self) -> Option<Value> {
            let choice = self.tool_choice?;
            Some(match CHOICES.get(choice) {
                Some(mode) => json!(mode),
                None => {
                    let name = self.tools.first().map_or("none_such", |t| t.0.as_str());
                    json!({ "type": "function", "function": { "name": name } })
                }
            })
        }

        fn to_json(&self) -> Value {
            let mut messages = Vec::new();
            for (i, system) in self.system.iter().enumerate() {
                let role = if i % 2 == 0 { "system" } else { "developer" };
                messages.push(json!({ "role": role, "content": system }));
            }
            let mut call_id = 0;
            for exchange in &self.exchanges {
                for (parts, as_string) in &exchange.user {
                    let content = if *as_string {
                        json!(parts.concat())
                    } else {
                        json!(parts
                            .iter()
                            .map(|t| json!({ "type": "text", "text": t }))
                            .collect::<Vec<_>>())
                    };
                    messages.push(json!({ "role": "user", "content": content }));
                }
                if exchange.assistant_text.is_none() && exchange.calls.is_empty() {
                    continue;
                }
                let mut assistant =
                    json!({ "role": "assistant", "content": exchange.assistant_text });
                let mut results = Vec::new();
                if !exchange.calls.is_empty() {
                    let calls: Vec<Value> = exchange
                        .calls
                        .iter()
                        .map(|(name, arguments, result)| {
                            call_id += 1;
                            let id = format!("call_{call_id}");
                            results.push(json!({ "role": "tool", "tool_call_id": id, "content": result }));
                            json!({ "id": id, "type": "function", "function": {
                                "name": format!("tool{name}"), "arguments": arguments.to_string() } })
                        })
                        .collect();
                    assistant["tool_calls"] = Value::Array(calls);
                }
                messages.push(assistant);
                messages.extend(results);
            }
            let mut body = json!({ "model": "alias", "messages": messages });
            if !self.tools.is_empty() {
                body["tools"] = self
                    .tools
                    .iter()
                    .map(|(name, description, parameters)| {
                        let mut function = json!({ "name": name, "parameters": parameters });
                        if let Some(description) = description {
                            function["description"] = json!(description);
                        }
                        json!({ "type": "function", "function": function })
                    })
                    .collect();
            }
            if let Some(choice) = self.tool_choice_value() {
                body["tool_choice"] = choice;
            }
            if let Some(parallel) = self.parallel {
                body["parallel_tool_calls"] = json!(parallel);
            }
            if let Some((completion, limit)) = self.max_tokens {
                let key = if completion {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                body[key] = json!(limit);
            }
            match &self.stop {
                Some(Ok(stop)) => body["stop"] = json!(stop),
                Some(Err(stops)) => body["stop"] = json!(stops),
                None => {}
            }
            if let Some(temperature) = self.temperature {
                body["temperature"] = json!(temperature);
            }
            if let Some(top_p) = self.top_p {
                body["top_p"] = json!(top_p);
            }
            if let Some(stream) = self.stream {
                body["stream"] = json!(stream);
            }
            body
        }
    }

    /// A chat conversation as a flat list of what was said, whatever its grouping into
    /// messages and parts; system texts apart, as Anthropic hoists them.
    #[derive(Debug, PartialEq)]
    enum Said {
        User(String),
        Assistant(String),
        Call(String, String, Value),
        Result(String, String),
    }

    fn texts(content: &Value) -> Vec<String> {
        match content {
            Value::String(text) => vec![text.clone()],
            Value::Array(parts) => parts
                .iter()
                .map(|p| p["text"].as_str().unwrap().to_owned())
                .collect(),
            Value::Null => Vec::new(),
            other => panic!("unexpected content {other}"),
        }
    }

    fn conversation(messages: &Value) -> (Vec<String>, Vec<Said>) {
        let mut system = Vec::new();
        let mut said = Vec::new();
        for message in messages.as_array().unwrap() {
            let content = &message["content"];
            match message["role"].as_str().unwrap() {
                "system" | "developer" => system.extend(texts(content)),
                "user" => said.extend(texts(content).into_iter().map(Said::User)),
                "assistant" => {
                    let text = texts(content).concat();
                    if !text.is_empty() {
                        said.push(Said::Assistant(text));
                    }
                    for call in message["tool_calls"].as_array().into_iter().flatten() {
                        let arguments =
                            serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
                                .unwrap();
                        said.push(Said::Call(
                            call["id"].as_str().unwrap().to_owned(),
                            call["function"]["name"].as_str().unwrap().to_owned(),
                            arguments,
                        ));
                    }
                }
                "tool" => said.push(Said::Result(
                    message["tool_call_id"].as_str().unwrap().to_owned(),
                    texts(content).concat(),
                )),
                role => panic!("unexpected role {role}"),
            }
        }
        (system, said)
    }

    /// Merges adjacent user texts: a string user message and the same text as parts say the same.
    fn user_texts_joined(said: Vec<Said>) -> Vec<Said> {
        let mut out: Vec<Said> = Vec::new();
        for item in said {
            match (out.last_mut(), item) {
                (Some(Said::User(last)), Said::User(text)) => last.push_str(&text),
                (_, item) => out.push(item),
            }
        }
        out
    }

    /// serde_json reads a number of up to 15 significant digits exactly, and a longer one to
    /// within a unit in the last place (it is built without `float_roundtrip`).
    fn same_number(back: Option<Value>, sent: Option<f64>) -> bool {
        match (back.and_then(|v| v.as_f64()), sent) {
            (Some(back), Some(sent)) => (back - sent).abs() <= sent.abs() * 2.0 * f64::EPSILON,
            (None, None) => true,
            _ => false,
        }
    }

    fn field(body: &Value, key: &str) -> Option<Value> {
        body.get(key).filter(|v| !v.is_null()).cloned()
    }

    /// Valid SSE (every data line JSON or `[DONE]`), fed whole and in the given splits.
    fn check_stream<T: StreamTranslator>(make: impl Fn() -> T, input: &[u8], cuts: &[usize]) {
        let (whole, usage) = run(make(), &[input]);
        events_of(&whole);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for point in points {
            chunks.push(&input[from..point]);
            from = point;
        }
        chunks.push(&input[from..]);
        let (split, split_usage) = run(make(), &chunks);
        assert_eq!(split, whole);
        assert_eq!(split_usage, usage);
    }

    /// Anthropic's own events, with random fields: a structured fuzz of the stream reader.
    fn anthropic_event() -> impl Strategy<Value = String> {
        let index = 0..4u64;
        let event = prop_oneof![
            (text(), 0..100u64).prop_map(|(id, n)| json!({ "type": "message_start",
                "message": { "id": id, "model": "m", "usage": { "input_tokens": n, "output_tokens": 1 } } })),
            (index.clone(), prop::sample::select(vec!["text", "tool_use", "thinking", "server_tool_use"]), text())
                .prop_map(|(index, kind, name)| json!({ "type": "content_block_start", "index": index,
                    "content_block": { "type": kind, "text": "", "id": "t", "name": name, "input": {} } })),
            (index.clone(), prop::sample::select(vec![
                ("text_delta", "text"), ("input_json_delta", "partial_json"),
                ("thinking_delta", "thinking"), ("signature_delta", "signature"),
            ]), text())
                .prop_map(|(index, (kind, key), value)| json!({ "type": "content_block_delta", "index": index,
                    "delta": { "type": kind, key: value } })),
            index.prop_map(|index| json!({ "type": "content_block_stop", "index": index })),
            (prop::sample::select(vec!["end_turn", "max_tokens", "tool_use", "refusal", "other"]), 0..100u64)
                .prop_map(|(reason, n)| json!({ "type": "message_delta",
                    "delta": { "stop_reason": reason }, "usage": { "output_tokens": n } })),
            Just(json!({ "type": "message_stop" })),
            Just(json!({ "type": "ping" })),
            text().prop_map(|message| json!({ "type": "error", "error": { "type": "api_error", "message": message } })),
        ];
        event.prop_map(|data| {
            let name = data["type"].as_str().unwrap_or_default().to_owned();
            format!("event: {name}\ndata: {data}\n\n")
        })
    }

    /// Chat chunks with random fields, `[DONE]` and errors.
    fn chat_event() -> impl Strategy<Value = String> {
        let tool_call = (0..3u64, prop::option::of(text()), prop::option::of(text()), prop::option::of(text()))
            .prop_map(|(index, id, name, arguments)| {
                json!({ "index": index, "id": id, "function": { "name": name, "arguments": arguments } })
            });
        let chunk = (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::collection::vec(tool_call, 0..3),
            prop::option::of(prop::sample::select(vec!["stop", "length", "tool_calls", "content_filter", "odd"])),
            prop::option::of((0..100u64, 0..100u64)),
        )
            .prop_map(|(content, refusal, calls, finish, usage)| {
                json!({ "id": "c", "model": "m",
                    "choices": [{ "index": 0, "delta": { "content": content, "refusal": refusal, "tool_calls": calls },
                        "finish_reason": finish }],
                    "usage": usage.map(|(p, c)| json!({ "prompt_tokens": p, "completion_tokens": c })) })
            });
        prop_oneof![
            6 => chunk.prop_map(|c| format!("data: {c}\n\n")),
            1 => Just("data: [DONE]\n\n".to_owned()),
            1 => text().prop_map(|m| format!("data: {}\n\n", json!({ "error": { "message": m } }))),
        ]
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let words = prop::sample::select(vec![
            "model",
            "messages",
            "role",
            "content",
            "type",
            "text",
            "user",
            "assistant",
            "tool",
            "system",
            "developer",
            "tool_calls",
            "function",
            "name",
            "arguments",
            "id",
            "tool_call_id",
            "tools",
            "tool_choice",
            "image_url",
            "url",
            "image",
            "source",
            "base64",
            "data",
            "media_type",
            "tool_use",
            "tool_result",
            "tool_use_id",
            "input",
            "is_error",
            "max_tokens",
            "stop",
            "stop_sequences",
            "stream",
            "choices",
            "message",
            "delta",
            "usage",
            "index",
            "auto",
            "any",
            "none",
            "required",
            "thinking",
            "parameters",
            "input_schema",
            "finish_reason",
            "metadata",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            "\\PC{0,6}".prop_map(Value::from),
            words.clone().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((words.clone(), inner), 0..6).prop_map(|pairs| {
                    Value::Object(
                        pairs
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }),
            ]
        })
    }

    /// Every function and translator on one input: none panics, all output is valid JSON.
    fn everything_on(input: &[u8], cuts: &[usize]) {
        for bytes in [
            chat_request_to_messages(input, "m"),
            messages_request_to_chat(input, "m"),
        ]
        .into_iter()
        .flatten()
        {
            serde_json::from_slice::<Value>(&bytes).unwrap();
        }
        for bytes in [
            messages_answer_to_chat(input, CREATED),
            chat_answer_to_messages(input, CREATED),
        ]
        .into_iter()
        .flatten()
        {
            serde_json::from_slice::<Value>(&bytes).unwrap();
        }
        check_stream(|| MessagesStreamToChat::new(CREATED), input, cuts);
        check_stream(|| ChatStreamToMessages::new(CREATED), input, cuts);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn a_chat_request_round_trips_through_messages(request in chat_request()) {
            let original = request.to_json();
            let messages = chat_to_messages(&original).unwrap();
            let back = messages_to_chat(&messages).unwrap();

            let (system, said) = conversation(&original["messages"]);
            let (back_system, back_said) = conversation(&back["messages"]);
            prop_assert_eq!(back_system, system);
            prop_assert_eq!(user_texts_joined(back_said), user_texts_joined(said));

            prop_assert_eq!(field(&back, "tools"), field(&original, "tools"));
            let has_tools = !request.tools.is_empty();
            let expected_choice = match (has_tools, request.tool_choice_value(), request.parallel) {
                (false, _, _) => None,
                (true, None, Some(false)) => Some(json!("auto")),
                (true, choice, _) => choice,
            };
            let parallel_off = has_tools
                && request.parallel == Some(false)
                && expected_choice != Some(json!("none"));
            prop_assert_eq!(field(&back, "tool_choice"), expected_choice);
            prop_assert_eq!(field(&back, "parallel_tool_calls"), parallel_off.then_some(Value::Bool(false)));

            let limit = request.max_tokens.map_or(DEFAULT_MAX_TOKENS, |(_, limit)| limit);
            prop_assert_eq!(field(&back, "max_tokens"), Some(json!(limit)));
            let stops = match &request.stop {
                Some(Ok(stop)) => vec![stop.clone()],
                Some(Err(stops)) => stops.clone(),
                None => Vec::new(),
            };
            prop_assert_eq!(field(&back, "stop"), (!stops.is_empty()).then(|| json!(stops)));
            prop_assert!(same_number(field(&back, "temperature"), request.temperature));
            prop_assert!(same_number(field(&back, "top_p"), request.top_p));
            prop_assert_eq!(field(&back, "stream"), (request.stream == Some(true)).then_some(Value::Bool(true)));
            prop_assert_eq!(back["model"].as_str(), Some("gpt-up"));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_output_is_json(
            input in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            everything_on(&input, &cuts);
        }

        #[test]
        fn arbitrary_json_never_panics_and_output_is_json(
            value in arbitrary_json(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            everything_on(value.to_string().as_bytes(), &cuts);
            let as_event = format!("data: {value}\n\nevent: x\ndata: {value}\n\n");
            everything_on(as_event.as_bytes(), &cuts);
        }

        #[test]
        fn arbitrary_anthropic_streams_translate_to_valid_chat_streams(
            events in prop::collection::vec(anthropic_event(), 0..24),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input = events.concat();
            check_stream(|| MessagesStreamToChat::new(CREATED), input.as_bytes(), &cuts);
            let (out, _) = run(MessagesStreamToChat::new(CREATED), &[input.as_bytes()]);
            let events = events_of(&out);
            // It ends once: with [DONE] after the usage chunk, or with an error, never both.
            let done = events.iter().filter(|(_, d)| d.is_none()).count();
            let errors = events.iter().filter(|(_, d)| d.as_ref().is_some_and(|d| d.get("error").is_some())).count();
            prop_assert_eq!(done + errors, 1);
            prop_assert!(events.last().unwrap().1.as_ref().is_none_or(|d| d.get("error").is_some()));
            if let Some(Some(first)) = events.first().map(|e| &e.1) {
                if first.get("error").is_none() {
                    prop_assert_eq!(&first["choices"][0]["delta"]["role"], "assistant");
                }
            }
        }

        #[test]
        fn arbitrary_chat_streams_translate_to_valid_anthropic_streams(
            events in prop::collection::vec(chat_event(), 0..24),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input = events.concat();
            check_stream(|| ChatStreamToMessages::new(CREATED), input.as_bytes(), &cuts);
            let (out, _) = run(ChatStreamToMessages::new(CREATED), &[input.as_bytes()]);
            let events = events_of(&out);
            // Anthropic's order: message_start first; blocks numbered from 0 in order, each
            // delta and stop for a started block; message_stop or error last, once.
            let mut started = 0u64;
            for (position, (name, data)) in events.iter().enumerate() {
                let data = data.as_ref().unwrap();
                prop_assert_eq!(data["type"].as_str(), Some(name.as_str()));
                match name.as_str() {
                    "message_start" => prop_assert_eq!(position, 0),
                    "content_block_start" => {
                        prop_assert_eq!(data["index"].as_u64(), Some(started));
                        started += 1;
                    }
                    "content_block_delta" | "content_block_stop" => {
                        prop_assert!(data["index"].as_u64().unwrap() < started);
                    }
                    "message_stop" | "error" => prop_assert_eq!(position, events.len() - 1),
                    _ => {}
                }
            }
            let last = &events.last().unwrap().0;
            prop_assert!(last == "message_stop" || last == "error");
        }
    }
}

#[test]
fn an_event_over_the_size_limit_fails_either_stream_instead_of_losing_content() {
    let huge = "x".repeat(cortex_wire::sse::MAX_EVENT);
    let mut to_chat = MessagesStreamToChat::new(1);
    let mut out = Vec::new();
    to_chat.feed(
        br#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":1,"output_tokens":0}}}

"#,
        &mut out,
    );
    let big = format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{huge}\"}}}}\n\n"
    );
    to_chat.feed(big.as_bytes(), &mut out);
    to_chat.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("size limit"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    let mut to_messages = ChatStreamToMessages::new(1);
    let mut out = Vec::new();
    let big = format!(
        "data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{huge}\"}}}}]}}\n\n"
    );
    to_messages.feed(big.as_bytes(), &mut out);
    // The rest of the stream ends properly; the lost event must still fail it.
    to_messages.feed(
        b"data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
}
