//! Each engine's output: a bounded ring of lines (stdout and stderr of a process, or a
//! container's log stream), kept across restarts so `failed` can show what explained it. Lines
//! are cut at [`MAX_LINE_BYTES`] (an engine that never prints a newline cannot grow memory) and
//! every secret Cortex gave the engine — its API key, the Hugging Face token — is replaced by
//! `[REDACTED]` before a line is stored, so `logs?tail=N` and `failed` never show one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

pub const REDACTED: &str = "[REDACTED]";

/// A shared, bounded ring of an engine's log lines.
#[derive(Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    lines: VecDeque<String>,
    capacity: usize,
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for LogBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBuffer")
            .field("lines", &self.lock().lines.len())
            .finish()
    }
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        LogBuffer {
            inner: Arc::new(Mutex::new(Inner {
                lines: VecDeque::with_capacity(capacity.min(1024)),
                capacity: capacity.max(1),
                secrets: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the ring inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The secrets to redact from now on (the current start's key and token).
    pub(crate) fn set_secrets(&self, secrets: Vec<SecretString>) {
        self.lock().secrets = secrets
            .into_iter()
            .filter(|s| !s.expose_secret().is_empty())
            .collect();
    }

    /// Stores one line, redacted and cut to [`MAX_LINE_BYTES`].
    pub fn push(&self, line: &str) {
        let mut inner = self.lock();
        let mut line = cut(line, MAX_LINE_BYTES).to_owned();
        for secret in &inner.secrets {
            let secret = secret.expose_secret();
            if line.contains(secret) {
                line = line.replace(secret, REDACTED);
            }
        }
        if inner.lines.len() == inner.capacity {
            inner.lines.pop_front();
        }
        inner.lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let inner = self.lock();
        let skip = inner.lines.len().saturating_sub(n);
        inner.lines.iter().skip(skip).cloned().collect()
    }
}

/// The longest prefix of `line` of at most `max` bytes that ends on a character boundary.
fn cut(line: &str, max: usize) -> &str {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.get(..end).unwrap_or_default()
}

/// Splits a byte stream into lines, holding at most [`MAX_LINE_BYTES`] of a pending line.
#[derive(Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    overflowed: bool,
}

impl LineSplitter {
    pub(crate) fn feed(&mut self, mut bytes: &[u8], logs: &LogBuffer) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            let (head, rest) = bytes.split_at(newline);
            self.append(head);
            self.emit(logs);
            bytes = rest.get(1..).unwrap_or_default();
        }
        self.append(bytes);
    }

    pub(crate) fn finish(&mut self, logs: &LogBuffer) {
        if !self.pending.is_empty() || self.overflowed {
            self.emit(logs);
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.pending.len());
        if bytes.len() > room {
            self.overflowed = true;
        }
        self.pending
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
    }

    fn emit(&mut self, logs: &LogBuffer) {
        let text = String::from_utf8_lossy(&self.pending);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        logs.push(text);
        self.pending.clear();
        self.overflowed = false;
    }
}

/// Copies `reader` into `logs` line by line until it ends.
pub(crate) async fn pump(mut reader: impl AsyncRead + Unpin, logs: LogBuffer) {
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.feed(buf.get(..n).unwrap_or_default(), &logs),
        }
    }
    splitter.finish(&logs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_lines() {
        let logs = LogBuffer::new(3);
        for i in 0..5 {
            logs.push(&format!("line {i}"));
        }
        assert_eq!(logs.tail(10), ["line 2", "line 3", "line 4"]);
        assert_eq!(logs.tail(1), ["line 4"]);
        assert!(logs.tail(0).is_empty());
    }

    #[test]
    fn secrets_are_redacted() {
        let logs = LogBuffer::new(10);
        logs.set_secrets(vec![
            SecretString::from("sk-abc"),
            SecretString::from("hf_tok"),
        ]);
        logs.push("args: api_key=sk-abc token=hf_tok again sk-abc");
        assert_eq!(
            logs.tail(1),
            ["args: api_key=[REDACTED] token=[REDACTED] again [REDACTED]"]
        );
    }

    #[tokio::test]
    async fn pump_splits_lines_and_bounds_long_ones() {
        let logs = LogBuffer::new(10);
        let mut input = b"first\r\nsecond\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE_BYTES * 3]);
        input.extend(b"\nlast without newline");
        pump(&input[..], logs.clone()).await;
        let lines = logs.tail(10);
        assert_eq!(lines.first().unwrap(), "first");
        assert_eq!(lines.get(1).unwrap(), "second");
        assert_eq!(lines.get(2).unwrap().len(), MAX_LINE_BYTES);
        assert_eq!(lines.get(3).unwrap(), "last without newline");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn cut_respects_character_boundaries() {
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 10), "abc");
    }
}
