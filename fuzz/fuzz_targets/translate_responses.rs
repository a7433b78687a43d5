//! The Responses-door translators (`translate::responses`): any bytes, as a request, a chat
//! answer or a chat stream fed in arbitrary pieces, never panic; everything they write is
//! JSON (the chat request, the `response` object, every event's data line), every stream ends
//! with exactly one final event, and where the stream is cut changes nothing.
#![no_main]
use cortex_wire::translate::responses::{
    chat_answer_to_responses, responses_request_to_chat, ChatStreamToResponses,
};
use cortex_wire::translate::StreamTranslator;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(chat) = responses_request_to_chat(data, "upstream-name") {
        let chat: Value = serde_json::from_slice(&chat).expect("the chat request is JSON");
        assert_eq!(chat["model"], "upstream-name");
        assert!(chat["messages"].as_array().is_some_and(|m| !m.is_empty()));
    }
    if let Ok(response) = chat_answer_to_responses(data, 1_700_000_000) {
        let response: Value = serde_json::from_slice(&response).expect("the response is JSON");
        assert_eq!(response["object"], "response");
    }

    // The first two bytes choose where to cut the stream.
    let first = data.first().map_or(0, |b| usize::from(*b));
    let second = data.get(1).map_or(0, |b| usize::from(*b) * 7);
    let whole = translate_stream(data, &[]);
    check_events(&whole);
    let split = translate_stream(data, &[first, second]);
    check_events(&split);
    // An event larger than the reader holds is dropped where it overflows, which depends on
    // the pieces; below that size the output cannot.
    if data.len() < 60_000 {
        assert_eq!(whole, split);
    }
});

fn translate_stream(data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut translator = ChatStreamToResponses::new(1_700_000_000);
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        translator.feed(&data[start..cut], &mut out);
        start = cut;
    }
    translator.feed(&data[start..], &mut out);
    translator.finish(&mut out);
    out
}

/// Every event is `event: <type>`, one `data:` line of JSON whose `type` is that name, and a
/// blank line; sequence numbers count from 0; the last event, and only it, is final.
fn check_events(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("the stream is UTF-8");
    assert!(text.ends_with("\n\n"));
    let blocks: Vec<&str> = text.split_terminator("\n\n").collect();
    for (sequence, block) in blocks.iter().enumerate() {
        let (name, data) = block
            .split_once('\n')
            .expect("an event line and a data line");
        let name = name.strip_prefix("event: ").expect("an event line");
        let data = data.strip_prefix("data: ").expect("a data line");
        assert!(!data.contains('\n'));
        let data: Value = serde_json::from_str(data).expect("event data is JSON");
        assert_eq!(data["type"], name);
        assert_eq!(data["sequence_number"], sequence as u64);
        let last = sequence + 1 == blocks.len();
        let is_final = matches!(
            name,
            "response.completed" | "response.incomplete" | "response.failed"
        );
        assert_eq!(is_final, last);
    }
}
