//! The chat ↔ Anthropic Messages translators: any bytes into both request translators, both
//! answer translators and both stream translators (fed whole and in the splits the first two
//! bytes choose) never panic; every body written is JSON, every SSE event written has one
//! `data:` line holding JSON (or `[DONE]`), and splitting the input does not change the output.
#![no_main]
use cortex_wire::translate::anthropic::{
    chat_answer_to_messages, chat_request_to_messages, messages_answer_to_chat,
    messages_request_to_chat, ChatStreamToMessages, MessagesStreamToChat,
};
use cortex_wire::translate::StreamTranslator;
use libfuzzer_sys::fuzz_target;

fn assert_json(bytes: &[u8]) {
    serde_json::from_slice::<serde_json::Value>(bytes).expect("every translated body is JSON");
}

/// Our writer's shape exactly: `event: name` (optional), one `data: …` line, a blank line.
fn assert_events(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("translated events are UTF-8");
    assert!(text.is_empty() || text.ends_with("\n\n"));
    for event in text.split_terminator("\n\n") {
        let data = match event.split_once('\n') {
            Some((name, data)) => {
                assert!(name.starts_with("event: "), "{event:?}");
                data
            }
            None => event,
        };
        let data = data.strip_prefix("data: ").expect("each event has one data line");
        assert!(!data.contains('\n'));
        if data != "[DONE]" {
            assert_json(data.as_bytes());
        }
    }
}

fn run(mut translator: impl StreamTranslator, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in chunks {
        translator.feed(chunk, &mut out);
    }
    translator.finish(&mut out);
    out
}

fn check_stream<T: StreamTranslator>(make: impl Fn() -> T, data: &[u8], cuts: [usize; 2]) {
    let whole = run(make(), &[data]);
    assert_events(&whole);
    let first = cuts[0].min(data.len());
    let second = cuts[1].clamp(first, data.len());
    let split = run(
        make(),
        &[&data[..first], &data[first..second], &data[second..]],
    );
    assert_eq!(whole, split, "splitting the input changed the output");
}

fuzz_target!(|data: &[u8]| {
    for body in [
        chat_request_to_messages(data, "upstream-name"),
        messages_request_to_chat(data, "upstream-name"),
    ]
    .into_iter()
    .flatten()
    {
        assert_json(&body);
    }
    for body in [
        messages_answer_to_chat(data, 1_700_000_000),
        chat_answer_to_messages(data, 1_700_000_000),
    ]
    .into_iter()
    .flatten()
    {
        assert_json(&body);
    }
    let cuts = match data {
        [a, b, ..] => [usize::from(*a), usize::from(*a) + usize::from(*b)],
        _ => [0, 0],
    };
    check_stream(|| MessagesStreamToChat::new(1_700_000_000), data, cuts);
    check_stream(|| ChatStreamToMessages::new(1_700_000_000), data, cuts);
});
