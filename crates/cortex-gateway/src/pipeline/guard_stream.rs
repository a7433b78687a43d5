//! Streamed answers under a guardrail policy that scans responses (SPEC §21): the events the
//! client would get, in its door's dialect, are read one by one and written again with their
//! text guarded.
//!
//! A model streams its text a few characters per event, so a secret is usually split across
//! many events. Each text stream of the answer — a chat choice, a Responses content part, a
//! Messages content block — goes through its own [`StreamGuard`], which holds back the tail
//! that could still be the start of a match and releases the rest, redacted. An event carries
//! what its stream released (possibly nothing: `""`); what is still held when a stream
//! finishes goes out in one more text event, a copy of the stream's first, just before the
//! event that finishes it. Every other event — and every event once its text is set — is
//! scanned whole as JSON, which also covers the Responses API's `…done` and `response.completed`
//! events that repeat the whole text (the guard gives the same redactions either way).
//!
//! Hits are counted once per match: the whole-event scan leaves out the text its stream's guard
//! already read, and the events that only repeat text (the Responses API's `…done` and
//! `response.completed`) count what the most telling of them found, not once per repetition.
//!
//! A `block` rule ends the stream: the client gets one error event in its door's shape with
//! `guardrail_blocked`, and nothing more is read from the provider.
//!
//! Responses events are numbered: the filter renumbers `sequence_number` as it writes, so
//! the extra text events keep the sequence whole.

use std::sync::Arc;

use cortex_guard::{Guard, Hit, StreamGuard};
use cortex_wire::sse::{SseEvent, SseReader};
use cortex_wire::Endpoint;
use serde_json::{json, Value};

/// Where one text stream sits in the answer: (choice / output item / content block, content
/// part).
type Place = (u64, u64);

struct TextStream {
    place: Place,
    guard: StreamGuard,
    /// The stream's first text event, whose copy carries what is released at the end.
    template: Value,
}

pub struct StreamFilter {
    door: Endpoint,
    guard: Arc<Guard>,
    reader: SseReader,
    streams: Vec<TextStream>,
    hits: Vec<Hit>,
    /// What each event that repeats earlier text found (kept apart: see [`Self::take_hits`]).
    repeated: Vec<Hit>,
    blocked: Option<&'static str>,
    /// The next `sequence_number` (Responses events).
    sequence: u64,
}

impl StreamFilter {
    pub fn new(door: Endpoint, guard: Arc<Guard>) -> Self {
        Self {
            door,
            guard,
            reader: SseReader::new(),
            streams: Vec::new(),
            hits: Vec::new(),
            repeated: Vec::new(),
            blocked: None,
            sequence: 0,
        }
    }

    /// Reads one chunk of the client-bound stream; writes to `out` what the client may have.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.blocked.is_some() {
            return;
        }
        let mut reader = std::mem::take(&mut self.reader);
        reader.feed(chunk, |event| self.event(event, out));
        self.reader = reader;
    }

    /// The stream ended: an unfinished last event, and everything still held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.blocked.is_some() {
            return;
        }
        let mut reader = std::mem::take(&mut self.reader);
        reader.finish(|event| self.event(event, out));
        self.reader = reader;
        self.flush_all(out);
    }

    /// The detector whose `block` rule ended the stream.
    pub fn blocked(&self) -> Option<&'static str> {
        self.blocked
    }

    /// What was found so far, for the audit events (no text): one hit per (detector, action,
    /// label), its count the matches in the text streams and the other events — or, when an
    /// event repeating the text found more, that event's.
    pub fn take_hits(&mut self) -> Vec<Hit> {
        for stream in &mut self.streams {
            self.hits.extend(stream.guard.take_hits());
        }
        let mut total = merge(std::mem::take(&mut self.hits), Vec::new(), |a, b| a + b);
        for hit in std::mem::take(&mut self.repeated) {
            total = merge(total, vec![hit], u32::max);
        }
        total
    }

    fn event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>) {
        if self.blocked.is_some() {
            return;
        }
        if event.data == b"[DONE]" {
            self.flush_all(out);
            if self.blocked.is_none() {
                write_event(out, event.event, event.data);
            }
            return;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(event.data) else {
            // Not JSON: scanned as text.
            let text = String::from_utf8_lossy(event.data);
            let verdict = self.guard.apply(&text);
            self.hits.extend(verdict.hits);
            if let Some(detector) = verdict.blocked {
                return self.block(detector, out);
            }
            let text = verdict.redacted.as_deref().unwrap_or(&text);
            return write_event(out, event.event, text.as_bytes());
        };
        let outcome = match self.door {
            Endpoint::Chat => self.choices(&mut value, out, "/delta/content"),
            Endpoint::Completions => self.choices(&mut value, out, "/text"),
            Endpoint::Responses => self.responses(&mut value, out),
            Endpoint::Messages => self.messages(&mut value, out),
            Endpoint::Embeddings => Ok(()),
        };
        if let Err(detector) = outcome {
            return self.block(detector, out);
        }
        self.write_scanned(event.event, value, out);
    }

    /// Chat and completions chunks: each choice's text (at `text`, a JSON pointer into the
    /// choice); a choice with a `finish_reason` ends its stream.
    fn choices(
        &mut self,
        value: &mut Value,
        out: &mut Vec<u8>,
        text: &str,
    ) -> Result<(), &'static str> {
        let count = value
            .get("choices")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for i in 0..count {
            let Some(choice) = value.get("choices").and_then(|c| c.get(i)) else {
                continue;
            };
            let place = (choice.get("index").and_then(Value::as_u64).unwrap_or(0), 0);
            let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(piece) = choice.pointer(text).and_then(Value::as_str) else {
                if finishing {
                    self.flush(place, out)?;
                }
                continue;
            };
            let piece = piece.to_owned();
            // A new stream's template: this event with this choice alone, not finishing.
            let template = || {
                let mut template = value.clone();
                if let Some(choices) = template.get_mut("choices").and_then(Value::as_array_mut) {
                    let mut only = choices.swap_remove(i);
                    if let Some(reason) = only.get_mut("finish_reason") {
                        *reason = Value::Null;
                    }
                    *choices = vec![only];
                }
                template
            };
            let mut released = self.push(place, &piece, template)?;
            if finishing {
                released.push_str(&self.finish_stream(place)?);
            }
            if let Some(slot) = value
                .get_mut("choices")
                .and_then(|c| c.get_mut(i))
                .and_then(|choice| choice.pointer_mut(text))
            {
                *slot = Value::String(released);
            }
        }
        Ok(())
    }

    /// Responses events: `response.output_text.delta` carries text; `…output_text.done`
    /// finishes its part.
    fn responses(&mut self, value: &mut Value, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        let place = (
            value
                .get("output_index")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            value
                .get("content_index")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
        match kind {
            "response.output_text.delta" => {
                let Some(piece) = value.get("delta").and_then(Value::as_str) else {
                    return Ok(());
                };
                let piece = piece.to_owned();
                let released = self.push(place, &piece, || value.clone())?;
                value["delta"] = Value::String(released);
            }
            "response.output_text.done" => {
                self.flush(place, out)?;
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.flush_all_checked(out)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Messages events: `content_block_delta` with a `text_delta` carries text;
    /// `content_block_stop` finishes its block.
    fn messages(&mut self, value: &mut Value, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        let place = (value.get("index").and_then(Value::as_u64).unwrap_or(0), 0);
        match kind {
            "content_block_delta" => {
                let is_text = value
                    .get("delta")
                    .and_then(|d| d.get("type"))
                    .and_then(Value::as_str)
                    == Some("text_delta");
                let piece = value
                    .get("delta")
                    .and_then(|d| d.get("text"))
                    .and_then(Value::as_str);
                let (true, Some(piece)) = (is_text, piece) else {
                    return Ok(());
                };
                let piece = piece.to_owned();
                let released = self.push(place, &piece, || value.clone())?;
                value["delta"]["text"] = Value::String(released);
            }
            "content_block_stop" => {
                self.flush(place, out)?;
            }
            "message_delta" | "message_stop" => self.flush_all_checked(out)?,
            _ => {}
        }
        Ok(())
    }

    /// Feeds `piece` to the stream at `place` (made with `template` if new); what it releases.
    fn push(
        &mut self,
        place: Place,
        piece: &str,
        template: impl FnOnce() -> Value,
    ) -> Result<String, &'static str> {
        let index = match self.streams.iter().position(|s| s.place == place) {
            Some(index) => index,
            None => {
                self.streams.push(TextStream {
                    place,
                    guard: self.guard.stream(),
                    template: template(),
                });
                self.streams.len() - 1
            }
        };
        let mut released = String::new();
        match self.streams[index].guard.push(piece, &mut released) {
            Some(detector) => Err(detector),
            None => Ok(released),
        }
    }

    /// Ends the stream at `place`; what it still held, redacted.
    fn finish_stream(&mut self, place: Place) -> Result<String, &'static str> {
        let Some(index) = self.streams.iter().position(|s| s.place == place) else {
            return Ok(String::new());
        };
        let mut stream = self.streams.swap_remove(index);
        let mut released = String::new();
        let blocked = stream.guard.finish(&mut released);
        self.hits.extend(stream.guard.take_hits());
        match blocked {
            Some(detector) => Err(detector),
            None => Ok(released),
        }
    }

    /// Ends the stream at `place` and writes what it still held in a copy of its first event,
    /// before the event that finishes it.
    fn flush(&mut self, place: Place, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let Some(index) = self.streams.iter().position(|s| s.place == place) else {
            return Ok(());
        };
        let mut template = self.streams[index].template.clone();
        let held = self.finish_stream(place)?;
        if held.is_empty() {
            return Ok(());
        }
        set_text(self.door, &mut template, held);
        let name = match self.door {
            Endpoint::Responses => "response.output_text.delta",
            Endpoint::Messages => "content_block_delta",
            _ => "",
        };
        self.write_scanned(name, template, out);
        Ok(())
    }

    fn flush_all_checked(&mut self, out: &mut Vec<u8>) -> Result<(), &'static str> {
        while let Some(place) = self.streams.first().map(|s| s.place) {
            self.flush(place, out)?;
        }
        Ok(())
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) {
        if let Err(detector) = self.flush_all_checked(out) {
            self.block(detector, out);
        }
    }

    /// Writes an event after scanning it whole (renumbered first, on the Responses door).
    fn write_scanned(&mut self, name: &str, mut value: Value, out: &mut Vec<u8>) {
        if self.door == Endpoint::Responses {
            if let Some(number) = value.get_mut("sequence_number") {
                *number = Value::from(self.sequence);
                self.sequence += 1;
            }
        }
        // The text the stream guards released was scanned by them: the rest of the event is
        // scanned without it, so a match is neither counted twice nor (under `log`) found again.
        let texts = take_texts(self.door, &mut value);
        let Ok(data) = serde_json::to_vec(&value) else {
            return;
        };
        let verdict = self.guard.apply_json(&data);
        // The rule that redacted, should its output not read back (it always does).
        let redactor = verdict
            .hits
            .iter()
            .find(|hit| hit.action == cortex_domain::policy::GuardAction::Redact)
            .map_or("secrets", |hit| hit.detector);
        if repeats_text(self.door, &value) {
            self.repeated.extend(verdict.hits);
        } else {
            self.hits.extend(verdict.hits);
        }
        if let Some(detector) = verdict.blocked {
            return self.block(detector, out);
        }
        if texts.is_empty() {
            return write_event(out, name, verdict.redacted.as_deref().unwrap_or(&data));
        }
        if let Some(redacted) = verdict.redacted {
            match serde_json::from_slice::<Value>(&redacted) {
                Ok(redacted) => value = redacted,
                Err(_) => return self.block(redactor, out),
            }
        }
        for (pointer, text) in texts {
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = text;
            }
        }
        if let Ok(data) = serde_json::to_vec(&value) {
            write_event(out, name, &data);
        }
    }

    /// A `block` rule hit: one error event in the door's shape ends the stream.
    fn block(&mut self, detector: &'static str, out: &mut Vec<u8>) {
        if self.blocked.is_some() {
            return;
        }
        self.blocked = Some(detector);
        let message = format!("blocked by the {detector} guardrail");
        let (name, error) = match self.door {
            Endpoint::Messages => (
                "error",
                json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
            ),
            Endpoint::Responses => {
                let sequence = self.sequence;
                self.sequence += 1;
                (
                    "error",
                    json!({"type": "error", "code": "guardrail_blocked", "message": message, "param": null, "sequence_number": sequence}),
                )
            }
            _ => (
                "",
                json!({"error": {"message": message, "type": "invalid_request_error", "code": "guardrail_blocked", "param": null}}),
            ),
        };
        if let Ok(data) = serde_json::to_vec(&error) {
            write_event(out, name, &data);
        }
    }
}

/// Takes out of `value` the strings a stream guard already read (leaving `""`): each chat or
/// completions choice's text, a Responses text delta, a Messages text delta. Their JSON
/// pointers and values, to put back.
fn take_texts(door: Endpoint, value: &mut Value) -> Vec<(String, Value)> {
    let mut pointers = Vec::new();
    match door {
        Endpoint::Chat | Endpoint::Completions => {
            let field = if door == Endpoint::Chat {
                "delta/content"
            } else {
                "text"
            };
            let count = value
                .get("choices")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            pointers.extend((0..count).map(|i| format!("/choices/{i}/{field}")));
        }
        Endpoint::Responses => {
            if value.get("type").and_then(Value::as_str) == Some("response.output_text.delta") {
                pointers.push("/delta".to_owned());
            }
        }
        Endpoint::Messages => {
            let is_text = value.get("type").and_then(Value::as_str) == Some("content_block_delta")
                && value.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta");
            if is_text {
                pointers.push("/delta/text".to_owned());
            }
        }
        Endpoint::Embeddings => {}
    }
    pointers
        .into_iter()
        .filter_map(|pointer| {
            let slot = value.pointer_mut(&pointer).filter(|v| v.is_string())?;
            let text = std::mem::replace(slot, Value::String(String::new()));
            Some((pointer, text))
        })
        .collect()
}

/// Whether `value` is a Responses event that repeats text earlier events carried (a part's or
/// an item's `…done`, the final `response.*`).
fn repeats_text(door: Endpoint, value: &Value) -> bool {
    if door != Endpoint::Responses {
        return false;
    }
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    kind.ends_with(".done")
        || matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed"
        )
}

/// `a` and `b` as one hit per (detector, action, label), counts of the same one combined by
/// `combine`.
fn merge(a: Vec<Hit>, b: Vec<Hit>, combine: impl Fn(u32, u32) -> u32) -> Vec<Hit> {
    let mut merged: Vec<Hit> = Vec::with_capacity(a.len() + b.len());
    for hit in a.into_iter().chain(b) {
        match merged
            .iter_mut()
            .find(|m| m.detector == hit.detector && m.action == hit.action && m.label == hit.label)
        {
            Some(m) => m.count = combine(m.count, hit.count),
            None => merged.push(hit),
        }
    }
    merged
}

/// Puts `text` where the door's text events carry it (a stream's template).
fn set_text(door: Endpoint, template: &mut Value, text: String) {
    match door {
        Endpoint::Chat => {
            if let Some(slot) = template
                .get_mut("choices")
                .and_then(|c| c.get_mut(0))
                .and_then(|c| c.get_mut("delta"))
            {
                slot["content"] = Value::String(text);
            }
        }
        Endpoint::Completions => {
            if let Some(slot) = template.get_mut("choices").and_then(|c| c.get_mut(0)) {
                slot["text"] = Value::String(text);
            }
        }
        Endpoint::Responses => template["delta"] = Value::String(text),
        Endpoint::Messages => template["delta"]["text"] = Value::String(text),
        Endpoint::Embeddings => {}
    }
}

fn write_event(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    if !name.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    // A data value with line breaks takes one `data:` line per line.
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use cortex_domain::policy::{DetectorSpec, GuardAction, GuardrailRule, GuardrailSpec};

    use super::*;

    fn guard(action: GuardAction) -> Arc<Guard> {
        let spec = GuardrailSpec {
            rules: vec![
                GuardrailRule {
                    detector: DetectorSpec::Secrets,
                    action,
                },
                GuardrailRule {
                    detector: DetectorSpec::Pii { kinds: vec![] },
                    action: GuardAction::Redact,
                },
            ],
            scan_responses: true,
        };
        Arc::new(Guard::build(&spec).unwrap())
    }

    /// A fake AWS key id, put together so no scanner takes this file for a leak.
    fn aws_key() -> String {
        ["AKIA", "Z7QX", "K2LM", "N4PR", "T6VW"].concat()
    }

    fn chat_event(text: &str, finish: Option<&str>) -> String {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]});
        format!("data: {chunk}\n\n")
    }

    /// Runs `chunks` through a filter; the client's bytes, the events' texts in order.
    fn run(door: Endpoint, guard: Arc<Guard>, chunks: &[String]) -> (String, StreamFilter) {
        let mut filter = StreamFilter::new(door, guard);
        let mut out = Vec::new();
        for chunk in chunks {
            filter.feed(chunk.as_bytes(), &mut out);
        }
        filter.finish(&mut out);
        (String::from_utf8(out).unwrap(), filter)
    }

    fn datas(stream: &str) -> Vec<Value> {
        stream
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap())
            .collect()
    }

    fn chat_text(stream: &str) -> String {
        datas(stream)
            .iter()
            .filter_map(|event| {
                event["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_key_split_across_two_chat_events_is_redacted_and_the_rest_arrives_whole() {
        let key = aws_key();
        let (head, tail) = key.split_at(9);
        let chunks = [
            chat_event("my key is ", None),
            chat_event(head, None),
            chat_event(tail, None),
            chat_event(" and mail me at bob@example.org please", None),
            chat_event("", Some("stop")),
            "data: [DONE]\n\n".to_owned(),
        ];
        let (stream, mut filter) = run(Endpoint::Chat, guard(GuardAction::Redact), &chunks);
        assert!(!stream.contains(head) || !stream.contains(tail), "{stream}");
        assert!(!stream.contains(&key));
        assert!(!stream.contains("bob@example.org"));
        assert_eq!(
            chat_text(&stream),
            "my key is [REDACTED:aws_access_key] and mail me at [REDACTED:email] please"
        );
        assert!(stream.ends_with("data: [DONE]\n\n"), "{stream}");
        // The event with finish_reason comes after every piece of text.
        let events = datas(&stream);
        let last = events.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let hits = filter.take_hits();
        assert!(
            hits.iter()
                .any(|h| h.label == "aws_access_key" && h.count == 1),
            "{hits:?}"
        );
        assert!(hits.iter().any(|h| h.label == "email"), "{hits:?}");
        assert_eq!(filter.blocked(), None);
    }

    #[test]
    fn the_same_answer_at_every_byte_split_of_the_stream() {
        let key = aws_key();
        let whole: String = [
            chat_event("key ", None),
            chat_event(&key[..6], None),
            chat_event(&key[6..], None),
            chat_event(" end", Some("stop")),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let (expected, _) = run(
            Endpoint::Chat,
            guard(GuardAction::Redact),
            std::slice::from_ref(&whole),
        );
        assert_eq!(chat_text(&expected), "key [REDACTED:aws_access_key] end");
        for split in 1..whole.len() {
            let (a, b) = whole.split_at(split);
            let (got, _) = run(
                Endpoint::Chat,
                guard(GuardAction::Redact),
                &[a.to_owned(), b.to_owned()],
            );
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn a_block_rule_ends_the_stream_with_one_error_event_and_never_the_key() {
        let key = aws_key();
        let chunks = [
            chat_event("here: ", None),
            chat_event(&key[..10], None),
            chat_event(&key[10..], None),
            chat_event(" more text after", None),
            chat_event("", Some("stop")),
            "data: [DONE]\n\n".to_owned(),
        ];
        let (stream, filter) = run(Endpoint::Chat, guard(GuardAction::Block), &chunks);
        assert_eq!(filter.blocked(), Some("secrets"));
        assert!(!stream.contains(&key[..10]), "{stream}");
        assert!(!stream.contains("more text after"));
        assert!(!stream.contains("[DONE]"));
        let events = datas(&stream);
        assert_eq!(events.last().unwrap()["error"]["code"], "guardrail_blocked");
        assert_eq!(
            events.last().unwrap()["error"]["message"],
            "blocked by the secrets guardrail"
        );
    }

    #[test]
    fn messages_blocks_keep_their_text_to_themselves_and_flush_before_they_stop() {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let delta = |index: u64, text: &str| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            )
        };
        let chunks = [
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "m"}}),
            ),
            delta(0, "write to ali"),
            delta(0, "ce@example."),
            delta(0, "com"),
            event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ];
        let (stream, _) = run(Endpoint::Messages, guard(GuardAction::Redact), &chunks);
        let events = datas(&stream);
        let text: String = events
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "write to [REDACTED:email]");
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        let stop = kinds
            .iter()
            .position(|k| *k == "content_block_stop")
            .unwrap();
        assert!(kinds[..stop].iter().all(|k| *k != "message_stop"));
        assert!(
            kinds[stop + 1..]
                .iter()
                .all(|k| *k != "content_block_delta"),
            "{kinds:?}"
        );
        assert!(stream.contains("event: content_block_delta\ndata: "));
    }

    #[test]
    fn responses_events_are_renumbered_and_their_done_texts_redacted_too() {
        let event = |data: Value| {
            format!(
                "event: {}\ndata: {data}\n\n",
                data["type"].as_str().unwrap()
            )
        };
        let delta = |seq: u64, text: &str| {
            event(
                json!({"type": "response.output_text.delta", "item_id": "i", "output_index": 0, "content_index": 0, "delta": text, "sequence_number": seq}),
            )
        };
        let chunks = [
            event(json!({"type": "response.created", "sequence_number": 0})),
            delta(1, "mail bob@exa"),
            delta(2, "mple.org now"),
            event(
                json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "mail bob@example.org now", "sequence_number": 3}),
            ),
            event(
                json!({"type": "response.completed", "response": {"output": [{"content": [{"text": "mail bob@example.org now"}]}]}, "sequence_number": 4}),
            ),
        ];
        let (stream, _) = run(Endpoint::Responses, guard(GuardAction::Redact), &chunks);
        assert!(!stream.contains("bob@example.org"), "{stream}");
        let events = datas(&stream);
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .filter_map(|e| e["delta"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "mail [REDACTED:email] now");
        let done = events
            .iter()
            .find(|e| e["type"] == "response.output_text.done")
            .unwrap();
        assert_eq!(done["text"], "mail [REDACTED:email] now");
    }

    #[test]
    fn a_logged_key_in_a_stream_is_one_hit_however_many_events_repeat_it() {
        let key = aws_key();
        let (head, tail) = key.split_at(9);
        let chunks = [
            chat_event("my key is ", None),
            chat_event(head, None),
            chat_event(tail, None),
            chat_event(" and another ", None),
            chat_event(&key, Some("stop")),
            "data: [DONE]\n\n".to_owned(),
        ];
        let (stream, mut filter) = run(Endpoint::Chat, guard(GuardAction::Log), &chunks);
        assert_eq!(
            chat_text(&stream),
            format!("my key is {key} and another {key}")
        );
        let hits = filter.take_hits();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(
            (hits[0].label.as_str(), hits[0].count),
            ("aws_access_key", 2)
        );

        // Responses: the deltas, then `…done` events and `response.completed` repeating it.
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let full = format!("key {key} end");
        let chunks = [
            event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "key ", "sequence_number": 0}),
            ),
            event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": head, "sequence_number": 1}),
            ),
            event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": format!("{tail} end"), "sequence_number": 2}),
            ),
            event(
                "response.output_text.done",
                json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": full, "sequence_number": 3}),
            ),
            event(
                "response.content_part.done",
                json!({"type": "response.content_part.done", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": full}, "sequence_number": 4}),
            ),
            event(
                "response.completed",
                json!({"type": "response.completed", "response": {"output": [{"content": [{"type": "output_text", "text": full}]}]}, "sequence_number": 5}),
            ),
        ];
        let (_, mut filter) = run(Endpoint::Responses, guard(GuardAction::Log), &chunks);
        let hits = filter.take_hits();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(
            (hits[0].label.as_str(), hits[0].count),
            ("aws_access_key", 1)
        );
    }
}
