//! Reads token usage out of an OpenAI-style server-sent-event stream as it passes by.
//!
//! The scanner sees each chunk once and never holds the stream: it keeps only the bytes of the
//! current unfinished line, and only parses lines that mention `"usage"`. Chunks are forwarded
//! to the client unchanged by the caller. Newlines and the `"usage"` marker are found with
//! `memchr`'s vectorised search: this runs on every chunk of every stream.

use std::sync::OnceLock;

use memchr::memmem::Finder;
use serde::Deserialize;

/// Token counts reported by upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct UsageEnvelope {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// Pulls `usage` out of a whole (non-streamed) JSON answer.
pub fn usage_from_json(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<UsageEnvelope>(body).ok()?.usage
}

/// Longest line kept while waiting for its end. A longer line cannot be a usage line we need
/// and is skipped, so a hostile upstream cannot make the scanner grow without bound.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct SseUsageScanner {
    partial: Vec<u8>,
    skipping_long_line: bool,
    usage: Option<TokenUsage>,
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
        if let Some(usage) = usage_from_json(data) {
            self.usage = Some(usage);
        }
    }

    /// The last usage seen, if upstream sent any.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
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
}
