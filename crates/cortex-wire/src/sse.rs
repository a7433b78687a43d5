//! Server-sent events as they pass by: the usage scanner that meters a stream forwarded
//! unchanged, and the event reader the stream translators build on.
//!
//! The scanner sees each chunk once and never holds the stream: it keeps only the bytes of the
//! current unfinished line, and only parses lines that mention `"usage"`. Chunks are forwarded
//! to the client unchanged by the caller. Newlines and the `"usage"` marker are found with
//! `memchr`'s vectorised search: this runs on every chunk of every stream.
//!
//! Usage is read in every dialect's own fields: OpenAI's `prompt_tokens`/`completion_tokens`,
//! and the `input_tokens`/`output_tokens` of Anthropic (`message_start`'s `message.usage`,
//! `message_delta`'s `usage`) and of the Responses API (`response.completed`'s
//! `response.usage`). A later report of a field replaces an earlier one, as Anthropic's
//! cumulative `output_tokens` need.

use std::sync::OnceLock;

use memchr::memmem::Finder;
use serde::Deserialize;

/// Token counts reported by upstream, in OpenAI's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A `usage` object in any dialect; a field left out (or `null`) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct RawUsage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Anthropic counts cached prompt tokens apart from `input_tokens`; they are prompt
    /// tokens all the same.
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

impl RawUsage {
    /// `later`'s fields over this one's.
    pub fn merge(&mut self, later: RawUsage) {
        fn over(field: &mut Option<u64>, later: Option<u64>) {
            if later.is_some() {
                *field = later;
            }
        }
        over(&mut self.prompt_tokens, later.prompt_tokens);
        over(&mut self.completion_tokens, later.completion_tokens);
        over(&mut self.input_tokens, later.input_tokens);
        over(&mut self.output_tokens, later.output_tokens);
        over(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        over(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
    }

    /// In OpenAI's terms: the prompt is `prompt_tokens`, else `input_tokens` plus Anthropic's
    /// cached input; the completion is `completion_tokens`, else `output_tokens`.
    pub fn tokens(&self) -> TokenUsage {
        let input = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        TokenUsage {
            prompt_tokens: self.prompt_tokens.unwrap_or(input),
            completion_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct UsageEnvelope {
    #[serde(default)]
    usage: Option<RawUsage>,
    /// Anthropic's `message_start`.
    #[serde(default)]
    message: Option<Nested>,
    /// The Responses API's `response.*` events.
    #[serde(default)]
    response: Option<Nested>,
}

/// Every usage report in one JSON object (a whole answer or one event's data), merged.
fn raw_usage_from_json(body: &[u8]) -> Option<RawUsage> {
    let envelope = serde_json::from_slice::<UsageEnvelope>(body).ok()?;
    let reports = [
        envelope.message.and_then(|m| m.usage),
        envelope.response.and_then(|r| r.usage),
        envelope.usage,
    ];
    let mut merged: Option<RawUsage> = None;
    for report in reports.into_iter().flatten() {
        merged.get_or_insert_with(RawUsage::default).merge(report);
    }
    merged
}

/// Pulls the usage out of a whole (non-streamed) JSON answer, in any dialect.
pub fn usage_from_json(body: &[u8]) -> Option<TokenUsage> {
    raw_usage_from_json(body).map(|raw| raw.tokens())
}

/// Longest line kept while waiting for its end. A longer line cannot be a usage line we need
/// and is skipped, so a hostile upstream cannot make the scanner grow without bound.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct SseUsageScanner {
    partial: Vec<u8>,
    skipping_long_line: bool,
    usage: Option<RawUsage>,
    saw_done: bool,
}

impl SseUsageScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk as it arrives.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(newline) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.skipping_long_line {
                self.skipping_long_line = false;
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.scan_line(head);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.scan_line(&line);
                line.clear();
                self.partial = line;
            }
        }
        if !rest.is_empty() && !self.skipping_long_line {
            if self.partial.len() + rest.len() > MAX_LINE {
                self.partial.clear();
                self.skipping_long_line = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
    }

    fn scan_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.saw_done = true;
            return;
        }
        // Cheap pre-check: most chunks are content deltas without usage.
        if !mentions_usage(data) {
            return;
        }
        if let Some(usage) = raw_usage_from_json(data) {
            self.usage
                .get_or_insert_with(RawUsage::default)
                .merge(usage);
        }
    }

    /// The usage upstream reported, every report merged; `None` if it sent none.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|raw| raw.tokens())
    }

    /// True once `data: [DONE]` went by: the stream ended normally.
    pub fn saw_done(&self) -> bool {
        self.saw_done
    }
}

fn mentions_usage(data: &[u8]) -> bool {
    static USAGE: OnceLock<Finder<'static>> = OnceLock::new();
    USAGE
        .get_or_init(|| Finder::new(b"\"usage\""))
        .find(data)
        .is_some()
}

/// Longest event a [`SseReader`] assembles. A longer one is dropped whole (and counted in
/// [`SseReader::dropped`]): a hostile upstream cannot make a translator grow without bound.
pub const MAX_EVENT: usize = 1024 * 1024;

/// One server-sent event: its `event:` name (empty when it had none) and its `data:` lines
/// joined with `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: &'a str,
    pub data: &'a [u8],
}

/// Splits an SSE byte stream into events, whatever the chunk boundaries: lines end in `\n`,
/// `\r\n` or `\r` split apart; `:` comments, `id:` and `retry:` are ignored; an event ends at
/// a blank line (or at [`SseReader::finish`]).
#[derive(Debug, Default)]
pub struct SseReader {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    has_data: bool,
    /// The current event passed [`MAX_EVENT`]; the rest of it is skipped.
    oversized: bool,
    /// The last byte fed was a `\r`, so a `\n` first in the next chunk ends nothing more.
    after_cr: bool,
    dropped: usize,
}

impl SseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; `on_event` is called for every event it completes, in order.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            let (head, tail) = rest.split_at(end);
            let was_cr = tail[0] == b'\r';
            rest = &tail[1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.line_done(head, &mut on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.line_done(&line, &mut on_event);
                line.clear();
                self.line = line;
            }
        }
        if !rest.is_empty() {
            if self.line.len() + rest.len() > MAX_EVENT {
                self.oversized = true;
                self.line.clear();
            } else {
                self.line.extend_from_slice(rest);
            }
        }
    }

    /// The stream ended: an event still open (no blank line after it) is completed.
    pub fn finish(&mut self, mut on_event: impl FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut on_event);
        }
        self.dispatch(&mut on_event);
    }

    /// Events dropped for passing [`MAX_EVENT`].
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if self.oversized {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(0) => return,
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    self.oversized = true;
                    self.data.clear();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.oversized {
            self.dropped += 1;
        } else if self.has_data {
            on_event(SseEvent {
                event: &self.event,
                data: &self.data,
            });
        }
        self.oversized = false;
        self.has_data = false;
        self.data.clear();
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn finds_usage_in_one_chunk() {
        let mut scanner = SseUsageScanner::new();
        scanner.feed(STREAM.as_bytes());
        assert_eq!(
            scanner.usage(),
            Some(TokenUsage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert!(scanner.saw_done());
    }

    #[test]
    fn finds_usage_split_at_every_byte() {
        for split in 1..STREAM.len() {
            let mut scanner = SseUsageScanner::new();
            let (a, b) = STREAM.as_bytes().split_at(split);
            scanner.feed(a);
            scanner.feed(b);
            assert_eq!(
                scanner.usage().map(|u| u.prompt_tokens),
                Some(7),
                "split at {split}"
            );
            assert!(scanner.saw_done());
        }
    }

    #[test]
    fn handles_crlf_and_missing_usage() {
        let mut scanner = SseUsageScanner::new();
        scanner.feed(b"data: {\"choices\":[]}\r\n\r\ndata: [DONE]\r\n");
        assert_eq!(scanner.usage(), None);
        assert!(scanner.saw_done());
    }

    #[test]
    fn overlong_lines_are_skipped_not_buffered() {
        let mut scanner = SseUsageScanner::new();
        let long = vec![b'x'; MAX_LINE + 10];
        scanner.feed(b"data: ");
        scanner.feed(&long);
        scanner.feed(&long);
        assert!(scanner.partial.len() <= MAX_LINE);
        scanner.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n");
        assert_eq!(
            scanner.usage(),
            Some(TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 2
            })
        );
    }

    #[test]
    fn usage_from_whole_body() {
        let body = br#"{"id":"x","usage":{"prompt_tokens":4,"completion_tokens":5}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(TokenUsage {
                prompt_tokens: 4,
                completion_tokens: 5
            })
        );
        assert_eq!(usage_from_json(b"not json"), None);
    }

    #[test]
    fn reads_anthropic_and_responses_usage() {
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n";
        let mut scanner = SseUsageScanner::new();
        scanner.feed(anthropic.as_bytes());
        assert_eq!(
            scanner.usage(),
            Some(TokenUsage {
                prompt_tokens: 30,
                completion_tokens: 15
            })
        );
        let responses = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13}}}\n\n";
        let mut scanner = SseUsageScanner::new();
        scanner.feed(responses.as_bytes());
        assert_eq!(
            scanner.usage(),
            Some(TokenUsage {
                prompt_tokens: 9,
                completion_tokens: 4
            })
        );
        assert_eq!(
            usage_from_json(br#"{"type":"message","usage":{"input_tokens":3,"output_tokens":2}}"#),
            Some(TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
    }

    fn events_of(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut reader = SseReader::new();
        let mut seen = Vec::new();
        for chunk in chunks {
            reader.feed(chunk, |e| {
                seen.push((
                    e.event.to_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        reader.finish(|e| {
            seen.push((
                e.event.to_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            ))
        });
        seen
    }

    #[test]
    fn the_reader_finds_the_same_events_at_every_split() {
        let stream = b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\nid: 3\nretry: 5\ndata: {\"x\":1}\n\nevent: b\rdata: last";
        let whole = events_of(&[stream]);
        assert_eq!(
            whole,
            [
                ("a".to_owned(), "one\ntwo".to_owned()),
                (String::new(), "{\"x\":1}".to_owned()),
                ("b".to_owned(), "last".to_owned()),
            ]
        );
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(events_of(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_of(&bytes), whole);
    }

    #[test]
    fn the_reader_drops_an_oversized_event_and_goes_on() {
        let mut reader = SseReader::new();
        let big = vec![b'x'; MAX_EVENT / 2];
        let mut seen = Vec::new();
        for _ in 0..3 {
            reader.feed(b"data: ", |_| {});
            reader.feed(&big, |_| {});
            reader.feed(b"\n", |_| {});
        }
        reader.feed(b"\ndata: ok\n\n", |e| seen.push(e.data.to_vec()));
        assert_eq!(seen, [b"ok".to_vec()]);
        assert_eq!(reader.dropped(), 1);
    }
}
